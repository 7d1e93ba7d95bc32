"""Running a trained network on images of any size: tiles, self-ensemble, half precision, loading.

Unregistered helpers shared by the command ``acla-restore`` (``scripts/inference.py``), the Python API
(``acla_basicsr.load_network`` and ``acla_basicsr.restore``) and the validation of
:class:`~acla_basicsr.models.restoration_model.RestorationModel` (``val.tile``, ``val.self_ensemble``).

- Tiles (as Real-ESRGAN's ``--tile``, SwinIR's ``--tile``, HAT's ``tile:``): the input is cut into
  ``tile_size`` x ``tile_size`` tiles, each run with ``tile_pad`` LR pixels of context on every side that the
  image has, and the output is stitched from the tiles' centres (every output pixel comes from the tile that
  owns it; the padded margins are dropped). With ``tile_pad`` at least the network's receptive field radius
  (in LR pixels) the result equals the untiled one up to float rounding. Networks with global operations
  (channel attention's global pooling in RCAN and EARN's ASCA, ENLCA's attention over all positions) see
  less context in a tile, so their tiled output differs (docs/inference.md measures by how much).
- Self-ensemble (EDSR's geometric self-ensemble, "+"; basicsr master's ``test_selfensemble``): the mean of
  the outputs of the 8 flips and transpositions of the input, each transformed back.
- Half precision: ``torch.autocast`` with float16 on CUDA and bfloat16 on the CPU; outputs are float32.
"""
import os
import os.path as osp
import resource
import tempfile
from collections import OrderedDict
from contextlib import nullcontext

import cv2
import numpy as np
import torch
import yaml

from acla_basicsr.utils.options import OptionError

#: Pad of the tiles (LR pixels) when a tile size is given without one.
DEFAULT_TILE_PAD = 16


def check_tile(tile_size, tile_pad, size_name='tile', pad_name='tile_pad'):
    """Check a tile size and pad; raise :class:`OptionError` naming the option otherwise.

    Args:
        tile_size (int | None): Tile side in input pixels; None or 0: no tiles.
        tile_pad (int): Context around every tile, in input pixels.
        size_name (str): How the size option is called, for the message. Default: 'tile'.
        pad_name (str): How the pad option is called. Default: 'tile_pad'.
    """
    if tile_size is not None and (isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 0):
        raise OptionError(f'{size_name}: {tile_size!r} must be an integer >= 1 (input pixels), or 0/~ for no tiles.')
    if isinstance(tile_pad, bool) or not isinstance(tile_pad, int) or tile_pad < 0:
        raise OptionError(f'{pad_name}: {tile_pad!r} must be an integer >= 0 (input pixels), e.g. 16.')


def _output_scale(out, inp):
    scale_h, scale_w = out.shape[-2] / inp.shape[-2], out.shape[-1] / inp.shape[-1]
    if scale_h != scale_w or scale_h != int(scale_h) or scale_h < 1:
        raise ValueError(f'the network turns a {inp.shape[-1]}x{inp.shape[-2]} input into {out.shape[-1]}x'
                         f'{out.shape[-2]}, not an integer scale; tiles need an output of scale x the input.')
    return int(scale_h)


def tile_forward(net, lq, tile_size, tile_pad=DEFAULT_TILE_PAD, progress=None):
    """Run ``net`` on ``lq`` tile by tile and stitch the tiles' centres.

    Args:
        net (Callable): Maps a (B, C, h, w) tensor to (B, C', s*h, s*w) for an integer scale s (s = 1 for
            restoration).
        lq (Tensor): (B, C, H, W) input.
        tile_size (int): Tile side in input pixels (the last row and column of tiles may be smaller).
        tile_pad (int): Input pixels of context on every side of a tile, where the image has them.
            Default: 16.
        progress (Callable | None): Called as ``progress(done, total)`` after every tile. Default: None.

    Returns:
        Tensor: (B, C', s*H, s*W), float32 (or the input's dtype if wider).
    """
    h, w = lq.shape[-2:]
    rows, cols = -(-h // tile_size), -(-w // tile_size)
    output, scale = None, None
    for index in range(rows * cols):
        y0, x0 = (index // cols) * tile_size, (index % cols) * tile_size
        y1, x1 = min(y0 + tile_size, h), min(x0 + tile_size, w)
        py0, px0 = max(y0 - tile_pad, 0), max(x0 - tile_pad, 0)
        py1, px1 = min(y1 + tile_pad, h), min(x1 + tile_pad, w)
        tile = lq[..., py0:py1, px0:px1]
        out = net(tile)
        if output is None:
            scale = _output_scale(out, tile)
            dtype = torch.promote_types(out.dtype, torch.float32)
            output = out.new_zeros((*out.shape[:-2], h * scale, w * scale), dtype=dtype)
        output[..., y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
            out[..., (y0 - py0) * scale:(y1 - py0) * scale, (x0 - px0) * scale:(x1 - px0) * scale]
        if progress is not None:
            progress(index + 1, rows * cols)
    return output


def _transform(x, index):
    """The ``index``-th (0..7) of the 8 flips/transpositions of the last two dimensions."""
    if index & 1:
        x = x.flip(-1)
    if index & 2:
        x = x.flip(-2)
    if index & 4:
        x = x.transpose(-2, -1)
    return x


def _inverse_transform(x, index):
    if index & 4:
        x = x.transpose(-2, -1)
    if index & 2:
        x = x.flip(-2)
    if index & 1:
        x = x.flip(-1)
    return x


def self_ensemble_forward(forward, lq):
    """Geometric self-ensemble: the mean over the 8 flips/transpositions ``T`` of ``T^-1(forward(T(lq)))``.

    Args:
        forward (Callable): Maps a (B, C, H, W) tensor to its output (e.g. a tiled forward).
        lq (Tensor): (B, C, H, W) input.

    Returns:
        Tensor: The averaged output, float32 (or wider).
    """
    total = None
    for index in range(8):
        out = _inverse_transform(forward(_transform(lq, index)), index)
        out = out.to(torch.promote_types(out.dtype, torch.float32))
        total = out if total is None else total + out
    return total / 8


def precision_context(device, half):
    """``torch.autocast`` for ``half`` precision on ``device``: float16 on CUDA, bfloat16 elsewhere."""
    if not half:
        return nullcontext()
    device = torch.device(device)
    dtype = torch.float16 if device.type == 'cuda' else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def run_network(net, lq, tile_size=None, tile_pad=DEFAULT_TILE_PAD, self_ensemble=False, half=False, progress=None):
    """Run ``net`` on a batch without gradients, with optional tiles, self-ensemble and half precision.

    Args:
        net (nn.Module): The network, in the mode the caller wants (``eval()`` for inference).
        lq (Tensor): (B, C, H, W) input on the network's device, in [0, 1].
        tile_size (int | None): Tile side in input pixels; None or 0: the whole image at once. Default: None.
        tile_pad (int): Context of every tile in input pixels. Default: 16.
        self_ensemble (bool): Average the 8 flips/transpositions. Default: False.
        half (bool): float16 autocast on CUDA, bfloat16 on the CPU. Default: False.
        progress (Callable | None): ``progress(done, total)`` after every forward pass. Default: None.

    Returns:
        Tensor: The output, float32 (or wider).
    """
    check_tile(tile_size, tile_pad)
    h, w = lq.shape[-2:]
    tiles = (-(-h // tile_size)) * (-(-w // tile_size)) if tile_size else 1
    total, done = (8 if self_ensemble else 1) * tiles, [0]

    def report(*_):
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    def forward(x):
        if tile_size:
            return tile_forward(net, x, tile_size, tile_pad, progress=report)
        out = net(x)
        report()
        return out

    with torch.no_grad(), precision_context(lq.device, half):
        out = self_ensemble_forward(forward, lq) if self_ensemble else forward(lq)
    return out.to(torch.promote_types(out.dtype, torch.float32))


# ---------------------------------------------------------------------------------------- loading


def read_options(options):
    """The options dict of ``options``: a YAML path, a full options dict, or a ``network_g`` dict.

    Returns:
        dict: Options with at least ``network_g``.
    """
    if isinstance(options, (str, os.PathLike)):
        path = os.fspath(options)
        if not osp.isfile(path):
            raise OptionError(f'-opt: {path} does not exist; give an options YAML file with network_g.')
        try:
            with open(path) as f:
                opt = yaml.safe_load(f)
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise OptionError(f'-opt: {path} is not valid YAML ({str(error).splitlines()[0]}); fix the file.') from None
        where = path
    else:
        opt, where = options, 'options'
    if not isinstance(opt, dict):
        raise OptionError(f'-opt: {where} is not a mapping of options; give a train or test options file.')
    if 'network_g' not in opt and 'type' in opt:
        opt = {'network_g': opt}
    if not isinstance(opt.get('network_g'), dict) or 'type' not in opt['network_g']:
        raise OptionError(f'network_g: missing in {where}; give options with a network_g: {{type: ..., ...}} '
                          'section (any train or test file of options/).')
    return opt


def build_network(options):
    """Build the network ``network_g`` of ``options`` (see :func:`read_options`) with random weights."""
    import acla_basicsr  # noqa: F401  (registers the project's networks)
    from basicsr.utils.registry import ARCH_REGISTRY
    arch = dict(read_options(options)['network_g'])
    name = arch.pop('type')
    if name not in ARCH_REGISTRY:
        known = ', '.join(sorted(k for k in ARCH_REGISTRY.keys() if not k.endswith('_basicsr')))
        raise OptionError(f"network_g.type: unknown network '{name}'; registered: {known}.")
    try:
        return ARCH_REGISTRY.get(name)(**arch)
    except (TypeError, ValueError) as error:
        raise OptionError(f'network_g: {error}') from None


def load_state_dict(checkpoint, param_key=None, return_key=False):
    """The parameters stored in ``checkpoint``: ``param_key``, else ``params_ema``, else ``params``.

    A file that holds a plain state dict (no such key) is used as it is; a ``module.`` prefix (DDP) is
    removed; the state dict's ``_metadata`` (where published files keep their ``network_g``) is kept. Loaded
    onto the CPU with ``weights_only=True``.

    Args:
        checkpoint (str): The .pth file.
        param_key (str | None): Key of the parameters; None: params_ema, else params, else the whole file.
            Default: None.
        return_key (bool): Also return the key used (None for a plain state dict). Default: False.

    Returns:
        dict | tuple[dict, str | None]: The parameters (and the key).
    """
    if not osp.isfile(checkpoint):
        raise OptionError(f'--model: {checkpoint} does not exist; give a .pth file written by training '
                          '(experiments/<name>/models/net_g_*.pth).')
    try:
        state = torch.load(checkpoint, map_location='cpu', weights_only=True)
    except Exception as error:  # truncated, not a torch file, or foreign objects
        raise OptionError(f'--model: cannot read {checkpoint} ({str(error).splitlines()[0]}); '
                          'give a .pth file written by training.') from None
    if not isinstance(state, dict):
        raise OptionError(f'--model: {checkpoint} holds no state dict; give a .pth file written by training.')
    key = param_key
    if param_key is not None:
        if param_key not in state:
            raise OptionError(f"--param-key: '{param_key}' is not in {checkpoint} (keys: "
                              f"{', '.join(sorted(map(str, state))[:6])}); use params or params_ema.")
    elif 'params_ema' in state or 'params' in state:
        key = 'params_ema' if 'params_ema' in state else 'params'
    state = state[key] if key else state
    params = OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in state.items())
    if getattr(state, '_metadata', None) is not None:
        params._metadata = state._metadata
    return (params, key) if return_key else params


def _resolve(path):
    """A relative path as given, else relative to the source checkout (as train.py resolves data paths)."""
    from acla_basicsr.utils.launch import project_root
    if path and not osp.isabs(path) and not osp.exists(path) and osp.exists(osp.join(project_root(), path)):
        return osp.join(project_root(), path)
    return path


def load_network(options, checkpoint=None, param_key=None, strict=None, device=None):
    """Build ``network_g`` of an options file or dict and load trained weights into it.

    Example::

        from acla_basicsr import load_network, restore
        net = load_network('options/test/ACLA_SRx2.yml', 'net_g_latest.pth')
        sr = restore(net, rgb_uint8, tile=256)

    Args:
        options (str | dict): A train or test options YAML path, its dict, or a ``network_g`` dict
            (``{'type': 'EARN', 'upscale': 2, ...}``).
        checkpoint (str | None): A ``.pth`` written by training; None: ``path.pretrain_network_g`` of the
            options. Default: None.
        param_key (str | None): Key of the parameters in the checkpoint; None: ``params_ema`` if the file has
            it, else ``params`` (else the file is a plain state dict). Default: None.
        strict (bool | None): Require every parameter to match; None: ``path.strict_load_g`` of the options,
            else True. Default: None.
        device (str | torch.device | None): Where to put the network; None: CUDA if available, else the CPU.
            Default: None.

    Returns:
        nn.Module: The network in ``eval()`` mode on ``device``.

    Raises:
        OptionError (a ValueError): a missing or unreadable file, an unknown network, weights that do not fit.
    """
    opt = read_options(options)
    path_opt = opt.get('path') or {}
    if checkpoint is None:
        checkpoint = path_opt.get('pretrain_network_g')
        if not checkpoint:
            raise OptionError('--model: no checkpoint given and path.pretrain_network_g is empty; give the .pth '
                              'file of the trained network.')
        checkpoint = _resolve(checkpoint)
    net = build_network(opt)
    state = load_state_dict(os.fspath(checkpoint), param_key)
    strict = path_opt.get('strict_load_g', True) if strict is None else strict
    try:
        result = net.load_state_dict(state, strict=bool(strict))
    except RuntimeError as error:
        first = [line.strip() for line in str(error).splitlines() if line.strip()][1:2]
        raise OptionError(f"--model: {checkpoint} does not fit network_g ({opt['network_g']['type']}): "
                          f"{first[0] if first else error}; give the options the checkpoint was trained with."
                          ) from None
    if not strict and len(result.missing_keys) == len(net.state_dict()):
        raise OptionError(f'--model: no parameter of {checkpoint} fits network_g; give the options the '
                          'checkpoint was trained with.')
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    return net.to(device).eval()


# ------------------------------------------------------------------------------------------ images


def input_channels(net):
    """Channels the network reads: ``in_channels`` of its first convolution."""
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            return module.in_channels
    raise ValueError(f'{type(net).__name__} has no Conv2d; cannot tell how many input channels it reads.')


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


def write_png_atomic(path, image):
    """Write an RGB or gray array as PNG through a temporary file in the same folder and a rename."""
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode('.png', image)
    if not ok:
        raise OSError(f'cannot encode {path} as PNG')
    folder = osp.dirname(osp.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path), suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(buf.tobytes())
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def peak_memory_mib(device=None):
    """Peak memory of this process so far, MiB: resident set (CPU) and, on CUDA, allocated GPU memory.

    Returns:
        dict: ``{'rss': float}``, plus ``'cuda'`` when ``device`` is a CUDA device.
    """
    result = {'rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux
    if device is not None and torch.device(device).type == 'cuda':
        result['cuda'] = torch.cuda.max_memory_allocated(device) / 2**20
    return result
