"""Checks of the data that a run will read, before anything is written: paths, LQ/GT pairs, scales, sizes.

Called for every dataset of the options by :func:`acla_basicsr.config.checks.check_options`. A registered
dataset may define ``check_options(opt)`` (a static method that raises :class:`OptionError` for what it
rejects) and ``image_sizes(opt)`` (the (height, width) of every image), so that its ``gt_size`` and batch
size are checked against its data too.
"""
from os import path as osp

from basicsr.utils.registry import DATASET_REGISTRY

from acla_basicsr.option_spec import registered_class
from acla_basicsr.data.prepare_util import list_images, read_meta_info
from acla_basicsr.errors import OptionError


def _read_meta_info(lmdb_path, where):
    if not osp.isfile(osp.join(lmdb_path, 'data.mdb')):
        raise OptionError(f'{where}: {lmdb_path} is not an LMDB made by basicsr (data.mdb and meta_info.txt '
                          'expected); build it with scripts/prepare_example_data.py or scripts/prepare_sr_lmdb.py.')
    if not osp.isfile(osp.join(lmdb_path, 'meta_info.txt')):
        raise OptionError(f'{where}: {lmdb_path} has no meta_info.txt (basicsr reads the keys of an LMDB from it); '
                          'rebuild the LMDB with scripts/prepare_sr_lmdb.py.')
    return dict(read_meta_info(lmdb_path))


def image_size(path):
    """(width, height) of an image file from its header (read with Pillow, no decoding, before any EXIF
    rotation); None when Pillow cannot read it."""
    try:
        from PIL import Image
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: B902  (not an image Pillow knows, no Pillow, a damaged header)
        return None


def _image_size(path, where):
    """(height, width) of an image file from its header (no decoding), or OptionError naming the file."""
    size = image_size(path)
    if size is None:
        raise OptionError(f'{where}: cannot read {path}; replace or remove the file.')
    return size[1], size[0]


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
    cls = registered_class(DATASET_REGISTRY, dataset_opt.get('type'), f'{where}.type')
    for key, value in dataset_opt.items():
        if key.startswith('dataroot') and value is not None and not osp.exists(value):
            raise OptionError(f'{where}.{key}: {value} does not exist; run scripts/prepare_example_data.py '
                              '(example data) or point it at your data (see datasets/README.md).')
        if key == 'meta_info_file' and value is not None and not osp.isfile(value):
            raise OptionError(f'{where}.meta_info_file: {value} does not exist; give the meta_info.txt of the data.')
    if dataset_opt.get('skip_bad_images') and dataset_opt.get('phase') != 'train':
        raise OptionError(f'{where}.skip_bad_images: only training sets skip images (a skipped {phase} image would '
                          'change the results); remove the option and restore or remove the bad image.')
    if dataset_opt.get('phase') == 'train':
        gt_size = dataset_opt.get('gt_size')
        if gt_size is not None and scale and gt_size % scale != 0:
            raise OptionError(f'{where}.gt_size: {gt_size} is not divisible by scale {scale}; '
                              f'use a multiple of {scale}, e.g. {gt_size // scale * scale or scale}.')
    sizes = None
    if hasattr(cls, 'check_options'):
        cls.check_options(dataset_opt)
        if hasattr(cls, 'image_sizes'):  # e.g. DegradedImageDataset: GT sizes only
            sizes = [(g, None) for g in cls.image_sizes(dataset_opt)]
    elif dataset_opt.get('dataroot_gt') and dataset_opt.get('dataroot_lq'):
        sizes = _check_paired(dataset_opt, where, scale or 1)
    if dataset_opt.get('phase') == 'train' and sizes is not None:
        _check_training_sizes(dataset_opt, where, scale or 1, sizes, world_size)


