#!/usr/bin/env python
"""Build ``datasets/compare/``: an SR x2 training set of several thousand sub-images for CPU comparisons.

The example set (``scripts/prepare_example_data.py``, 315 sub-images of five photographs) is too
small for runs of thousands of iterations. This sibling script cuts more images into sub-images,
with no download, from three sources, in this order:

- ``skimage``: the example set's five training photographs (``prepare_example_data.TRAIN_IMAGES``:
  astronaut, rocket, motorcycle (left view), immunohistochemistry, hubble deep field). Its two
  held-out images (chelsea, coffee) are left out, so that ``datasets/example/val`` stays held out;
- ``Sun_Hays80``: the 80 JPEG scene photographs (about 1024 px) of ``<shared>/Sun_Hays80``;
- ``CBSD68``: the 68 PNG photographs (481 x 321) of ``<shared>/CBSD68``. They are 68 of the
  100 images of B100 (BSD100): a network trained on this set must not be tested on B100.

Never Set5, Set14 or another SR test set. Every image (gray ones to 3 channels, alpha dropped) is
cut into ``--crop`` x ``--crop`` sub-images every ``--step`` pixels, plus one flush with the
bottom / right edge when more would be left out (``prepare_util.subimage_positions``, basicsr's
``extract_subimages`` rule); every sub-image is downscaled with MATLAB's bicubic
(``prepare_util.bicubic_downscale``) by each scale. Both go straight into basicsr LMDBs
(``basicsr.utils.lmdb_util.LmdbMaker``, the same keys in all)::

    datasets/compare/
        train/HR_sub.lmdb                  HR sub-images, keys <source>_<image>_s001, ...
        train/LR_bicubic_X2_sub.lmdb       MATLAB-bicubic LR (and X3, X4 with --scales)
        prepared.txt                       the sources, the options and the counts

Deterministic: sorted file names, fixed order, PNG level 1; two runs give the same keys and bytes.
Built in a temporary folder and renamed at the end; a second run only verifies (``--force``
rebuilds). A missing source folder, or one without images, ends the script before it writes
anything, with one line and exit status 2, as does an unreadable image.

Usage::

    python scripts/prepare_compare_data.py [--shared ../shared/datasets] [--root datasets/compare]
        [--crop 120] [--step 120] [--scales 2] [--limit N] [--force]

``--limit N`` takes the first N images of each source (a quick build for tests).
"""
import os
import os.path as osp
import sys

REPO = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
sys.path.insert(0, REPO)
from acla_basicsr.cli.args import ArgumentParser, output_folder, positive_int  # noqa: E402
SOURCES = ('skimage', 'Sun_Hays80', 'CBSD68')
DONE_FILE = 'prepared.txt'


def source_images(shared, limit=None):
    """[(source, image name, loader)] in build order; raise PrepareError for a missing or empty folder."""
    from acla_basicsr.data.prepare_util import PrepareError, list_images, read_image
    from prepare_example_data import TRAIN_IMAGES, load_image

    folders = {name: osp.join(shared, name) for name in SOURCES[1:]}
    items = [('skimage', name, lambda name=name: load_image(name)) for name in TRAIN_IMAGES[:limit]]
    for source, folder in folders.items():
        if not osp.isdir(folder):
            raise PrepareError(f'{folder}: no such folder; give the folder of the benchmark images with '
                               f'--shared (it must hold {", ".join(SOURCES[1:])}).')
        names = list_images(folder)[:limit]
        if not names:
            raise PrepareError(f'{folder}: no images in it; copy the {source} images there (see '
                               f'{osp.join(shared, "README.md")}).')
        items += [(source, osp.splitext(v)[0], lambda path=osp.join(folder, v): read_image(path)) for v in names]
    return items


def to_bgr3(img):
    """A uint8 image with 3 channels: gray repeated, as PairedImageDataset reads an RGB training pair."""
    import numpy as np
    return np.ascontiguousarray(np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img)


def build(tmp_root, items, crop, step, scales):
    """Write the LMDBs of every sub-image of ``items`` into ``tmp_root/train``; return the counts per source."""
    import cv2
    from basicsr.utils.lmdb_util import LmdbMaker
    from tqdm import tqdm

    from acla_basicsr.data.prepare_util import bicubic_downscale, subimage_positions

    train = osp.join(tmp_root, 'train')
    os.makedirs(train)
    names = [('HR', 1)] + [(f'X{s}', s) for s in scales]
    makers = {folder: LmdbMaker(osp.join(train, 'HR_sub.lmdb' if s == 1 else f'LR_bicubic_X{s}_sub.lmdb'))
              for folder, s in names}
    counts = {}
    try:
        for source, name, load in tqdm(items, desc='sub-images', unit='image'):
            img = to_bgr3(load())
            for index, (y, x) in enumerate(subimage_positions(*img.shape[:2], crop, step, 0), start=1):
                key = f'{source}_{name}_s{index:03d}'
                hr = img[y:y + crop, x:x + crop]
                for folder, scale in names:
                    out = hr if scale == 1 else bicubic_downscale(hr, scale)
                    ok, buf = cv2.imencode('.png', out, [cv2.IMWRITE_PNG_COMPRESSION, 1])
                    makers[folder].put(buf.tobytes(), key, out.shape)
                counts[source] = counts.get(source, 0) + 1
    finally:
        for maker in makers.values():
            maker.close()
    return counts


def verify(root, crop, scales):
    """Decode every key of every LMDB and check the shapes and that all LMDBs have the same keys."""
    from acla_basicsr.data.prepare_util import verify_train_lmdbs
    return verify_train_lmdbs(root, crop, scales)


def prepare(root, shared, crop=120, step=120, scales=(2, ), limit=None, force=False):
    """Build the compare set under ``root`` unless it is already there; return its sub-image count."""
    from acla_basicsr.data.prepare_util import PrepareError
    if any(crop % s for s in scales):
        raise PrepareError(f'--crop {crop} is not divisible by every scale {list(scales)}; the LR sub-images '
                           'would not be exact.')
    root = osp.abspath(root)
    if osp.isfile(osp.join(root, DONE_FILE)) and not force:
        count = verify(root, crop, scales)
        print(f'{root} is already prepared ({count} sub-images); nothing to do (use --force to rebuild).')
        return count
    items = source_images(shared, limit)  # every check before anything is written
    from acla_basicsr.fileio import staged_folder
    with staged_folder(root) as tmp_root:
        counts = build(tmp_root, items, crop, step, scales)
        count = verify(tmp_root, crop, scales)
        with open(osp.join(tmp_root, DONE_FILE), 'w') as f:
            f.write(f'{count} HR sub-images of {crop}x{crop} (step {step}), MATLAB-bicubic LR x{scales}; '
                    + '; '.join(f'{source}: {counts.get(source, 0)}' for source in SOURCES) + '\n')
            f.write(f'images: {len(items)}' + (f' (--limit {limit} per source)' if limit else '') + '\n')
            for source, name, _ in items:
                f.write(f'{source}/{name}\n')
    print(f'Prepared {root}: {count} training sub-images from {len(items)} images '
          f'({", ".join(f"{s} {counts.get(s, 0)}" for s in SOURCES)}).')
    return count


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--shared', default=osp.join(REPO, os.pardir, 'shared', 'datasets'),
                        help='folder holding Sun_Hays80/ and CBSD68/ (default: ../shared/datasets)')
    parser.add_argument('--root', type=output_folder, default=osp.join(REPO, 'datasets', 'compare'),
                        help='output folder')
    parser.add_argument('--crop', type=positive_int, default=120, help='HR sub-image size (default: 120)')
    parser.add_argument('--step', type=positive_int, default=120, help='stride between sub-images (default: 120)')
    parser.add_argument('--scales', type=positive_int, nargs='+', default=[2], help='LR scales (default: 2)')
    parser.add_argument('--limit', type=positive_int, help='only the first N images of each source')
    parser.add_argument('--force', action='store_true', help='rebuild even if the folder is prepared')
    args = parser.parse_args(argv)
    sys.path[:0] = [REPO, osp.dirname(osp.abspath(__file__))]
    import acla_basicsr  # noqa: F401  (makes basicsr importable with current torchvision)
    from acla_basicsr.data.prepare_util import PrepareError
    try:
        prepare(args.root, args.shared, args.crop, args.step, tuple(args.scales), args.limit, args.force)
    except PrepareError as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
