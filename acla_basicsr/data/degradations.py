"""Degradations of the restoration tasks (ACLA paper, Sec. 4.3, 4.4 and A.2; SPEC section 6).

Every function takes a ground-truth image as basicsr's datasets hold it: a float32 ``(H, W, C)``
array in [0, 1], channels in BGR order (``C`` is 3, or 1 for gray or Y images), and returns the
degraded image in the same convention. The functions are vectorised numpy / OpenCV; they draw
random numbers only from the ``numpy.random.Generator`` they are given, so a caller that seeds
the generator from an image's name gets the same degradation on every run.

- :func:`add_gaussian_noise`: additive white Gaussian noise, sigma on the 0..255 scale
  (denoising, sigma 10/30/50/70).
- :func:`jpeg_compress`: an OpenCV JPEG encode-decode round trip (compression artifacts
  reduction, quality 10/20/30/40). The papers (ACLA, following RNAN and DnCNN) used MATLAB's
  ``imwrite`` encoder; OpenCV's libjpeg uses the same standard IJG quantisation tables, but its
  chroma subsampling and rounding differ, so the degraded inputs, and the PSNR of the JPEG
  images, differ slightly from the papers' (on the Y channel of gray images the two agree
  closely).
- :func:`mosaic`: a Bayer colour filter array (demosaicing), one colour per pixel.
- :func:`bilinear_demosaic`: the classical baseline of demosaicing, OpenCV's bilinear
  interpolation, as a ``val.reference`` of :class:`acla_basicsr.models.RestorationModel`
  (see :data:`DEMOSAIC_REFERENCES`).
"""
import cv2
import numpy as np
import torch

#: Bayer patterns, named by the colours of the 2x2 cell read row by row (top-left first).
BAYER_PATTERNS = ('RGGB', 'BGGR', 'GRBG', 'GBRG')
_BGR_INDEX = {'B': 0, 'G': 1, 'R': 2}
# OpenCV names a Bayer conversion after the 2nd and 3rd pixels of its 2nd row, which for the
# patterns above gives these codes (checked in tests/test_tasks_data.py against each pattern).
_OPENCV_BAYER_CODES = {
    'RGGB': cv2.COLOR_BayerBG2BGR,
    'BGGR': cv2.COLOR_BayerRG2BGR,
    'GRBG': cv2.COLOR_BayerGB2BGR,
    'GBRG': cv2.COLOR_BayerGR2BGR,
}


def add_gaussian_noise(img, sigma, rng):
    """Add white Gaussian noise of standard deviation ``sigma / 255``.

    The noisy image is not clipped to [0, 1], as in DnCNN, RNAN and the ACLA paper's protocol
    (clipping would bias the noise at dark and bright pixels); metrics and saved images clip
    it when they convert to 8 bits.

    Args:
        img (ndarray): Float32 image in [0, 1], shape (H, W, C).
        sigma (float): Noise level on the 0..255 scale (the papers use 10, 30, 50, 70).
        rng (numpy.random.Generator): Source of the noise.

    Returns:
        ndarray: Float32 noisy image, shape (H, W, C).
    """
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    return img + noise * np.float32(sigma / 255.)


def jpeg_compress(img, quality):
    """JPEG-compress an image with OpenCV's encoder at ``quality`` and decode it again.

    The image is rounded to 8 bits first, as an image file would be. A 1-channel image is
    encoded as a gray JPEG (the papers' setting for the Y channel and for Classic5), a 3-channel
    image as a colour JPEG (OpenCV's default YCbCr 4:2:0).

    Args:
        img (ndarray): Float32 image in [0, 1], shape (H, W, 1) or (H, W, 3), BGR.
        quality (int): JPEG quality, 1..100 (the papers use 10, 20, 30, 40).

    Returns:
        ndarray: Float32 decoded image in [0, 1], same shape.
    """
    img8 = np.clip(np.round(img * 255.), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode('.jpg', img8[..., 0] if img8.shape[2] == 1 else img8,
                           [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError(f'OpenCV failed to JPEG-encode an image of shape {img.shape}.')
    out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return out.reshape(img.shape).astype(np.float32) / 255.


def bayer_channel_map(height, width, pattern='RGGB'):
    """The BGR channel index that a Bayer filter of ``pattern`` keeps at each pixel.

    Args:
        height (int): Image height.
        width (int): Image width.
        pattern (str): One of :data:`BAYER_PATTERNS`. Default: 'RGGB'.

    Returns:
        ndarray: Int64 array of shape (height, width) with values 0 (B), 1 (G) or 2 (R).
    """
    if pattern not in BAYER_PATTERNS:
        raise ValueError(f"pattern: unknown Bayer pattern '{pattern}'; use one of {', '.join(BAYER_PATTERNS)}.")
    cell = np.array([_BGR_INDEX[c] for c in pattern]).reshape(2, 2)
    return np.tile(cell, ((height + 1) // 2, (width + 1) // 2))[:height, :width]


def mosaic(img, pattern='RGGB', channels=1):
    """Sample a colour image through a Bayer colour filter array: one colour per pixel.

    Args:
        img (ndarray): Float32 BGR image in [0, 1], shape (H, W, 3).
        pattern (str): Colours of the 2x2 Bayer cell, row by row from the image's top-left
            pixel: 'RGGB', 'BGGR', 'GRBG' or 'GBRG'. Default: 'RGGB'.
        channels (int): Layout of the result. 1: the raw sensor plane, shape (H, W, 1), each
            pixel holding the one colour its filter passes. 3: the same samples in their own
            colour channel, the other two channels zero, shape (H, W, 3): the layout of RNAN's
            and the ACLA paper's demosaicing inputs (their "Mosaiced" rows, about 8-9 dB, are the
            PSNR of this image), and the one a convolutional network can use, since a 1-channel
            plane hides from a translation-equivariant network which colour each pixel holds.
            Default: 1.

    Returns:
        ndarray: Float32 mosaic, shape (H, W, channels).
    """
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'mosaic needs a colour image (H, W, 3), got shape {img.shape}; use color: rgb.')
    index = bayer_channel_map(img.shape[0], img.shape[1], pattern)
    if channels == 1:
        return np.take_along_axis(img, index[..., None], axis=2)
    if channels == 3:
        return img * (index[..., None] == np.arange(3)).astype(img.dtype)
    raise ValueError(f'channels: {channels} is not 1 or 3.')


def bilinear_demosaic(lq, pattern='RGGB'):
    """Demosaic a batch of Bayer mosaics with OpenCV's bilinear interpolation.

    Accepts both layouts of :func:`mosaic` (a 3-channel mosaic is summed over its channels,
    which gives back the sensor plane because two of the three are zero at each pixel).

    Args:
        lq (Tensor): Mosaics in [0, 1], shape (B, 1, H, W) or (B, 3, H, W), RGB channel order
            (as basicsr's datasets return them).
        pattern (str): Bayer pattern of the mosaics, see :func:`mosaic`. Default: 'RGGB'.

    Returns:
        Tensor: Float32 RGB images in [0, 1], shape (B, 3, H, W), on the device of ``lq``.
    """
    plane = lq.sum(dim=1) if lq.shape[1] == 3 else lq[:, 0]
    plane = np.round(plane.detach().clamp(0, 1).cpu().numpy() * 65535.).astype(np.uint16)
    code = _OPENCV_BAYER_CODES[pattern]
    rgb = np.stack([cv2.cvtColor(p, code)[..., ::-1] for p in plane]).astype(np.float32) / 65535.
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous().to(lq.device)


def _demosaic_reference(pattern):

    def reference(lq, scale):
        return bilinear_demosaic(lq, pattern)

    reference.__doc__ = f'OpenCV bilinear demosaicing of {pattern} mosaics, the classical demosaicing baseline.'
    return reference


#: ``val.reference`` baselines for demosaicing, one per Bayer pattern (``demosaic_RGGB``, ...),
#: with the ``(lq, scale)`` signature of :attr:`RestorationModel.reference_functions`.
DEMOSAIC_REFERENCES = {f'demosaic_{p}': _demosaic_reference(p) for p in BAYER_PATTERNS}
