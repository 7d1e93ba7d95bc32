"""scripts/prepare_compare_data.py: counts, same keys in HR and LR, deterministic, exit 2 without a source."""
import os
import os.path as osp
import sys

import cv2
import lmdb
import numpy as np
import pytest

from conftest import ROOT

sys.path[:0] = [osp.join(ROOT, 'scripts')]
import prepare_compare_data as prep  # noqa: E402


def fake_shared(root):
    """Sun_Hays80 with two colour images, CBSD68 with a colour and a gray one (sizes not multiples of 60)."""
    rng = np.random.default_rng(0)
    for folder, shapes in (('Sun_Hays80', [(130, 250, 3), (121, 121, 3)]), ('CBSD68', [(180, 130, 3), (125, 250)])):
        for i, shape in enumerate(shapes):
            path = osp.join(root, folder, f'img{i}.png')
            os.makedirs(osp.dirname(path), exist_ok=True)
            cv2.imwrite(path, rng.integers(0, 256, shape, dtype=np.uint8))
    return str(root)


def read_lmdb(path):
    env = lmdb.open(path, readonly=True, lock=False)
    with env.begin() as txn:
        items = {k.decode(): bytes(v) for k, v in txn.cursor()}
    env.close()
    return items


def test_counts_keys_and_determinism(tmp_path, capsys):
    shared = fake_shared(tmp_path / 'shared')
    roots = [str(tmp_path / f'out{i}') for i in (0, 1)]
    # --limit 1: astronaut (512 x 512: 5 x 5 crops of 60 every 120, the last flush with the edge),
    # Sun_Hays80 img0 (130 x 250: 2 x 3), CBSD68 img0 (180 x 130: 2 x 2)
    counts = [prep.prepare(root, shared, crop=60, step=120, limit=1) for root in roots]
    assert counts == [25 + 6 + 4] * 2
    hr, lr = (read_lmdb(osp.join(roots[0], 'train', name)) for name in ('HR_sub.lmdb', 'LR_bicubic_X2_sub.lmdb'))
    assert sorted(hr) == sorted(lr) and len(hr) == 35
    assert {k.split('_')[0] for k in hr} == {'skimage', 'Sun', 'CBSD68'}
    assert 'CBSD68_img0_s004' in hr and 'Sun_Hays80_img0_s006' in hr and 'skimage_astronaut_s025' in hr
    img = cv2.imdecode(np.frombuffer(lr['CBSD68_img0_s001'], np.uint8), cv2.IMREAD_UNCHANGED)
    assert img.shape == (30, 30, 3)
    for name in ('HR_sub.lmdb', 'LR_bicubic_X2_sub.lmdb'):  # same keys and bytes in two builds
        assert read_lmdb(osp.join(roots[0], 'train', name)) == read_lmdb(osp.join(roots[1], 'train', name))
    # --limit 2: + rocket (427 x 640: 5 x 6), Sun_Hays80 img1 (121 x 121: 2 x 2), CBSD68's gray img1
    # (125 x 250: 2 x 3), which becomes 3 channels (verify checks every shape)
    count = prep.prepare(str(tmp_path / 'all'), shared, crop=60, step=120, limit=2)
    assert count == 35 + 30 + 4 + 6
    capsys.readouterr()
    assert prep.prepare(roots[0], shared, crop=60, step=120, limit=1) == 35
    assert 'nothing to do' in capsys.readouterr().out


@pytest.mark.parametrize('missing', ['Sun_Hays80', 'CBSD68'])
def test_missing_source_exits_2(tmp_path, capsys, missing):
    import shutil
    shared = fake_shared(tmp_path / 'shared')
    shutil.rmtree(osp.join(shared, missing))
    root = tmp_path / 'out'
    with pytest.raises(SystemExit) as info:
        prep.main(['--shared', shared, '--root', str(root), '--limit', '1'])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and missing in err and '--shared' in err
    assert not root.exists()
