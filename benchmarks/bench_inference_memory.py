"""Peak resident memory of inference (CPU), with and without tiles, for the shipped full-size networks.

Every figure is the peak resident set (``ru_maxrss``) of a fresh process that imports the package, builds the
network of an options file (random weights: ACLA's gates start open, the most keys), runs one forward pass on
a random LR image through :func:`acla_basicsr.inference.run_network` and exits.

    # one measurement
    python benchmarks/bench_inference_memory.py --config options/test/EARN_SRx2.yml --size 512 --tile 128
    # the table of docs/inference.md: untiled at two sizes, a linear fit a + b * pixels, the fit at 1000x1000
    python benchmarks/bench_inference_memory.py --table --sizes 64 128 --tile 256 --tile-pad 16

The machine is shared and has 2 cores: only the configs of ``--measure`` are run at 1000x1000 (and only below
``--max-gib``, default 10); the others are extrapolated from the fit and labelled so. A tiled run holds one padded tile at a time, so its peak is the untiled peak at the padded
tile size plus the full-size input and output images (float32), which the table computes from the same fit.
"""
import os
import os.path as osp
import resource
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = ['options/test/ACLA_SRx2.yml', 'options/test/ACLA_RCAN_SRx2.yml', 'options/test/ENLCN_SRx2.yml',
           'options/test/EARN_SRx2.yml', 'options/test/ACLA_EDSR_DN_sigma30.yml']


def measure_here(config, size, tile, tile_pad, threads):
    """Run one forward pass in this process; print the peak RSS (MiB) and the seconds taken."""
    sys.path.insert(0, ROOT)
    import torch

    from acla_basicsr.inference import build_network, input_channels, run_network
    torch.set_num_threads(threads)
    net = build_network(osp.join(ROOT, config)).eval()
    lq = torch.rand(1, input_channels(net), size, size)
    start = time.time()
    out = run_network(net, lq, tile or None, tile_pad)
    seconds = time.time() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f'{peak:.0f} {seconds:.1f} {tuple(out.shape)}', flush=True)


def measure(config, size, tile=0, tile_pad=16, threads=1):
    """Peak RSS (MiB) and seconds of one run in a fresh process."""
    cmd = [sys.executable, osp.abspath(__file__), '--config', config, '--size', str(size), '--tile', str(tile),
           '--tile-pad', str(tile_pad), '--threads', str(threads)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if run.returncode != 0:
        raise RuntimeError(run.stderr.strip().splitlines()[-1])
    peak, seconds = run.stdout.split()[:2]
    return float(peak), float(seconds)


def table(sizes, tile, tile_pad, target, max_gib, threads, measured):
    import yaml
    print(f'| options | peak at {sizes[0]}x{sizes[0]} | peak at {sizes[1]}x{sizes[1]} | per LR pixel | '
          f'{target}x{target} untiled | {target}x{target}, tile {tile} pad {tile_pad} |')
    print('|---|---|---|---|---|---|')
    for config in CONFIGS:
        with open(osp.join(ROOT, config)) as f:
            opt = yaml.safe_load(f)
        scale = opt.get('scale', 1)
        (p0, _), (p1, _) = (measure(config, s, threads=threads) for s in sizes)
        slope = (p1 - p0) / (sizes[1]**2 - sizes[0]**2)
        base = p0 - slope * sizes[0]**2

        def fit(pixels):
            return base + slope * pixels

        untiled = fit(target**2)
        padded = min(tile + 2 * tile_pad, target)
        images = (3 * target**2 + 3 * (scale * target)**2) * 4 / 2**20  # input and output, float32
        tiled = fit(padded**2) + images
        label, tiled_label = 'extrapolated', f'fit at {padded}x{padded} + images'
        if config in measured and untiled < max_gib * 1024:
            untiled, label = measure(config, target, threads=threads)[0], 'measured'
            tiled, tiled_label = measure(config, target, tile, tile_pad, threads)[0], 'measured'
        print(f'| `{osp.basename(config)}` (x{scale}) | {p0:.0f} MiB | {p1:.0f} MiB | {slope * 1024:.1f} KiB | '
              f'{untiled / 1024:.2f} GiB ({label}) | {tiled / 1024:.2f} GiB ({tiled_label}) |', flush=True)


def main(argv=None):
    sys.path.insert(0, ROOT)
    from acla_basicsr.cli.args import ArgumentParser, non_negative_int, positive_float, positive_int
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', help='options file with network_g (relative: to the repository)')
    parser.add_argument('--size', type=positive_int, help='side of the square LR input')
    parser.add_argument('--tile', type=non_negative_int, default=0)
    parser.add_argument('--tile-pad', type=non_negative_int, default=16)
    parser.add_argument('--threads', type=positive_int, default=1)
    parser.add_argument('--table', action='store_true', help='the table of docs/inference.md')
    parser.add_argument('--sizes', type=positive_int, nargs=2, default=[64, 128], help='two untiled sizes for the fit')
    parser.add_argument('--target', type=positive_int, default=1000)
    parser.add_argument('--max-gib', type=positive_float, default=10, help='never run a size predicted above this')
    parser.add_argument('--measure', nargs='*', default=['options/test/ACLA_EDSR_DN_sigma30.yml'],
                        help='configs also measured at --target (with and without tiles) when they fit --max-gib; '
                        'the others take minutes to hours there on a CPU and are extrapolated')
    args = parser.parse_args(argv)
    if not args.table and (args.config is None or args.size is None):
        parser.error(f"{'--config' if args.config is None else '--size'}: missing; give --config and --size, "
                     'or --table')
    if args.config is not None and not osp.isfile(osp.join(ROOT, args.config)):
        parser.error(f'--config: {args.config} is not a file; give an options file such as {CONFIGS[0]}')
    if args.table:
        table(args.sizes, args.tile or 256, args.tile_pad, args.target, args.max_gib, args.threads, args.measure)
    else:
        measure_here(args.config, args.size, args.tile, args.tile_pad, args.threads)


if __name__ == '__main__':
    main()
