"""A forward pass's precision and memory: autocast, the memory a network needs per pixel, the memory there is,
and the largest tile that fits (automatic tiles).

Unregistered helpers of ``tile='auto'`` in :func:`~acla_basicsr.inference.tiles.run_network` (``acla-restore
--tile auto``, its default; ``--max-memory``), the answer to Real-ESRGAN's most frequent issue (choosing
``--tile`` by hand, and an image too large failing instead of being tiled).

- **Measured, not guessed.** :func:`measure_memory` runs the network on two small inputs (``PROBE_SIDES``) and
  fits the peak memory of a forward pass as ``fixed + per_pixel * h * w``: on CUDA the peak of
  ``torch.cuda.max_memory_allocated``, on the CPU the peak of the bytes of the tensors the pass allocates
  (:class:`TensorMemoryTracker`). Every network of this project is linear in the pixels (ENLCA's random
  features, ACLA's chunked sampling, EARN's windows): on the demo EDSR, ENLCN and EARN the fit predicts the
  tracked peak at other sizes and aspect ratios exactly or above it; ACLA's sparse evaluation holds only its open
  keys, so its peak depends on the image (measured from 0.97x to 1.11x the fit). The fit is therefore used with
  a margin, :data:`SAFETY`. It is made once per network, device and precision and kept.
- **The budget** (``max_memory``, default :data:`DEFAULT_FRACTION` of :func:`available_memory`) bounds the fitted
  peak of one tile plus the whole-image canvases (the input, the stitched output, the self-ensemble's sum), all
  float32. It does not bound what is not a tensor of the pass: the interpreter and libraries, the weights, the
  decoded image files and, on the CPU, the allocator's unreturned blocks and the scratch space of oneDNN
  convolutions (docs/inference.md measures the resident peak against the budget). The default fractions leave
  that room.
- **The tile** (:func:`choose_tile`): the whole image if it fits, else the largest multiple of
  :data:`TILE_STEP` (at least :data:`MIN_TILE`) whose padded tile fits; a budget below the smallest tile is an
  :class:`~acla_basicsr.errors.OptionError`. An out-of-memory error during the pass halves the tile and retries
  (:func:`~acla_basicsr.inference.tiles.run_network`).
"""
import math
import weakref
from contextlib import nullcontext

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from acla_basicsr.errors import OptionError

#: Sides (input pixels) of the two square probes of :func:`measure_memory`.
PROBE_SIDES = (32, 64)
#: The smallest tile side that ``tile='auto'`` chooses or halves to (input pixels).
MIN_TILE = 32
#: Automatic tile sides are multiples of this.
TILE_STEP = 8
#: The fitted peak is multiplied by this (ACLA's open keys, and so its memory, depend on the image).
SAFETY = 1.2
#: Default budget: this fraction of :func:`available_memory` (the CPU keeps more in reserve: see the module doc).
DEFAULT_FRACTION = {'cpu': 0.5, 'cuda': 0.8}
_MIB = 2**20

_models = weakref.WeakKeyDictionary()  # net -> {(device, half): MemoryModel}


def precision_context(device, half):
    """``torch.autocast`` for ``half`` precision on ``device``: float16 on CUDA, bfloat16 elsewhere."""
    if not half:
        return nullcontext()
    device = torch.device(device)
    dtype = torch.float16 if device.type == 'cuda' else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


class TensorMemoryTracker(TorchDispatchMode):
    """Within the block, the bytes of the tensor storages created there that are alive, and their peak.

    torch keeps one Python object per live storage, so a finalizer on it runs when the storage is freed; views
    and in-place results share their storage and are counted once.
    """

    def __init__(self):
        super().__init__()
        self.live, self.current, self.peak = {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != 'meta':
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key):
        self.current -= self.live.pop(key, 0)


def forward_peak_bytes(net, lq, half=False):
    """Peak bytes that one forward pass of ``net`` on ``lq`` allocates beyond what was allocated before.

    Args:
        net (nn.Module): The network, on ``lq``'s device.
        lq (Tensor): (B, C, H, W) input.
        half (bool): Under :func:`precision_context`. Default: False.

    Returns:
        tuple[int, Tensor]: The peak bytes and the output.
    """
    device = lq.device
    with torch.no_grad(), precision_context(device, half):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            out = net(lq)
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) - before, out
        with TensorMemoryTracker() as tracker:
            out = net(lq)
        return tracker.peak, out


class MemoryModel:
    """The fitted peak memory of a forward pass, ``fixed + per_pixel * h * w`` bytes, and the output's shape.

    Args:
        fixed (float): Bytes independent of the input size.
        per_pixel (float): Bytes per input pixel.
        scale (int): Output side / input side.
        in_channels (int): Input channels.
        out_channels (int): Output channels.
    """

    def __init__(self, fixed, per_pixel, scale, in_channels, out_channels):
        self.fixed, self.per_pixel = fixed, per_pixel
        self.scale, self.in_channels, self.out_channels = scale, in_channels, out_channels

    def forward_bytes(self, height, width):
        """Fitted peak bytes of one forward pass on a ``height`` x ``width`` input, times :data:`SAFETY`."""
        return SAFETY * (self.fixed + self.per_pixel * height * width)

    def canvas_bytes(self, height, width, self_ensemble=False):
        """float32 whole-image tensors held beside the passes: the input (and its flipped copy) and the output
        (and the self-ensemble's sum and term)."""
        inputs = self.in_channels * height * width * (2 if self_ensemble else 1)
        outputs = self.out_channels * height * width * self.scale**2 * (3 if self_ensemble else 1)
        return 4 * (inputs + outputs)

    def __repr__(self):
        return (f'MemoryModel(fixed={self.fixed / _MIB:.1f} MiB, per_pixel={self.per_pixel / 1024:.2f} KiB, '
                f'scale={self.scale})')


def measure_memory(net, half=False):
    """Fit :class:`MemoryModel` for ``net`` from two probes of :data:`PROBE_SIDES` (kept per device and precision).

    Args:
        net (nn.Module): The network, in the mode it will run in.
        half (bool): The precision it will run in (see :func:`forward_peak_bytes`). Default: False.

    Returns:
        MemoryModel: The fit.
    """
    from .network import input_channels
    param = next(net.parameters())
    key = (str(param.device), bool(half))
    cached = _models.setdefault(net, {})
    if key not in cached:
        channels = input_channels(net)
        peaks = []
        for side in PROBE_SIDES:
            lq = torch.rand(1, channels, side, side, device=param.device)
            peak, out = forward_peak_bytes(net, lq, half)
            peaks.append(peak)
        (a, b), (pa, pb) = PROBE_SIDES, peaks
        per_pixel = max(pb - pa, 0) / (b * b - a * a)
        fixed = max(pa - per_pixel * a * a, 0)
        cached[key] = MemoryModel(fixed, per_pixel, out.shape[-1] // b, channels, out.shape[1])
    return cached[key]


def return_freed_memory():
    """On glibc (Linux), hand freed blocks of 128 KiB or more back to the system at once; elsewhere nothing.

    glibc raises its mmap threshold to the size of every large block freed (up to 32 MiB on 64-bit), after which
    such blocks come from its heap and stay resident when freed: measured on the demo EARN at 384x384, one pass
    grew the resident set by 206 MiB for 126 MiB of tensors, and by 127 MiB with the threshold fixed at 128 KiB
    (``mallopt(M_MMAP_THRESHOLD)``, as ``MALLOC_MMAP_THRESHOLD_=131072`` does), at about 6 % more CPU time (the
    kernel's page zeroing). ``acla-restore`` calls it on the CPU so that ``--max-memory`` bounds the resident
    set's growth, not only the tensors; it changes the allocator of the whole process, so a library leaves it to
    the command.

    Returns:
        bool: Whether the threshold was set.
    """
    import ctypes
    import ctypes.util
    import sys
    if not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        return bool(libc.mallopt(-3, 128 * 1024))  # M_MMAP_THRESHOLD = -3 (malloc.h); 1 on success
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def available_memory(device):
    """Bytes free for tensors on ``device``: CUDA's free device memory plus what torch's cache holds unused; on
    the CPU the available RAM (``psutil.virtual_memory().available``: free plus reclaimable caches)."""
    device = torch.device(device)
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    import psutil
    return psutil.virtual_memory().available


def default_budget(device):
    """The default ``max_memory``: :data:`DEFAULT_FRACTION` of :func:`available_memory`, in bytes."""
    device = torch.device(device)
    return DEFAULT_FRACTION.get(device.type, DEFAULT_FRACTION['cpu']) * available_memory(device)


def choose_tile(model, height, width, tile_pad, budget, self_ensemble=False, option='max_memory'):
    """The tile side for a ``height`` x ``width`` input within ``budget`` bytes.

    Args:
        model (MemoryModel): The network's fit (:func:`measure_memory`).
        height (int): Input height.
        width (int): Input width.
        tile_pad (int): Context of every tile, input pixels.
        budget (float): Bytes for the pass and the canvases.
        self_ensemble (bool): The self-ensemble's canvases count. Default: False.
        option (str): How the budget option is called, for the message. Default: 'max_memory'.

    Returns:
        int | None: None when the whole image fits, else the largest multiple of :data:`TILE_STEP` (at least
        :data:`MIN_TILE`) whose padded tile fits.

    Raises:
        OptionError: The smallest tile does not fit.
    """
    canvas = model.canvas_bytes(height, width, self_ensemble)

    def need(tile):
        return canvas + model.forward_bytes(min(tile + 2 * tile_pad, height), min(tile + 2 * tile_pad, width))

    if canvas + model.forward_bytes(height, width) <= budget:
        return None
    low, high = MIN_TILE // TILE_STEP, max(math.ceil(max(height, width) / TILE_STEP), MIN_TILE // TILE_STEP)
    if need(low * TILE_STEP) > budget:
        raise OptionError(
            f'{option}: {budget / _MIB:.0f} MiB is below the {need(MIN_TILE) / _MIB:.0f} MiB that a {width}x{height} '
            f'image needs with the smallest tile ({MIN_TILE} px, pad {tile_pad}) on this network; give a larger '
            f'{option}, or a smaller pad or image.')
    while low < high:  # need() grows with the tile: the largest step count that fits
        middle = (low + high + 1) // 2
        low, high = (middle, high) if need(middle * TILE_STEP) <= budget else (low, middle - 1)
    return low * TILE_STEP
