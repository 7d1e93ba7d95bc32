"""Helpers of the data-preparation scripts (``scripts/prepare_sr_lmdb.py``, ``scripts/prepare_benchmark.py``).

Built on basicsr's utilities (``basicsr.utils.matlab_functions.imresize``,
``basicsr.utils.lmdb_util``), since basicsr's own ``scripts/`` are not in its pip package.
Every file is written under a temporary name and renamed, so an interrupted run never leaves a
half-written image behind, and a rerun skips what is already there. An unreadable image stops
the script with a :class:`PrepareError` that names the file.
"""
import os
from os import path as osp

import cv2
import numpy as np

from acla_basicsr import fileio
from acla_basicsr.errors import PrepareError

IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


def list_images(folder):
    """Sorted names of the image files of ``folder`` (no sub-folders, no hidden temporary files)."""
    if not osp.isdir(folder):
        raise PrepareError(f'{folder}: no such folder; give a folder of images.')
    return sorted(v for v in os.listdir(folder) if v.lower().endswith(IMG_EXTENSIONS) and not v.startswith('.'))


def read_image(path):
    """Read an 8-bit image as OpenCV does (gray stays 2-D, alpha is dropped); raise PrepareError if it cannot."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise PrepareError(f'{path}: cannot read it as an 8-bit image (corrupt or unsupported); '
                           'replace or remove the file and run again.')
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    return img


def write_image(path, img, compress_level=3):
    """Write a PNG atomically (:func:`acla_basicsr.fileio.write_image`); PrepareError naming it if it cannot."""
    try:
        fileio.write_image(path, img, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    except OSError as error:
        raise PrepareError(f'{path}: cannot write it ({error}); check the disk space and permissions.') from None


def bicubic_downscale(img, scale):
    """MATLAB-bicubic downscaling (antialiased, ``imresize(img, 1/scale)``) of a uint8 image, rounded to uint8."""
    from basicsr.utils.matlab_functions import imresize
    out = imresize(img.astype(np.float32) / 255., 1. / scale)
    return np.clip(np.round(out * 255.), 0, 255).astype(np.uint8)


def subimage_positions(height, width, crop_size, step, thresh_size):
    """Top-left corners of the sub-images of basicsr's ``extract_subimages``.

    Crops of ``crop_size`` every ``step`` pixels; one more flush with the bottom (right) edge
    when more than ``thresh_size`` pixels would otherwise be left out. An image smaller than
    ``crop_size`` gives none.
    """
    def starts(length):
        if length < crop_size:
            return []
        space = list(range(0, length - crop_size + 1, step))
        if length - (space[-1] + crop_size) > thresh_size:
            space.append(length - crop_size)
        return space

    return [(y, x) for y in starts(height) for x in starts(width)]


def read_meta_info(lmdb_path):
    """Keys and shapes listed in a basicsr LMDB's ``meta_info.txt``: [(key, (h, w, c)), ...]."""
    meta = osp.join(lmdb_path, 'meta_info.txt')
    if not osp.isfile(meta):
        raise PrepareError(f'{lmdb_path}: no meta_info.txt; rebuild the LMDB (delete it and run again).')
    entries = []
    with open(meta) as f:
        for line in f:
            if line.strip():
                name, shape = line.split()[:2]
                entries.append((osp.splitext(name)[0], tuple(int(v) for v in shape.strip('()').split(','))))
    return entries


def verify_lmdb(lmdb_path, desc=None):
    """Open and decode every key of a basicsr LMDB; check each against its meta_info shape.

    Returns:
        list[tuple]: The (key, shape) entries of ``meta_info.txt``.
    """
    import lmdb
    from tqdm import tqdm

    entries = read_meta_info(lmdb_path)
    env = lmdb.open(lmdb_path, readonly=True, lock=False, readahead=False, meminit=False)
    try:
        with env.begin(write=False) as txn:
            if txn.stat()['entries'] != len(entries):
                raise PrepareError(f"{lmdb_path}: {txn.stat()['entries']} keys but {len(entries)} lines in "
                                   'meta_info.txt; rebuild the LMDB (delete it and run again).')
            for key, shape in tqdm(entries, desc=desc or f'verify {osp.basename(lmdb_path)}', unit='key'):
                buf = txn.get(key.encode('ascii'))
                img = None if buf is None else cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED)
                got = None if img is None else (img.shape if img.ndim == 3 else img.shape + (1, ))
                if got != shape:
                    raise PrepareError(f'{lmdb_path}: key {key} is {"missing or unreadable" if got is None else got}, '
                                       f'meta_info says {shape}; rebuild the LMDB (delete it and run again).')
    finally:
        env.close()
    return entries


def verify_train_lmdbs(root, crop, scales):
    """Check the LMDBs ``root/train/HR_sub.lmdb`` and ``LR_bicubic_X{s}_sub.lmdb`` of a prepared SR set: every key
    decodes, HR sub-images are ``crop`` pixels and LR ones ``crop // s``, and all hold the same keys.

    Returns:
        int: The number of sub-images.

    Raises:
        PrepareError: naming the LMDB that differs.
    """
    keys = None
    for name, size in [('HR_sub.lmdb', crop)] + [(f'LR_bicubic_X{s}_sub.lmdb', crop // s) for s in scales]:
        path = osp.join(root, 'train', name)
        entries = verify_lmdb(path)
        keys = keys or [k for k, _ in entries]
        if [k for k, _ in entries] != keys or any(shape != (size, size, 3) for _, shape in entries):
            raise PrepareError(f'{path}: keys or sizes differ from HR_sub.lmdb; rebuild with --force.')
    return len(keys)
