"""Restore your own images with a trained network: no ground truth, tiles, self-ensemble, half precision.

Usage (``acla-restore`` after ``pip install``, or ``python scripts/inference.py``, same arguments)::

    acla-restore -opt options/test/ACLA_SRx2.yml --model net_g_latest.pth -i photos/ -o restored/ \\
        [--tile auto|256] [--max-memory 4G] [--tile-pad 16] [--self-ensemble] [--half] [--suffix x2]

Every readable image of ``-i`` (a file or a folder) is restored and written to ``-o`` as
``<name>[_<suffix>].png`` (written to a temporary name, then renamed). An image that cannot be read is named
on one line and skipped; the others are restored, and the exit status is 1. A wrong argument ends with one
line naming it and the fix, exit status 2, before anything is written. The peak memory is printed at the end.
"""
import os
import os.path as osp
import sys

from acla_basicsr.cli.args import (ArgumentParser, existing_file, memory_size, non_negative_int, positive_float,
                                   tile_size, torch_device)
from acla_basicsr.errors import OptionError

#: Output formats of ``--ext``; ``auto`` keeps the extension of each input.
EXTENSIONS = ('png', 'jpg', 'webp', 'auto')


def parse_args(argv=None):
    parser = ArgumentParser(
        prog='acla-restore',
        description='Restore or super-resolve images with a network of acla_basicsr; no ground truth needed.')
    parser.add_argument('-opt', type=existing_file, default=None,
                        help='options YAML with network_g (any train or test file); default: the network_g stored '
                        'in the checkpoint; needed for checkpoints written before checkpoints stored it')
    model = parser.add_mutually_exclusive_group()
    model.add_argument('--model', default=None,
                       help='checkpoint .pth, URL of a zoo file, or zoo name (default: path.pretrain_network_g '
                       'of -opt)')
    model.add_argument('-n', '--model-name', default=None,
                       help='name of a network of model_zoo/, e.g. demo_ACLA_SRx2 (the part before the hash)')
    parser.add_argument('--param-key', default=None,
                        help='parameters in the checkpoint (default: params_ema if present, else params)')
    parser.add_argument('-i', '--input', required=True, help='an image or a folder of images')
    parser.add_argument('-o', '--output', required=True, help='output folder (created)')
    parser.add_argument('--tile', type=tile_size, default='auto',
                        help='tile side in input pixels, to bound memory on large images; 0: no tiles; auto '
                        '(default): the largest tile within --max-memory, from the memory per pixel measured on '
                        'the network, halved and retried after an out-of-memory error')
    parser.add_argument('--max-memory', type=memory_size, default=None,
                        help='memory budget of --tile auto, e.g. 4G, 512M or 2048 (MiB) (default: 80%% of the free '
                        'memory of a CUDA device, 50%% of the available RAM on the CPU)')
    parser.add_argument('--tile-pad', type=non_negative_int, default=16,
                        help='context around every tile in input pixels (default 16)')
    parser.add_argument('--self-ensemble', action='store_true', help='average the 8 flips/rotations (x8 time)')
    parser.add_argument('--half', action='store_true', help='float16 autocast on CUDA, bfloat16 on the CPU')
    parser.add_argument('--suffix', default='', help='append _SUFFIX to the output names (default: none)')
    parser.add_argument('--ext', choices=EXTENSIONS, default='png',
                        help='output format (default png; auto: the extension of each input); JPEG and WebP '
                        'hold 8 bits, JPEG no alpha')
    parser.add_argument('--outscale', type=positive_float, default=None,
                        help="resize the output to OUTSCALE x the input with Lanczos (Real-ESRGAN's --outscale; "
                        "default: the network's scale)")
    parser.add_argument('--alpha-upsampler', choices=('resize', 'network'), default='resize',
                        help='alpha channel of RGBA inputs: resize (bicubic, default) or network (restored as a '
                        'grey image, twice the time)')
    parser.add_argument('--device', type=torch_device, default=None,
                        help='cpu, cuda, cuda:1 ... (default: cuda if available)')
    return parser.parse_args(argv)


def list_inputs(path):
    """The files to restore: ``path`` itself, or the files of the folder ``path`` (sorted, not recursive)."""
    if osp.isfile(path):
        return [path]
    if not osp.isdir(path):
        raise OptionError(f'-i: {path} does not exist; give an image or a folder of images.')
    files = sorted(osp.join(path, v) for v in os.listdir(path)
                   if not v.startswith('.') and osp.isfile(osp.join(path, v)))
    if not files:
        raise OptionError(f'-i: {path} holds no files; give an image or a folder of images.')
    return files


def output_paths(inputs, folder, suffix, ext='png'):
    """``folder/<name>[_<suffix>].<ext>`` for every input (``auto``: the input's extension); refuse to overwrite
    an input or to write twice."""
    def name(path):
        stem, own = osp.splitext(osp.basename(path))
        extension = (own or '.png') if ext == 'auto' else f'.{ext}'
        return stem + (f'_{suffix}' if suffix else '') + extension

    outputs = [osp.join(folder, name(v)) for v in inputs]
    seen = {}
    for source, target in zip(inputs, outputs):
        if osp.abspath(target) in {osp.abspath(v) for v in inputs}:
            raise OptionError(f'-o: {target} would overwrite an input image; give another -o folder or a --suffix.')
        if target in seen:
            raise OptionError(f'-i: {seen[target]} and {source} would both be written to {target}; '
                              'rename one or restore them separately.')
        seen[target] = source
    return outputs


def check_budget(net, inputs, args):
    """Measure the network's memory per pixel and check that every input fits ``--max-memory`` with the smallest
    tile (raise :class:`OptionError` otherwise); fills in the default budget."""
    from acla_basicsr.data.checks import image_size
    from acla_basicsr.inference.memory import choose_tile, default_budget, measure_memory, return_freed_memory
    if next(net.parameters()).device.type == 'cpu':
        return_freed_memory()  # so that the budget bounds the resident set (see its docstring)
    if args.max_memory is None:
        args.max_memory = default_budget(next(net.parameters()).device)
    model = measure_memory(net, args.half)
    for source in inputs:
        size = image_size(source)  # None: unreadable, skipped later with its line
        if size is not None:
            choose_tile(model, size[1], size[0], args.tile_pad, args.max_memory, args.self_ensemble, '--max-memory')


def main(argv=None):
    """Entry point of ``acla-restore`` and ``scripts/inference.py``; returns the exit status."""
    try:
        args = parse_args(argv)
    except SystemExit as exit:  # -h (0) or a malformed command line (2, its line printed)
        return exit.code
    try:
        import torch
        from tqdm import tqdm

        from acla_basicsr.inference import (check_tile, load_network, peak_memory_mib, read_image, read_options,
                                            restore, write_image)
        check_tile(args.tile, args.tile_pad, '--tile', '--tile-pad')
        device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
        inputs = list_inputs(args.input)
        if osp.exists(args.output) and not osp.isdir(args.output):
            raise OptionError(f'-o: {args.output} is a file; give a folder for the restored images.')
        outputs = output_paths(inputs, args.output, args.suffix, args.ext)
        if args.model_name:
            from acla_basicsr.inference.checkpoints import find_zoo_model
            args.model = find_zoo_model(args.model_name, '-n')
        options = read_options(args.opt) if args.opt else None  # None: the network_g stored in the checkpoint
        net = load_network(options, args.model, args.param_key, device=device)
        if args.tile == 'auto':
            check_budget(net, inputs, args)
        elif args.max_memory is not None:
            raise OptionError('--max-memory: the budget of --tile auto; leave it out with a fixed --tile.')
    except OptionError as error:
        print(f'error: {error}', file=sys.stderr, flush=True)
        return 2
    os.makedirs(args.output, exist_ok=True)
    failures = 0
    with tqdm(total=len(inputs), unit='image', dynamic_ncols=True) as bar:
        for source, target in zip(inputs, outputs):
            bar.set_postfix_str(osp.basename(source))
            image = read_image(source)
            if image is None:
                tqdm.write(f'skipped: {source} is not a readable image', file=sys.stderr)
                failures += 1
            else:
                try:
                    result = restore(net, image, args.tile or None, args.tile_pad, args.self_ensemble, args.half,
                                     alpha_upsampler=args.alpha_upsampler, outscale=args.outscale,
                                     max_memory=args.max_memory,
                                     notify=lambda line: tqdm.write(line, file=sys.stderr))
                    write_image(target, result)
                except (RuntimeError, ValueError, OSError) as error:  # e.g. out of memory: the others go on
                    message = str(error).splitlines()[0] if str(error) else type(error).__name__
                    hint = '; try --tile auto' if 'memory' in message.lower() and args.tile != 'auto' else ''
                    tqdm.write(f'failed: {source}: {message}{hint}', file=sys.stderr)
                    failures += 1
            bar.update(1)
    peak = peak_memory_mib(device)
    parts = [f"{peak['rss']:.0f} MiB resident"] if 'rss' in peak else []
    if 'cuda' in peak:
        parts.append(f"{peak['cuda']:.0f} MiB allocated on {device}")
    line = 'peak memory: ' + (', '.join(parts) or 'not measured on this platform')
    print(f'restored {len(inputs) - failures} of {len(inputs)} images into {args.output}; {line}', flush=True)
    return 1 if failures else 0


def console_main():
    """The console command ``acla-restore``."""
    sys.exit(main())


if __name__ == '__main__':
    # Python put this file's folder first on sys.path, where acla_basicsr/data, utils, ... would shadow
    # top-level modules; the repository root goes there instead, so this checkout's package is imported.
    sys.path[0] = osp.dirname(osp.dirname(osp.abspath(__file__)))
    console_main()
