"""Every kind of image through ``acla-restore`` and ``restore``: alpha kept (resized or restored by the
network), grey in gives grey out, 8 and 16 bits keep their depth, ``--ext``, ``--outscale`` and EXIF
orientation. Tiny random networks on images the tests make."""
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from basicsr.archs.edsr_arch import EDSR

from acla_basicsr import ACLAEDSR
from acla_basicsr.cli.restore import main
from acla_basicsr.inference import read_image, restore
from acla_basicsr.inference.checkpoints import described_state_dict
from acla_basicsr.inference.images import LUMA
from conftest import smooth_image

EDSR_G = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'upscale': 2}


def random_net(net, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return net.eval()


@pytest.fixture
def edsr(tmp_path):
    """A tiny x2 EDSR and its self-describing checkpoint (no -opt needed)."""
    net = random_net(EDSR(3, 3, 8, 1, 2, 1., 255.))
    path = tmp_path / 'net.pth'
    torch.save({'params': described_state_dict(net.state_dict(), EDSR_G, scale=2)}, path)
    return net, str(path)


def run(checkpoint, source, out, *args):
    return main(['--model', checkpoint, '-i', str(source), '-o', str(out), '--device', 'cpu', *map(str, args)])


def rgb_to_bgr(img):
    return cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA if img.shape[2] == 4 else cv2.COLOR_RGB2BGR)


def luma(out):
    return sum(w * out[..., i].astype(np.float64) for i, w in enumerate(LUMA))


def test_rgba_keeps_its_alpha_resized_or_restored_by_the_network(tmp_path, edsr):
    net, ckpt = edsr
    rng = np.random.default_rng(0)
    rgba = np.concatenate([smooth_image(rng, 12), smooth_image(rng, 12, channels=1)], axis=2)
    cv2.imwrite(str(tmp_path / 'a.png'), rgb_to_bgr(rgba))
    assert run(ckpt, tmp_path / 'a.png', tmp_path / 'resize') == 0  # default: resize
    got = read_image(str(tmp_path / 'resize' / 'a.png'))
    assert got.shape == (24, 24, 4) and got.dtype == np.uint8
    assert np.array_equal(got[..., :3], restore(net, rgba[..., :3]))
    assert np.array_equal(got[..., 3], cv2.resize(rgba[..., 3], (24, 24), interpolation=cv2.INTER_CUBIC))
    assert run(ckpt, tmp_path / 'a.png', tmp_path / 'network', '--alpha-upsampler', 'network') == 0
    got = read_image(str(tmp_path / 'network' / 'a.png'))
    colour = restore(net, np.repeat(rgba[..., 3:], 3, axis=2)).astype(np.float64)  # alpha as a grey image
    assert got.shape == (24, 24, 4) and np.abs(got[..., 3] - luma(colour)).max() <= 1
    assert np.array_equal(got[..., :3], restore(net, rgba[..., :3]))


def test_grey_in_grey_out_for_an_rgb_network_and_16_bits_kept(tmp_path, edsr):
    net, ckpt = edsr
    rng = np.random.default_rng(1)
    grey = smooth_image(rng, 10, channels=1)[..., 0]
    grey16 = (smooth_image(rng, 10).astype(np.uint16) * 257 + rng.integers(0, 257, (10, 10, 3))).astype(np.uint16)
    (tmp_path / 'in').mkdir()
    cv2.imwrite(str(tmp_path / 'in' / 'grey.png'), grey)
    cv2.imwrite(str(tmp_path / 'in' / 'deep.png'), rgb_to_bgr(grey16))
    cv2.imwrite(str(tmp_path / 'in' / 'grey16.png'), grey16[..., 0])
    assert run(ckpt, tmp_path / 'in', tmp_path / 'out') == 0
    out = cv2.imread(str(tmp_path / 'out' / 'grey.png'), cv2.IMREAD_UNCHANGED)
    assert out.shape == (20, 20) and out.dtype == np.uint8  # one channel, not three
    colour = restore(net, np.repeat(grey[..., None], 3, axis=2))
    assert np.abs(out - luma(colour)).max() <= 1
    deep = read_image(str(tmp_path / 'out' / 'deep.png'))
    assert deep.dtype == np.uint16 and deep.shape == (20, 20, 3)
    assert np.array_equal(deep, restore(net, grey16))
    assert len(np.unique(deep)) > 256  # 16 bits of information, not 8 bits scaled
    out16 = cv2.imread(str(tmp_path / 'out' / 'grey16.png'), cv2.IMREAD_UNCHANGED)
    assert out16.dtype == np.uint16 and out16.shape == (20, 20)


def test_a_one_channel_network_keeps_its_own_output_channels():
    net = random_net(ACLAEDSR(num_in_ch=1, num_out_ch=3, num_feat=8, num_block=1, upscale=1, attention='none',
                              insert_positions=[]))  # demosaicing-like: grey in, colour out by design
    assert restore(net, smooth_image(np.random.default_rng(2), 8, channels=1)[..., 0]).shape == (8, 8, 3)


@pytest.mark.parametrize('ext, suffix', [('png', '.png'), ('jpg', '.jpg'), ('webp', '.webp'), ('auto', '.tif')])
def test_ext_chooses_the_format_and_outscale_resizes_with_lanczos(tmp_path, edsr, ext, suffix):
    net, ckpt = edsr
    image = smooth_image(np.random.default_rng(3), 12)[:10]  # 10 x 12
    deep = image.astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / 'a.tif'), rgb_to_bgr(deep))
    assert run(ckpt, tmp_path / 'a.tif', tmp_path / 'out', '--ext', ext, '--outscale', 1.5) == 0
    written = tmp_path / 'out' / f'a{suffix}'
    got = read_image(str(written))
    expected = cv2.resize(restore(net, deep), (18, 15), interpolation=cv2.INTER_LANCZOS4)
    assert got.shape == (15, 18, 3)  # int(1.5 * 12) x int(1.5 * 10)
    if ext in ('png', 'auto'):  # 16 bits kept
        assert got.dtype == np.uint16 and np.array_equal(got, expected)
    else:  # JPEG and WebP hold 8 bits: 65535 -> 255
        assert got.dtype == np.uint8
        assert np.abs(got.astype(int) - np.round(expected / 257.)).max() <= 40  # lossy at OpenCV's defaults
        assert np.abs(got.astype(int) - np.round(expected / 257.)).mean() < 4


@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_orientation_is_honoured_as_opencv_does(tmp_path, orientation):
    image = np.zeros((4, 6, 3), np.uint8)
    image[0, 0], image[0, 5], image[3, 0] = 255, (0, 255, 0), (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    for name in ('a.jpg', 'a.png'):
        Image.fromarray(image).save(tmp_path / name, exif=exif.tobytes(), quality=100)
        read = read_image(str(tmp_path / name))
        assert np.array_equal(read, cv2.imread(str(tmp_path / name))[..., ::-1]), (name, orientation)
        assert read.shape == ((6, 4, 3) if orientation >= 5 else (4, 6, 3))


def test_exif_orientation_turns_alpha_with_the_colours(tmp_path, edsr):
    net, ckpt = edsr
    rgba = np.concatenate([smooth_image(np.random.default_rng(4), 8)[:6], np.zeros((6, 8, 1), np.uint8)], axis=2)
    rgba[0, :, 3] = 255  # the top row opaque
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: the top row becomes the right column
    Image.fromarray(rgba).save(tmp_path / 'a.png', exif=exif.tobytes())
    assert run(ckpt, tmp_path / 'a.png', tmp_path / 'out') == 0
    got = read_image(str(tmp_path / 'out' / 'a.png'))
    assert got.shape == (16, 12, 4)
    assert got[:, -1, 3].min() > 200 and got[:, 0, 3].max() < 50


@pytest.mark.parametrize('args, message', [
    (['--outscale', '0'], "--outscale: expected a number > 0, got '0'"),
    (['--outscale', '-1.5'], "--outscale: expected a number > 0, got '-1.5'"),
    (['--ext', 'gif'], "--ext: invalid choice: 'gif'"),
    (['--alpha-upsampler', 'realesrgan'], '--alpha-upsampler: invalid choice'),
])
def test_bad_image_options_are_one_line_before_writing(tmp_path, edsr, capsys, args, message):
    cv2.imwrite(str(tmp_path / 'a.png'), smooth_image(np.random.default_rng(5), 8))
    assert run(edsr[1], tmp_path / 'a.png', tmp_path / 'never', *args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], lines
    assert not (tmp_path / 'never').exists()
