#!/usr/bin/env python
"""Equal-budget comparison: train several options files for the same iterations and seeds, then test them.

For every options file and every seed the project's entry point trains in a subprocess::

    python acla_basicsr/train.py -opt X.yml --force_yml manual_seed=S train:total_iter=N name=cmp_... \\
        train:scheduler:milestones=[...] val:val_freq=... logger:save_checkpoint_freq=... logger:use_tb_logger=false

so every row sees the same data, iterations and seeds (the entry point re-seeds after ``--force_yml``,
which basicsr 1.4.2 applies after seeding). The learning-rate schedule keeps its shape: MultiStepLR
milestones (and CosineAnnealingRestartLR periods, and a positive ``train.warmup_iter``) are scaled by
N / the file's ``total_iter``, rounded, so that a file written for 800 iterations and one written for
400 both halve their rate at the same fraction of the run. Other iteration counts inside a file (for
example a loss's own ``warmup_iter`` in ``train.network_opt``) are not scaled: a warning names them
when they reach N. Validation during training is pushed past the end (basicsr still validates once
after the last iteration, on the file's own ``val`` set).

Then the final ``net_g_latest.pth`` (``params_ema`` when the run had an EMA, otherwise ``params``) is
loaded into the network built from the file's ``network_g`` (with the ``network_g:`` entries of
``--force_yml`` applied, as in training) through basicsr's ``ARCH_REGISTRY``, and
run in eval mode on every whole image of the held-out sets. Each set is read with the file's first
validation dataset options with its data roots replaced: ``<data-root>/<set>/HR`` and
``LR_bicubic/X<scale>`` for SR, ``<data-root>/<set>/GT`` for scale 1 (the degraded inputs are then
made by the file's dataset, e.g. DegradedImageDataset). PSNR and SSIM are basicsr's
``calculate_psnr``/``calculate_ssim`` on the Y channel (``--channel rgb`` for RGB), crop border =
scale (0 at scale 1).

Printed: one markdown table, a row per options file (network, parameters, MACs at a 48x48 input
by ``acla_basicsr.archs.macs.counted_macs`` (the flop counter / 2, every key computed, the uncounted key
aggregation left out), effective MACs from ``net.effective_macs(48, 48)`` where the network has it (the keys
ACLA kept open on the held-out sets, the aggregation of every computed key included), otherwise the MACs; PSNR/SSIM per set as mean +- sample standard deviation over the seeds;
mean training wall time per run), then a detailed table with every seed's values. ``--out`` writes
both (atomically) to a markdown file. Experiment folders are removed unless ``--keep``.

``--baseline FILE`` (one of the ``-opt`` files) adds a paired table: for every other row and every
seed that both have, its PSNR minus the baseline's with the same seed, per set, their mean, and
whether that mean is larger than the spread (the larger sample std over seeds of the two rows) with
the same sign in every seed. ``--results FILE.json`` records every finished run (metrics, wall time,
parameters, MACs) as soon as it is tested, and a later call with the same file skips the runs it
already holds (same options file, seed, iterations, ``--force_yml`` and channel): a long comparison
can be run seed by seed, or resumed, and its tables printed from the record.

Usage::

    python scripts/compare.py -opt A.yml B.yml --iters 400 --seeds 0 1 [--val-sets Set5 Set14] \\
        [--force_yml key=value ...] [--out docs/_compare_x.md] [--keep] [--threads 2] \\
        [--baseline A.yml] [--results runs.json]

Errors end with one line and exit status 2: a missing options file, a missing held-out set (run
``python scripts/prepare_benchmark.py``), a failed training (with the path of its log).
"""
import copy
import json
import os
import os.path as osp
import shutil
import statistics
import subprocess
import sys
import time
import uuid


REPO = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
sys.path.insert(0, REPO)
from acla_basicsr.cli.args import (ArgumentParser, existing_file, non_negative_int, output_file,  # noqa: E402
                                   positive_int)
FAR = 10**9  # an iteration count no run reaches: pushes validation and checkpoints past the end


class CompareError(Exception):
    """A wrong input or a failed run; its message is one line."""


def load_options(path):
    sys.path.insert(0, REPO)
    from acla_basicsr.errors import OptionError
    from acla_basicsr.config.files import read_options_file
    try:
        opt = read_options_file(path)
    except OptionError as error:
        raise CompareError(str(error)) from None
    for key in ('network_g', 'train', 'scale'):
        if key not in opt:
            raise CompareError(f'-opt: {path} has no {key}; give a training options file (see options/train/).')
    return opt


def scaled(value, factor):
    return max(1, round(value * factor))


def schedule_overrides(opt, iters):
    """--force_yml entries that scale the file's schedule to ``iters`` iterations, and warnings."""
    train = opt['train']
    total = int(train.get('total_iter', iters))
    factor = iters / total
    entries, warnings = [f'train:total_iter={iters}'], []
    scheduler = train.get('scheduler') or {}
    for key in ('milestones', 'periods'):
        if isinstance(scheduler.get(key), list):
            entries.append(f'train:scheduler:{key}=[{",".join(str(scaled(v, factor)) for v in scheduler[key])}]')
    if isinstance(train.get('warmup_iter'), int) and train['warmup_iter'] > 0:
        entries.append(f'train:warmup_iter={scaled(train["warmup_iter"], factor)}')
    for loss_opt in train.get('network_opt') or []:
        if isinstance(loss_opt, dict) and isinstance(loss_opt.get('warmup_iter'), int) \
                and loss_opt['warmup_iter'] >= iters:
            warnings.append(f"{loss_opt.get('type')}.warmup_iter {loss_opt['warmup_iter']} >= --iters {iters}: "
                            'that loss never acts (loss warm-ups are not scaled)')
    return entries, warnings


def held_out_datasets(opt, val_sets, data_root):
    """One dataset options dict per held-out set, from the file's first validation dataset."""
    scale = opt['scale']
    base = next((v for k, v in (opt.get('datasets') or {}).items() if k.startswith('val')), None)
    if base is None:
        base = {'type': 'PairedImageDataset'}
    sets = {}
    for name in val_sets:
        ds = copy.deepcopy(base)
        ds.update(name=name, phase='val', scale=scale, io_backend={'type': 'disk'})
        ds.pop('meta_info_file', None)
        if scale > 1:
            roots = {'dataroot_gt': osp.join(data_root, name, 'HR'),
                     'dataroot_lq': osp.join(data_root, name, 'LR_bicubic', f'X{scale}')}
        else:
            roots = {'dataroot_gt': osp.join(data_root, name, 'GT')}
            if 'dataroot_lq' in ds:
                raise CompareError(f'--val-sets: the first validation set of {opt.get("name")} reads dataroot_lq '
                                   'at scale 1; held-out sets at scale 1 need a dataset that makes its inputs '
                                   '(e.g. DegradedImageDataset).')
        for key, folder in roots.items():
            if not osp.isdir(folder) or not os.listdir(folder):
                raise CompareError(f'--val-sets: {folder} is missing or empty; run python scripts/prepare_benchmark.py '
                                   f'--sets {name} (or give --data-root).')
        ds.update(roots)
        sets[name] = ds
    return sets


def train_run(opt_path, opt, seed, iters, extra_force, threads):
    """Train one (file, seed) in a subprocess; return (experiment folder, wall seconds)."""
    stem = osp.splitext(osp.basename(opt_path))[0]
    name = f'cmp_{stem}_s{seed}_{uuid.uuid4().hex[:6]}'
    force = [f'manual_seed={seed}', f'name={name}', 'logger:use_tb_logger=false',
             f'logger:save_checkpoint_freq={FAR}']
    if opt.get('val'):
        force.append(f'val:val_freq={FAR}')
    schedule, warnings = schedule_overrides(opt, iters)
    for warning in warnings:
        print(f'[compare] warning: {stem}: {warning}', flush=True)
    force += schedule + list(extra_force)
    cmd = [sys.executable, osp.join(REPO, 'acla_basicsr', 'train.py'), '-opt', osp.abspath(opt_path),
           '--force_yml', *force]
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    if threads:
        env['OMP_NUM_THREADS'] = str(threads)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    exp_dir = osp.join(REPO, 'experiments', name)
    weights = osp.join(exp_dir, 'models', 'net_g_latest.pth')
    if result.returncode != 0 or not osp.isfile(weights):
        logs = sorted(f for f in os.listdir(exp_dir) if f.endswith('.log')) if osp.isdir(exp_dir) else []
        if logs:
            where = f'see its log {osp.join(exp_dir, logs[-1])}'
        else:
            tail = (result.stderr.strip().splitlines() or ['no output'])[-1]
            where = f'no log was written; its last line: {tail}'
        raise CompareError(f'training of {opt_path} (seed {seed}) failed with exit status {result.returncode}; '
                           f'{where}')
    return exp_dir, wall


def network_options(opt, force=()):
    """The file's ``network_g`` with the ``network_g:`` entries of ``--force_yml`` applied, as the training had them."""
    from basicsr.utils.options import _postprocess_yml_value
    net_opt = copy.deepcopy(opt['network_g'])
    for entry in force:
        keys, value = entry.split('=')
        keys = keys.strip().split(':')
        if keys[0] == 'network_g' and len(keys) > 1:
            target = net_opt
            for key in keys[1:-1]:
                target = target.setdefault(key, {})
            target[keys[-1]] = _postprocess_yml_value(value.strip())
    return net_opt


def load_network(opt, exp_dir, force=()):
    import torch
    from basicsr.utils.registry import ARCH_REGISTRY
    net_opt = network_options(opt, force)
    net = ARCH_REGISTRY.get(net_opt.pop('type'))(**net_opt)
    state = torch.load(osp.join(exp_dir, 'models', 'net_g_latest.pth'), map_location='cpu', weights_only=True)
    key = 'params_ema' if 'params_ema' in state else 'params'
    net.load_state_dict(state[key] if key in state else state, strict=True)
    return net.eval()


def count_macs(opt, force=(), size=48):
    """Multiply-accumulates of one forward pass of the network at a size x size input (every key computed), as
    :func:`acla_basicsr.archs.macs.counted_macs` counts them (flop counter / 2 on the meta device, SPEC 2)."""
    from basicsr.utils.registry import ARCH_REGISTRY
    from acla_basicsr.archs.macs import counted_macs
    net_opt = network_options(opt, force)
    cls = ARCH_REGISTRY.get(net_opt.pop('type'))
    return counted_macs(lambda: cls(**net_opt), size, size, net_opt.get('num_in_ch', 3))


def evaluate(net, opt, sets, channel):
    """PSNR and SSIM of ``net`` on every held-out set: {set: (psnr, ssim)}."""
    import torch
    from basicsr.data import build_dataset
    from basicsr.metrics import calculate_psnr, calculate_ssim
    from basicsr.utils import tensor2img
    scale = opt['scale']
    crop = scale if scale > 1 else 0
    y = channel == 'y'
    if hasattr(net, 'reset_key_stats'):
        net.reset_key_stats()
    results = {}
    for name, ds_opt in sets.items():
        dataset = build_dataset(ds_opt)
        psnrs, ssims = [], []
        for i in range(len(dataset)):
            item = dataset[i]
            with torch.no_grad():
                out = net(item['lq'].unsqueeze(0))
            sr, gt = tensor2img(out), tensor2img(item['gt'].unsqueeze(0))
            psnrs.append(calculate_psnr(sr, gt, crop_border=crop, test_y_channel=y))
            ssims.append(calculate_ssim(sr, gt, crop_border=crop, test_y_channel=y))
        results[name] = (statistics.fmean(psnrs), statistics.fmean(ssims))
    return results


def describe(network_opt):
    keys = ('num_feat', 'num_block', 'upscale', 'attention_positions', 'num_samples', 'window_size', 'num_heads',
            'use_asca', 'use_local_attention', 'use_mask_branch', 'use_skip_connections', 'attention_res_scale',
            'attention', 'insert_positions', 'num_keys')
    args = ', '.join(f'{k}={network_opt[k]}' for k in keys if k in network_opt)
    return f"{network_opt['type']}({args})"


def mean_spread(values, digits):
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.
    return f'{mean:.{digits}f} ± {spread:.{digits}f}'


def tables(rows, val_sets, iters, seeds, channel):
    """The summary and detailed markdown tables."""
    ch = 'Y' if channel == 'y' else 'RGB'
    head = ['options file', 'network', 'params (M)', 'MACs (M) @48x48', 'eff. MACs (M)']
    head += [f'{s} PSNR-{ch}' for s in val_sets] + [f'{s} SSIM-{ch}' for s in val_sets]
    head += ['train time / run (s)']
    lines = [f'{iters} iterations per run, seeds {", ".join(map(str, seeds))}; PSNR/SSIM: mean ± sample std '
             'over seeds.', '', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for row in rows:
        runs = row['runs']
        cells = [f"`{row['file']}`", row['network'], f"{row['params'] / 1e6:.3f}", f"{row['macs'] / 1e6:.2f}",
                 f"{statistics.fmean(r['eff_macs'] for r in runs) / 1e6:.2f}"]
        cells += [mean_spread([r['metrics'][s][0] for r in runs], 2) for s in val_sets]
        cells += [mean_spread([r['metrics'][s][1] for r in runs], 4) for s in val_sets]
        cells.append(f"{statistics.fmean(r['wall'] for r in runs):.0f}")
        lines.append('| ' + ' | '.join(cells) + ' |')
    head = ['options file', 'seed'] + [f'{s} PSNR-{ch}' for s in val_sets] + [f'{s} SSIM-{ch}' for s in val_sets]
    head += ['eff. MACs (M)', 'train time (s)']
    lines += ['', 'Every run:', '', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for row in rows:
        for r in row['runs']:
            cells = [f"`{row['file']}`", str(r['seed'])]
            cells += [f"{r['metrics'][s][0]:.4f}" for s in val_sets] + [f"{r['metrics'][s][1]:.5f}" for s in val_sets]
            cells += [f"{r['eff_macs'] / 1e6:.2f}", f"{r['wall']:.0f}"]
            lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def paired_table(rows, baseline, val_sets, channel):
    """PSNR of every row minus the baseline row's, seed by seed (markdown)."""
    ch = 'Y' if channel == 'y' else 'RGB'
    base = next(row for row in rows if row['file'] == baseline)
    base_runs = {r['seed']: r for r in base['runs']}
    head = ['options file', 'set', 'seeds', f'PSNR-{ch} minus `{baseline}`, per seed (dB)', 'mean (dB)',
            'spread (dB)', 'larger than the spread, same sign in every seed']
    lines = ['', f'Paired with `{baseline}` (same seed):', '', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for row in rows:
        runs = [r for r in row['runs'] if r['seed'] in base_runs]
        if row is base or not runs:
            continue
        for name in val_sets:
            diffs = [r['metrics'][name][0] - base_runs[r['seed']]['metrics'][name][0] for r in runs]
            stds = [statistics.stdev(v) if len(v) > 1 else 0. for v in
                    ([r['metrics'][name][0] for r in runs], [base_runs[r['seed']]['metrics'][name][0] for r in runs])]
            mean, spread = statistics.fmean(diffs), max(stds)
            same_sign = all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
            beyond = 'yes' if len(diffs) > 1 and same_sign and abs(mean) > spread else 'no'
            cells = [f"`{row['file']}`", name, ' / '.join(str(r['seed']) for r in runs),
                     ' / '.join(f'{d:+.2f}' for d in diffs), f'{mean:+.3f}', f'{spread:.3f}', beyond]
            lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def parse_args(argv):
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-opt', nargs='+', required=True, type=existing_file,
                        help='training options files, one row each')
    parser.add_argument('--iters', type=positive_int, required=True, help='training iterations of every run')
    parser.add_argument('--seeds', type=non_negative_int, nargs='+', default=[0, 1], help='seeds (default: 0 1)')
    parser.add_argument('--val-sets', nargs='+', default=['Set5', 'Set14'], help='held-out sets (default: Set5 Set14)')
    parser.add_argument('--data-root', default=osp.join(REPO, 'datasets'),
                        help='folder of the held-out sets, as written by scripts/prepare_benchmark.py (default: datasets)')
    parser.add_argument('--channel', choices=('y', 'rgb'), default='y', help='metrics on Y (default) or RGB')
    parser.add_argument('--force_yml', nargs='+', default=[], help='extra key=value overrides for every run')
    parser.add_argument('--out', type=output_file, help='also write the tables to this markdown file')
    parser.add_argument('--keep', action='store_true', help='keep the experiment folders')
    parser.add_argument('--threads', type=non_negative_int, default=0,
                        help='OMP_NUM_THREADS of the runs and the evaluation')
    parser.add_argument('--baseline', help='one of the -opt files: add the per-seed PSNR differences to it')
    parser.add_argument('--results', type=output_file,
                        help='JSON record of finished runs: read to skip them, written after each run')
    args = parser.parse_args(argv)
    if args.baseline and osp.abspath(args.baseline) not in [osp.abspath(p) for p in args.opt]:
        parser.error(f'--baseline: {args.baseline} is not one of the -opt files; give one of them')
    return args


def run(args):
    options = [(path, load_options(path)) for path in args.opt]
    if args.force_yml:  # checked here, before the first run: its keys and values (a file's own options are
        # left to its training run)
        from acla_basicsr.cli.launch import forced_options
        from acla_basicsr.errors import OptionError
        for path, opt in options:
            try:
                forced_options(opt, args.force_yml, is_train=True)
            except OptionError as error:
                raise CompareError(f'{path}: {error}') from None
    sets = {path: held_out_datasets(opt, args.val_sets, args.data_root) for path, opt in options}

    sys.path.insert(0, REPO)
    import acla_basicsr  # noqa: F401  (registers the project's classes)
    from acla_basicsr.fileio import write_text
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)

    record = []
    if args.results and osp.isfile(args.results):
        try:
            with open(args.results) as f:
                record = json.load(f)
        except ValueError:
            raise CompareError(f'--results: {args.results} is not a JSON record of this script; '
                               'give another file name.') from None

    rows, total, done = [], len(options) * len(args.seeds), 0
    for path, opt in options:
        row = {'file': osp.relpath(osp.abspath(path), REPO), 'network': describe(opt['network_g']), 'runs': []}
        for seed in args.seeds:
            done += 1
            same = {'file': row['file'], 'seed': seed, 'iters': args.iters, 'force_yml': args.force_yml,
                    'channel': args.channel}
            old = next((r for r in record if all(r.get(k) == v for k, v in same.items())
                        and all(s in r['metrics'] for s in args.val_sets)), None)
            if old is not None:
                print(f'[compare] {done}/{total} {row["file"]} seed {seed}: in {args.results}, not run again',
                      flush=True)
                row.update(params=old['params'], macs=old['macs'])
                row['runs'].append(dict(old, metrics={s: tuple(old['metrics'][s]) for s in args.val_sets}))
                continue
            print(f'[compare] {done}/{total} training {row["file"]} seed {seed} for {args.iters} iterations ...',
                  flush=True)
            exp_dir, wall = train_run(path, opt, seed, args.iters, args.force_yml, args.threads)
            net = load_network(opt, exp_dir, args.force_yml)
            if 'params' not in row:  # before the evaluation, which gathers ACLA's open-key statistics
                row['params'] = sum(p.numel() for p in net.parameters())
                row['macs'] = count_macs(opt, args.force_yml)
            metrics = evaluate(net, opt, sets[path], args.channel)
            eff = net.effective_macs(48, 48) if hasattr(net, 'effective_macs') else row['macs']
            row['runs'].append({'seed': seed, 'metrics': metrics, 'eff_macs': float(eff), 'wall': wall})
            if args.results:
                record.append(dict(same, metrics=metrics, eff_macs=float(eff), wall=wall, params=row['params'],
                                   macs=row['macs']))
                write_text(args.results, json.dumps(record, indent=1) + '\n')
            summary = ', '.join(f'{s} {p:.2f} dB / {q:.4f}' for s, (p, q) in metrics.items())
            print(f'[compare] {done}/{total} {row["file"]} seed {seed}: trained in {wall:.0f} s; {summary}', flush=True)
            if not args.keep:
                shutil.rmtree(exp_dir, ignore_errors=True)
        rows.append(row)
    text = tables(rows, args.val_sets, args.iters, args.seeds, args.channel)
    if args.baseline:
        text += paired_table(rows, osp.relpath(osp.abspath(args.baseline), REPO), args.val_sets, args.channel)
    print(text, end='', flush=True)
    if args.out:
        write_text(args.out, text)
    return rows


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except CompareError as error:
        print(f'error: {error}', file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == '__main__':
    main()
