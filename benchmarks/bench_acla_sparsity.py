"""Evaluation time of ACLA's sparse path against its dense path, CLA and the plain backbone, measured in one run.

Part 1: one ACLA module (C=64, K=16, L=5, 48x48, batch 1, eval, no_grad) with 100, 50, 25 and 10 % of its keys
open, against the same module forced dense (``sparse_eval = False``: every key's offsets and aggregation, every
value projection) and a CLA module with the same K, C, L (dense). The gate logits get a per-key threshold (the
bias) at the quantile of their values over the pixels that opens the wanted fraction of each key (so the open set
varies from pixel to pixel); the measured fraction is printed. Also the aggregation alone, both from the
projected values, both building their padded table: the sparse ``aggregate_open_keys`` (corners of the open keys
only, one ``embedding_bag``) against the dense ``sample_keys`` over every key (weights of the closed keys 0). The
two aggregations alternate in a loop of their own (interleaved with the module runs, which allocate tens of MiB
between them, the sparse one lost more of its cache than the dense one: 4.2 against 3.3 ms at 25 %).

Part 2: forward time (eval, no_grad, batch 1, ``--size`` LR, x2) of EDSR-large (ACLAEDSR num_feat 256,
num_block 32, res_scale 0.1) with ACLA at the positions of ACLA Table 9 (3, 12, 26, 31, 32) and about
``--open`` of its keys open (a random subset of each module's keys, the same at every pixel), against CLA with
K = 8 and 16 at the same positions and the backbone alone (attention none). The attention is 5-8 % of that
time, and ACLA's cost model puts it 0.2 % of the network's MACs below CLA K=16 at 45 % open keys (ACLA Tables 7
and 8: 0.4 %), below this machine's noise on a 2-second forward pass; so the five modules are also timed alone,
each network's modules on the same backbone features (those of the attention-free network at the five
positions), ``--attention-repeat`` alternating repetitions.

Time: the median of ``--repeat`` repetitions in which the variants alternate, of the CPU time of this process
(``time.process_time``) with ``--threads 1`` by default: the machine is shared, and the CPU time of one thread
is what a load does not distort (benchmarks/README.md). Ratios are of medians of the same run, except the
aggregation's sparse / dense, the networks' ratios to EDSR-large and every "ACLA below CLA" target, which are the
medians of the ratios of the repetitions (each pair of calls in the same round): on this machine the medians
drift by 10-20 % from run to run, together, and a paired ratio cancels that drift. "ACLA below CLA" is met when
ACLA was faster in most rounds and a one-sided sign test puts the chance of that many faster rounds between equals
below 0.05 (the difference the cost model predicts, 4 % of the modules and 0.4 % of the network, is smaller than
the drift; more repetitions resolve smaller differences). Prints markdown tables.

Usage: python benchmarks/bench_acla_sparsity.py [--threads 1] [--repeat 15] [--edsr-repeat 7]
       [--attention-repeat 15] [--size 48] [--open 0.45] [--skip-edsr]
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import acla_basicsr  # noqa: E402,F401
from acla_basicsr.cli.args import ArgumentParser, float_range, int_range  # noqa: E402
import torch  # noqa: E402
from scipy.stats import binomtest  # noqa: E402

from acla_basicsr.archs.acla_edsr_arch import ACLAEDSR  # noqa: E402
from acla_basicsr.archs.cla_modules import (AdaptiveCrossLayerAttention, CrossLayerAttention,  # noqa: E402
                                            _padded_table, aggregate_open_keys, sample_keys)

SEARCHED = [3, 12, 26, 31, 32]  # ACLA Table 9, EDSR SR (scripts/complexity.py)
EDSR_LARGE = dict(num_feat=256, num_block=32, res_scale=0.1, upscale=2)


def cpu_time(fn):
    start = time.process_time()
    fn()
    return time.process_time() - start


def alternating_times(variants, repeat):
    """{name: [seconds]} of ``repeat`` rounds in which every variant runs once, in turn (after a warm-up)."""
    for fn in variants.values():
        fn()
    times = {name: [] for name in variants}
    for _ in range(repeat):
        for name, fn in variants.items():
            times[name].append(cpu_time(fn))
    return times


def medians(variants, repeat):
    """{name: median seconds} of :func:`alternating_times`."""
    return {name: statistics.median(v) for name, v in alternating_times(variants, repeat).items()}


def paired_ratio(times, name, reference):
    """The median over the rounds of ``name``'s time over ``reference``'s in the same round."""
    return statistics.median(x / y for x, y in zip(times[name], times[reference]))


def paired(times, name, reference):
    """``name`` against ``reference`` round by round: the median of the ratios, the rounds ``name`` was faster in, and
    the one-sided sign test's p-value of "faster in at least that many rounds" if neither were faster (a tie counts
    against ``name``). A paired ratio cancels the drift of this machine's speed, which moves both calls of a round
    together; the sign test says whether a difference smaller than that drift is there at all."""
    faster = sum(x < y for x, y in zip(times[name], times[reference]))
    p_value = binomtest(faster, len(times[name]), 0.5, alternative='greater').pvalue
    return paired_ratio(times, name, reference), faster, p_value


def below(times, name, reference, label):
    """A target line: ``name`` below ``reference`` when faster in most rounds with a sign test's p < 0.05."""
    ratio, faster, p_value = paired(times, name, reference)
    met = ratio < 1 and p_value < 0.05
    return (f'{label}: {"met" if met else "NOT met"} ({ratio:.3f}x paired, faster in {faster} of '
            f'{len(times[name])} rounds, sign test p = {p_value:.2g})')


def module_inputs(c=64, num_layers=5, size=48, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(1, c, size, size)
    return x, [torch.randn(1, c, size, size) for _ in range(num_layers)]


def built_modules(c, num_layers, num_keys):
    """An ACLA module with random weights (offsets within a few pixels) and a CLA module with the same weights."""
    torch.manual_seed(1)
    acla = AdaptiveCrossLayerAttention(c, num_layers, num_keys).eval()
    with torch.no_grad():
        for name, p in acla.named_parameters():
            p.add_(torch.randn_like(p) * (0.01 if name == 'offset.weight' else 0.1))
    cla = CrossLayerAttention(c, num_layers, num_keys).eval()
    cla.load_state_dict({k: v for k, v in acla.state_dict().items() if not k.startswith('gate.')})
    return acla, cla


def open_fraction(module, x, fraction):
    """Set each key's gate bias at the quantile of its logits that opens ``fraction`` of the pixels; return the
    fraction of (pixel, key) pairs open in evaluation."""
    with torch.no_grad():
        logits = torch.nn.functional.conv2d(x, module.gate.weight).flatten(2)[0]  # (L*K, HW), without bias
        module.gate.bias.copy_(-torch.quantile(logits, 1 - fraction, dim=1) + 1e-6)
        module.gate.bias[logits.amax(1) < -module.gate.bias] = -1e6 if fraction == 0 else module.gate.bias.max()
        return float((module.gate(x) > 0).float().mean())


def sparse_inputs(module, x, keys):
    """What the sparse aggregation reads (the steps of ``_sparse_update``, one chunk): the projected layers' values,
    the offsets, weights and gates of all their keys in the (pixel, layer, key) order of the bags."""
    b, c, h, w = x.shape
    num_layers, k = module.num_key_layers, module.num_keys
    with torch.no_grad():
        gates = module.key_mask(x)
        weights = module.softmax_weights(x) * gates
        is_open = gates != 0
        layers = is_open.transpose(0, 1).reshape(num_layers, -1).any(1).nonzero().squeeze(1)
        values = module._project_values(keys, layers.tolist()).permute(1, 0, 4, 2, 3)
        num = layers.numel()
        offsets = module.offset(x).view(b, num_layers, k, 2, h, w).permute(0, 4, 5, 1, 2, 3)[:, :, :, layers]
        weights, is_open = (t.permute(0, 3, 4, 1, 2)[:, :, :, layers].reshape(-1, num, k) for t in (weights, is_open))
        return values, offsets.reshape(-1, num, k, 2).contiguous(), weights, is_open, (b, h, w)


def sparse_aggregation(values, offsets, weights, is_open, size):
    """The aggregation of the open keys as ``_sparse_update`` runs it: the padded table, then the open keys' sum."""
    return aggregate_open_keys(_padded_table(values), offsets, weights, is_open, 0, size)


def dense_inputs(module, x, keys):
    b, _, h, w = x.shape
    with torch.no_grad():
        values = module._project_values(keys).permute(1, 0, 4, 2, 3)
        offsets = module.offset(x).view(b, module.num_key_layers, module.num_keys, 2, h, w)
        return values, offsets, module.key_weights(x)


def bench_module(args):
    c, num_layers, num_keys, size = 64, 5, 16, args.size
    x, keys = module_inputs(c, num_layers, size)
    acla, cla = built_modules(c, num_layers, num_keys)
    print(f'\nOne module, C={c} K={num_keys} L={num_layers}, {size}x{size}, batch 1, eval, cpu, {torch.get_num_threads()} '
          f'thread(s), median of {args.repeat} alternating repetitions (CPU time, ms), torch {torch.__version__}')
    print('| keys open (target) | measured | ACLA sparse | ACLA dense | CLA (same K) | sparse / dense | sparse / CLA | '
          'aggregation sparse | aggregation dense | aggregation sparse / dense (paired) |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    results = {}
    for fraction in (1.0, 0.5, 0.25, 0.1):
        measured = open_fraction(acla, x, fraction)
        forced = AdaptiveCrossLayerAttention(c, num_layers, num_keys).eval()
        forced.load_state_dict(acla.state_dict())
        forced.sparse_eval = False
        with torch.no_grad():
            torch.testing.assert_close(acla(x, keys), forced(x, keys), rtol=1e-4, atol=1e-4)
        sparse_args, dense_args = sparse_inputs(acla, x, keys), dense_inputs(acla, x, keys)
        with torch.no_grad():
            t = medians({
                'sparse': lambda: acla(x, keys),
                'dense': lambda: forced(x, keys),
                'cla': lambda: cla(x, keys),
            }, args.repeat)
            aggregation = alternating_times({
                'agg_sparse': lambda: sparse_aggregation(*sparse_args),
                'agg_dense': lambda: sample_keys(*dense_args),
            }, args.repeat)
        t.update({name: statistics.median(v) for name, v in aggregation.items()})
        ms = {k: 1e3 * v for k, v in t.items()}
        ms['agg_ratio'] = paired_ratio(aggregation, 'agg_sparse', 'agg_dense')
        results[fraction] = ms
        print(f'| {100 * fraction:.0f} % | {100 * measured:.1f} % | {ms["sparse"]:.1f} | {ms["dense"]:.1f} | '
              f'{ms["cla"]:.1f} | {ms["sparse"] / ms["dense"]:.2f} | {ms["sparse"] / ms["cla"]:.2f} | '
              f'{ms["agg_sparse"]:.1f} | {ms["agg_dense"]:.1f} | {ms["agg_ratio"]:.2f} |')
    q = results[0.25]
    print(f'targets at 25 %: aggregation <= 0.5x dense: {"met" if q["agg_ratio"] <= 0.5 else "NOT met"} '
          f'({q["agg_ratio"]:.2f}x); module below CLA (same K): '
          f'{"met" if q["sparse"] < q["cla"] else "NOT met"} ({q["sparse"] / q["cla"]:.2f}x)')


def open_keys(net, fraction, seed=0):
    """Open a random ``fraction`` of each ACLA module's keys (gate weights 0, biases +-1); return the fraction."""
    generator = torch.Generator().manual_seed(seed)
    total = opened = 0
    with torch.no_grad():
        for module in net.attention:
            module.gate.weight.zero_()
            n = module.gate.bias.numel()
            chosen = torch.randperm(n, generator=generator)[:round(fraction * n)]
            module.gate.bias.fill_(-1.0)
            module.gate.bias[chosen] = 1.0
            total, opened = total + n, opened + len(chosen)
    return opened / total


def bench_edsr(args):
    torch.manual_seed(0)
    nets = {
        'EDSR-large': ACLAEDSR(**EDSR_LARGE, attention='none', insert_positions=[]),
        'EDSR-large + CLA K=8': ACLAEDSR(**EDSR_LARGE, attention='cla', insert_positions=SEARCHED, num_keys=8),
        'EDSR-large + CLA K=16': ACLAEDSR(**EDSR_LARGE, attention='cla', insert_positions=SEARCHED, num_keys=16),
        'EDSR-large + ACLA K=16 (sparse)': ACLAEDSR(**EDSR_LARGE, attention='acla', insert_positions=SEARCHED,
                                                    num_keys=16),
    }
    fraction = open_keys(nets['EDSR-large + ACLA K=16 (sparse)'], args.open)
    x = torch.rand(1, 3, args.size, args.size)
    for net in nets.values():
        net.eval()
    with torch.no_grad():
        times = alternating_times({name: (lambda net=net: net(x)) for name, net in nets.items()}, args.edsr_repeat)
    t = {name: statistics.median(v) for name, v in times.items()}
    # each network against EDSR-large in the same repetition: the median of the paired ratios
    ratio = {name: paired_ratio(times, name, 'EDSR-large') for name in times}
    print(f'\nForward time, EDSR-large x2 (32 x 256, res_scale 0.1), one {args.size}x{args.size} LR input, eval, cpu, '
          f'{torch.get_num_threads()} thread(s), median of {args.edsr_repeat} alternating repetitions (CPU time); '
          f'ACLA at {SEARCHED} with {100 * fraction:.1f} % of its keys open')
    print('| network | time (ms) | / EDSR-large (paired) |')
    print('|---|---|---|')
    for name, value in t.items():
        print(f'| {name} | {1e3 * value:.0f} | {ratio[name]:.3f} |')
    acla = ratio['EDSR-large + ACLA K=16 (sparse)']
    name = 'EDSR-large + ACLA K=16 (sparse)'
    print('targets: ' + below(times, name, 'EDSR-large + CLA K=16', 'ACLA below CLA K=16 (same K)') + '; '
          + below(times, name, 'EDSR-large + CLA K=8', 'below CLA K=8') + '; within 1.10x of EDSR-large: '
          f'{"met" if acla <= 1.10 else "NOT met"} ({acla:.3f}x; paper, V100: 1.22x)')
    bench_attention_alone(args, nets, x, t['EDSR-large'])


def backbone_features(net, x):
    """The head feature and the features after the blocks of ``SEARCHED`` of an attention-free ``net``."""
    feat = net.conv_first((x - net.mean_in) * net.img_range)
    feats, start = [feat], 0
    for position in SEARCHED:
        feat = net.body[start:position](feat)
        feats.append(feat)
        start = position
    return feats


def bench_attention_alone(args, nets, x, base):
    """The five modules of each network, on the same backbone features."""
    with torch.no_grad():
        feats = backbone_features(nets['EDSR-large'], x)

    def modules_of(net):
        def run():
            for index, module in enumerate(net.attention):
                module(feats[index + 1], feats[:index + 1])
        return run

    attention = {name: net for name, net in nets.items() if name != 'EDSR-large'}
    with torch.no_grad():
        times = alternating_times({name: modules_of(net) for name, net in attention.items()}, args.attention_repeat)
    t = {name: statistics.median(v) for name, v in times.items()}
    cla16 = t['EDSR-large + CLA K=16']
    # what the cost model charges the modules (the evaluation's measured open keys and projected key layers)
    size = x.shape[-1]
    macs = {name: net.effective_macs(size, size) - net.backbone_macs(size, size) for name, net in attention.items()}
    print(f'\nThe five attention modules alone, on the features of EDSR-large at {SEARCHED} (same input), eval, '
          f'median of {args.attention_repeat} alternating repetitions (CPU time); MACs of the cost model')
    print('| modules of | time (ms) | / CLA K=16 | / EDSR-large forward | MACs (M) | MACs / CLA K=16 |')
    print('|---|---|---|---|---|---|')
    for name, value in t.items():
        print(f'| {name[len("EDSR-large + "):]} | {1e3 * value:.1f} | {value / cla16:.3f} | {value / base:.3f} | '
              f'{macs[name] / 1e6:.1f} | {macs[name] / macs["EDSR-large + CLA K=16"]:.3f} |')
    name = 'EDSR-large + ACLA K=16 (sparse)'
    print(below(times, name, 'EDSR-large + CLA K=16', 'ACLA modules below CLA K=16 modules') + '; '
          + below(times, name, 'EDSR-large + CLA K=8', 'below CLA K=8'))


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int_range(1), default=1, help='torch threads (default 1)')
    parser.add_argument('--repeat', type=int_range(1), default=15, help='repetitions of part 1 (default 15)')
    parser.add_argument('--edsr-repeat', type=int_range(1), default=7, help='repetitions of part 2 (default 7)')
    parser.add_argument('--attention-repeat', type=int_range(1), default=15,
                        help='repetitions of the attention modules alone in part 2 (default 15)')
    parser.add_argument('--size', type=int_range(4), default=48,
                        help='map side (part 1) and LR side (part 2); default 48')
    parser.add_argument('--open', type=float_range(0, 1), default=0.45,
                        help='fraction of ACLA keys open in part 2 (default 0.45)')
    parser.add_argument('--skip-edsr', action='store_true', help='part 1 only')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bench_module(args)
    if not args.skip_edsr:
        bench_edsr(args)


if __name__ == '__main__':
    main()
