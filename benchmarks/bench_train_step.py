"""Time of one training step (forward, losses, backward, optimizer step) of each network against its backbone.

Groups (``--groups``):

- ``large``: EDSR-large x2 (32 blocks, 256 channels, ``options/train/ACLA_SRx2.yml``) with ACLA at the paper's
  positions 3, 12, 26, 31, 32 (K = 16, Table 9), against the same EDSR without attention;
- ``demo``: the small CPU demo networks ``options/train/demo_{EDSR,ACLA,ENLCN,EARN}_SRx2.yml`` against the
  demo EDSR (4 blocks, 32 channels).

Each network is trained by the model of its options file (``RestorationModel.optimize_parameters``: forward,
every loss term of the file (ACLA's MAC penalty, ENLCN's contrastive loss past its warm-up, EARN's L1 + SSIM),
backward, Adam step, the divergence guard) on random batches of ``--batch`` images of ``--lr-size`` LR pixels
(x2), the same for every network: batch 16 of 48x48 LR patches by default, the paper's recipe (the demo files'
own batch and patch sizes are overridden). Data loading is not included. After ``--warmup`` steps, the models
take ``--repeat`` timed steps each, round-robin, so that the machine's load affects each alike; the median is
printed with the ratio to the group's backbone. On the CPU the time is the CPU time of this process
(``time.process_time``, ``--threads`` threads, 1 by default: the machine is shared, see
``bench_cla_sampling.py``) and the wall time is printed beside it; on CUDA the wall time between two
``torch.cuda.synchronize`` calls. ``--amp`` runs the step under ``torch.autocast`` (bfloat16 by default; float16
with ``--amp-dtype float16``, without a gradient scaler: a timing, not a recipe).

Usage: python benchmarks/bench_train_step.py [--groups large demo] [--batch 16] [--repeat 3] [--device cpu]
       [--amp] [--threads 1]
"""
import argparse
import contextlib
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

OPTIONS = {
    'large': [('EDSR-large', 'ACLA_SRx2.yml', 'backbone'),
              ('EDSR-large + ACLA (3, 12, 26, 31, 32)', 'ACLA_SRx2.yml', None)],
    'demo': [('demo EDSR', 'demo_EDSR_SRx2.yml', None), ('demo ACLA', 'demo_ACLA_SRx2.yml', None),
             ('demo ENLCN', 'demo_ENLCN_SRx2.yml', None), ('demo EARN', 'demo_EARN_SRx2.yml', None)],
}


def device_name(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor() or 'CPU'


def build(file, variant, root, device):
    """The training model of ``options/train/<file>``; ``variant='backbone'``: its network without attention."""
    with open(osp.join(ROOT, 'options', 'train', file)) as f:
        opt = parsed(yaml.load(f, Loader=ordered_yaml()[0]), root)
    opt['num_gpu'] = 1 if device.type == 'cuda' else 0
    if variant == 'backbone':  # the plain EDSR of the same options: no attention, no MAC penalty, no gates
        opt['network_g'].update(attention='none', insert_positions=[])
        for key in ('macs_penalty', 'gate_temperature'):
            opt['train'].pop(key, None)
    return build_model(opt), opt


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--groups', nargs='+', choices=list(OPTIONS), default=list(OPTIONS))
    parser.add_argument('--batch', type=int, default=16, help='images per step (the paper: 16)')
    parser.add_argument('--lr-size', type=int, default=48, help='LR patch size (x2: the HR patch is twice it)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps per model')
    parser.add_argument('--repeat', type=int, default=3, help='timed steps per model (median)')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    parser.add_argument('--amp', action='store_true', help='torch.autocast around the step')
    parser.add_argument('--amp-dtype', choices=['bfloat16', 'float16'], default='bfloat16')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    args = parser.parse_args()
    for key in ('batch', 'lr_size', 'repeat'):
        if getattr(args, key) < 1:
            raise SystemExit(f'--{key.replace("_", "-")}: {getattr(args, key)} must be >= 1.')
    device = torch.device(args.device)
    if device.type not in ('cpu', 'cuda'):
        raise SystemExit(f"--device: {args.device!r} is not 'cpu' or 'cuda'.")
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: torch sees no CUDA device.')
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    amp = (torch.autocast(device.type, dtype=getattr(torch, args.amp_dtype)) if args.amp
           else contextlib.nullcontext())
    print(f'Training step (forward, losses, backward, Adam step), batch {args.batch}, LR {args.lr_size}x'
          f'{args.lr_size}, x2, random data; device: {device.type} ({device_name(device)}), torch '
          f'{torch.__version__}, {torch.get_num_threads()} CPU threads'
          f'{", autocast " + args.amp_dtype if args.amp else ", float32"}; median of {args.repeat} steps after '
          f'{args.warmup} warm-up, round-robin; time: {"wall" if device.type == "cuda" else "CPU time of the process"}')
    root = tempfile.mkdtemp(prefix='bench_train_step_')
    try:
        for group in args.groups:
            models = {}
            for label, file, variant in OPTIONS[group]:
                models[label] = build(file, variant, root, device)
            generator = torch.Generator().manual_seed(0)
            hr = 2 * args.lr_size
            batches = [{'lq': torch.rand(args.batch, 3, args.lr_size, args.lr_size, generator=generator),
                        'gt': torch.rand(args.batch, 3, hr, hr, generator=generator)}
                       for _ in range(args.warmup + args.repeat)]
            times = {label: [] for label in models}
            for step, data in enumerate(batches):
                for label, (model, opt) in models.items():
                    model.feed_data(data)
                    current_iter = opt['train']['total_iter']  # past every warm-up: all loss terms on
                    sync()
                    cpu, wall = time.process_time(), time.perf_counter()
                    with amp:
                        model.optimize_parameters(current_iter)
                    sync()
                    wall = time.perf_counter() - wall
                    cpu = wall if device.type == 'cuda' else time.process_time() - cpu
                    if step >= args.warmup:
                        times[label].append((cpu, wall))
            backbone = next(iter(models))
            med = {label: [statistics.median(v) for v in zip(*runs)] for label, runs in times.items()}
            print(f'\n| network ({group}) | parameters (M) | s / step | wall s / step | vs {backbone} |')
            print('|---|---|---|---|---|')
            for label, (model, _) in models.items():
                params = sum(p.numel() for p in model.get_bare_model(model.net_g).parameters()) / 1e6
                print(f'| {label} | {params:.3f} | {med[label][0]:.3f} | {med[label][1]:.3f} | '
                      f'{med[label][0] / med[backbone][0]:.2f}x |')
            del models
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
