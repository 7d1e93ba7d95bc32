"""Cost of the divergence guard per training step: its checks of the loss, the gradients and the weights.

``DivergenceGuard.check_step`` (before the optimizer step) and ``check_weights`` (after it) on basicsr's
EDSR with random gradients; the median of ``--repeats`` timings.

Usage: python benchmarks/bench_divergence_guard.py [--repeats 10] [--threads 1]
"""
import os.path as osp
import statistics
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import acla_basicsr  # noqa: E402,F401  (before basicsr)
import torch  # noqa: E402

from acla_basicsr.cli.args import ArgumentParser, positive_int  # noqa: E402
from acla_basicsr.models.divergence import DivergenceGuard  # noqa: E402
from basicsr.archs.edsr_arch import EDSR  # noqa: E402


def main(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=positive_int, default=10)
    parser.add_argument('--threads', type=positive_int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print('| network | parameters | guard per step (ms) |\n|---|---|---|')
    for feat, blocks in ((64, 16), (256, 32)):
        net = EDSR(3, 3, feat, blocks, upscale=2)
        for p in net.parameters():
            p.grad = torch.randn_like(p)
        named = list(net.named_parameters())
        guard, loss = DivergenceGuard(), {'l_pix': torch.tensor(0.1)}
        times = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            guard.check_step(loss, named, 1)
            guard.check_weights(named, 1)
            times.append(time.perf_counter() - start)
        params = sum(p.numel() for p in net.parameters()) / 1e6
        print(f'| EDSR {blocks} blocks x {feat} | {params:.2f} M | {1000 * statistics.median(times[1:]):.1f} |')


if __name__ == '__main__':
    main()
