"""Export the result of an ACLA insert-position search from a checkpoint of its supernet.

Writes ``searched_positions.yml`` (the positions that train.search.readout selects, probabilities, MACs) and
``train_searched.yml`` (a ready-to-run training config of the final network), the same files
``ACLASearchModel`` writes at every validation, through a temporary file and a rename.

Usage:
    python scripts/export_search.py -opt options/search/X.yml --checkpoint experiments/X/models/net_g_800.pth \
        [--out DIR] [--iter N]

``--out`` defaults to the checkpoint's experiment folder; the iteration (for the temperature and the
record) is read from a ``net_g_<iter>.pth`` name unless ``--iter`` is given.
"""
import os
import os.path as osp
import re
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import acla_basicsr  # noqa: E402,F401  (makes basicsr importable, registers the archs)
import torch  # noqa: E402
import yaml  # noqa: E402
from basicsr.archs import build_network  # noqa: E402
from basicsr.utils.options import ordered_yaml  # noqa: E402

from acla_basicsr.models.search_export import export_search  # noqa: E402
from acla_basicsr.models.search_options import check_search_options  # noqa: E402
from acla_basicsr.cli.args import ArgumentParser, existing_file, fail, non_negative_int, output_folder  # noqa: E402
from acla_basicsr.errors import OptionError  # noqa: E402


def export_from_checkpoint(opt_path, checkpoint, out_dir=None, iteration=None, param_key='params'):
    """Build the supernet of ``opt_path``, load ``checkpoint`` and export; return (positions, yml, config)."""
    if not osp.isfile(opt_path):
        raise OptionError(f'-opt: {opt_path} does not exist; give the search config the checkpoint was trained with.')
    with open(opt_path) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    opt.setdefault('root_path', ROOT)  # relative paths (train.search.final_config) are the repository's
    search = check_search_options(opt)
    if not osp.isfile(checkpoint):
        raise OptionError(f'--checkpoint: {checkpoint} does not exist; give a net_g_*.pth of the search.')
    if iteration is None:
        match = re.fullmatch(r'net_g_(\d+)\.pth', osp.basename(checkpoint))
        if not match:
            raise OptionError(f'--iter: missing and {osp.basename(checkpoint)} is not named net_g_<iter>.pth; '
                              'give the iteration of the checkpoint.')
        iteration = int(match.group(1))
    try:
        net = build_network(dict(opt['network_g']))
    except (TypeError, ValueError, KeyError) as error:
        raise OptionError(f'network_g: {error}') from None
    if not getattr(net, 'is_position_supernet', False):
        raise OptionError(f"network_g.type: {opt['network_g'].get('type')} is not a position supernet "
                          '(ACLASuperEDSR or ACLASuperRCAN).')
    net.readout = search['readout']
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)
    state = state.get(param_key, state)
    state = {k[7:] if k.startswith('module.') else k: v for k, v in state.items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise OptionError(f'--checkpoint: {checkpoint} does not fit network_g of {opt_path} '
                          f'({str(error).splitlines()[0]}); give the config the search ran with.') from None
    out_dir = out_dir or osp.dirname(osp.dirname(osp.abspath(checkpoint)))
    os.makedirs(out_dir, exist_ok=True)
    return export_search(out_dir, opt, net, iteration, search, ROOT, source=osp.relpath(checkpoint, ROOT))


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-opt', required=True, type=existing_file, help='the search config (YAML)')
    parser.add_argument('--checkpoint', required=True, type=existing_file, help='net_g_<iter>.pth of the search')
    parser.add_argument('--out', type=output_folder, default=None,
                        help="output folder; default: the checkpoint's experiment folder")
    parser.add_argument('--iter', type=non_negative_int, default=None, help='iteration of the checkpoint')
    args = parser.parse_args(argv)
    try:
        positions, positions_path, config_path = export_from_checkpoint(args.opt, args.checkpoint, args.out,
                                                                        args.iter)
    except OptionError as error:
        fail(error)
    print(f'positions: {positions}')
    print(f'wrote {positions_path}')
    print(f'wrote {config_path}')
    print(f'train the final network: python acla_basicsr/train.py -opt {config_path}')


if __name__ == '__main__':
    main()
