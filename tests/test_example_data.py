"""scripts/prepare_example_data.py builds valid basicsr LMDBs and validation folders, once."""
import os
import os.path as osp
import sys

import cv2
import lmdb

from conftest import ROOT

sys.path.insert(0, osp.join(ROOT, 'scripts'))
import prepare_example_data as prep  # noqa: E402
import pytest


@pytest.mark.slow
def test_builds_valid_lmdbs_once(tmp_path, capsys):
    root = str(tmp_path / 'example')
    count = prep.prepare(root)
    assert count > 100
    for name in ['HR_sub.lmdb'] + [f'LR_bicubic_X{s}_sub.lmdb' for s in prep.SCALES]:
        path = osp.join(root, 'train', name)
        meta = [line.split() for line in open(osp.join(path, 'meta_info.txt'))]
        keys = [m[0][:-4] for m in meta]
        assert len(keys) == count
        env = lmdb.open(path, readonly=True, lock=False)
        with env.begin() as txn:
            db_keys = [k.decode() for k, _ in txn.cursor()]
        env.close()
        assert sorted(db_keys) == sorted(keys)
        size = prep.CROP // (1 if name.startswith('HR') else int(name.split('_X')[1][0]))
        assert all(m[1] == f'({size},{size},3)' for m in meta)
    for image in prep.VAL_IMAGES:
        hr = cv2.imread(osp.join(root, 'val', 'HR', f'{image}.png'))
        assert hr.shape[0] % 12 == 0 and hr.shape[1] % 12 == 0
        for scale in prep.SCALES:
            lr = cv2.imread(osp.join(root, 'val', 'LR_bicubic', f'X{scale}', f'{image}.png'))
            assert lr.shape[:2] == (hr.shape[0] // scale, hr.shape[1] // scale)
    assert not [v for v in os.listdir(tmp_path) if v.startswith('.example-')]  # no temporary left

    mtime = os.path.getmtime(osp.join(root, 'train', 'HR_sub.lmdb', 'data.mdb'))
    capsys.readouterr()
    assert prep.prepare(root) == count
    assert 'already prepared; nothing to do' in capsys.readouterr().out
    assert os.path.getmtime(osp.join(root, 'train', 'HR_sub.lmdb', 'data.mdb')) == mtime


def test_sub_images_cover_the_image():
    import numpy as np
    img = np.zeros((300, 156, 3), np.uint8)
    crops = prep.sub_images(img)
    ys = sorted({y for y, _, _ in crops})
    xs = sorted({x for _, x, _ in crops})
    assert ys[0] == 0 and ys[-1] == 300 - prep.CROP and xs == [0, 156 - prep.CROP]
    assert all(c.shape == (prep.CROP, prep.CROP, 3) for _, _, c in crops)
