"""Options, temperature schedule, export and heat map of the insert-position search (unregistered helpers).

Used by :class:`acla_basicsr.models.acla_search_model.ACLASearchModel` and ``scripts/export_search.py``;
the design is documented in docs/search.md.
"""
import copy
import math
import os
import os.path as osp
import tempfile

import cv2
import numpy as np
import yaml

from acla_basicsr.utils import OptionError
from .schedule_options import anneal, check_macs_size, default_macs_size, number

SEARCH_DEFAULTS = {
    'lambda': None,  # required
    'temperature_start': 1.0,
    'temperature_end': 0.1,
    'anneal_iter': None,  # default: train.total_iter
    'straight_through': False,
    'mode': 'joint',
    'arch_fraction': 0.5,
    'arch_start_iter': 0,
    'macs_size': None,  # default: datasets.train.gt_size // scale
    'final_config': None,  # the task's training config whose recipe train_searched.yml takes
}
OPTIM_ARCH_DEFAULTS = {'type': 'Adam', 'lr': 1e-3, 'betas': [0.5, 0.999], 'weight_decay': 0}
MODES = ('joint', 'alternate')
POSITIONS_FILE = 'searched_positions.yml'
CONFIG_FILE = 'train_searched.yml'
HISTORY_FILE = 'gate_history.csv'
HEATMAP_FILE = 'gate_heatmap.png'
# keys basicsr's parse_options adds to the options (dropped from the exported config)
PARSED_KEYS = ('auto_resume', 'is_train', 'dist', 'rank', 'world_size', 'root_path')


def _number(value, key, low=None, strict=False, integer=False):
    return number(value, f'train.search.{key}', low, strict, integer)


def check_search_options(opt):
    """Check ``train.search`` and ``train.optim_arch`` of a search config; return the completed search options.

    Args:
        opt (dict): Parsed options of a training run with ``model_type: ACLASearchModel``.

    Returns:
        dict: ``train.search`` with defaults filled in; ``macs_size`` as (height, width) and
        ``optim_arch`` (completed) added.

    Raises:
        OptionError: one line naming the option and the fix.
    """
    train = opt.get('train') or {}
    search = train.get('search')
    if not isinstance(search, dict):
        raise OptionError('train.search: missing; the position search needs at least train.search.lambda '
                          '(weight of the expected added MACs / backbone MACs, e.g. 0.15 as ACLA Table 9).')
    unknown = sorted(set(search) - set(SEARCH_DEFAULTS) - {'final_config_path'})
    if unknown:
        raise OptionError(f"train.search.{unknown[0]}: unknown option; known: {', '.join(SEARCH_DEFAULTS)}.")
    result = dict(SEARCH_DEFAULTS, **search)
    if result['lambda'] is None:
        raise OptionError('train.search.lambda: missing; give the weight of the MAC penalty (>= 0, e.g. 0.15).')
    lam = _number(result['lambda'], 'lambda')
    if lam < 0:
        raise OptionError(f'train.search.lambda: {lam:g} is negative; use a weight >= 0 (0: no MAC penalty; '
                          'ACLA Table 9 uses 0.15-0.3).')
    result['lambda'] = lam
    result['temperature_start'] = _number(result['temperature_start'], 'temperature_start', 0, strict=True)
    result['temperature_end'] = _number(result['temperature_end'], 'temperature_end', 0, strict=True)
    total_iter = int(train.get('total_iter') or 1)
    result['anneal_iter'] = _number(result['anneal_iter'] or total_iter, 'anneal_iter', 1, integer=True)
    result['arch_start_iter'] = _number(result['arch_start_iter'], 'arch_start_iter', 0, integer=True)
    if not isinstance(result['straight_through'], bool):
        raise OptionError(f"train.search.straight_through: {result['straight_through']!r} is not true or false.")
    if result['mode'] not in MODES:
        raise OptionError(f"train.search.mode: {result['mode']!r} is unknown; use joint (one-shot, default) or "
                          'alternate (weights and logits stepped on disjoint parts of each batch).')
    result['arch_fraction'] = _number(result['arch_fraction'], 'arch_fraction', 0, strict=True)
    if result['arch_fraction'] >= 1:
        raise OptionError(f"train.search.arch_fraction: {result['arch_fraction']:g} must be < 1 (the part of each "
                          'batch that steps the logits; the rest steps the weights).')
    train_set = (opt.get('datasets') or {}).get('train') or {}
    if result['mode'] == 'alternate' and int(train_set.get('batch_size_per_gpu', 0)) < 2:
        raise OptionError('datasets.train.batch_size_per_gpu: mode alternate splits each batch into a weights part '
                          'and an architecture part; use a batch of at least 2.')
    size = result['macs_size']
    if size is None:
        size = default_macs_size(opt, 'train.search.macs_size')
    result['macs_size'] = check_macs_size(size, 'train.search.macs_size')
    final = result['final_config']
    if final is not None:
        path = final if osp.isabs(final) or opt.get('root_path') is None else osp.join(opt['root_path'], final)
        if not isinstance(final, str) or not osp.isfile(path):
            raise OptionError(f'train.search.final_config: {final!r} is not a file; give the training config of the '
                              "task (e.g. options/train/ACLA_SRx2.yml) whose recipe the final network takes, or ~.")
        result['final_config_path'] = path
    if train.get('macs_penalty') is not None:
        raise OptionError('train.macs_penalty: a search takes its MAC term from train.search.lambda (it covers the '
                          'positions and the open keys); remove train.macs_penalty.')
    if float(train.get('ema_decay') or 0) > 0:
        raise OptionError('train.ema_decay: the position search needs 0 (an EMA copy would average the '
                          'architecture logits and validate another selection); set ema_decay: 0.')
    optim_arch = dict(OPTIM_ARCH_DEFAULTS, **(train.get('optim_arch') or {}))
    if optim_arch['type'] != 'Adam':
        raise OptionError(f"train.optim_arch.type: {optim_arch['type']!r}; the architecture optimizer is Adam.")
    if not float(optim_arch['lr']) > 0:
        raise OptionError(f"train.optim_arch.lr: {optim_arch['lr']!r} must be > 0.")
    result['optim_arch'] = optim_arch
    return result


def search_temperature(search, current_iter):
    """Temperature of the position gates at an iteration: exponential from start to end over anneal_iter.

    ``tau(t) = start * (end / start) ** min(t / anneal_iter, 1)``; a function of the iteration only, so a
    resumed search continues the schedule.
    """
    return anneal(search['temperature_start'], search['temperature_end'], search['anneal_iter'], current_iter)


# ---------------------------------------------------------------------- atomic writes
def _atomic_write(path, data):
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path), suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


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
    _atomic_write(path, (header + text).encode())


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
               '# Insert positions found by the ACLA position search (ACLASearchModel): positions = candidates\n'
               '# whose gate probability sigmoid(logit) is above 0.5.\n')
    write_yaml(config_path, config,
               f"# Final network of the position search {search_opt.get('name')} at iteration {iteration}: "
               f"{network_opt['type']} with ACLA after {positions or 'no position'}.\n"
               f'# Train it from scratch: python acla_basicsr/train.py -opt {_relative(config_path, root_path)}\n\n')
    return positions, positions_path, config_path


# ---------------------------------------------------------------------- history and heat map
def update_history(path, iteration, positions, probs):
    """Add (or replace) the row of ``iteration`` in the CSV of gate probabilities; return (iters, probs).

    Rows of later iterations (left by a run that was resumed from an earlier state) are dropped.
    """
    iterations, rows = [], []
    header = 'iter,' + ','.join(f'p{p}' for p in positions)
    if osp.isfile(path):
        with open(path) as f:
            lines = f.read().splitlines()
        if lines and lines[0] == header:
            for line in lines[1:]:
                values = line.split(',')
                if len(values) == len(positions) + 1 and int(values[0]) < iteration:
                    iterations.append(int(values[0]))
                    rows.append([float(v) for v in values[1:]])
    iterations.append(int(iteration))
    rows.append([float(v) for v in probs])
    text = '\n'.join([header] + [f'{i},' + ','.join(f'{v:.6f}' for v in r) for i, r in zip(iterations, rows)])
    _atomic_write(path, (text + '\n').encode())
    return iterations, np.array(rows)


def _text(img, text, org, scale=0.4, color=(0, 0, 0), thickness=1):
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)


def _text_size(text, scale=0.4, thickness=1):
    return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0]


def draw_heatmap(iterations, positions, probs, title='gate probability P(open)'):
    """A heat map of gate probabilities (rows: positions, columns: iterations) as a BGR uint8 image.

    Cells are coloured with the viridis map on [0, 1]; a white dot marks P > 0.5 (open). Axes: insert
    position (1-indexed block or group) on the left, search iteration at the bottom, a colour bar on the right.

    Args:
        iterations (list[int]): Column labels.
        positions (list[int]): Row labels.
        probs (ndarray): (len(iterations), len(positions)) probabilities.
        title (str): Drawn at the top.

    Returns:
        ndarray: (H, W, 3) uint8 image.
    """
    probs = np.asarray(probs, dtype=np.float64).reshape(len(iterations), len(positions))
    num_cols, num_rows = len(iterations), len(positions)
    cw = int(np.clip(640 // max(num_cols, 1), 8, 48))
    ch = int(np.clip(480 // max(num_rows, 1), 10, 28))
    left, top, right, bottom = 80, 40, 90, 60
    width, height = left + cw * num_cols + right, top + ch * num_rows + bottom
    img = np.full((height, max(width, 360), 3), 255, np.uint8)
    cells = np.clip(np.round(probs.T * 255), 0, 255).astype(np.uint8)  # (rows, cols)
    colours = cv2.applyColorMap(cells, cv2.COLORMAP_VIRIDIS)
    img[top:top + ch * num_rows, left:left + cw * num_cols] = cv2.resize(
        colours, (cw * num_cols, ch * num_rows), interpolation=cv2.INTER_NEAREST)
    for r in range(num_rows):
        for c in range(num_cols):
            if probs[c, r] > 0.5:
                cv2.circle(img, (left + c * cw + cw // 2, top + r * ch + ch // 2), max(2, min(cw, ch) // 6),
                           (255, 255, 255), -1, cv2.LINE_AA)
    cv2.rectangle(img, (left - 1, top - 1), (left + cw * num_cols, top + ch * num_rows), (0, 0, 0), 1)
    # y axis: one label per row when they fit, else every k-th
    step = max(1, math.ceil(12 / ch))
    for r in range(0, num_rows, step):
        label = str(positions[r])
        tw, th = _text_size(label)
        _text(img, label, (left - 6 - tw, top + r * ch + ch // 2 + th // 2))
    axis = np.full((20, ch * num_rows), 255, np.uint8)
    name = 'insert position'
    tw, th = _text_size(name)
    cv2.putText(axis, name, (max(0, (axis.shape[1] - tw) // 2), 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 0, 1,
                cv2.LINE_AA)
    axis = cv2.rotate(axis, cv2.ROTATE_90_COUNTERCLOCKWISE)
    img[top:top + axis.shape[0], 8:8 + axis.shape[1]] = np.minimum(img[top:top + axis.shape[0], 8:8 + axis.shape[1]],
                                                                    axis[..., None])
    # x axis: iteration labels 12 px apart at least
    step = max(1, math.ceil((max(_text_size(str(v))[0] for v in iterations) + 12) / cw))
    ticks = list(range(0, num_cols, step))
    if ticks[-1] != num_cols - 1:  # always label the last column, replacing a tick that would overlap it
        ticks[-1 if num_cols - 1 - ticks[-1] < step and len(ticks) > 1 else len(ticks):] = [num_cols - 1]
    for c in ticks:
        label = str(iterations[c])
        tw, th = _text_size(label)
        x = left + c * cw + cw // 2
        cv2.line(img, (x, top + ch * num_rows), (x, top + ch * num_rows + 4), (0, 0, 0), 1)
        _text(img, label, (x - tw // 2, top + ch * num_rows + 8 + th))
    name = 'search iteration'
    tw, _ = _text_size(name)
    _text(img, name, (left + (cw * num_cols - tw) // 2, height - 12))
    _text(img, title, (left, 24), 0.5)
    # colour bar
    bar_h = ch * num_rows
    bar_x = left + cw * num_cols + 20
    ramp = np.linspace(255, 0, bar_h).round().astype(np.uint8).reshape(-1, 1)
    img[top:top + bar_h, bar_x:bar_x + 14] = cv2.applyColorMap(np.repeat(ramp, 14, 1), cv2.COLORMAP_VIRIDIS)
    cv2.rectangle(img, (bar_x - 1, top - 1), (bar_x + 14, top + bar_h), (0, 0, 0), 1)
    for value in (0.0, 0.5, 1.0):
        y = top + int(round((1 - value) * (bar_h - 1)))
        cv2.line(img, (bar_x + 14, y), (bar_x + 18, y), (0, 0, 0), 1)
        _text(img, f'{value:.1f}', (bar_x + 21, y + 4))
    return img


def write_heatmap(path, iterations, positions, probs):
    """Draw :func:`draw_heatmap` and write it as a PNG, atomically; return the image."""
    img = draw_heatmap(iterations, positions, probs)
    ok, data = cv2.imencode('.png', img)
    if not ok:
        raise RuntimeError(f'cannot encode the heat map {path}')
    _atomic_write(path, data.tobytes())
    return img
