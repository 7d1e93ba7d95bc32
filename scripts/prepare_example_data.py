#!/usr/bin/env python
"""Build ``datasets/example/``: a small SR data set from the photographs scikit-image ships.

No download: the images come with scikit-image. The layout follows basicsr's DIV2K recipe::

    datasets/example/
        train/HR_sub.lmdb                 HR sub-images (144x144, step 72), basicsr LMDB
        train/LR_bicubic_X{2,3,4}_sub.lmdb   MATLAB-bicubic LR of the same sub-images, same keys
        val/HR/{chelsea,coffee}.png       held-out images, mod-cropped to 12
        val/LR_bicubic/X{2,3,4}/*.png     their MATLAB-bicubic LR

Training images: astronaut, rocket, motorcycle (left view), immunohistochemistry, hubble deep
field; held-out: chelsea, coffee. Everything is built in a temporary folder and renamed at the
end, so an interrupted run leaves nothing half-written; a second run does nothing.

Usage: python scripts/prepare_example_data.py [--root datasets/example] [--force]
"""
import os
import os.path as osp
import shutil
import sys

import numpy as np
from tqdm import tqdm

TRAIN_IMAGES = ('astronaut', 'rocket', 'motorcycle', 'immunohistochemistry', 'hubble_deep_field')
VAL_IMAGES = ('chelsea', 'coffee')
SCALES = (2, 3, 4)
CROP, STEP, MOD = 144, 72, 12
DONE_FILE = 'prepared.txt'


def load_image(name):
    """Return a scikit-image photograph as a uint8 BGR array (OpenCV order, as basicsr expects)."""
    from skimage import data
    img = data.stereo_motorcycle()[0] if name == 'motorcycle' else getattr(data, name)()
    return np.ascontiguousarray(img[..., ::-1])


def mod_crop(img, mod=MOD):
    h, w = img.shape[:2]
    return img[:h - h % mod, :w - w % mod]


def sub_images(img, crop=CROP, step=STEP):
    """Overlapping crops as basicsr's ``extract_subimages`` makes them (last row/column flush with the edge)."""
    from acla_basicsr.data.prepare_util import subimage_positions
    return [(y, x, img[y:y + crop, x:x + crop]) for y, x in subimage_positions(*img.shape[:2], crop, step, 0)]


def build(tmp_root):
    from acla_basicsr.data.prepare_util import bicubic_downscale, write_image
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs

    staging = osp.join(tmp_root, 'staging')
    keys = []
    for name in tqdm(TRAIN_IMAGES, desc='train sub-images', unit='image'):
        hr = mod_crop(load_image(name))
        for index, (_, _, crop) in enumerate(sub_images(hr), start=1):
            key = f'{name}_s{index:03d}'
            keys.append(key)
            write_image(osp.join(staging, 'HR', f'{key}.png'), crop)
            for scale in SCALES:
                write_image(osp.join(staging, f'X{scale}', f'{key}.png'), bicubic_downscale(crop, scale))
    os.makedirs(osp.join(tmp_root, 'train'), exist_ok=True)
    for folder, lmdb_name in [('HR', 'HR_sub.lmdb')] + [(f'X{s}', f'LR_bicubic_X{s}_sub.lmdb') for s in SCALES]:
        make_lmdb_from_imgs(
            osp.join(staging, folder), osp.join(tmp_root, 'train', lmdb_name), [f'{k}.png' for k in keys], keys,
            multiprocessing_read=False)
    shutil.rmtree(staging)
    for name in tqdm(VAL_IMAGES, desc='validation images', unit='image'):
        hr = mod_crop(load_image(name))
        write_image(osp.join(tmp_root, 'val', 'HR', f'{name}.png'), hr)
        for scale in SCALES:
            write_image(osp.join(tmp_root, 'val', 'LR_bicubic', f'X{scale}', f'{name}.png'), bicubic_downscale(hr, scale))
    return keys


def verify(root):
    """Open every key of every LMDB (basicsr's meta_info shapes) and check that LR and HR keys agree."""
    from acla_basicsr.data.prepare_util import verify_train_lmdbs
    return verify_train_lmdbs(root, CROP, SCALES)


def prepare(root, force=False):
    """Build the example data set under ``root`` unless it is already there; return its key count."""
    root = osp.abspath(root)
    if osp.isfile(osp.join(root, DONE_FILE)) and not force:
        print(f'{root} is already prepared; nothing to do (use --force to rebuild).')
        return verify(root)
    from acla_basicsr.fileio import staged_folder
    with staged_folder(root) as tmp_root:
        keys = build(tmp_root)
        verify(tmp_root)
        with open(osp.join(tmp_root, DONE_FILE), 'w') as f:
            f.write(f'{len(keys)} HR sub-images of {CROP}x{CROP} from {", ".join(TRAIN_IMAGES)}; '
                    f'validation: {", ".join(VAL_IMAGES)}; scales {SCALES}\n')
    print(f'Prepared {root}: {len(keys)} training sub-images, {len(VAL_IMAGES)} validation images.')
    return len(keys)


def main(argv=None):
    repo = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
    sys.path.insert(0, repo)
    from acla_basicsr.cli.args import ArgumentParser, output_folder
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--root', type=output_folder, default=osp.join(repo, 'datasets', 'example'),
                        help='output folder')
    parser.add_argument('--force', action='store_true', help='rebuild even if the folder is prepared')
    args = parser.parse_args(argv)
    import acla_basicsr  # noqa: F401  (makes basicsr importable with current torchvision)
    prepare(args.root, args.force)


if __name__ == '__main__':
    main()
