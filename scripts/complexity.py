"""Parameters and MACs of the ACLA paper's networks, side by side with its Tables 1, 4, 5, 6, 7 and 8.

Counting convention (SPEC section 2): MACs of one 48x48 LR input at x2, measured with
``torch.utils.flop_counter.FlopCounterMode`` (MACs = counted FLOPs / 2), on the meta device (no weights,
no arithmetic). The counter counts convolutions and matrix products (the 1x1 convs of every module and the
attention matrices of NL / CLNL); it does not count the key aggregation of CLA / ACLA (an
``F.embedding_bag`` over the 4 bilinear corners of every key: 4 MACs per channel per key, shown apart in
the column 'aggregation'), softmax, or element-wise operations. The paper's EDSR-large baseline is 93.97 G;
the counter gives 93.85 G.

With ``-opt OPTIONS --checkpoint CKPT`` it measures a trained ACLA network instead: it runs the network on the
LR images of ``--images`` (default: the example validation images), counts the keys its gates keep open, and
prints its effective MACs (``net.effective_macs``: the sparse evaluation, where a closed key is not aggregated
and a key layer without an open key is neither projected nor given offsets; aggregation included) beside
the dense count and the same network with CLA (every key open, no gates), each with its aggregation: ACLA
Table 8's ACLA-below-CLA ordering, checked on a real network.

Usage: python scripts/complexity.py [--tolerance-params 2] [--tolerance-macs 3]
       python scripts/complexity.py -opt options/train/demo_ACLA_SRx2.yml \
           --checkpoint experiments/demo_ACLA_SRx2/models/net_g_latest.pth [--images DIR] [--size 48]
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import acla_basicsr  # noqa: E402,F401  (makes basicsr importable, registers the archs)
import torch  # noqa: E402

from acla_basicsr.archs.acla_edsr_arch import ACLAEDSR  # noqa: E402
from acla_basicsr.cli.args import ArgumentParser, existing_file, fail, non_negative_float, positive_int  # noqa: E402
from acla_basicsr.archs.acla_rcan_arch import ACLARCAN  # noqa: E402
from acla_basicsr.archs.macs import counted_macs  # noqa: E402

EDSR_LARGE = dict(num_feat=256, num_block=32, res_scale=0.1, upscale=2)
RCAN_X2 = dict(num_feat=64, num_group=10, num_block=20, upscale=2)
SEARCHED = [3, 12, 26, 31, 32]  # Table 9, EDSR SR
EVERY_8TH = [8, 16, 24, 32]  # "inserted evenly after every 8th residual block" (Sec. 4.5)


def evenly(num_modules, num_block=32):
    """Positions of ``num_modules`` modules spread evenly over ``num_block`` blocks, the last after the last."""
    return [round(num_block * (i + 1) / num_modules) for i in range(num_modules)]


NOTE_NL_PARAMS = ('a full-width NL module has 4 C^2 = 0.26 M parameters, 4 modules 1.05 M; the paper\'s +2.83 M '
                  'would need 10.8 C^2 per module, which no NL with 1x1 embeddings has. Its MACs, dominated by the '
                  '(HW)^2 attention, match 4 full-width modules')
NOTE_CLNL_PARAMS = ('4 CLNL modules with full-width per-key-layer embeddings add 1.84 M; the paper\'s +5.14 M is '
                    'not reached by 1x1 embeddings at any reduction. MACs match')
NOTE_ACLA_MACS = ('the paper counts fewer MACs for ACLA than for CLA at the same K (Table 6/8: closed keys not '
                  'counted); the dense implementation here computes every gate, offset and logit of the K keys')
NOTE_ACLA_K128 = ('per extra key the paper adds 1.3-1.7 C parameters per key layer from K=32 on (3.6 C from 8 to '
                  '16); one offset pair, logit and gate per key and key layer is 4 C, so large K is over the paper')
NOTE_RCAN = ('not an EDSR row (outside the target): at 64 channels 4 modules add 0.1 M, while the paper adds '
             '1.2-1.4 M; its RCAN baseline "153" (15.3 M) is also not basicsr\'s 15.44 M')

# (table, row, network class, kwargs, paper params M, paper MACs G or None, note when off)
ROWS = [
    ('1', 'EDSR+CLA x2', ACLAEDSR, dict(attention='cla', insert_positions=evenly(5)), 42.1, None, ''),
    ('1', 'EDSR+ACLA x2', ACLAEDSR, dict(attention='acla', insert_positions=SEARCHED), 42.3, None, ''),
    ('1', 'RCAN x2', ACLARCAN, dict(attention='none', insert_positions=[]), 15.3, None, NOTE_RCAN),
    ('1', 'RCAN+CLA x2', ACLARCAN, dict(attention='cla', insert_positions=[1, 3, 5, 9]), 16.5, None, NOTE_RCAN),
    ('1', 'RCAN+ACLA x2', ACLARCAN, dict(attention='acla', insert_positions=[1, 3, 5, 9]), 16.7, None, NOTE_RCAN),
    ('4', 'EDSR', ACLAEDSR, dict(attention='none', insert_positions=[]), 40.73, 93.97, ''),
    ('4', 'NL', ACLAEDSR, dict(attention='nl', insert_positions=EVERY_8TH), 43.56, 109.38, NOTE_NL_PARAMS),
    ('4', 'CLNL', ACLAEDSR, dict(attention='clnl', insert_positions=EVERY_8TH), 45.87, 122.67, NOTE_CLNL_PARAMS),
    ('4', 'CLA', ACLAEDSR, dict(attention='cla', insert_positions=evenly(5)), 42.13, 96.93, ''),
    ('4', 'ACLA', ACLAEDSR, dict(attention='acla', insert_positions=SEARCHED), 42.29, 96.97, NOTE_ACLA_MACS),
    ('5', 'CLA L=5', ACLAEDSR, dict(attention='cla', insert_positions=evenly(5)), 42.13, 96.93, ''),
    ('5', 'CLA L=8', ACLAEDSR, dict(attention='cla', insert_positions=evenly(8)), 44.35, 101.37, ''),
    ('5', 'CLA L=16', ACLAEDSR, dict(attention='cla', insert_positions=evenly(16)), 51.47, 118.48, ''),
    ('5', 'CLA L=32', ACLAEDSR, dict(attention='cla', insert_positions=evenly(32)), 79.29, 182.93, ''),
    ('6', 'CLA-I (searched positions)', ACLAEDSR, dict(attention='cla', insert_positions=SEARCHED), 42.13, 96.93,
     ''),
    ('6', 'CLA-K (key gates, K=16)', ACLAEDSR, dict(attention='acla', insert_positions=evenly(5)), 42.29, 96.87,
     NOTE_ACLA_MACS),
    ('6', 'ACLA', ACLAEDSR, dict(attention='acla', insert_positions=SEARCHED), 42.29, 96.98, NOTE_ACLA_MACS),
] + [('7', f'CLA K={k}', ACLAEDSR, dict(attention='cla', insert_positions=evenly(5), num_keys=k), p, g, '')
     for k, g, p in ((1, 96.71, 42.09), (8, 96.93, 42.13), (16, 97.38, 42.21), (32, 97.90, 42.39),
                     (64, 98.92, 42.74))] + [
                         ('8', f'ACLA K={k}', ACLAEDSR, dict(attention='acla', insert_positions=SEARCHED, num_keys=k),
                          p, g, NOTE_ACLA_K128 if k == 128 else NOTE_ACLA_MACS)
                         for k, g, p in ((8, 96.78, 42.18), (16, 96.98, 42.29), (32, 97.56, 42.41),
                                         (64, 98.03, 42.69), (128, 99.17, 43.02))
                     ]


def count(cls, kwargs, size=48):
    """Parameters (M), counted MACs (G), analytic attention MACs (G) and uncounted aggregation MACs (G)."""
    backbone = EDSR_LARGE if cls is ACLAEDSR else RCAN_X2
    with torch.device('meta'):
        net = cls(**backbone, **kwargs)
    params = sum(p.numel() for p in net.parameters()) / 1e6
    macs = counted_macs(lambda: cls(**backbone, **kwargs), size, size)
    return params, macs / 1e9, net.attention_macs(size, size) / 1e9, aggregation_macs(net, size) / 1e9


def aggregation_macs(net, size):
    """MACs of the key aggregation of every key of ``net`` (4 C each), which the flop counter does not see."""
    return net.attention_macs(size, size, aggregation=True) - net.attention_macs(size, size)


def percent(ours, paper):
    return 100 * (ours - paper) / paper


def checkpoint_report(opt_path, checkpoint, images, size, param_key):
    """Effective MACs of a trained ACLA checkpoint from the open keys measured on ``images``."""
    import cv2
    import yaml
    from basicsr.utils import img2tensor
    from basicsr.utils.registry import ARCH_REGISTRY

    from acla_basicsr.data.prepare_util import list_images
    for flag, path, kind in (('-opt', opt_path, 'file'), ('--checkpoint', checkpoint, 'file'),
                             ('--images', images, 'folder')):
        if not (os.path.isfile(path) if kind == 'file' else os.path.isdir(path)):
            fail(f'{flag}: {path} is not a {kind}.')
    with open(opt_path) as f:
        network_opt = dict(yaml.safe_load(f)['network_g'])
    cls = ARCH_REGISTRY.get(network_opt.pop('type'))
    net = cls(**network_opt)
    if getattr(net, 'attention_type', None) != 'acla':
        fail(f'-opt: {opt_path} does not describe an ACLA network (ACLAEDSR / ACLARCAN with attention: acla).')
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)
    key = param_key or ('params_ema' if 'params_ema' in state else 'params')
    if key not in state:
        fail(f'--checkpoint: {checkpoint} has no {key!r} (keys: {", ".join(state)}).')
    net.load_state_dict(state[key], strict=True)
    net.eval()
    names = list_images(images)
    if not names:
        fail(f'--images: {images} holds no images.')
    with torch.no_grad():
        for name in names:
            img = cv2.imread(os.path.join(images, name), cv2.IMREAD_UNCHANGED)
            if img is None:
                fail(f'--images: cannot read {os.path.join(images, name)}.')
            net(img2tensor(img.astype('float32') / 255., bgr2rgb=img.ndim == 3, float32=True).unsqueeze(0))
    measured = net.measured_active_keys()
    num_in_ch = network_opt.get('num_in_ch', 3)
    # every row with the aggregation of its keys (4 C MACs each), which the flop counter does not see
    dense = counted_macs(lambda: cls(**network_opt), size, size, num_in_ch) + aggregation_macs(net, size)
    cla_opt = dict(network_opt, attention='cla')
    with torch.device('meta'):
        cla_net = cls(**cla_opt)
    cla = counted_macs(lambda: cls(**cla_opt), size, size, num_in_ch) + aggregation_macs(cla_net, size)
    effective = net.effective_macs(size, size)
    backbone = net.backbone_macs(size, size)
    k = net.num_keys
    print(f'\nTrained checkpoint {checkpoint} ({key}), open keys measured on {len(names)} images of {images}:')
    print('| module after block | open keys per key layer (of K = %d) |' % k)
    print('|---|---|')
    for position, layers in measured.items():
        cells = ', '.join(f'{name}: {value:.2f}' for name, value in zip(net.key_layer_names(
            net.insert_positions.index(position)), layers))
        print(f'| {position} | {cells} |')
    total = [v for layers in measured.values() for v in layers]
    print(f'mean open keys per key layer: {sum(total) / len(total):.2f} of {k} ({100 * sum(total) / len(total) / k:.1f} %)')
    print(f'MACs at a {size}x{size} LR input (flop counter / 2, plus the key aggregation: 4 C per aggregated key):')
    print('| network | MACs (M) | added over the backbone (M) |')
    print('|---|---|---|')
    for label, value in (('backbone', backbone), ('CLA, same positions and K (every key open)', cla),
                         ('ACLA dense (every key computed, as in training)', dense),
                         ('ACLA effective (measured open keys)', effective)):
        print(f'| {label} | {value / 1e6:.3f} | {(value - backbone) / 1e6:.3f} |')
    print(f'ACLA effective {"below" if effective < cla else "NOT below"} CLA (Table 8 ordering).')


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--tolerance-params', type=non_negative_float, default=2.0, help='percent; default 2')
    parser.add_argument('--tolerance-macs', type=non_negative_float, default=3.0, help='percent; default 3')
    parser.add_argument('-opt', type=existing_file, help='options file of a trained ACLA network (with --checkpoint)')
    parser.add_argument('--checkpoint', type=existing_file,
                        help='its net_g_*.pth: print its effective MACs from measured open keys')
    parser.add_argument('--images', default=os.path.join(ROOT, 'datasets', 'example', 'val', 'LR_bicubic', 'X2'),
                        help='LR images on which the open keys are measured (default: the example validation set)')
    parser.add_argument('--size', type=positive_int, default=48, help='LR input size of the MAC counts; default 48')
    parser.add_argument('--param-key', choices=('params_ema', 'params'),
                        help='params or params_ema; default: params_ema if present')
    args = parser.parse_args(argv)
    if bool(args.opt) != bool(args.checkpoint):
        parser.error(f"{'-opt' if args.opt else '--checkpoint'}: given alone; -opt and --checkpoint go together "
                     '(the options file of the trained network and its checkpoint)')
    if args.checkpoint:
        checkpoint_report(args.opt, args.checkpoint, args.images, args.size, args.param_key)
        return

    print('Params (M) and MACs (G) for one 48x48 LR input at x2; MACs = FlopCounterMode FLOPs / 2 (key aggregation '
          'not counted).')
    print('aggregation: MACs of the key aggregation (4 per channel per key), not counted by the counter nor in '
          'the MACs column.')
    print('| table | row | positions | params | paper | diff | MACs | paper | diff | aggregation | within target |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    notes, worst = [], 0.0
    baseline_macs = {cls: count(cls, dict(attention='none', insert_positions=[]))[1] for cls in (ACLAEDSR, ACLARCAN)}
    for table, row, cls, kwargs, paper_params, paper_macs, note in ROWS:
        params, macs, attention_macs, aggregation = count(cls, kwargs)
        # the analytic model of the modules must agree with the counter (attention MACs = total - backbone)
        worst = max(worst, abs(macs - baseline_macs[cls] - attention_macs))
        d_params = percent(params, paper_params)
        ok = abs(d_params) <= args.tolerance_params
        macs_cells = f'{macs:.2f} | - | -'
        if paper_macs is not None:
            d_macs = percent(macs, paper_macs)
            ok = ok and abs(d_macs) <= args.tolerance_macs
            macs_cells = f'{macs:.2f} | {paper_macs:.2f} | {d_macs:+.1f}%'
        positions = ','.join(map(str, kwargs['insert_positions'])) or '-'
        if len(positions) > 24:
            positions = positions[:21] + '...'
        verdict = 'yes' if ok else 'NO (note %d)' % (len(notes) + 1)
        if not ok:
            notes.append(f'{table} {row}: {note or "no explanation recorded"}')
        print(f'| {table} | {row} | {positions} | {params:.2f} | {paper_params:.2f} | {d_params:+.1f}% | '
              f'{macs_cells} | {aggregation:.2f} | {verdict} |')
    print(f'\nTargets: params within {args.tolerance_params:g} %, MACs within {args.tolerance_macs:g} % of the paper.')
    for i, note in enumerate(notes, 1):
        print(f'note {i}: {note}.')
    print(f'Analytic module MACs (CrossLayerAttention.macs etc.) vs the counter: largest difference {worst:.2e} G.')
    print('ACLA rows have every key computed (dense); for a trained network, -opt and --checkpoint print its '
          'effective MACs from the keys its gates keep open.')


if __name__ == '__main__':
    main()
