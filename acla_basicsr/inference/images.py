"""Images in and out of a network: channels, dtypes, ``acla_basicsr.restore``, reading and writing files."""
import os.path as osp

import cv2
import numpy as np
import torch

from acla_basicsr import fileio
from .network import input_channels
from .tiles import DEFAULT_TILE_PAD, run_network


def match_channels(image, channels):
    """An (H, W, C) RGB image with ``channels`` channels: colour to gray by luma, gray repeated to colour.

    Args:
        image (ndarray): (H, W) or (H, W, C) with C in 1, 3, 4 (alpha is dropped), RGB order.
        channels (int): 1 or 3.
    """
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 4:
        image = image[..., :3]
    if image.shape[2] == channels:
        return image
    if channels == 1 and image.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)[..., None]
    if channels == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    raise ValueError(f'an image with {image.shape[2]} channels cannot feed a network of {channels} input channels.')


def restore(net, image, tile=None, tile_pad=DEFAULT_TILE_PAD, self_ensemble=False, half=False, progress=None):
    """Restore (or super-resolve) one image with a network from :func:`load_network`.

    Args:
        net (nn.Module): The network; it runs on the device of its parameters, in its current mode
            (:func:`load_network` returns it in ``eval()`` mode).
        image (ndarray): uint8 (or uint16) image, (H, W) gray or (H, W, 3) in RGB order (as PIL, imageio and
            scikit-image give them). Converted to the channels the network reads (luma for 1-channel
            networks such as gray denoising or Bayer demosaicing, repeated gray for colour ones).
        tile (int | None): Tile side in input pixels, to bound the memory on large images; None: whole image.
            Default: None.
        tile_pad (int): Context of every tile, in input pixels; at least the receptive field radius gives the
            untiled result. Default: 16.
        self_ensemble (bool): Average the 8 flips/transpositions (x8 the time). Default: False.
        half (bool): float16 (CUDA) or bfloat16 (CPU) autocast. Default: False.
        progress (Callable | None): ``progress(done, total)`` after every forward pass. Default: None.

    Returns:
        ndarray: The result, same dtype as ``image``, (H', W') for a 1-channel output or (H', W', 3) RGB.
    """
    if not isinstance(image, np.ndarray) or image.dtype not in (np.uint8, np.uint16) or image.ndim not in (2, 3):
        raise ValueError('image: give a uint8 (or uint16) numpy array of shape (H, W) or (H, W, C), RGB order.')
    peak = 255. if image.dtype == np.uint8 else 65535.
    image = match_channels(image, input_channels(net))
    device = next(net.parameters()).device
    lq = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(peak).unsqueeze(0)
    out = run_network(net, lq.to(device), tile, tile_pad, self_ensemble, half, progress)
    out = out[0].clamp_(0, 1).mul_(peak).round_().cpu().numpy().transpose(1, 2, 0).astype(image.dtype)
    return out[..., 0] if out.shape[2] == 1 else out


def read_image(path):
    """Read ``path`` as an RGB (or gray) uint8/uint16 array; None if it is not a readable image."""
    data = np.fromfile(path, np.uint8) if osp.isfile(path) else None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data is not None and data.size else None
    if img is None or img.dtype not in (np.uint8, np.uint16):
        return None
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


def write_image(path, image):
    """Write an RGB or gray array as PNG (or the format of the extension), atomically (:mod:`acla_basicsr.fileio`)."""
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    fileio.write_image(path, image)


def peak_memory_mib(device=None):
    """Peak memory of this process so far, MiB: resident set (CPU) and, on CUDA, allocated GPU memory.

    Returns:
        dict: ``{'rss': float}`` where the ``resource`` module exists (not on Windows), plus ``'cuda'`` when
        ``device`` is a CUDA device.
    """
    result = {}
    try:  # Unix only: on Windows (ComfyUI's and chaiNNer's users) the package must import without it
        import resource
    except ImportError:
        resource = None
    if resource is not None:
        result['rss'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if device is not None and torch.device(device).type == 'cuda':
        result['cuda'] = torch.cuda.max_memory_allocated(device) / 2**20
    return result
