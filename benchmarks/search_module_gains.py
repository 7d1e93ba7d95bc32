"""Relative L1 gain of a searched supernet's most probable modules, each selection forced hard (docs/search.md).

Loads a position-search checkpoint (``net_g_<iter>.pth`` of ``ACLASearchModel``) into the supernet of its search
config, forces the n most probable candidates open and the others closed (n = 1, 2, 5, all), and prints the L1 on
the config's validation images (a restoration config: the degradation of ``datasets.val`` is drawn once, with
``--seed``) against every candidate closed, with the MACs each selection adds at the training patch size. This is
what a module gains as the final network would run it, to compare with the price ``lambda x its share of the
backbone's MACs`` that the search charged it.

    python benchmarks/search_module_gains.py -opt options/search/cpu_search_EDSR16_DN_sigma30.yml \\
        --checkpoint experiments/cpu_search_EDSR16_DN_sigma30/models/net_g_900.pth
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import acla_basicsr  # noqa: E402,F401  (before basicsr)
import torch  # noqa: E402
import yaml  # noqa: E402

from acla_basicsr.cli.args import ArgumentParser, existing_file, fail, int_range  # noqa: E402
from acla_basicsr.inference.network import build_network  # noqa: E402
from basicsr.data import build_dataset  # noqa: E402


def main(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('-opt', required=True, type=existing_file, help='the search config (YAML)')
    parser.add_argument('--checkpoint', required=True, type=existing_file, help='net_g_<iter>.pth of the search')
    parser.add_argument('--seed', type=int_range(0), default=0, help='seed of the degradations (default 0)')
    args = parser.parse_args(argv)
    with open(args.opt) as f:
        opt = yaml.safe_load(f)
    net = build_network(dict(opt['network_g']))
    if not getattr(net, 'is_position_supernet', False):
        fail(f"-opt: {args.opt} does not describe a position supernet (network_g.type: {opt['network_g']['type']}).")
    state = torch.load(args.checkpoint, map_location='cpu', weights_only=True)
    try:
        net.load_state_dict(state.get('params', state), strict=True)
    except RuntimeError as error:
        fail(f'--checkpoint: {args.checkpoint} does not fit network_g of {args.opt} ({str(error).splitlines()[0]}).')
    net.eval()
    net.readout = 'threshold'  # the selections below are forced through the logits
    val = dict(opt['datasets']['val'], phase='val', scale=opt.get('scale', 1))
    torch.manual_seed(args.seed)
    pairs = [(item['lq'][None], item['gt'][None]) for item in build_dataset(val)]
    probs = torch.sigmoid(net.arch_logits.detach())
    order = torch.argsort(probs, descending=True).tolist()

    def l1(selected):
        with torch.no_grad():
            net.arch_logits.copy_(torch.tensor([10.0 if i in selected else -10.0 for i in range(len(probs))]))
            return sum((net(lq) - gt).abs().mean().item() for lq, gt in pairs) / len(pairs)

    size = opt['datasets']['train']['gt_size'] // opt.get('scale', 1)
    backbone = net.backbone_macs(size, size)
    base = l1(set())
    print(f'{args.checkpoint}: P(open) = {[round(v, 3) for v in probs.tolist()]}; {len(pairs)} images, '
          f'L1 with every candidate closed {base:.5f}')
    print('| selection (most probable) | L1 | relative gain | per module | added MACs / backbone (at the last '
          'training step\'s open keys) |')
    print('|---|---|---|---|---|')
    for n in sorted({1, 2, 5, len(probs)} & set(range(1, len(probs) + 1))):
        chosen = set(order[:n])
        value = l1(chosen)
        gain = 100 * (base - value) / base
        added = net.expected_attention_macs(size, size, [float(i in chosen) for i in range(len(probs))]).item()
        print(f'| {sorted(net.insert_positions[i] for i in chosen)} | {value:.5f} | {gain:.3f} % | {gain / n:.3f} % | '
              f'{100 * added / backbone:.2f} % |')


if __name__ == '__main__':
    main()
