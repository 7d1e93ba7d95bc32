"""Time of one training step (forward, losses, backward, optimizer step) of each network against its backbone.

Groups (``--groups``):

- ``large``: EDSR-large x2 (32 blocks, 256 channels, ``options/train/ACLA_SRx2.yml``) with ACLA at the paper's
  positions 3, 12, 26, 31, 32 (K = 16, Table 9), against the same EDSR without attention;
- ``demo``: the small CPU demo networks ``options/train/demo_{EDSR,ACLA,ENLCN,EARN}_SRx2.yml`` against the
  demo EDSR (4 blocks, 32 channels);
- ``full``: the full-size networks of ``options/train/{ACLA,ENLCN,EARN}_SRx2.yml`` against EDSR-large (the GPU
  check, ``scripts/gpu_check.py``, times this group in float32 and bfloat16 autocast).

Each network is trained by the model of its options file (``RestorationModel.optimize_parameters``: forward, every
loss term of the file (ACLA's MAC penalty, ENLCN's contrastive loss past its warm-up, EARN's L1 + SSIM), backward,
Adam step, the divergence guard) on random batches of ``--batch`` images of ``--lr-size`` LR pixels (x2), the same
for every network: batch 16 of 48x48 LR patches by default, the paper's recipe (the demo files' own batch and patch
sizes are overridden). With ``--data GT.lmdb LQ.lmdb`` the batches are training patches of those LMDBs instead
(basicsr's ``PairedImageDataset``: random crops, flips and rotations), read before the timing. Data loading is not
included. EARN's loss reads torchvision's VGG19 weights (no download is attempted); where they are absent,
``--random-vgg`` gives its perceptual term randomly initialised ones: the same operations and time. After
``--warmup`` steps, the models take ``--repeat`` timed steps each, round-robin, so that the machine's load affects
each alike; the median is printed with the ratio to the group's backbone. On the CPU the time is the CPU time of
this process (``time.process_time``, ``--threads`` threads, 1 by default: the machine is shared, see
``bench_cla_sampling.py``) and the wall time is printed beside it; on CUDA the wall time between two
``torch.cuda.synchronize`` calls, and the peak memory of each network is the growth of
``torch.cuda.max_memory_allocated`` during its step (activations, gradients, workspaces) plus its weights and Adam
state: what a process training that network alone would hold at its peak. ``--amp`` runs the step under
``torch.autocast`` (bfloat16 by default; float16 with ``--amp-dtype float16``, without a gradient scaler: a timing,
not a recipe).

Usage: python benchmarks/bench_train_step.py [--groups large demo full] [--batch 16] [--repeat 3] [--device cpu]
       [--amp] [--threads 1] [--data GT.lmdb LQ.lmdb] [--json rows.json] [--random-vgg]
"""
import contextlib
import json
import os.path as osp
import platform
import shutil
import statistics
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import acla_basicsr  # noqa: E402,F401
import torch  # noqa: E402
import yaml  # noqa: E402
from basicsr.models import build_model  # noqa: E402
from basicsr.utils.options import ordered_yaml  # noqa: E402

from bench_search import parsed  # noqa: E402
from acla_basicsr.cli.args import (ArgumentParser, existing_folder, non_negative_int, output_file,  # noqa: E402
                                   positive_int, torch_device)

OPTIONS = {
    'large': [('EDSR-large', 'ACLA_SRx2.yml', 'backbone'),
              ('EDSR-large + ACLA (3, 12, 26, 31, 32)', 'ACLA_SRx2.yml', None)],
    'demo': [('demo EDSR', 'demo_EDSR_SRx2.yml', None), ('demo ACLA', 'demo_ACLA_SRx2.yml', None),
             ('demo ENLCN', 'demo_ENLCN_SRx2.yml', None), ('demo EARN', 'demo_EARN_SRx2.yml', None)],
    'full': [('EDSR-large', 'ACLA_SRx2.yml', 'backbone'),
             ('EDSR-large + ACLA (3, 12, 26, 31, 32)', 'ACLA_SRx2.yml', None),
             ('ENLCN (EDSR-large + 5 ENLCA)', 'ENLCN_SRx2.yml', None), ('EARN', 'EARN_SRx2.yml', None)],
}


def device_name(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor() or 'CPU'


def random_vgg19_file(root):
    """A file of randomly initialised torchvision VGG19 ``features.*`` weights, as EARN's loss reads them."""
    from torchvision.models.vgg import cfgs, make_layers

    from acla_basicsr.losses.earn_loss import VGG19_FILENAME
    path = osp.join(root, VGG19_FILENAME)
    if not osp.isfile(path):
        state = make_layers(cfgs['E']).state_dict()
        torch.save({f'features.{k}': v for k, v in state.items()}, path)
    return path


def check_vgg19(opt, root, random_vgg):
    """EARN's perceptual term needs VGG19 weights: without them, random ones with ``random_vgg``, else exit."""
    from acla_basicsr.losses.earn_loss import find_vgg19_weights
    from acla_basicsr.errors import OptionError
    pixel_opt = opt['train'].get('pixel_opt') or {}
    if pixel_opt.get('type') != 'EARNLoss' or not pixel_opt.get('perceptual_weight', 0):
        return
    try:
        find_vgg19_weights(pixel_opt.get('vgg_weights_path'))
    except OptionError as error:
        if not random_vgg:
            raise SystemExit(f'{error} (or --random-vgg: random VGG19 weights, the same time per step)') from None
        pixel_opt['vgg_weights_path'] = random_vgg19_file(root)


def build(file, variant, root, device, random_vgg=False):
    """The training model of ``options/train/<file>``; ``variant='backbone'``: its network without attention."""
    with open(osp.join(ROOT, 'options', 'train', file)) as f:
        opt = parsed(yaml.load(f, Loader=ordered_yaml()[0]), root)
    opt['num_gpu'] = 1 if device.type == 'cuda' else 0
    check_vgg19(opt, root, random_vgg)
    if variant == 'backbone':  # the plain EDSR of the same options: no attention, no MAC penalty, no gates
        opt['network_g'].update(attention='none', insert_positions=[])
        for key in ('macs_penalty', 'gate_temperature'):
            opt['train'].pop(key, None)
    return build_model(opt), opt


def lmdb_batches(gt_lmdb, lq_lmdb, batch, lr_size, count, seed=0):
    """``count`` training batches of ``batch`` x2 patches (LR ``lr_size``) from two basicsr LMDBs of the same keys."""
    from basicsr.data import build_dataset
    for path in (gt_lmdb, lq_lmdb):
        if not osp.isdir(path):
            raise SystemExit(f'--data: {path} is not an LMDB folder; make it with scripts/prepare_sr_lmdb.py.')
    dataset = build_dataset({'name': 'bench', 'type': 'PairedImageDataset', 'phase': 'train', 'scale': 2,
                             'dataroot_gt': gt_lmdb, 'dataroot_lq': lq_lmdb, 'filename_tmpl': '{}',
                             'io_backend': {'type': 'lmdb'}, 'gt_size': 2 * lr_size, 'use_hflip': True,
                             'use_rot': True})
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        items = [dataset[int(i)] for i in torch.randint(len(dataset), (batch,), generator=generator)]
        batches.append({key: torch.stack([item[key] for item in items]) for key in ('lq', 'gt')})
    return batches


def state_bytes(model):
    """Bytes of a training model's network weights and optimizer state (resident between steps)."""
    net = model.get_bare_model(model.net_g)
    total = sum(t.numel() * t.element_size() for t in list(net.parameters()) + list(net.buffers()))
    for optimizer in model.optimizers:
        for state in optimizer.state.values():
            total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    return total


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--groups', nargs='+', choices=list(OPTIONS), default=list(OPTIONS))
    parser.add_argument('--batch', type=positive_int, default=16, help='images per step (the paper: 16)')
    parser.add_argument('--lr-size', type=positive_int, default=48,
                        help='LR patch size (x2: the HR patch is twice it)')
    parser.add_argument('--warmup', type=non_negative_int, default=1, help='untimed steps per model')
    parser.add_argument('--repeat', type=positive_int, default=3, help='timed steps per model (median)')
    parser.add_argument('--device', type=torch_device, default='cpu', help="'cpu' or 'cuda'")
    parser.add_argument('--amp', action='store_true', help='torch.autocast around the step')
    parser.add_argument('--amp-dtype', choices=['bfloat16', 'float16'], default='bfloat16')
    parser.add_argument('--threads', type=positive_int, default=1, help='torch CPU threads')
    parser.add_argument('--data', nargs=2, type=existing_folder, metavar=('GT_LMDB', 'LQ_LMDB'),
                        help='train on patches of these x2 LMDBs instead of random batches')
    parser.add_argument('--json', type=output_file, help='also write the rows to this JSON file')
    parser.add_argument('--random-vgg', action='store_true',
                        help="EARN's perceptual loss with random VGG19 weights when torchvision's are absent")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type not in ('cpu', 'cuda'):
        parser.error(f"--device: {args.device!r} is not 'cpu' or 'cuda'; give one of them")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    amp = (torch.autocast(device.type, dtype=getattr(torch, args.amp_dtype)) if args.amp
           else contextlib.nullcontext())
    print(f'Training step (forward, losses, backward, Adam step), batch {args.batch}, LR {args.lr_size}x'
          f'{args.lr_size}, x2; device: {device.type} ({device_name(device)}), torch '
          f'{torch.__version__}, {torch.get_num_threads()} CPU threads'
          f'{", autocast " + args.amp_dtype if args.amp else ", float32"}; median of {args.repeat} steps after '
          f'{args.warmup} warm-up, round-robin; time: {"wall" if device.type == "cuda" else "CPU time of the process"}'
          f'; data: {"patches of " + " and ".join(args.data) if args.data else "random"}')
    cuda = device.type == 'cuda'
    rows = []
    root = tempfile.mkdtemp(prefix='bench_train_step_')
    try:
        for group in args.groups:
            models = {}
            for label, file, variant in OPTIONS[group]:
                models[label] = build(file, variant, root, device, args.random_vgg)
            count = args.warmup + args.repeat
            if args.data:
                batches = lmdb_batches(*args.data, args.batch, args.lr_size, count)
            else:
                generator = torch.Generator().manual_seed(0)
                hr = 2 * args.lr_size
                batches = [{'lq': torch.rand(args.batch, 3, args.lr_size, args.lr_size, generator=generator),
                            'gt': torch.rand(args.batch, 3, hr, hr, generator=generator)} for _ in range(count)]
            times = {label: [] for label in models}
            growth = dict.fromkeys(models, 0)
            for step, data in enumerate(batches):
                for label, (model, opt) in models.items():
                    model.feed_data(data)
                    current_iter = opt['train']['total_iter']  # past every warm-up: all loss terms on
                    sync()
                    if cuda:
                        base = torch.cuda.memory_allocated(device)
                        torch.cuda.reset_peak_memory_stats(device)
                    cpu, wall = time.process_time(), time.perf_counter()
                    with amp:
                        model.optimize_parameters(current_iter)
                    sync()
                    wall = time.perf_counter() - wall
                    cpu = wall if cuda else time.process_time() - cpu
                    if cuda:
                        growth[label] = max(growth[label], torch.cuda.max_memory_allocated(device) - base)
                    if step >= args.warmup:
                        times[label].append((cpu, wall))
            backbone = next(iter(models))
            med = {label: [statistics.median(v) for v in zip(*runs)] for label, runs in times.items()}
            print(f'\n| network ({group}) | parameters (M) | s / step | wall s / step | steps / s | '
                  f'peak memory (MiB) | vs {backbone} |')
            print('|---|---|---|---|---|---|---|')
            for label, (model, _) in models.items():
                params = sum(p.numel() for p in model.get_bare_model(model.net_g).parameters()) / 1e6
                peak = (state_bytes(model) + growth[label]) / 2**20 if cuda else None
                row = {'group': group, 'network': label, 'parameters_m': params, 's_per_step': med[label][0],
                       'wall_s_per_step': med[label][1], 'steps_per_s': 1 / med[label][0],
                       'peak_mib': peak, 'vs_backbone': med[label][0] / med[backbone][0], 'backbone': backbone}
                rows.append(row)
                print(f"| {label} | {params:.3f} | {row['s_per_step']:.3f} | {row['wall_s_per_step']:.3f} | "
                      f"{row['steps_per_s']:.2f} | {'-' if peak is None else f'{peak:.0f}'} | "
                      f"{row['vs_backbone']:.2f}x |")
            del models
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        info = {'device': device.type, 'device_name': device_name(device), 'torch': torch.__version__,
                'cuda': torch.version.cuda, 'precision': args.amp_dtype if args.amp else 'float32',
                'batch': args.batch, 'lr_size': args.lr_size, 'warmup': args.warmup, 'repeat': args.repeat,
                'data': args.data or 'random', 'threads': torch.get_num_threads(), 'rows': rows}
        with open(args.json, 'w') as f:
            json.dump(info, f, indent=1)


if __name__ == '__main__':
    main()
