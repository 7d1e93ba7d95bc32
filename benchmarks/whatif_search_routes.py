"""What-if timings of the search iteration for two routes of issue 15 (item 4), measured in one run.

Not features: each row changes the supernet in a way the shipped search does not, to bound what a route can
gain on this machine.

- ``value projections removed``: the candidates' key-layer value projections replaced by identities. Sharing
  one projection per key layer across the candidates (17 convolutions instead of 136 on EDSR-16) cannot be
  cheaper than this.
- ``one sub-network per step``: every step draws one hard 0/1 gate per candidate with P = sigmoid(alpha) (0.88
  at the shipped initial logits) and computes only the open candidates, each with only its open key layers
  (value projections, heads, key gates, softmax and sampling of those layers), as a one-shot NAS step that
  samples a sub-network would.

The rows alternate (round-robin) with the shipped search step and the final network's training step, one
thread, CPU time (``time.process_time``), random data.

Usage: python benchmarks/whatif_search_routes.py [-opt options/search/search_ACLA_EDSR_DN_sigma30.yml]
       [--positions 2 7 9 13 15] [--iters 6] [--batch 2]
"""
import argparse
import os.path as osp
import shutil
import statistics
import sys
import tempfile
import time
import types

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))

import acla_basicsr  # noqa: E402,F401
import torch  # noqa: E402
import yaml  # noqa: E402
from basicsr.models import build_model  # noqa: E402
from basicsr.utils.options import ordered_yaml  # noqa: E402
from bench_search import parsed  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from acla_basicsr.archs.cla_modules import sample_keys  # noqa: E402


def open_layers_forward(module, x, key_layers, layers):
    """An ACLA module's training forward restricted to the key layers ``layers`` (indices into its own)."""
    b, _, h, w = x.shape
    k = module.num_keys
    values = torch.stack([module.value[i](f) for i, f in zip(layers, key_layers)], 1)

    def head(conv, per_key):
        rows = torch.cat([torch.arange(i * k * per_key, (i + 1) * k * per_key) for i in layers])
        return F.conv2d(x, conv.weight[rows], conv.bias[rows])

    offsets = head(module.offset, 2).view(b, len(layers), k, 2, h, w)
    gate_logits = head(module.gate, 1).view(b, len(layers), k, h, w)
    u = torch.rand_like(gate_logits).clamp_(1e-6, 1 - 1e-6)
    noisy = gate_logits + torch.log(u) - torch.log1p(-u)
    soft = torch.sigmoid(noisy / module.temperature)
    gates = (noisy > 0).to(soft) + (soft - soft.detach())
    weights = head(module.logit, 1).softmax(1).view(b, len(layers), k, h, w) * gates
    return x + module.proj(sample_keys(values, offsets, weights, module.max_memory_mb, module.sampling_method))


def sub_network_forward_body(self, feat):
    """``forward_body`` of one hard sub-network drawn from the position gates' probabilities."""
    is_open = (torch.rand(len(self.insert_positions)) < torch.sigmoid(self.arch_logits.detach())).tolist()
    key_layers, start = [feat], 0
    for index, (position, module) in enumerate(zip(self.insert_positions, self.attention)):
        feat = self.body[start:position](feat)
        start = position
        key_layers.append(feat)
        if is_open[index]:
            layers = [0] + [q + 1 for q in range(index) if is_open[q]]
            feat = open_layers_forward(module, feat, [key_layers[i] for i in layers], layers)
    return self.body[start:](feat)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-opt', default=osp.join(ROOT, 'options', 'search', 'search_ACLA_EDSR_DN_sigma30.yml'))
    parser.add_argument('--positions', type=int, nargs='*', default=[2, 7, 9, 13, 15])
    parser.add_argument('--iters', type=int, default=6, help='timed iterations per row (after 2 warm-up)')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with open(args.opt) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    root = tempfile.mkdtemp(prefix='whatif_search_')
    models = {'search (joint), shipped': build_model(parsed(opt, root))}
    supernet = models['search (joint), shipped'].get_bare_model(models['search (joint), shipped'].net_g)
    final = parsed(opt, root)
    final['model_type'] = 'RestorationModel'
    final['network_g'] = supernet.final_network_opt(args.positions)
    final['train'] = {k: v for k, v in final['train'].items() if k not in ('search', 'optim_arch')}
    final_label = f'final network, ACLA at {args.positions}'
    models[final_label] = build_model(final)
    model = models['search, value projections removed'] = build_model(parsed(opt, root))
    for module in model.get_bare_model(model.net_g).attention:
        module.value = nn.ModuleList(nn.Identity() for _ in module.value)
    model = models['search, one sub-network per step'] = build_model(parsed(opt, root))
    net = model.get_bare_model(model.net_g)
    net.forward_body = types.MethodType(sub_network_forward_body, net)

    train = opt['datasets']['train']
    gt_size, scale = train['gt_size'], opt.get('scale', 1)
    generator = torch.Generator().manual_seed(0)
    times = {label: [] for label in models}
    for it in range(1, args.iters + 3):
        data = {'lq': torch.rand(args.batch, 3, gt_size // scale, gt_size // scale, generator=generator),
                'gt': torch.rand(args.batch, 3, gt_size, gt_size, generator=generator)}
        for label, model in models.items():
            model.feed_data(data)
            cpu = time.process_time()
            model.optimize_parameters(it)
            if it > 2:
                times[label].append(time.process_time() - cpu)
    reference = statistics.median(times[final_label])
    print(f'{osp.relpath(args.opt, ROOT)}: batch {args.batch}, LR patch {gt_size // scale}, {args.threads} threads, '
          f'{args.iters} timed iterations each, torch {torch.__version__}')
    print('| row | s / iteration (CPU time, median) | mean | vs final network |')
    print('|---|---|---|---|')
    for label, runs in times.items():
        med = statistics.median(runs)
        print(f'| {label} | {med:.3f} | {statistics.mean(runs):.3f} | {med / reference:.2f}x |')
    shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
