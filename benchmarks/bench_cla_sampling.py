"""Key sampling of CLA/ACLA vs the public code's per-key deform_conv2d, and EDSR+ACLA vs EDSR forward time.

Part 1 (B=4, C=64, K=8, 48x48, one key layer): forward + backward (gradients to values, offsets and
weights) of
  - ours (fused): ``acla_basicsr.archs.cla_modules.sample_keys`` with ``method='fused'``, the default of the
    modules: one ``F.embedding_bag`` over the 4 bilinear corners of all K keys, weighted, with a hand-written
    backward (a custom autograd Function: one sorted ``embedding_bag`` for the values' gradient, the offsets'
    and weights' gradients in closed form from the 4 corner dot products of every key);
  - ours (gather): the same ``embedding_bag`` forward with autograd's generic backward (``method='gather'``);
  - ours (grid_sample): ``sample_keys`` with ``method='grid_sample'``: one ``F.grid_sample`` for all K
    keys, then a weighted sum (einsum);
  - reference: the public code's approach, written here from its description: one
    ``torchvision.ops.deform_conv2d`` per key with an identity CxC 1x1 kernel (C*C MACs per key per pixel
    for a bilinear lookup), the K results weighted and summed. The identity kernel is built once (the public
    code rebuilds it on the CPU at every call, which is not charged here).
Outputs and gradients are compared. Time: median of --repeat interleaved runs of the CPU time of this
process (``time.process_time``) with --threads 1 by default: the machine is shared with other jobs, whose
load distorts wall-clock times and multi-threaded runs (OpenMP threads wait for descheduled siblings); the
wall-clock medians are printed too. On CUDA the times are wall-clock after synchronisation. Peak memory: each
method runs in a fresh subprocess with glibc's mmap threshold fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_,
so that freed tensors leave the resident set); after one warm-up step the peak resident set (VmHWM) is
reset through /proc/self/clear_refs and the growth of VmHWM over VmRSS during one forward + backward is
reported: everything the step allocates, gradients included (on CUDA: torch.cuda.max_memory_allocated
growth, in the same process).

Part 2: forward time (eval, no_grad, batch 1, 48x48 LR, x2) of EDSR-large (32 blocks, 256 channels) with
ACLA at the paper's positions 3, 12, 26, 31, 32 (Table 9) vs the same EDSR without attention.

Usage: python benchmarks/bench_cla_sampling.py [--repeat 5] [--edsr-repeat 3] [--threads 1] [--device cpu]
       [--size 48]   (--size: the map side of part 1 and the LR side of part 2; the GPU check's CPU rehearsal: 16)
"""
import argparse
import gc
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import acla_basicsr  # noqa: E402,F401
import torch  # noqa: E402
from torchvision.ops import deform_conv2d  # noqa: E402

from acla_basicsr.archs.acla_edsr_arch import ACLAEDSR  # noqa: E402
from acla_basicsr.archs.cla_modules import sample_keys  # noqa: E402
from acla_basicsr.cli.args import ArgumentParser, positive_int, torch_device  # noqa: E402


def _ours(method):
    def sample(values, offsets, weights, eye):
        b, _, h, w = values.shape
        k = weights.shape[1]
        return sample_keys(values.unsqueeze(1), offsets.view(b, 1, k, 2, h, w), weights.unsqueeze(1), method=method)

    return sample


def per_key_deform_conv(values, offsets, weights, eye):
    out = 0
    for k in range(weights.shape[1]):
        out = out + weights[:, k:k + 1] * deform_conv2d(values, offsets[:, 2 * k:2 * k + 2], eye)
    return out


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn, device):
    """(CPU time or, on CUDA, wall time; wall time) of one call, in seconds."""
    _sync(device)
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    _sync(device)
    wall = time.perf_counter() - wall
    return (wall if device.type == 'cuda' else time.process_time() - cpu), wall


def _rss_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def step(fn, inputs, eye, grad_out):
    for t in inputs:
        t.grad = None
    out = fn(*inputs, eye)
    out.backward(grad_out)
    return out.detach()


def peak_memory_mib(fn, inputs, eye, grad_out):
    """Growth of the peak memory during one forward + backward, after a warm-up step."""
    device = grad_out.device
    step(fn, inputs, eye, grad_out)
    for t in inputs:
        t.grad = None
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(fn, inputs, eye, grad_out)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current resident set
    base = _rss_kib('VmRSS')
    step(fn, inputs, eye, grad_out)
    return (_rss_kib('VmHWM') - base) / 1024


METHODS = {
    'ours (fused)': _ours('fused'),
    'ours (gather)': _ours('gather'),
    'ours (grid_sample)': _ours('grid_sample'),
    'deform_conv2d per key': per_key_deform_conv,
}
REFERENCE = 'deform_conv2d per key'


def sampling_inputs(device, size=48):
    torch.manual_seed(0)
    b, c, k, h, w = 4, 64, 8, size, size
    values = torch.randn(b, c, h, w, device=device, requires_grad=True)
    offsets = (torch.randn(b, 2 * k, h, w, device=device) * 4).requires_grad_()
    weights = torch.rand(b, k, h, w, device=device).softmax(1).requires_grad_()
    eye = torch.eye(c, device=device).view(c, c, 1, 1)
    grad_out = torch.randn(b, c, h, w, device=device)
    return (values, offsets, weights), eye, grad_out


def memory_probe(name, device, size=48):
    """Peak memory growth (MiB) of one method, measured in a fresh process on the CPU (see the docstring)."""
    if device.type == 'cuda':
        inputs, eye, grad_out = sampling_inputs(device, size)
        return peak_memory_mib(METHODS[name], inputs, eye, grad_out)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536')
    out = subprocess.run([sys.executable, os.path.abspath(__file__), '--memory-probe', name, '--threads',
                          str(torch.get_num_threads()), '--size', str(size)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def bench_sampling(args, device):
    inputs, eye, grad_out = sampling_inputs(device, args.size)
    results = {}
    for name, fn in METHODS.items():
        out = step(fn, inputs, eye, grad_out)
        results[name] = {'out': out, 'grads': [t.grad.clone() for t in inputs]}
    times = {name: [] for name in METHODS}
    for _ in range(args.repeat):
        for name, fn in METHODS.items():
            times[name].append(timed(lambda: step(fn, inputs, eye, grad_out), device))
    memory = {name: memory_probe(name, device, args.size) for name in METHODS}

    b, c, h, w = grad_out.shape
    print(f'Key sampling, forward + backward, B={b} C={c} K={inputs[2].shape[1]} {h}x{w}, {device.type}, '
          f'median of {args.repeat} interleaved runs, torch {torch.__version__}, {torch.get_num_threads()} threads')
    print('| method | time (ms) | wall (ms) | speed-up vs deform_conv2d | peak memory growth (MiB) | '
          'max abs diff: output | grad values | grad offsets | grad weights |')
    print('|---|---|---|---|---|---|---|---|---|')
    med = {name: [statistics.median(v) for v in zip(*runs)] for name, runs in times.items()}
    for name in METHODS:
        diff = [(results[name]['out'] - results[REFERENCE]['out']).abs().max().item()]
        diff += [(a - b).abs().max().item() for a, b in zip(results[name]['grads'], results[REFERENCE]['grads'])]
        diffs = ' | '.join(f'{d:.1e}' for d in diff)
        print(f'| {name} | {1000 * med[name][0]:.1f} | {1000 * med[name][1]:.1f} | '
              f'{med[REFERENCE][0] / med[name][0]:.1f}x | {memory[name]:.1f} | {diffs} |')


def bench_edsr(args, device):
    torch.manual_seed(0)
    nets = {
        'EDSR': ACLAEDSR(attention='none', insert_positions=[]),
        'EDSR+ACLA (3,12,26,31,32)': ACLAEDSR(attention='acla', insert_positions=[3, 12, 26, 31, 32]),
    }
    x = torch.rand(1, 3, args.size, args.size, device=device)
    times = {name: [] for name in nets}
    with torch.no_grad():
        for net in nets.values():
            net.to(device).eval()(x)  # warm-up
        for _ in range(args.edsr_repeat):
            for name, net in nets.items():
                times[name].append(timed(lambda: net(x), device))
    print(f'\nForward time, EDSR-large x2, one {args.size}x{args.size} input, eval, {device.type}, median of {args.edsr_repeat} '
          'interleaved runs')
    print('| network | time (ms) | wall (ms) |')
    print('|---|---|---|')
    med = {name: [statistics.median(v) for v in zip(*runs)] for name, runs in times.items()}
    for name in nets:
        print(f'| {name} | {1000 * med[name][0]:.1f} | {1000 * med[name][1]:.1f} |')
    ratio = med['EDSR+ACLA (3,12,26,31,32)'][0] / med['EDSR'][0]
    print(f'ratio EDSR+ACLA / EDSR: {ratio:.3f} (paper, Table 12, V100: 19.8 / 16.2 ms = 1.222)')


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeat', type=positive_int, default=5, help='timed runs of the sampling benchmark')
    parser.add_argument('--edsr-repeat', type=positive_int, default=3, help='timed forward passes of each EDSR')
    parser.add_argument('--device', type=torch_device, default='cpu', help="'cpu' or a CUDA device such as 'cuda'")
    parser.add_argument('--threads', type=positive_int, default=1,
                        help='torch CPU threads (default 1, see the docstring)')
    parser.add_argument('--size', type=positive_int, default=48,
                        help='side of the sampled map (part 1) and of the LR input (part 2); the tables: 48')
    parser.add_argument('--memory-probe', choices=list(METHODS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.memory_probe:  # internal: the fresh process of memory_probe
        inputs, eye, grad_out = sampling_inputs(device, args.size)
        print(peak_memory_mib(METHODS[args.memory_probe], inputs, eye, grad_out))
        return
    bench_sampling(args, device)
    bench_edsr(args, device)


if __name__ == '__main__':
    main()
