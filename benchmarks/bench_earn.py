"""EARN vs basicsr's EDSR-baseline: parameters, MACs and CPU forward time, measured in one run.

MACs are ``torch.utils.flop_counter.FlopCounterMode`` flops / 2 (SPEC section 2) for one LR
input of ``--size`` pixels a side, plus the local attention's window products (``q^T k_ab`` and
weights times values, 2 k^2 C per pixel and layer), which the layer computes elementwise and the
counter, seeing only convolutions and matrix products, misses; the attention's share is printed
apart. Forward times alternate the networks and take the median, so that both share the machine's load.

With ``--memory``: peak resident memory (VmHWM of /proc/self/status) of the whole process, each
case in a fresh subprocess: inference of the network of ``options/train/EARN_SRx2.yml`` on one
``--memory-size`` LR image (untiled, no grad), and one training step (forward, L1 loss, backward)
of it and of EDSR-baseline at batch 32 of 48x48 LR patches (EARN section 4). The figure includes
what ``import torch`` and the weights take (printed: the same process before the forward pass).

Usage: python benchmarks/bench_earn.py [--scale 2] [--size 48] [--repeats 10] [--threads 1]
       python benchmarks/bench_earn.py --memory [--memory-size 512] [--threads 1]
"""
import argparse
import os.path as osp
import statistics
import subprocess
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import acla_basicsr  # noqa: E402,F401  (before basicsr)
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from acla_basicsr.archs.earn_arch import EARN  # noqa: E402
from acla_basicsr.cli.args import ArgumentParser, int_range, positive_int  # noqa: E402
from basicsr.archs.edsr_arch import EDSR  # noqa: E402


def window_product_macs(net, x):
    """MACs of the local attention's window products, which FlopCounterMode does not see.

    Per pixel, layer and window offset: q^T k_ab (C) and the weighted value (C), 2 k^2 C in all;
    the layer computes them with elementwise products and sums (faster on CPU than a batched
    matrix product of width 1), which the counter, counting matrix products and convolutions, misses.
    """
    from acla_basicsr.archs.earn_modules import LocalSelfAttention
    total = []
    hooks = [m.register_forward_hook(
        lambda m, inputs, output: total.append(2 * m.window_size**2 * inputs[0].numel()))
        for m in net.modules() if isinstance(m, LocalSelfAttention)]
    with torch.no_grad():
        net(x)
    for hook in hooks:
        hook.remove()
    return sum(total)


def counted_macs(net, x):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    return counter.get_total_flops() / 2 + window_product_macs(net, x)


def attention_macs(net, x):
    """MACs of the LocalSelfAttention layers alone (inside the total), window products included."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    return sum(flops for name, ops in counter.get_flop_counts().items()
               if name != 'Global' and name.endswith('attention') for flops in ops.values()) / 2 \
        + window_product_macs(net, x)


def forward_time(net, x, repeats):
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - start)
    return times


def peak_rss_mib():
    """VmHWM of this process (peak resident set size), in MiB."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
    raise RuntimeError('/proc/self/status has no VmHWM (not Linux?)')


def config_network(path):
    import yaml
    from basicsr.utils.registry import ARCH_REGISTRY
    with open(path) as f:
        net_opt = dict(yaml.safe_load(f)['network_g'])
    return ARCH_REGISTRY.get(net_opt.pop('type'))(**net_opt)


def memory_case(case, size, threads):
    """One measurement, run in its own process: prints 'before after' peak RSS in MiB."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    if case == 'earn_infer':
        net = config_network(osp.join(root, 'options', 'train', 'EARN_SRx2.yml')).eval()
        x = torch.rand(1, 3, size, size)
        before = peak_rss_mib()
        with torch.no_grad():
            out = net(x)
        assert out.shape == (1, 3, 2 * size, 2 * size)
    else:
        net = (config_network(osp.join(root, 'options', 'train', 'EARN_SRx2.yml')) if case == 'earn_train'
               else EDSR(3, 3, num_feat=64, num_block=16, upscale=2)).train()
        x, gt = torch.rand(32, 3, 48, 48), torch.rand(32, 3, 96, 96)
        before = peak_rss_mib()
        torch.nn.functional.l1_loss(net(x), gt).backward()
    print(f'{before:.1f} {peak_rss_mib():.1f}')


def memory_table(size, threads):
    cases = [('earn_infer', f'EARN_SRx2.yml network, inference, one {size}x{size} LR image, untiled'),
             ('earn_train', 'EARN_SRx2.yml network, training step, batch 32 of 48x48'),
             ('edsr_train', 'EDSR-baseline (64 ch, 16 blocks), training step, batch 32 of 48x48')]
    print(f'peak resident memory of the whole process (VmHWM), CPU, {threads} thread(s), a fresh process each')
    print(f"{'case':70s} {'before (MiB)':>12s} {'peak (MiB)':>10s} {'added (MiB)':>11s}")
    for case, label in cases:
        result = subprocess.run([sys.executable, osp.abspath(__file__), '--memory-case', case, '--memory-size',
                                 str(size), '--threads', str(threads)], capture_output=True, text=True, check=True)
        before, peak = map(float, result.stdout.split()[-2:])
        print(f'{label:70s} {before:12.1f} {peak:10.1f} {peak - before:11.1f}')


def main(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--scale', type=int_range(2, 4), default=2, help='SR scale: 2, 3 or 4')
    parser.add_argument('--size', type=positive_int, default=48, help='LR input side in pixels')
    parser.add_argument('--repeats', type=positive_int, default=10)
    parser.add_argument('--threads', type=positive_int, default=1)
    parser.add_argument('--memory', action='store_true', help='peak memory table instead of the timing table')
    parser.add_argument('--memory-size', type=positive_int, default=512, help='LR side of the inference memory case')
    parser.add_argument('--memory-case', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_case:
        return memory_case(args.memory_case, args.memory_size, args.threads)
    if args.memory:
        return memory_table(args.memory_size, args.threads)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    nets = {
        'EARN (64 ch, 4 E-RABs, window 7)': EARN(upscale=args.scale).eval(),
        'EDSR-baseline (64 ch, 16 blocks)': EDSR(3, 3, num_feat=64, num_block=16, upscale=args.scale).eval(),
    }
    x = torch.rand(1, 3, args.size, args.size)
    rows = {}
    for name, net in nets.items():
        params = sum(p.numel() for p in net.parameters())
        rows[name] = [params / 1e6, counted_macs(net, x) / 1e9, attention_macs(net, x) / 1e9]
    for net in nets.values():  # warm up
        forward_time(net, x, 1)
    times = {name: [] for name in nets}
    for _ in range(args.repeats):
        for name, net in nets.items():
            times[name] += forward_time(net, x, 1)
    print(f'x{args.scale}, one {args.size}x{args.size} LR input, CPU, {args.threads} thread(s), '
          f'median of {args.repeats} forwards')
    print(f"{'network':36s} {'params(M)':>9s} {'MACs(G)':>9s} {'of which attention':>18s} {'forward(ms)':>11s}")
    for name in nets:
        params, macs, att = rows[name]
        ms = statistics.median(times[name]) * 1e3
        rows[name].append(ms)
        print(f'{name:36s} {params:9.3f} {macs:9.3f} {att:18.3f} {ms:11.1f}')
    earn, edsr = (rows[name] for name in nets)
    print(f'EARN / EDSR-baseline: params {earn[0] / edsr[0]:.2f}x, MACs '
          f'{earn[1] / edsr[1]:.2f}x, forward time {earn[3] / edsr[3]:.2f}x')


if __name__ == '__main__':
    main()
