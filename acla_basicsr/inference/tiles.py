"""Running a network on a batch of any size: tiles, self-ensemble, half precision.

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
import warnings

import torch

from acla_basicsr.option_spec import Option
from . import memory
from .memory import precision_context

#: Pad of the tiles (LR pixels) when a tile size is given without one.
DEFAULT_TILE_PAD = 16
TILE_SIZE = Option('int', None, 'Tile side in input pixels (0 or ~: whole images).', low=0)
TILE_PAD = Option('int', DEFAULT_TILE_PAD, 'Context around every tile, in input pixels.', low=0)


def check_tile(tile_size, tile_pad, size_name='tile', pad_name='tile_pad'):
    """Check a tile size and pad; raise :class:`OptionError` naming the option otherwise.

    Args:
        tile_size (int | str | None): Tile side in input pixels; None or 0: no tiles; 'auto': chosen from a memory
            budget.
        tile_pad (int): Context around every tile, in input pixels.
        size_name (str): How the size option is called, for the message. Default: 'tile'.
        pad_name (str): How the pad option is called. Default: 'tile_pad'.
    """
    if tile_size != 'auto':
        TILE_SIZE.check(tile_size, size_name)
    TILE_PAD.check(tile_pad, pad_name)


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


def run_network(net, lq, tile_size=None, tile_pad=DEFAULT_TILE_PAD, self_ensemble=False, half=False, progress=None,
                max_memory=None, notify=None):
    """Run ``net`` on a batch without gradients, with optional tiles, self-ensemble and half precision.

    Args:
        net (nn.Module): The network, in the mode the caller wants (``eval()`` for inference).
        lq (Tensor): (B, C, H, W) input on the network's device, in [0, 1].
        tile_size (int | str | None): Tile side in input pixels; None or 0: the whole image at once; 'auto': the
            largest tile within ``max_memory`` (:func:`~acla_basicsr.inference.memory.choose_tile`), halved
            and retried after an out-of-memory error. Default: None.
        tile_pad (int): Context of every tile in input pixels. Default: 16.
        self_ensemble (bool): Average the 8 flips/transpositions. Default: False.
        half (bool): float16 autocast on CUDA, bfloat16 on the CPU. Default: False.
        progress (Callable | None): ``progress(done, total)`` after every forward pass. Default: None.
        max_memory (float | None): Bytes that ``tile_size='auto'`` may use; None: the default fraction of the
            memory available on the device (:func:`~acla_basicsr.inference.memory.default_budget`).
        notify (Callable | None): Called with one line when 'auto' chooses a tile or retries after running out of
            memory. Default: None (retries are warned).

    Returns:
        Tensor: The output, float32 (or wider).
    """
    check_tile(tile_size, tile_pad)
    if tile_size != 'auto':
        return _run_tiles(net, lq, tile_size, tile_pad, self_ensemble, half, progress)
    model = memory.measure_memory(net, half)
    budget = memory.default_budget(lq.device) if max_memory is None else max_memory
    h, w = lq.shape[-2:]
    tile_size = memory.choose_tile(model, h, w, tile_pad, budget, self_ensemble)
    if notify is not None:
        notify(f"tile auto: {'whole image' if tile_size is None else f'tile {tile_size}'} for {w}x{h} within "
               f'{budget / 2**20:.0f} MiB ({model})')
    while True:
        try:
            return _run_tiles(net, lq, tile_size, tile_pad, self_ensemble, half, progress)
        except torch.OutOfMemoryError:
            smaller = (tile_size or max(h, w)) // 2 // memory.TILE_STEP * memory.TILE_STEP
            if smaller < memory.MIN_TILE:
                raise
            message = f'tile auto: out of memory with {tile_size or "the whole image"}; retrying with tile {smaller}'
            if lq.device.type == 'cuda':
                torch.cuda.empty_cache()
            if notify is None:
                warnings.warn(message, RuntimeWarning, stacklevel=2)
            else:
                notify(message)
            tile_size = smaller


def _run_tiles(net, lq, tile_size, tile_pad, self_ensemble, half, progress):
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
