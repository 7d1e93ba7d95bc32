"""ENLCA against exact non-local attention: time, peak memory and MACs (ENLCA paper, Tables 4 and 5).

Usage: python benchmarks/bench_enlca.py [--sizes 100 150] [--threads 1] [--repeats 5] [--device cpu]
       python benchmarks/bench_enlca.py --approx-error [--threads 1]

``--approx-error`` prints instead how far ENLA (Eq. 5-6) is from exact softmax attention (Eq. 1)
on the same amplified unit queries and keys (Eq. 3): the relative error
||ENLA(Q, K, V) - softmax(Q K^T) V||_F / ||softmax(Q K^T) V||_F, for amplification k = 1 and 6 and
several m, averaged over draws of F (orthogonal samples), on random unit embeddings (c = 64,
N = 1024, V Gaussian).

The attention cores of one module are compared on a (1, 64, s, s) feature map, with 64-channel
queries, keys and values and m = 128 (the setting of Table 4): ENLCA (Eq. 5-6, amplification 6),
the naive exact attention (the N x N matrix and a softmax, Eq. 1) and torch's
scaled_dot_product_attention (fused kernel, no N x N matrix), all in float32 on the CPU, in one
run, so that the ratios are comparable. The 1x1 embeddings that the three share are left out of
the timings (their MACs are in the second table).

- time: median of ``--repeats`` calls after one warm-up call, ``--threads`` CPU threads; CPU time
  of the process (what the ratios use: on a shared machine the wall time also counts the time
  other processes hold the cores) and wall time.
- peak memory: the rise of the process's peak resident set size (VmHWM, reset through
  /proc/self/clear_refs after malloc_trim) during one call, above the inputs.
- ``--device cuda``: the same cores on the GPU; time is the wall time between ``torch.cuda.synchronize``
  calls (printed in both time columns), peak memory the growth of ``torch.cuda.max_memory_allocated``.
- MACs: torch.utils.flop_counter.FlopCounterMode counts 2 FLOPs per multiply-accumulate and
  only matrix products and convolutions; MACs = FLOPs / 2. The paper's Table 4 'GFLOPs' match
  2 x MACs of the attention core without the embeddings (its 3x3 64->64 convolution row, 0.74, is
  2 x 9 x 64 x 64 x 100 x 100 MACs), so its figures are printed beside our FLOPs.
"""
import ctypes
import math
import os.path as osp
import re
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, osp.abspath(osp.join(__file__, osp.pardir, osp.pardir)))  # this checkout's package
import acla_basicsr  # noqa: E402,F401
from acla_basicsr.archs.enlca_modules import ENLCA, NonLocalAttention, efficient_attention, softmax_attention  # noqa: E402
from acla_basicsr.cli.args import ArgumentParser, positive_int, torch_device  # noqa: E402

PAPER_GFLOPS = {'NLA (exact)': 25.60, 'ENLCA m=128': 0.66, 'conv 3x3 64->64': 0.74}  # Table 4, 100 x 100
PAPER_MS = {100: {'NLA': 42.8, 'ENLCA': 0.9}, 150: {'NLA': 107.2, 'ENLCA': 1.6}}  # Table 5, 2080ti GPU


def _status_bytes(key):
    with open('/proc/self/status') as f:
        return int(re.search(rf'{key}:\s+(\d+) kB', f.read()).group(1)) * 1024


def peak_memory(fn, device=None):
    """Bytes by which the process's peak resident set size (CUDA: allocated memory) rises during fn()."""
    if device is not None and device.type == 'cuda':
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except OSError:
        pass
    base = _status_bytes('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current RSS
    fn()
    return _status_bytes('VmHWM') - base


def median_time(fn, repeats, device=None):
    """Median CPU time (all threads of the process; CUDA: wall time) and wall time of fn(), after a warm-up."""
    cuda = device is not None and device.type == 'cuda'

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        sync()
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        fn()
        sync()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(wall[-1] if cuda else time.process_time() - start_cpu)
    return statistics.median(cpu), statistics.median(wall)


def macs(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2


def relative_error(amplification, num_samples, draws, c=64, n=1024, seed=0):
    """Mean relative Frobenius error of ENLA against exact attention on random unit embeddings."""
    from acla_basicsr.archs.enlca_modules import draw_random_matrix
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(1, n, c, generator=g, dtype=torch.float64), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(1, n, c, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(1, n, c, generator=g, dtype=torch.float64)
    q, k = q * math.sqrt(amplification), k * math.sqrt(amplification)
    exact = softmax_attention(q, k, v)
    errors = [((efficient_attention(q, k, v, draw_random_matrix(num_samples, c, g, True, torch.float64)) - exact).norm()
               / exact.norm()).item() for _ in range(draws)]
    return statistics.fmean(errors)


def approximation_table(samples=(128, 512, 2048, 8192), draws=5):
    print(f'relative error of ENLA against exact attention, c = 64, N = 1024, mean of {draws} draws of F')
    print('\n| m | k = 1 | k = 6 |\n|---|---|---|')
    for m in samples:
        print(f'| {m} | {relative_error(1., m, draws):.3f} | {relative_error(6., m, draws):.3f} |')


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--approx-error', action='store_true', help='ENLA against exact attention, k = 1 and 6')
    parser.add_argument('--sizes', type=positive_int, nargs='+', default=[100, 150])
    parser.add_argument('--channels', type=positive_int, default=64)
    parser.add_argument('--samples', type=positive_int, default=128)
    parser.add_argument('--threads', type=positive_int, default=1)
    parser.add_argument('--repeats', type=positive_int, default=5)
    parser.add_argument('--device', type=torch_device, default='cpu', help="'cpu' or 'cuda'")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.approx_error:
        return approximation_table()
    torch.manual_seed(0)
    c = args.channels
    module = ENLCA(num_feat=c, num_embed_feat=c, num_samples=args.samples).eval().to(device)
    exact_module = NonLocalAttention(num_feat=c, num_embed_feat=c, implementation='naive').eval().to(device)
    exact_module.load_state_dict(module.state_dict(), strict=False)
    matrix = module.attention.matrix
    scale = math.sqrt(module.amplification)

    where = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    print(f'torch {torch.__version__}, {where}, {args.threads} thread(s), float32, batch 1, {c} channels, '
          f'm = {args.samples}; median of {args.repeats} calls'
          f'{"; time: wall, synchronised" if device.type == "cuda" else ""}')
    print('\n| input | method | CPU time (ms) | wall time (ms) | peak memory (MiB) | CPU time / ENLCA | '
          'paper Table 5 (ms, 2080ti) |')
    print('|---|---|---|---|---|---|---|')
    with torch.no_grad():
        for size in args.sizes:
            x = torch.randn(1, c, size, size, device=device)
            q, k, v = module.embed(x)
            q = (torch.nn.functional.normalize(q, dim=-1) * scale).contiguous()
            k = (torch.nn.functional.normalize(k, dim=-1) * scale).contiguous()
            v = v.contiguous()
            methods = {
                'ENLCA (Eq. 5-6)': lambda: efficient_attention(q, k, v, matrix),
                'exact, naive softmax': lambda: softmax_attention(q, k, v, 'naive'),
                'exact, scaled_dot_product_attention': lambda: softmax_attention(q, k, v, 'sdpa'),
            }
            results = {}
            for name, fn in methods.items():
                repeats = args.repeats if name.startswith('ENLCA') else max(1, min(args.repeats, 3))
                results[name] = (median_time(fn, repeats, device), peak_memory(fn, device))
            enlca_time = results['ENLCA (Eq. 5-6)'][0][0]
            for name, ((cpu, wall), memory) in results.items():
                paper = PAPER_MS[size]['ENLCA' if name.startswith('ENLCA') else 'NLA'] if size in PAPER_MS else '-'
                print(f'| {size}x{size} | {name} | {cpu * 1e3:.1f} | {wall * 1e3:.1f} | {memory / 2**20:.1f} | '
                      f'{cpu / enlca_time:.1f}x | {paper} |')
            fastest_exact = min(results['exact, naive softmax'][0][0], results['exact, scaled_dot_product_attention'][0][0])
            print(f'| {size}x{size} | ENLCA speed-up over the faster exact peer | | | | '
                  f'**{fastest_exact / enlca_time:.1f}x** | |')
            del q, k, v

        size = 100
        x = torch.randn(1, c, size, size, device=device)
        q, k, v = module.embed(x)
        conv = torch.nn.Conv2d(c, c, 3, 1, 1).to(device)
        rows = [
            ('NLA (exact)', macs(lambda: softmax_attention(q, k, v, 'naive')), macs(lambda: exact_module(x))),
            ('ENLCA m=128', macs(lambda: efficient_attention(q, k, v, matrix)), macs(lambda: module(x))),
            ('conv 3x3 64->64', macs(lambda: conv(x)), macs(lambda: conv(x))),
        ]
    print(f'\nMACs of one module at {size}x{size}, {c} channels (FlopCounterMode; MACs = FLOPs / 2)')
    print('\n| module | attention core GMACs | core GFLOPs | paper Table 4 GFLOPs | '
          'whole module with 1x1 embeddings, GMACs |')
    print('|---|---|---|---|---|')
    for name, core, whole in rows:
        print(f'| {name} | {core / 1e9:.3f} | {2 * core / 1e9:.2f} | {PAPER_GFLOPS[name]:.2f} | {whole / 1e9:.3f} |')
    predicted = 2 * args.samples * size * size * c * 2 + args.samples * size * size
    print(f'\nSection 3.1 predicts 2mNc + 2mNc_out + mN = {predicted / 1e9:.3f} G MACs for the ENLCA core '
          f'and 2 N^2 c = {2 * (size * size)**2 * c / 1e9:.2f} G MACs for NLA.')


if __name__ == '__main__':
    main()
