#!/usr/bin/env python
"""Publish a trained network to a model zoo folder, as BasicSR's model zoo: weights only, named by hash.

Writes, each through a temporary name and a rename::

    OUT/<name>-<sha256[:8]>.pth          {'params_ema' or 'params': state dict}, nothing else (no optimizer)
    OUT/<name>-<sha256[:8]>.safetensors  the same tensors; network_g and the parameter key in its metadata
    OUT/<name>-<sha256[:8]>.md           model card: YAML front matter (the Hub's model-index of the
                                         metrics included), metrics table, commands

The suffix is the first 8 hex digits of the sha256 of the written .pth (publishing the same weights again
gives the same name). Metrics come from the logs of ``acla_basicsr/test.py`` (``--metrics``); every log must
have tested these weights. ``--hub-folder DIR`` also writes a folder to upload to the Hugging Face Hub
(``DIR/README.md``: the card, the .pth and .safetensors, ``DIR/config.json``: network_g, scale, task, ...).
``--refresh-card CARD ...`` re-renders published cards from themselves (after a change of the card's layout:
no checkpoint or log is needed), alone or with ``--hub-folder`` for one card.

Usage::

    python scripts/publish_model.py -opt options/train/demo_EDSR_SRx2.yml \\
        --model experiments/demo_EDSR_SRx2/models/net_g_latest.pth --out model_zoo \\
        [--name demo_EDSR_SRx2] [--param-key params_ema|params] [--metrics results/X/test_X_*.log ...] \\
        [--train-log experiments/demo_EDSR_SRx2/train_*.log] [--train-command "..."] [--trained-on "..."] \\
        [--hub-folder hub/demo_EDSR_SRx2]
    python scripts/publish_model.py --refresh-card model_zoo/*.md
    python scripts/publish_model.py --refresh-card model_zoo/demo_EDSR_SRx2-08c6a439.md --hub-folder hub/demo_EDSR_SRx2

Bad input (a missing or unreadable checkpoint, one that does not fit the options' network, an unreadable
log, a log of other weights, a card that is not publish_model.py's) ends with one ``error:`` line naming the
file, and exit status 2, before anything is written.
"""
import glob
import os
import re
import shlex
import sys
from os import path as osp

REPO = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
sys.path.insert(0, REPO)
from acla_basicsr.cli.args import (ArgumentParser, existing_file, fail, output_folder,  # noqa: E402
                                   positive_int)

LICENSE = 'apache-2.0'  # the project's LICENSE


def rel(path):
    """``path`` relative to the repository when inside it (for the card), else as given."""
    path = osp.abspath(path)
    return osp.relpath(path, REPO) if path.startswith(REPO + os.sep) else path


def load_params(checkpoint, param_key):
    """``(state_dict, key)`` of a training checkpoint: ``param_key``, else params_ema, else params."""
    from acla_basicsr.inference import load_state_dict
    from acla_basicsr.errors import OptionError
    if not osp.isfile(checkpoint):
        fail(f'{checkpoint}: no such checkpoint; give a .pth written by training '
             '(experiments/<name>/models/net_g_latest.pth).')
    try:
        params, key = load_state_dict(checkpoint, param_key, return_key=True)
    except OptionError as error:
        fail(str(error).replace('--model: ', '', 1))
    return params, key or 'params'


def check_fits(opt, params, checkpoint):
    """Build network_g and load ``params`` strictly; fail with one line if they do not fit."""
    from acla_basicsr.inference import build_network
    from acla_basicsr.errors import OptionError
    try:
        net = build_network(opt)
    except (OptionError, ValueError, TypeError) as error:
        fail(f"network_g of the options cannot be built: {error}")
    try:
        net.load_state_dict(params, strict=True)
    except RuntimeError as error:
        first = [line.strip() for line in str(error).splitlines() if line.strip()][1:2]
        fail(f"{checkpoint}: does not fit network_g ({opt['network_g']['type']}) of the options: "
             f"{first[0] if first else error}; give the options it was trained with.")
    return net


def same_weights(path, params):
    """Whether the checkpoint at ``path`` holds exactly ``params`` (under params_ema or params, or as a whole)."""
    import torch
    from acla_basicsr.inference import load_state_dict
    from acla_basicsr.errors import OptionError
    for key in ('params_ema', 'params', None):
        try:
            other = load_state_dict(path, key)
        except OptionError:
            continue
        if other.keys() == params.keys() and all(torch.equal(other[k], params[k]) for k in params):
            return True
    return False


def find_test_options(name):
    """The options file of ``options/test`` (recursively) whose ``name`` is ``name``, or None."""
    import yaml
    for path in sorted(glob.glob(osp.join(REPO, 'options', 'test', '**', '*.yml'), recursive=True)):
        try:
            with open(path) as f:
                if (yaml.safe_load(f) or {}).get('name') == name:
                    return rel(path)
        except (OSError, yaml.YAMLError):
            continue
    return None


def read_logs(paths, params):
    from acla_basicsr.zoo.card import LogError, parse_test_log
    logs = []
    for path in paths:
        try:
            log = parse_test_log(path)
        except LogError as error:
            fail(str(error))
        tested = log['checkpoint']
        if tested and not osp.isabs(tested):
            tested = osp.join(REPO, tested)
        if not tested or not osp.isfile(tested):
            fail(f'{path}: tested {log["checkpoint"]!r}, which is not here to compare with --model; test the '
                 'published file (or the checkpoint) and give that log.')
        if not same_weights(tested, params):
            fail(f'{path}: tested {log["checkpoint"]}, whose parameters differ from --model; give the log of '
                 'these weights.')
        log['options_file'] = find_test_options(log['options'].get('name'))
        logs.append(log)
    return logs


def train_iterations(train_log):
    """The last iteration logged by basicsr in a training log (``iter:   800``), or None."""
    if not train_log:
        return None
    try:
        with open(train_log, encoding='utf-8') as f:
            found = re.findall(r'\biter:\s*([\d,]+)', f.read())
    except (OSError, UnicodeDecodeError) as error:
        fail(f'{train_log}: cannot be read ({error}).')
    if not found:
        fail(f'{train_log}: no "iter:" line; give the train_<name>_<time>.log of the run.')
    return int(found[-1].replace(',', ''))


def refresh_cards(parser, args):
    """``--refresh-card``: re-render every card from itself (:func:`~acla_basicsr.zoo.card.read_card`); all are
    read and checked before the first is written."""
    from acla_basicsr.errors import OptionError
    from acla_basicsr.fileio import write_text
    from acla_basicsr.zoo.card import read_card, render_card
    from acla_basicsr.zoo.published import check_hub_card, write_hub_folder
    given = [action.option_strings[0] for action in parser._actions
             if action.dest not in ('help', 'refresh_card', 'hub_folder')
             and getattr(args, action.dest) != action.default]
    if given:
        parser.error(f'{", ".join(given)}: not used with --refresh-card, which re-renders cards from themselves '
                     '(only --hub-folder goes with it)')
    if args.hub_folder and len(args.refresh_card) != 1:
        parser.error('--hub-folder: give one --refresh-card with it (a Hub repository holds one network)')
    cards = []
    for path in args.refresh_card:
        try:
            cards.append((path, read_card(path)))
            if args.hub_folder:
                check_hub_card(path)
        except (ValueError, OptionError) as error:
            fail(f'--refresh-card: {error}')
    for path, (front, description, commands) in cards:
        write_text(path, render_card(front, description, commands, front['metrics']))
        print(f'refreshed {rel(path)}')
    if args.hub_folder:
        for path in write_hub_folder(args.refresh_card[0], args.hub_folder):
            print(f'  {path}  {osp.getsize(path) / 1024:.1f} KiB')


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-opt', type=existing_file,
                        help='the train (or test) options file the network was trained with (required)')
    parser.add_argument('--model', type=existing_file,
                        help='the checkpoint, e.g. experiments/X/models/net_g_latest.pth (required)')
    parser.add_argument('--out', type=output_folder, help='zoo folder, e.g. model_zoo (required)')
    parser.add_argument('--name', help='file name stem (default: the options name)')
    parser.add_argument('--param-key', choices=('params_ema', 'params'),
                        help='parameters to publish (default: params_ema if the checkpoint has it, else params)')
    parser.add_argument('--metrics', nargs='*', type=existing_file, default=[],
                        help='test logs of acla_basicsr/test.py on these weights')
    parser.add_argument('--train-log', type=existing_file, help='training log: iterations, and the run it documents')
    parser.add_argument('--iterations', type=positive_int,
                        help='training iterations (default: --train-log, else total_iter)')
    parser.add_argument('--train-command', help='the exact training command (default: train.py -opt OPTIONS)')
    parser.add_argument('--trained-on', default='not stated', help='hardware, e.g. "1 NVIDIA H100"')
    parser.add_argument('--description', default='', help='text for the card, after the standard paragraph')
    parser.add_argument('--hub-folder', type=output_folder,
                        help='also write a folder to upload to the Hugging Face Hub: README.md (the card), the '
                        '.pth and .safetensors, config.json (network_g, scale, task, ...)')
    parser.add_argument('--refresh-card', nargs='+', type=existing_file, metavar='CARD',
                        help='re-render published cards from themselves (no other argument but --hub-folder)')
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.refresh_card:
        return refresh_cards(parser, args)
    missing = [flag for flag, value in (('-opt', args.opt), ('--model', args.model), ('--out', args.out)) if not value]
    if missing:
        parser.error(f'the following arguments are required: {", ".join(missing)}')
    if args.name is not None and (not args.name or os.sep in args.name):
        parser.error(f'--name: {args.name!r} is not a file name stem; give one such as ACLA_SRx2')
    if args.hub_folder and osp.abspath(args.hub_folder) == osp.abspath(args.out):
        parser.error(f'--hub-folder: {args.hub_folder} is the --out folder; give a folder of its own (it gets a '
                     'README.md and a config.json)')

    import acla_basicsr  # noqa: F401  (registers the networks)
    from acla_basicsr.inference import read_options
    from acla_basicsr.inference.checkpoints import training_description
    from acla_basicsr.zoo.card import metric_rows, render_card, task_of
    from acla_basicsr.errors import OptionError
    from acla_basicsr.fileio import write_text
    from acla_basicsr.zoo.published import file_sha256, write_hub_folder, write_published

    try:
        opt = read_options(args.opt)
    except OptionError as error:
        fail(str(error).replace('-opt: ', '', 1))
    params, param_key = load_params(args.model, args.param_key)
    net = check_fits(opt, params, args.model)
    logs = read_logs(args.metrics, params)
    name = args.name or opt.get('name') or osp.splitext(osp.basename(args.opt))[0]
    network_g = dict(opt['network_g'])
    iterations = args.iterations or train_iterations(args.train_log) or (opt.get('train') or {}).get('total_iter')

    pth, safetensors, sha = write_published(params, network_g, args.out, name, param_key, training_description(opt))
    stem = osp.splitext(pth)[0]
    train = (opt.get('datasets') or {}).get('train') or {}
    rows = metric_rows(logs)
    front = {
        'license': LICENSE,
        'library_name': 'acla_basicsr',
        'pipeline_tag': 'image-to-image',
        'tags': ['basicsr', 'image-restoration', network_g['type']],
        'model_name': name,
        'architecture': network_g['type'],
        'network_g': network_g,
        'parameters': sum(p.numel() for p in net.parameters()),
        'scale': opt.get('scale', network_g.get('upscale', 1)),
        'task': task_of(opt),
        'training_data': {k: train[k] for k in ('name', 'type', 'dataroot_gt', 'dataroot_lq', 'degradation', 'color',
                                                'gt_size') if k in train},
        'iterations': iterations,
        'trained_on': args.trained_on,
        'options': rel(args.opt),
        'param_key': param_key,
        'files': {'pth': osp.basename(pth), 'safetensors': osp.basename(safetensors),
                  'sha256_safetensors': file_sha256(safetensors)},
        'sha256': sha,
        'metrics': rows,
    }
    description = (f"`{network_g['type']}` ({front['parameters'] / 1e6:.3f} M parameters) trained with "
                   f"`{rel(args.opt)}` for {iterations} iterations "
                   f"({front['task']}; trained on: {args.trained_on}). Published parameters: `{param_key}`."
                   + (f'\n\n{args.description}' if args.description else ''))
    commands = {
        'train': args.train_command or f'python acla_basicsr/train.py -opt {rel(args.opt)}',
        'test': ['python acla_basicsr/test.py -opt ' +
                 (log['options_file'] or f"<the options file of test {log['options'].get('name')!r}>") for log in logs],
        'publish': shlex.join(['python', 'scripts/publish_model.py'] +
                              [rel(a) if osp.exists(a) else a for a in argv]),
    }
    card = render_card(front, description, commands, rows)

    write_text(stem + '.md', card)
    print(f'published {name} ({network_g["type"]}, {param_key}, sha256 {sha}):')
    for path in (pth, safetensors, stem + '.md'):
        print(f'  {rel(path)}  {osp.getsize(path) / 1024:.1f} KiB')
    for row in rows:
        print(f"  {row['dataset']}: PSNR {row.get('psnr', float('nan')):.4f} dB, "
              f"SSIM {row.get('ssim', float('nan')):.4f}")
    if args.hub_folder:
        print(f'Hub folder {args.hub_folder}:')
        for path in write_hub_folder(stem + '.md', args.hub_folder):
            print(f'  {path}  {osp.getsize(path) / 1024:.1f} KiB')


if __name__ == '__main__':
    main()
