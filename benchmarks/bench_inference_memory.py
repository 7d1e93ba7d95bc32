"""Peak resident memory of inference (CPU), with and without tiles, for the shipped full-size networks.

Every figure is the peak resident set (``ru_maxrss``) of a fresh process that imports the package, builds the
network of an options file (random weights: ACLA's gates start open, the most keys), runs one forward pass on
a random LR image through :func:`acla_basicsr.inference.run_network` and exits.

    # one measurement
    python benchmarks/bench_inference_memory.py --config options/test/EARN_SRx2.yml --size 512 --tile 128
    # the table of docs/inference.md: untiled at two sizes, a linear fit a + b * pixels, the fit at 1000x1000
    python benchmarks/bench_inference_memory.py --table --sizes 64 128 --tile 256 --tile-pad 16
    # --tile auto: the tile chosen and the peaks against the budget (a zoo name or an options file), the table
    # of docs/inference.md's "Automatic tiles"
    python benchmarks/bench_inference_memory.py --auto-table demo_ACLA_SRx2 --sizes 256 1024 2048 \
        --max-memory 256M default

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


def measure_here(config, size, tile, tile_pad, threads, max_memory=None):
    """Run one forward pass in this process; print the peak RSS (MiB), the seconds taken and the output shape;
    with ``tile='auto'`` also the resident set before the pass, the peak of the pass's tensors (MiB, what the
    budget bounds), the budget (MiB) and the tile chosen."""
    sys.path.insert(0, ROOT)
    import psutil
    import torch

    from acla_basicsr.inference import build_network, input_channels, load_network, run_network
    from acla_basicsr.inference.memory import TensorMemoryTracker, default_budget, return_freed_memory
    torch.set_num_threads(threads)
    path = osp.join(ROOT, config)
    net = build_network(path).eval() if osp.isfile(path) else load_network(config, device='cpu')
    lq = torch.rand(1, input_channels(net), size, size)
    before = psutil.Process().memory_info().rss / 2**20
    lines = []
    start = time.time()
    if tile == 'auto':  # as acla-restore --tile auto does
        return_freed_memory()
        max_memory = default_budget('cpu') if max_memory is None else max_memory
        with TensorMemoryTracker() as tracker:
            out = run_network(net, lq, 'auto', tile_pad, max_memory=max_memory, notify=lines.append)
    else:
        out = run_network(net, lq, tile or None, tile_pad)
    seconds = time.time() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    extra = f' {before:.0f} {tracker.peak / 2**20:.0f} {max_memory / 2**20:.0f} {lines[0]}' if tile == 'auto' else ''
    print(f'{peak:.0f} {seconds:.1f} {tuple(out.shape)}{extra}'.replace(', ', ','), flush=True)


def measure(config, size, tile=0, tile_pad=16, threads=1, max_memory=None, fields=2):
    """The first ``fields`` figures printed by :func:`measure_here` for one run in a fresh process (peak RSS in
    MiB, seconds, ...)."""
    cmd = [sys.executable, osp.abspath(__file__), '--config', config, '--size', str(size), '--tile', str(tile),
           '--tile-pad', str(tile_pad), '--threads', str(threads)]
    if max_memory is not None:
        cmd += ['--max-memory', f'{max_memory / 2**20:.0f}']
    run = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if run.returncode != 0:
        raise RuntimeError(run.stderr.strip().splitlines()[-1])
    words = run.stdout.split(maxsplit=fields) if fields > 2 else run.stdout.split()[:2]
    return [float(v) for v in words[:2]] + words[2:]


def auto_table(networks, sizes, budgets, tile_pad, threads):
    """The rows of docs/inference.md's table of ``--tile auto``: tile, tensor peak, resident peaks, per budget."""
    print('| network | LR input | budget | tile chosen | tensor peak | resident: before the pass -> peak | time |')
    print('|---|---|---|---|---|---|---|')
    for network in networks:
        for size in sizes:
            for budget in budgets:
                peak, seconds, _, before, tensors, budget_mib, line = measure(
                    network, size, 'auto', tile_pad, threads, budget, fields=6)
                tile = line.split(' for ')[0].replace('tile auto: ', '')
                print(f'| {network} | {size}x{size} | {float(budget_mib):.0f} MiB'
                      f"{' (default)' if budget is None else ''} | {tile} | {float(tensors):.0f} MiB | "
                      f'{float(before):.0f} -> {peak:.0f} MiB (+{peak - float(before):.0f}) | {seconds:.0f} s |',
                      flush=True)


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
    from acla_basicsr.cli.args import (ArgumentParser, memory_size, non_negative_int, positive_float, positive_int,
                                       tile_size)

    def budget(text):
        return None if text == 'default' else memory_size(text)
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', help='options file with network_g (relative: to the repository)')
    parser.add_argument('--size', type=positive_int, help='side of the square LR input')
    parser.add_argument('--tile', type=tile_size, default=0, help='0: no tiles; auto: within --max-memory')
    parser.add_argument('--max-memory', type=memory_size, default=None,
                        help='budget of --tile auto (default: that of acla-restore)')
    parser.add_argument('--auto-table', nargs='+', default=None, metavar='NETWORK',
                        help='zoo names or options files: the --tile auto table at --sizes for each --budgets')
    parser.add_argument('--budgets', nargs='+', type=budget, default=[memory_size('256M'), None],
                        help='budgets of --auto-table (default: the default of acla-restore)')
    parser.add_argument('--tile-pad', type=non_negative_int, default=16)
    parser.add_argument('--threads', type=positive_int, default=1)
    parser.add_argument('--table', action='store_true', help='the table of docs/inference.md')
    parser.add_argument('--sizes', type=positive_int, nargs='+', default=None,
                        help='--table: two untiled sizes for the fit (default 64 128); --auto-table: the sizes (default '
                        '256 1024 2048)')
    parser.add_argument('--target', type=positive_int, default=1000)
    parser.add_argument('--max-gib', type=positive_float, default=10, help='never run a size predicted above this')
    parser.add_argument('--measure', nargs='*', default=['options/test/ACLA_EDSR_DN_sigma30.yml'],
                        help='configs also measured at --target (with and without tiles) when they fit --max-gib; '
                        'the others take minutes to hours there on a CPU and are extrapolated')
    args = parser.parse_args(argv)
    from acla_basicsr.errors import OptionError
    from acla_basicsr.inference.checkpoints import find_zoo_model
    for network in ([args.config] if args.config is not None else []) + (args.auto_table or []):
        if not osp.isfile(osp.join(ROOT, network)):
            try:
                find_zoo_model(network, '--config' if network == args.config else '--auto-table')
            except OptionError as error:
                parser.error(f'{error} Or give an options file such as {CONFIGS[0]}.')
    if args.auto_table:
        return auto_table(args.auto_table, args.sizes or [256, 1024, 2048], args.budgets, args.tile_pad, args.threads)
    if args.table and args.sizes is not None and len(args.sizes) != 2:
        parser.error(f'--sizes: expected 2 values with --table, got {len(args.sizes)}')
    if not args.table and (args.config is None or args.size is None):
        parser.error(f"{'--config' if args.config is None else '--size'}: missing; give --config and --size, "
                     'or --table')
    if args.table:
        table(args.sizes or [64, 128], args.tile or 256, args.tile_pad, args.target, args.max_gib, args.threads,
              args.measure)
    else:
        measure_here(args.config, args.size, args.tile, args.tile_pad, args.threads, args.max_memory)


if __name__ == '__main__':
    main()
