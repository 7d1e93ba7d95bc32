#!/usr/bin/env python
"""Measured check of the restoration tasks: short CPU trainings that must beat the degraded input.

For each task (denoising sigma 30, JPEG quality 10, RGGB demosaicing) it trains the task's demo
network (``options/train/demo_EDSR_*.yml``: basicsr's EDSR, 32 features, 4 blocks, upscale 1)
with acla_basicsr's training pipeline (``acla_basicsr/train.py``, a subprocess), on ground truth
from ``../shared/datasets/Sun_Hays80`` cut into 240x240 sub-images by
``scripts/prepare_sr_lmdb.py`` (``datasets/Sun_Hays80_sub/``), degraded on the fly by
DegradedImageDataset. It then evaluates the last checkpoint on the first ``--num-eval`` images
of Kodak24 (deterministic degradations, seeded by image name) and prints one PSNR/SSIM table:
degraded input, classical baseline (OpenCV non-local means for denoising, with the best of a
few filter strengths on these images; OpenCV bilinear demosaicing) and the trained network.

It first prints the PSNR of the degraded inputs on whole benchmark sets, beside the ACLA
paper's rows (JPEG on LIVE1/Classic5, Table 3; 3-channel mosaics on McMaster/Kodak24, Table 10),
which checks the degradation and metric conventions.

Usage: python scripts/measure_tasks.py [--iters 400] [--num-eval 8] [--threads 1]
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from os import path as osp

REPO = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
sys.path.insert(0, REPO)
from acla_basicsr.cli.args import ArgumentParser, fail, int_range, positive_int  # noqa: E402
SHARED = osp.join(REPO, osp.pardir, 'shared', 'datasets')
TASKS = {  # task: (demo config, y channel metrics, classical baseline)
    'denoising sigma 30': ('demo_EDSR_DNsigma30', False, 'non-local means'),
    'JPEG q10 (colour, Y)': ('demo_EDSR_CARq10', True, None),
    'demosaicing RGGB': ('demo_EDSR_DM', False, 'bilinear'),
}
# (set, color, degradation, the ACLA paper's PSNR of the degraded input: Table 3 JPEG rows, Table 10 Mosaiced rows)
PAPER_JPEG = {'LIVE1': (27.77, 30.07, 31.41, 32.35), 'Classic5': (27.82, 30.12, 31.48, 32.43)}
PAPER_INPUT_ROWS = [(name, 'y', {'type': 'jpeg', 'quality': q}, p) for name, row in PAPER_JPEG.items()
                    for q, p in zip((10, 20, 30, 40), row)]
PAPER_INPUT_ROWS += [(name, 'rgb', {'type': 'mosaic', 'channels': 3}, p) for name, p in (('McMaster', 9.17),
                                                                                        ('Kodak24', 8.56))]


def psnr_ssim(img, gt, y):
    from basicsr.metrics import calculate_psnr, calculate_ssim
    return calculate_psnr(img, gt, 0, test_y_channel=y), calculate_ssim(img, gt, 0, test_y_channel=y)


def check_input_conventions():
    import numpy as np

    from acla_basicsr.data.degraded_image_dataset import DegradedImageDataset
    from basicsr.utils import tensor2img
    print('\nPSNR of the degraded inputs on whole sets vs the ACLA paper (Tables 3 and 10):')
    print(f"{'set':<10} {'degradation':<28} {'here':>7} {'paper':>7}")
    for name, color, degradation, paper in PAPER_INPUT_ROWS:
        dataset = DegradedImageDataset(dict(name=name, phase='val', scale=1, dataroot_gt=osp.join(SHARED, name),
                                            io_backend={'type': 'disk'}, degradation=degradation, color=color))
        values = [psnr_ssim(tensor2img(d['lq']), tensor2img(d['gt']), False)[0] for d in dataset]
        label = ', '.join(f'{k} {v}' for k, v in degradation.items() if k != 'type')
        print(f"{name:<10} {degradation['type'] + ' ' + label + ' (' + color + ')':<28} {np.mean(values):7.2f} "
              f'{paper:7.2f}')


def train(config, train_lmdb, iters, workdir, threads):
    """Train one demo config for ``iters`` iterations with the project's pipeline; return the checkpoint."""
    import yaml
    with open(osp.join(REPO, 'options', 'train', f'{config}.yml')) as f:
        opt = yaml.safe_load(f)
    name = f'measure_tasks_{config}'
    opt['name'] = name
    opt['datasets'] = {'train': dict(opt['datasets']['train'], name='Sun_Hays80_sub', dataroot_gt=train_lmdb)}
    opt['train']['total_iter'] = iters
    opt['train']['scheduler']['milestones'] = [int(iters * 0.75)]
    opt.pop('val')  # evaluated below, with the classical baselines
    opt['logger'].update(print_freq=max(iters // 4, 1), save_checkpoint_freq=iters, use_tb_logger=False)
    path = osp.join(workdir, f'{name}.yml')
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    shutil.rmtree(osp.join(REPO, 'experiments', name), ignore_errors=True)
    log = osp.join(workdir, f'{name}.log')
    start = time.time()
    with open(log, 'w') as f:
        result = subprocess.run([sys.executable, osp.join(REPO, 'acla_basicsr', 'train.py'), '-opt', path],
                                stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                                env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if result.returncode:
        with open(log) as f:
            sys.exit(f'error: training {config} failed:\n' + ''.join(f.readlines()[-20:]))
    return opt, osp.join(REPO, 'experiments', name, 'models', 'net_g_latest.pth'), time.time() - start


def evaluate(opt, checkpoint, eval_list, y, baseline):
    """Mean PSNR/SSIM of input, baseline and network on the evaluation images."""
    import cv2
    import numpy as np
    import torch

    from acla_basicsr.data.degradations import bilinear_demosaic
    from acla_basicsr.data.degraded_image_dataset import DegradedImageDataset
    from basicsr.archs import build_network
    from basicsr.utils import tensor2img
    net = build_network(opt['network_g'])
    net.load_state_dict(torch.load(checkpoint, map_location='cpu')['params'])
    net.eval()
    train_opt = opt['datasets']['train']
    dataset = DegradedImageDataset(dict(name='Kodak24', phase='val', scale=1, dataroot_gt=osp.join(SHARED, 'Kodak24'),
                                        meta_info_file=eval_list, io_backend={'type': 'disk'},
                                        degradation=train_opt['degradation'], color=train_opt['color']))
    sigma = train_opt['degradation'].get('sigma')
    strengths = (0.3 * sigma, 0.4 * sigma, 0.5 * sigma, 0.6 * sigma) if baseline == 'non-local means' else ()
    rows = {'input': [], 'network': []}
    rows.update({f'non-local means h={h:g}': [] for h in strengths})
    if baseline == 'bilinear':
        rows['bilinear'] = []
    for data in dataset:
        gt = tensor2img(data['gt'])
        with torch.no_grad():
            out = net(data['lq'][None]).clamp_(0, 1)
        rows['network'].append(psnr_ssim(tensor2img(out), gt, y))
        rows['input'].append(psnr_ssim(tensor2img(data['lq']), gt, y))
        for h in strengths:
            denoised = cv2.fastNlMeansDenoisingColored(tensor2img(data['lq']), None, h, h, 7, 21)
            rows[f'non-local means h={h:g}'].append(psnr_ssim(denoised, gt, y))
        if baseline == 'bilinear':
            rows['bilinear'].append(psnr_ssim(tensor2img(bilinear_demosaic(data['lq'][None], 'RGGB')), gt, y))
    means = {k: np.mean(v, axis=0) for k, v in rows.items()}
    if strengths:  # keep the best strength, an optimistic baseline
        best = max((k for k in means if k.startswith('non-local')), key=lambda k: means[k][0])
        means = {k: v for k, v in means.items() if not k.startswith('non-local') or k == best}
    return means


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--iters', type=positive_int, default=400, help='training iterations per task')
    parser.add_argument('--num-eval', type=int_range(1, 24), default=8,
                        help='Kodak24 images evaluated (the first ones, 1 to 24)')
    parser.add_argument('--threads', type=positive_int, default=1,
                        help='torch threads; 1 avoids thread contention on a shared, loaded machine')
    args = parser.parse_args(argv)
    for name in ('Sun_Hays80', 'Kodak24', 'LIVE1', 'Classic5', 'McMaster'):
        if not osp.isdir(osp.join(SHARED, name)):
            fail(f'{osp.join(SHARED, name)} is absent; this check needs ../shared/datasets.')
    import acla_basicsr  # noqa: F401
    import torch
    torch.set_num_threads(args.threads)
    total = time.time()
    sys.path.insert(0, osp.join(REPO, 'scripts'))
    from prepare_sr_lmdb import prepare as prepare_lmdb
    out = osp.join(REPO, 'datasets', 'Sun_Hays80_sub')
    prepare_lmdb(osp.join(SHARED, 'Sun_Hays80'), out, 'Sun_Hays80', [], crop_size=240, step=240, workers=1,
                 check=False)
    check_input_conventions()
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        eval_list = osp.join(workdir, 'kodak_eval.txt')
        with open(eval_list, 'w') as f:
            f.write(''.join(f'{n}\n' for n in sorted(os.listdir(osp.join(SHARED, 'Kodak24')))[:args.num_eval]))
        for task, (config, y, baseline) in TASKS.items():
            opt, checkpoint, seconds = train(config, osp.join(out, 'Sun_Hays80_HR_sub.lmdb'), args.iters, workdir,
                                              args.threads)
            results.append((task, y, seconds, evaluate(opt, checkpoint, eval_list, y, baseline)))
            print(f'trained {task} in {seconds:.0f} s', flush=True)
    print(f'\nKodak24, first {args.num_eval} images; {args.iters} iterations of batch 16, 48x48 crops per task; '
          f'torch {torch.__version__}, {torch.get_num_threads()} threads')
    print(f"{'task':<22} {'metric':<8} {'method':<24} {'PSNR':>7} {'SSIM':>7} {'vs input':>9}")
    for task, y, seconds, means in results:
        for method, (psnr, ssim) in means.items():
            print(f"{task:<22} {'Y' if y else 'RGB':<8} {method:<24} {psnr:7.2f} {ssim:7.4f} "
                  f"{psnr - means['input'][0]:+9.2f}")
    print(f'total {time.time() - total:.0f} s')


if __name__ == '__main__':
    main()
