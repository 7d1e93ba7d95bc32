"""Export of the insert-position search: ``searched_positions.yml`` and the final network's training config
(unregistered helpers of :class:`~acla_basicsr.models.acla_search_model.ACLASearchModel` and
``scripts/export_search.py``; the design is documented in docs/search.md)."""
import copy
import os
import os.path as osp

import numpy as np
import yaml

from acla_basicsr import fileio
from acla_basicsr.archs.supernet import most_probable_count
from .search_options import search_temperature

POSITIONS_FILE = 'searched_positions.yml'
CONFIG_FILE = 'train_searched.yml'
# keys basicsr's parse_options adds to the options (dropped from the exported config)
PARSED_KEYS = ('auto_resume', 'is_train', 'dist', 'rank', 'world_size', 'root_path')


def _plain(value):
    """OrderedDicts, tuples and numpy scalars as plain YAML-safe Python values."""
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, int) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_yaml(path, data, header=''):
    """Write ``data`` as YAML (keys in order) to ``path`` through a temporary file and a rename."""
    text = yaml.safe_dump(_plain(data), sort_keys=False, default_flow_style=None, width=120)
    fileio.write_text(path, header + text)


# ---------------------------------------------------------------------- export
def _relative(value, root_path):
    if isinstance(value, str) and root_path and osp.isabs(value):
        rel = osp.relpath(value, root_path)
        if not rel.startswith(os.pardir):
            return rel
    return value


def final_training_options(search_opt, network_opt, root_path=None, name_suffix='_searched', recipe=None):
    """The training config of the final network: the task's recipe (or the search config) with its network replaced.

    ``network_g`` becomes ``network_opt``, ``model_type`` RestorationModel, the name gets ``name_suffix``;
    ``train.search`` and ``train.optim_arch`` go; datasets, train, val, logger and dist_params are kept. With a
    ``recipe`` (the task's training config, ``train.search.final_config``) everything but the name and the
    network comes from it: the final network is trained with the task's iterations, schedule and learning rate,
    not the search's.

    Args:
        search_opt (dict): The search options, as written in the YAML file or as parsed by basicsr (the keys
            parse_options adds are dropped; data paths under ``root_path`` are made relative to it).
        network_opt (dict): ``network_g`` of the final network.
        root_path (str | None): Repository root. Default: None.
        name_suffix (str): Default: '_searched'.
        recipe (dict | None): The task's training config as written in its YAML file. Default: None.

    Returns:
        dict: Options in the order of the search config (or of the recipe).
    """
    out = {}
    if recipe is not None:
        search_opt = dict(copy.deepcopy(recipe), name=search_opt.get('name'))
    for key, value in search_opt.items():
        if key in PARSED_KEYS:
            continue
        value = copy.deepcopy(value)
        if key == 'name':
            value = f'{value}{name_suffix}'
        elif key == 'model_type':
            value = 'RestorationModel'
        elif key == 'num_gpu':
            value = 0 if value == 0 else 'auto'
        elif key == 'datasets':
            for dataset in value.values():
                for k in ('phase', 'scale'):
                    dataset.pop(k, None)
                for k in list(dataset):
                    if k.startswith('dataroot') or k == 'meta_info_file':
                        dataset[k] = _relative(dataset[k], root_path)
        elif key == 'network_g':
            value = dict(network_opt)
        elif key == 'path':
            value = {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None}
        elif key == 'train':
            value.pop('search', None)
            value.pop('optim_arch', None)
        out[key] = value
    return out


def export_search(out_dir, search_opt, net, iteration, search, root_path=None, source=None):
    """Write ``searched_positions.yml`` and the final network's training config into ``out_dir``, atomically.

    Args:
        out_dir (str): Folder (the experiment folder).
        search_opt (dict): The search config (raw YAML or parsed by basicsr before training changed it).
        net (nn.Module): The bare supernet (with ``arch_logits``).
        iteration (int): Search iteration of the logits.
        search (dict): Checked ``train.search`` options (:func:`check_search_options`).
        root_path (str | None): Repository root, to keep data paths relative. Default: None.
        source (str | None): Where the logits come from (a checkpoint), recorded. Default: None.

    Returns:
        tuple[list[int], str, str]: The selected positions and the paths of the two files.
    """
    probs = net.gate_probabilities().cpu().tolist()
    logits = net.arch_logits.detach().cpu().tolist()
    positions = net.selected_positions()
    height, width = search['macs_size']
    backbone = net.backbone_macs(height, width)
    expected = net.expected_attention_macs(height, width, key_gates=False, aggregation=False).item()
    selected = net.expected_attention_macs(height, width, [float(p in positions) for p in net.insert_positions],
                                           key_gates=False, aggregation=False).item()
    network_opt = net.final_network_opt(positions)
    recipe = None
    if search.get('final_config_path'):
        with open(search['final_config_path']) as f:
            recipe = yaml.safe_load(f)
    config = final_training_options(search_opt, network_opt, root_path, recipe=recipe)
    positions_path, config_path = osp.join(out_dir, POSITIONS_FILE), osp.join(out_dir, CONFIG_FILE)
    summary = {
        'search': search_opt.get('name'),
        'iteration': int(iteration),
        'source': source,
        'network': network_opt['type'],
        'positions': positions,
        'candidates': list(net.insert_positions),
        'probabilities': {p: round(v, 4) for p, v in zip(net.insert_positions, probs)},
        'logits': {p: round(v, 4) for p, v in zip(net.insert_positions, logits)},
        'readout': net.readout,
        'sum_probabilities': round(sum(probs), 4),
        'most_probable_count': most_probable_count(probs),
        'lambda': search['lambda'],
        'recipe': search.get('final_config'),
        'temperature': round(search_temperature(search, iteration), 6),
        # at the LR input size below, as torch's flop counter counts them (every key open); ratios are over the
        # backbone's MACs. expected_added: over the position gates; selected_added: the final network
        'macs': {
            'input_size': [height, width],
            'backbone': int(round(backbone)),
            'expected_added': int(round(expected)),
            'expected_added_ratio': round(expected / backbone, 6),
            'selected_added': int(round(selected)),
            'selected_added_ratio': round(selected / backbone, 6),
        },
        'config': _relative(config_path, root_path),
    }
    write_yaml(positions_path, summary,
               '# Insert positions found by the ACLA position search (ACLASearchModel): positions = the readout of\n'
               '# the gate probabilities sigmoid(logit) (most_probable: those above 0.5, or the n most probable\n'
               '# candidates when n, the most probable number open, is more; expected_count: the round(sum P) most\n'
               '# probable; threshold: above 0.5).\n')
    write_yaml(config_path, config,
               f"# Final network of the position search {search_opt.get('name')} at iteration {iteration}: "
               f"{network_opt['type']} with ACLA after {positions or 'no position'}.\n"
               f'# Train it from scratch: python acla_basicsr/train.py -opt {_relative(config_path, root_path)}\n\n')
    return positions, positions_path, config_path
