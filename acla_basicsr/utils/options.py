"""Checks of a parsed options dict, run before basicsr writes anything to ``experiments/``.

basicsr finds a wrong option deep inside training (a ``KeyError`` from a registry, an
``AssertionError`` from a dataset) after it has created the experiment folder. The entry points
call :func:`check_options` right after ``parse_options``, so bad input ends with one line that
names the option and the fix, and nothing is written.

A registered dataset may define a ``check_options(opt)`` static method; it is called here with
the dataset's options and raises :class:`OptionError` for what it rejects. A registered model
may define a ``check_options(opt)`` class method, called with the whole options dict.
"""
import logging
from os import path as osp

from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY

from acla_basicsr.data.prepare_util import list_images, read_meta_info

class OptionError(ValueError):
    """A wrong option or input file; its message is one line that names it and says the fix."""


def _require_registered(registry, name, where):
    if name is None:
        raise OptionError(f'{where}: missing; set it to one of the registered names.')
    if name not in registry:
        known = ', '.join(sorted(k for k in registry.keys() if not k.endswith('_basicsr')))
        raise OptionError(f"{where}: unknown {registry._name} type '{name}'; registered: {known}.")


def _read_meta_info(lmdb_path, where):
    if not osp.isfile(osp.join(lmdb_path, 'data.mdb')):
        raise OptionError(f'{where}: {lmdb_path} is not an LMDB made by basicsr (data.mdb and meta_info.txt '
                          'expected); build it with scripts/prepare_example_data.py or scripts/prepare_sr_lmdb.py.')
    if not osp.isfile(osp.join(lmdb_path, 'meta_info.txt')):
        raise OptionError(f'{where}: {lmdb_path} has no meta_info.txt (basicsr reads the keys of an LMDB from it); '
                          'rebuild the LMDB with scripts/prepare_sr_lmdb.py.')
    return dict(read_meta_info(lmdb_path))


def _image_size(path, where):
    """(height, width) of an image file from its header (no decoding), or OptionError naming the file."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception:
        raise OptionError(f'{where}: cannot read {path}; replace or remove the file.') from None
    return height, width


def _check_paired(dataset_opt, where, scale, num_decoded=8):
    """Paired LQ/GT data: both exist, are non-empty, hold the same names, and differ by ``scale``.

    Every pair's sizes are compared (from an LMDB's meta_info.txt, or from each image file's header); the
    first ``num_decoded`` pairs of a folder are decoded too, as basicsr will. Returns the (GT, LQ) sizes,
    (height, width) each, of every pair.
    """
    gt, lq = dataset_opt.get('dataroot_gt'), dataset_opt.get('dataroot_lq')
    lmdb = dataset_opt.get('io_backend', {}).get('type') == 'lmdb'
    if lmdb:
        gt_shapes = _read_meta_info(gt, f'{where}.dataroot_gt')
        lq_shapes = _read_meta_info(lq, f'{where}.dataroot_lq')
    else:
        tmpl = dataset_opt.get('filename_tmpl', '{}')
        for key, folder in (('dataroot_gt', gt), ('dataroot_lq', lq)):
            if not osp.isdir(folder):
                raise OptionError(f'{where}.{key}: {folder} is not a folder; give a folder of images, or an LMDB '
                                  'with io_backend: {type: lmdb}.')
        gt_names = {osp.splitext(v)[0]: v for v in list_images(gt)}
        lq_names = {osp.splitext(v)[0]: v for v in list_images(lq)}
        gt_shapes = {k: None for k in gt_names}
        lq_shapes = {tmpl.format(k): None for k in gt_names}
        if set(lq_shapes) - set(lq_names):
            missing = sorted(set(lq_shapes) - set(lq_names))
            raise OptionError(f'{where}: {len(missing)} GT images have no LQ partner in {lq} (first: {missing[0]}); '
                              'regenerate the LQ folder or fix filename_tmpl.')
        lq_shapes = {k: v for k, v in lq_names.items()}
    if not gt_shapes:
        raise OptionError(f'{where}.dataroot_gt: {gt} holds no images; point it at a folder or LMDB of images.')
    if len(gt_shapes) != len(lq_shapes):
        raise OptionError(f'{where}: {len(lq_shapes)} LQ images in {lq} but {len(gt_shapes)} GT images in {gt}; '
                          'the two must hold the same images.')
    if lmdb:
        if set(gt_shapes) != set(lq_shapes):
            key = sorted(set(gt_shapes) ^ set(lq_shapes))[0]
            raise OptionError(f'{where}: key {key} is in only one of {gt} and {lq}; rebuild both LMDBs together.')
        pairs = [(k, gt_shapes[k][:2], lq_shapes[k][:2]) for k in sorted(gt_shapes)]
    else:
        import cv2
        for k in sorted(gt_names)[:num_decoded]:
            for path in (osp.join(gt, gt_names[k]), osp.join(lq, lq_shapes[tmpl.format(k)])):
                if cv2.imread(path, cv2.IMREAD_UNCHANGED) is None:
                    raise OptionError(f'{where}: cannot read {path}; replace or remove the file.')
        pairs = [(k, _image_size(osp.join(gt, gt_names[k]), where),
                  _image_size(osp.join(lq, lq_shapes[tmpl.format(k)]), where)) for k in sorted(gt_names)]
    for key, g, q in pairs:
        if not (q[0] * scale <= g[0] < (q[0] + 1) * scale and q[1] * scale <= g[1] < (q[1] + 1) * scale):
            raise OptionError(f'{where}: image {key} is {g[1]}x{g[0]} (GT) and {q[1]}x{q[0]} (LQ), which is not '
                              f'scale {scale}; set scale to the factor the LQ images were made with.')
    return [(g, q) for _, g, q in pairs]


def _check_training_sizes(dataset_opt, where, scale, sizes, world_size=1):
    """``gt_size`` fits every training image (and its LQ partner); one batch fits in an epoch.

    Args:
        sizes (list): (GT size, LQ size or None) per image, each (height, width).
    """
    gt_size = dataset_opt.get('gt_size')
    if gt_size and sizes:
        smallest_gt = min(min(g) for g, _ in sizes)
        lq_sizes = [min(q) for _, q in sizes if q is not None]
        if gt_size > smallest_gt:
            raise OptionError(f'{where}.gt_size: {gt_size} is larger than the smallest training image '
                              f'({smallest_gt} pixels on a side); use at most {smallest_gt // scale * scale}.')
        if lq_sizes and gt_size // scale > min(lq_sizes):
            raise OptionError(f'{where}.gt_size: {gt_size} needs LQ patches of {gt_size // scale} but the smallest LQ '
                              f'image has {min(lq_sizes)} pixels on a side; use at most {min(lq_sizes) * scale}.')
    batch = dataset_opt.get('batch_size_per_gpu')
    ratio = dataset_opt.get('dataset_enlarge_ratio', 1) or 1
    if batch and sizes and batch * world_size > len(sizes) * ratio:
        raise OptionError(f'{where}.batch_size_per_gpu: {batch} (x {world_size} processes) is more than the '
                          f'{len(sizes)} images x dataset_enlarge_ratio {ratio}, so no full batch is ever drawn; '
                          f'lower the batch or raise dataset_enlarge_ratio to at least '
                          f'{-(-batch * world_size // len(sizes))}.')


def check_dataset(dataset_opt, phase, scale, world_size=1):
    """Check one entry of ``opt['datasets']``; raise :class:`OptionError` for the first problem.

    A registered dataset may define ``image_sizes(opt)`` (a static method returning the (height, width) of
    every image) so that its ``gt_size`` and batch size are checked against its data too.
    """
    where = f'datasets.{phase}'
    _require_registered(DATASET_REGISTRY, dataset_opt.get('type'), f'{where}.type')
    for key, value in dataset_opt.items():
        if key.startswith('dataroot') and value is not None and not osp.exists(value):
            raise OptionError(f'{where}.{key}: {value} does not exist; run scripts/prepare_example_data.py '
                              '(example data) or point it at your data (see datasets/README.md).')
        if key == 'meta_info_file' and value is not None and not osp.isfile(value):
            raise OptionError(f'{where}.meta_info_file: {value} does not exist; give the meta_info.txt of the data.')
    if dataset_opt.get('phase') == 'train':
        gt_size = dataset_opt.get('gt_size')
        if gt_size is not None and scale and gt_size % scale != 0:
            raise OptionError(f'{where}.gt_size: {gt_size} is not divisible by scale {scale}; '
                              f'use a multiple of {scale}, e.g. {gt_size // scale * scale or scale}.')
    cls = DATASET_REGISTRY.get(dataset_opt['type'])
    sizes = None
    if hasattr(cls, 'check_options'):
        cls.check_options(dataset_opt)
        if hasattr(cls, 'image_sizes'):  # e.g. DegradedImageDataset: GT sizes only
            sizes = [(g, None) for g in cls.image_sizes(dataset_opt)]
    elif dataset_opt.get('dataroot_gt') and dataset_opt.get('dataroot_lq'):
        sizes = _check_paired(dataset_opt, where, scale or 1)
    if dataset_opt.get('phase') == 'train' and sizes is not None:
        _check_training_sizes(dataset_opt, where, scale or 1, sizes, world_size)


def check_options(opt):
    """Check the keys and their types (:mod:`acla_basicsr.utils.options_schema`), the registered types, data
    paths and sizes of a parsed basicsr options dict.

    Args:
        opt (dict): Options returned by ``basicsr.utils.options.parse_options``.

    Raises:
        OptionError: naming the first wrong option and how to fix it.
    """
    from acla_basicsr.utils.options_schema import check_schema
    # unknown and mistyped keys first (acla_basicsr/utils/options_schema.py); the launcher checked the required
    # ones in the file before basicsr parsed it
    check_schema(opt, required=False)
    _require_registered(MODEL_REGISTRY, opt.get('model_type'), 'model_type')
    scale = opt.get('scale', 1)
    if not isinstance(scale, int) or scale < 1:
        raise OptionError(f'scale: {scale!r} is not a positive integer; use 1 (restoration), 2, 3 or 4.')
    for key in [k for k in opt if k.startswith('network_')]:
        _require_registered(ARCH_REGISTRY, opt[key].get('type'), f'{key}.type')
        arch = dict(opt[key])
        cls = ARCH_REGISTRY.get(arch.pop('type'))
        if arch.get('upscale', scale) != scale:
            raise OptionError(f"{key}.upscale: {arch['upscale']} differs from scale {scale}; make them equal.")
        try:
            cls(**arch)
        except (TypeError, ValueError) as error:
            raise OptionError(f'{key}: {error}') from None
    model_cls = MODEL_REGISTRY.get(opt['model_type'])
    if hasattr(model_cls, 'check_options'):
        model_cls.check_options(opt)
    if opt.get('is_train'):
        for key, value in opt.get('train', {}).items():
            if key.endswith('_opt') and isinstance(value, dict) and 'type' in value:
                _require_registered(LOSS_REGISTRY, value['type'], f'train.{key}.type')
                loss_cls = LOSS_REGISTRY.get(value['type'])
                if hasattr(loss_cls, 'check_options'):  # e.g. a missing VGG19 weights file
                    try:
                        loss_cls.check_options(value)
                    except ValueError as error:
                        raise OptionError(f'train.{key}.{error}') from None
        for index, value in enumerate(opt.get('train', {}).get('network_opt') or []):
            _require_registered(LOSS_REGISTRY, value.get('type'), f'train.network_opt[{index}].type')
            try:  # losses on the network are light to build; build them to check their arguments
                LOSS_REGISTRY.get(value['type'])(**{k: v for k, v in value.items() if k not in ('type', 'name')})
            except (TypeError, ValueError) as error:
                raise OptionError(f'train.network_opt[{index}]: {error}') from None
        if not any(p == 'train' for p in opt['datasets']):
            raise OptionError('datasets.train: missing; a training config needs a train dataset.')
    if not opt.get('datasets'):
        raise OptionError('datasets: empty; give at least one dataset.')
    for phase, dataset_opt in opt['datasets'].items():
        check_dataset(dataset_opt, phase, scale, opt.get('world_size', 1) if opt.get('dist') else 1)
    for key, value in opt.get('path', {}).items():
        if key.startswith('pretrain_network') and value is not None and not osp.isfile(value):
            raise OptionError(f'path.{key}: {value} does not exist; give a local .pth file or ~ to train from scratch.')
    # Building networks and datasets above may have initialised basicsr's logger without its log
    # file; forget it so that the pipeline sets it up with the file, as it expects.
    from basicsr.utils import logger as basicsr_logger
    if basicsr_logger.initialized_logger.pop('basicsr', None):
        logging.getLogger('basicsr').handlers.clear()
