"""Images in and out of a network: channels, dtypes, ``acla_basicsr.restore``, reading and writing files."""
import io
import os.path as osp

import cv2
import numpy as np
import torch

from acla_basicsr import fileio
from .network import input_channels
from .tiles import DEFAULT_TILE_PAD, run_network


#: How ``restore`` brings an alpha channel to the output size: by the network (as a grey image) or resized.
ALPHA_UPSAMPLERS = ('resize', 'network')
#: Luma weights (ITU-R BT.601, as ``cv2.COLOR_RGB2GRAY``) of a colour output turned back into grey.
LUMA = (0.299, 0.587, 0.114)
# EXIF orientation -> the transform that shows the image upright (applied to (H, W[, C]) arrays).
_ORIENT = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


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


def _forward(net, image, peak, gray, run):
    """The network's output for an (H, W, C) integer image, as a (1, C', H', W') float tensor in [0, 1] on the
    CPU; ``gray``: a 3-channel output turned into its luma (1 channel)."""
    device = next(net.parameters()).device
    lq = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(peak).unsqueeze(0)
    out = run(lq.to(device)).float().cpu()
    if gray and out.shape[1] == 3:
        out = sum(w * out[:, i:i + 1] for i, w in enumerate(LUMA))
    return out.clamp_(0, 1)


def _to_image(out, dtype, peak):
    return out[0].mul_(peak).round_().numpy().transpose(1, 2, 0).astype(dtype)


def restore(net, image, tile=None, tile_pad=DEFAULT_TILE_PAD, self_ensemble=False, half=False, progress=None,
            alpha_upsampler='resize', outscale=None, max_memory=None, notify=None):
    """Restore (or super-resolve) one image with a network from :func:`load_network`.

    Every kind of image comes back as the same kind: grey stays grey (a colour network sees it repeated to
    three channels and its output is turned back into luma), an alpha channel is kept (restored by the network
    as a grey image, or resized), 8 bits stay 8 bits and 16 bits 16 bits.

    Args:
        net (nn.Module): The network; it runs on the device of its parameters, in its current mode
            (:func:`load_network` returns it in ``eval()`` mode).
        image (ndarray): uint8 (or uint16) image, (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA (as PIL,
            imageio and scikit-image give them; :func:`read_image` for files). Converted to the channels the
            network reads (luma for 1-channel networks such as gray denoising or Bayer demosaicing, repeated
            gray for colour ones).
        tile (int | str | None): Tile side in input pixels, to bound the memory on large images; None: whole
            image; 'auto': the largest tile within ``max_memory`` (halved and retried after an out-of-memory
            error). Default: None.
        tile_pad (int): Context of every tile, in input pixels; at least the receptive field radius gives the
            untiled result. Default: 16.
        self_ensemble (bool): Average the 8 flips/transpositions (x8 the time). Default: False.
        half (bool): float16 (CUDA) or bfloat16 (CPU) autocast. Default: False.
        progress (Callable | None): ``progress(done, total)`` after every forward pass. Default: None.
        alpha_upsampler (str): The alpha channel of an RGBA image: 'resize' (bicubic, ``cv2.INTER_CUBIC``, to
            the output size) or 'network' (restored by the network as a grey image repeated to its input
            channels; twice the time). Default: 'resize'.
        outscale (float | None): Resize the output to ``int(outscale * W) x int(outscale * H)`` of the input
            with ``cv2.INTER_LANCZOS4`` (as Real-ESRGAN's ``--outscale``); None: the network's own scale.
            Default: None.
        max_memory (float | None): Bytes that ``tile='auto'`` may use; None: a fraction of the memory available
            on the network's device (:func:`~acla_basicsr.inference.memory.default_budget`). Default: None.
        notify (Callable | None): Called with one line when ``tile='auto'`` chooses or retries. Default: None.

    Returns:
        ndarray: The result, same dtype as ``image``: (H', W') for a gray input or a 1-channel output,
        (H', W', 3) RGB, or (H', W', 4) RGBA for an RGBA input.
    """
    if not isinstance(image, np.ndarray) or image.dtype not in (np.uint8, np.uint16) or image.ndim not in (2, 3):
        raise ValueError('image: give a uint8 (or uint16) numpy array of shape (H, W) or (H, W, C), RGB order.')
    if alpha_upsampler not in ALPHA_UPSAMPLERS:
        raise ValueError(f"alpha_upsampler: {alpha_upsampler!r}; give one of {', '.join(ALPHA_UPSAMPLERS)}.")
    if outscale is not None and not outscale > 0:
        raise ValueError(f'outscale: {outscale}; give a number > 0.')
    peak = 255. if image.dtype == np.uint8 else 65535.
    alpha = image[..., 3] if image.ndim == 3 and image.shape[2] == 4 else None
    channels = input_channels(net)
    gray = image.ndim == 2 or image.shape[2] == 1

    def run(lq):
        return run_network(net, lq, tile, tile_pad, self_ensemble, half, progress, max_memory, notify)

    out = _to_image(_forward(net, match_channels(image, channels), peak, gray and channels == 3, run),
                    image.dtype, peak)
    if alpha is not None:
        height, width = out.shape[:2]
        if alpha_upsampler == 'network':  # (H', W', 1): a colour output is turned into its luma
            alpha = _to_image(_forward(net, match_channels(alpha, channels), peak, True, run), image.dtype, peak)
        elif alpha.shape != (height, width):
            alpha = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_CUBIC)[..., None]
        else:
            alpha = alpha[..., None]
        out = np.concatenate([match_channels(out, 3), alpha], axis=2)
    if outscale is not None:
        size = (max(1, int(image.shape[1] * outscale)), max(1, int(image.shape[0] * outscale)))  # Real-ESRGAN's
        if (out.shape[1], out.shape[0]) != size:
            out = cv2.resize(out, size, interpolation=cv2.INTER_LANCZOS4).reshape(size[1], size[0], *out.shape[2:])
    return out[..., 0] if out.ndim == 3 and out.shape[2] == 1 else out


def exif_orientation(data):
    """The EXIF orientation (1-8) of encoded image bytes, 1 when there is none (read with Pillow, header only)."""
    try:
        from PIL import Image
        with Image.open(io.BytesIO(data)) as img:
            value = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: B902  (not an image Pillow knows, no Pillow, a damaged header)
        return 1
    return value if value in _ORIENT else 1


def read_image(path):
    """Read ``path`` as it is shown: an RGB, RGBA or gray uint8/uint16 array; None if it is not a readable image.

    Decoded with OpenCV (``IMREAD_UNCHANGED``: bit depth and alpha kept), then turned upright by its EXIF
    orientation (which ``IMREAD_UNCHANGED`` ignores; ``cv2.imread``'s default applies it but drops alpha and
    16 bits), so the result equals ``cv2.imread(path)`` in RGB order for an 8-bit colour image.
    """
    data = np.fromfile(path, np.uint8) if osp.isfile(path) else None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data is not None and data.size else None
    if img is None or img.dtype not in (np.uint8, np.uint16):
        return None
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    orientation = exif_orientation(data.tobytes())
    return np.ascontiguousarray(_ORIENT[orientation](img)) if orientation != 1 else img


def write_image(path, image):
    """Write an RGB, RGBA or gray array in the format of the extension, atomically (:mod:`acla_basicsr.fileio`).

    PNG and TIFF keep 16 bits and alpha; JPEG and WebP hold 8 bits (16-bit values are scaled, 65535 -> 255)
    and JPEG no alpha (dropped).
    """
    ext = osp.splitext(path)[1].lower()
    if ext in ('.jpg', '.jpeg', '.webp') and image.dtype == np.uint16:
        image = np.round(image / 257.).astype(np.uint8)
    if ext in ('.jpg', '.jpeg') and image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
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
