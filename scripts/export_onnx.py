#!/usr/bin/env python
"""Export a trained network to ONNX (dynamic batch, height and width) and check it with onnxruntime.

The network is built from ``network_g`` of the options and loaded strictly from the checkpoint (params_ema,
else params: a training checkpoint or a published zoo file). It is exported by torch's dynamo exporter
(``torch.onnx.export(..., dynamo=True)``, onnxscript), traced at batch 2 and ``--size``, and checked at
another size (``--check-size``, default: the export size + (5, 3)) against torch: the maximum absolute
difference is printed, and above ``--tolerance`` (default 1e-3) the script fails. ACLA networks export
with their ``grid_sample`` key sampling, EARN with its export path (acla_basicsr/zoo/onnx_export.py). Should
the dynamo exporter fail, a warning says why and the deprecated TorchScript exporter writes the file; the
printed line names the exporter used.

Usage::

    python scripts/export_onnx.py -opt options/test/zoo/demo_ACLA_SRx2.yml --model model_zoo/X.pth \\
        --out X.onnx [--size 64 64] [--opset 18] [--check-size 69 67]

Exit status: 0 exported and checked, 1 the check failed (the file is kept, marked by the message),
2 bad input (one ``error:`` line).
"""
import os
import sys
import time
from os import path as osp

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir)))
from acla_basicsr.cli.args import (ArgumentParser, existing_file, fail, int_range, non_negative_float,  # noqa: E402
                                   output_file, positive_int)


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-opt', required=True, type=existing_file, help='options file with network_g')
    parser.add_argument('--model', type=existing_file,
                        help='checkpoint (default: path.pretrain_network_g of the options)')
    parser.add_argument('--out', required=True, type=output_file, help='the .onnx file to write')
    parser.add_argument('--size', type=int_range(2, None), nargs=2, default=(64, 64), metavar=('H', 'W'),
                        help='tracing size, at least 2 (torch.export takes a size of 1 for a constant)')
    parser.add_argument('--check-size', type=positive_int, nargs=2, metavar=('H', 'W'),
                        help='onnxruntime check size (default: --size + (5, 3))')
    parser.add_argument('--opset', type=int_range(18, 23), default=18,
                        help="ONNX opset, 18 (the dynamo exporter's own) to 23; default 18")
    parser.add_argument('--param-key', choices=('params_ema', 'params'), help='default: params_ema, else params')
    parser.add_argument('--tolerance', type=non_negative_float, default=1e-3,
                        help='largest accepted difference (default 1e-3)')
    args = parser.parse_args(argv)
    if not args.out.endswith('.onnx'):
        parser.error(f'--out: {args.out} does not end in .onnx; give a file name ending in .onnx')

    import acla_basicsr  # noqa: F401  (registers the networks)
    from acla_basicsr.inference import load_network
    from acla_basicsr.zoo.onnx_export import check_onnx, export_onnx
    from acla_basicsr.errors import OptionError
    from acla_basicsr.fileio import atomic_write

    try:
        net = load_network(args.opt, args.model, param_key=args.param_key, strict=True, device='cpu')
    except OptionError as error:
        fail(error)
    check_size = tuple(args.check_size or (args.size[0] + 5, args.size[1] + 3))
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    start = time.time()
    exporter = []
    atomic_write(args.out, lambda tmp: exporter.append(export_onnx(net, tmp, tuple(args.size), args.opset)))
    print(f'exported {type(net).__name__} to {args.out} with the {exporter[0]} exporter '
          f'({osp.getsize(args.out) / 2**20:.2f} MiB, opset {args.opset}, traced at {args.size[0]}x{args.size[1]}, '
          f'{time.time() - start:.1f} s)')
    diff = check_onnx(net, args.out, check_size)
    verdict = 'ok' if diff <= args.tolerance else f'FAILED (above {args.tolerance:g})'
    print(f'onnxruntime vs torch at {check_size[0]}x{check_size[1]}: max abs difference {diff:.3g}: {verdict}')
    sys.exit(0 if diff <= args.tolerance else 1)


if __name__ == '__main__':
    main()
