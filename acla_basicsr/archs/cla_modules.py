"""Cross-layer attention modules: CLA and ACLA (ACLA paper, Sec. 3) and the paper's comparisons NL and CLNL.

Unregistered helpers of :mod:`acla_basicsr.archs.acla_edsr_arch`, :mod:`acla_basicsr.archs.acla_rcan_arch` and
of the insert-position search. Every module is called as ``module(x, key_layers)`` with the query feature
``x`` (B, C, H, W) and the list of its key layers (each (B, C, H, W); NL ignores them) and returns
``x + update``. The output projection is zero-initialised, so a freshly built module is an identity.

Design decisions (see SPEC section 3 and docs/cla_acla.md):

- CLA keys: for each query pixel, K positions per key layer at ``p + offset``; the 2*K*L offsets and the
  K*L attention logits come from the query through 1x1 convs; one softmax over all K*L keys (deformable
  attention style, no query-key dot product). Each key layer has its own 1x1 CxC value projection (this is
  what makes the parameter counts of ACLA Table 5 grow quadratically with the number of modules); one CxC
  output projection per module.
- Sampling is one vectorised bilinear lookup per module for all key layers, keys and pixels: the four
  corners of every key, with their bilinear weights times the key's attention weight, are summed by one
  ``F.embedding_bag`` (mode 'sum', per-sample weights) over a channels-last table of the value maps.
  Nothing of size K*C*H*W is built. Zero padding outside the map; the result equals the public code's
  per-key ``torchvision.ops.deform_conv2d`` with an identity 1x1 kernel on the same offsets (and equally
  ``F.grid_sample`` with ``align_corners=False`` at pixel centres, kept as ``method='grid_sample'``; the
  gather is faster forward + backward on CPU, benchmarks/README.md). The default
  (``method='fused'``) reads a table with a zero border instead of masking the corners outside the map and has a
  hand-written backward pass: the values' gradient is one more ``embedding_bag`` over the keys sorted by the row of
  their top-left corner, the offsets' and weights' gradients are closed-form in the 4 corner dot products of every
  key (faster than ``'gather'``, which keeps autograd's generic backward; the speed-ups against the per-key
  deform_conv2d are in benchmarks/README.md). Offsets use
  deform_conv2d's layout: (dy, dx) pairs, key-major. ``max_memory_mb`` covers the channels-last value table
  and the gathered keys: above it key layers, then keys, are processed in chunks, each recomputed in backward
  (activation checkpointing), so memory stays bounded in training. Pixel coordinates stay float32 under
  autocast (float16/bfloat16 coordinates are not exact at a few hundred pixels).
- ACLA adds a gate per key, predicted from the query: a binary gate sampled with logistic noise in training
  (``z = [g + log u - log(1 - u) > 0]``, open with probability sigmoid(g)), straight-through with the
  gradient of its Gumbel-sigmoid relaxation at a temperature that the model anneals, and ``z = [g > 0]`` in
  evaluation. The gates multiply the softmax weights and are *not* renormalised: a closed key contributes
  nothing, in training as in evaluation, and the output depends on the absolute gate level (renormalising
  ``w * z / sum(w * z)`` cancels a common shift of the gate logits, so training could not learn how many keys
  to keep). A query whose keys are all closed gets a zero update (the module is an identity there).
- Key layers weighted by ``layer_weights`` (the insert-position supernet) multiply their exponentials inside the
  softmax (``softmax(a + log lw)``, computed in product form): lw = 0 removes a layer exactly, so a hard selection
  computes the network without it, and a removed layer still gets the relaxed gradient ``d w / d lw`` that a
  straight-through position gate needs (:meth:`CrossLayerAttention.softmax_weights`).
- Sparse evaluation (ACLA, ``not self.training``): the logits and gates of every key are computed by their 1x1
  convs (the softmax runs over all K*L logits); a key layer without an open key in the batch (or weighted 0 by
  the supernet) is neither projected nor given offsets; the projected layers get the offsets of all their keys
  (one matrix product, the offset conv's rows of those layers: a GEMM is far cheaper per MAC than gathering the
  open (pixel, key) pairs, measured); only the open keys are aggregated (their corners selected by one mask, then
  one ``F.embedding_bag`` with a bag of any size per query pixel over the padded channels-last table of the
  projected key layers). The same function as the dense path, which training keeps (its backward) and the ONNX
  export uses (``sampling_method='grid_sample'``).
- Value projections: one batched matmul for all key layers (the parameters stay the 1x1 convs ``value.{l}``), its
  result the channels-last value table.
- MACs (:func:`cla_macs`, the one formula): per pixel the output projection C^2; per projected key layer C^2 for
  its value projection and 2 K C for the offsets of its K keys; C per key for its logit and (ACLA) C for its
  gate; 4 C per open key for its aggregation (the bilinear corners, not seen by torch's flop counter). A closed
  key saves only its aggregation; a key layer without an open key also saves its projection and offsets.
  :meth:`CrossLayerAttention.macs` counts them for a given number of open keys and projected layers,
  :meth:`AdaptiveCrossLayerAttention.expected_macs` as a differentiable expectation for the MAC penalty of
  training and search.
"""
import math

import torch
from torch import nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

# Default memory budget of one attention step (MiB): above it keys or queries are processed in chunks.
DEFAULT_MAX_MEMORY_MB = 1024
# Smallest key-layer weight taken to the log for the softmax's shift; a layer weighted exactly 0 has none.
LOG_FLOOR = 1e-30
# Decay of the moving average of the open keys over training passes (AdaptiveCrossLayerAttention.smoothed_active_keys).
KEY_STATS_DECAY = 0.98
# Largest exponent of a removed key layer's logits above the shift (float32 sums of K*L such terms stay finite).
EXP_CAP = 60.0
# Approximate bytes per element in forward + backward (measured with a fresh-process peak-RSS probe):
# a gathered (key, corner, pixel) entry: indices, corner weights and their intermediates (autograd's backward);
_BYTES_PER_GATHER_ENTRY = 100
# the same entry with the fused sampler's backward (index, weight, sort order, dot products, a corner's sums):
# measured against the gather's with benchmarks/bench_cla_sampling.py (figures in docs/cla_acla.md);
_BYTES_PER_FUSED_ENTRY = 93
# an element of the (B, L, C, H, W, K) tensor of grid_sample: the samples, the einsum copy, gradients;
_BYTES_PER_SAMPLE = 16
# an element of an attention matrix: logits, softmax, gradient.
_BYTES_PER_ATTENTION = 12


def _chunk_size(max_memory_mb, bytes_per_unit):
    """Units per chunk within the budget, at least 1; an infinite budget (the ONNX export) has no size arithmetic,
    which a symbolic trace could not turn into an int: one chunk, ``math.inf``."""
    if max_memory_mb == math.inf:
        return math.inf
    return max(1, int(max_memory_mb * 2**20 // bytes_per_unit))


def _chunked(fn, num, chunk, sliced, shared, axis, cat_dim=None):
    """``fn(*slices, *shared)`` on chunks of ``chunk`` along ``axis`` of the ``sliced`` tensors.

    The results are summed (``cat_dim=None``: chunks of keys) or concatenated along ``cat_dim`` (chunks of
    queries). When gradients are needed every chunk is recomputed in backward (activation checkpointing),
    so the peak memory is that of one chunk in training too.
    """
    outs = []
    for start in range(0, num, chunk):
        args = [t.narrow(axis, start, min(chunk, num - start)) for t in sliced] + list(shared)
        if torch.is_grad_enabled() and any(t.requires_grad for t in args):
            out = checkpoint(fn, *args, use_reentrant=False)
        else:
            out = fn(*args)
        if cat_dim is None:
            outs = [out if not outs else outs[0] + out]
        else:
            outs.append(out)
    return outs[0] if cat_dim is None else torch.cat(outs, cat_dim)


def _value_table(values):
    """The channels-last (B*L*H*W, C) table of the value maps that ``F.embedding_bag`` reads (one copy)."""
    b, num_layers, c, h, w = values.shape
    return values.permute(0, 1, 3, 4, 2).reshape(b * num_layers * h * w, c)


def _pixel_coordinates(offsets, h, w):
    """Sampling positions in pixels, (B, L, K, H, W) each, in float32 whatever the offsets' dtype.

    Under autocast the offsets come from a 1x1 conv in float16/bfloat16, where pixel coordinates are not
    exact (bfloat16 rounds 299 to 300: an index past the table; float16 moves 600.3 to 600.5), so the
    coordinates and everything derived from them are computed in float32 (float64 for float64 offsets).
    """
    offsets = offsets.to(torch.promote_types(offsets.dtype, torch.float32))
    py = torch.arange(h, device=offsets.device, dtype=offsets.dtype).view(h, 1) + offsets[:, :, :, 0]
    px = torch.arange(w, device=offsets.device, dtype=offsets.dtype) + offsets[:, :, :, 1]
    return py, px


def _gather_from_table(table, shape, offsets, weights):
    """Bilinear gather of the keys from a :func:`_value_table` of values of ``shape`` (B, L, C, H, W)."""
    b, num_layers, c, h, w = shape
    num_keys = offsets.shape[2]
    py, px = _pixel_coordinates(offsets, h, w)
    y0, x0 = py.floor(), px.floor()
    fy, fx = py - y0, px - x0
    gy, gx = 1 - fy, 1 - fx
    # the four corners on dim 3: (B, L, K, 4, H, W)
    cy = torch.stack((y0, y0, y0 + 1, y0 + 1), 3)
    cx = torch.stack((x0, x0 + 1, x0, x0 + 1), 3)
    inside = (cy >= 0) & (cy <= h - 1) & (cx >= 0) & (cx <= w - 1)  # zero padding
    coef = torch.stack((gy * gx, gy * fx, fy * gx, fy * fx), 3) * weights.to(py.dtype).unsqueeze(3) * inside
    # int32 indices when they fit: embedding_bag's backward sorts them, twice as fast as int64
    itype = torch.int32 if table.shape[0] < 2**31 else torch.int64
    layer = torch.arange(b * num_layers, device=table.device, dtype=itype).view(b, num_layers, 1, 1, 1, 1)
    index = layer * (h * w) + cy.clamp(0, h - 1).to(itype) * w + cx.clamp(0, w - 1).to(itype)
    # one bag per query pixel holding its L*K*4 (key, corner) entries
    bag = num_layers * num_keys * 4
    index = index.permute(0, 4, 5, 1, 2, 3).reshape(b * h * w, bag)
    coef = coef.permute(0, 4, 5, 1, 2, 3).reshape(b * h * w, bag).to(table.dtype)
    out = F.embedding_bag(index, table, per_sample_weights=coef, mode='sum')
    return out.view(b, h, w, c).permute(0, 3, 1, 2)


def _gather_and_sum(values, offsets, weights):
    return _gather_from_table(_value_table(values), values.shape, offsets, weights)


# Zero border of the fused sampler's value table: a key whose top-left corner is clamped into [-2, H] x [-2, W]
# reads its four corners inside the padded grid, and a corner outside the map reads a zero.
_PAD = 2


def _padded_table(values):
    """Channels-last (B*L*(H+4)*(W+4), C) table of the value maps with a zero border of 2 pixels.

    The fused sampler clamps the top-left corner of every key into the border (:func:`_bilinear_entries`), so
    zero padding needs no mask in the forward or the backward pass.
    """
    b, num_layers, c, h, w = values.shape
    table = values.new_empty(b, num_layers, h + 2 * _PAD, w + 2 * _PAD, c)
    for border in (table[:, :, :_PAD], table[:, :, -_PAD:], table[:, :, :, :_PAD], table[:, :, :, -_PAD:]):
        border.zero_()
    table[:, :, _PAD:-_PAD, _PAD:-_PAD].copy_(values.permute(0, 1, 3, 4, 2))
    return table.view(-1, c)


def _bilinear_entries(offsets, weights, h, w):
    """Rows of a :func:`_padded_table` and weights of the 4 bilinear corners of every key, one bag per pixel.

    ``out[p] = sum_{l, k, corner} coef * table[index]`` with ``coef = w_lk * a_corner``, the bilinear weights
    ``a = ((1 - fy)(1 - fx), (1 - fy) fx, fy (1 - fx), fy fx)`` of the corners (y0, x0), (y0, x0 + 1),
    (y0 + 1, x0), (y0 + 1, x0 + 1) of ``(py, px) = p + (dy, dx)``. The top-left corner is clamped into
    [-2, H] x [-2, W]: a key clamped there has its four corners in the zero border, as they were outside the
    map before. Coordinates in float32 at least (:func:`_pixel_coordinates`).

    Returns:
        tuple: index (B*H*W, L*K*4) of the corners; coef (B*H*W, L*K*4); top_left (B, H, W, L, K), the row of
        every key's top-left corner (a strided view of ``index``); and per key in the (B, H, W, L, K) layout of
        the bags, fy and fx (the fractional parts) and the key weights, for the backward pass. Indices are int32
        (int64 for huge tables).
    """
    b, num_layers, num_keys = offsets.shape[:3]
    hp, wp = h + 2 * _PAD, w + 2 * _PAD
    dtype = torch.promote_types(offsets.dtype, torch.float32)  # see _pixel_coordinates
    # everything in the (B, H, W, L, K) order of the bags from the start, the 4 corners written in place: stacking
    # permuted maps was a third of the dense sampler's forward
    offsets = offsets.permute(0, 4, 5, 1, 2, 3).to(dtype)  # (B, H, W, L, K, 2), a view for float32 offsets
    py = offsets[..., 0] + torch.arange(h, device=offsets.device, dtype=dtype).view(h, 1, 1, 1)
    px = offsets[..., 1] + torch.arange(w, device=offsets.device, dtype=dtype).view(w, 1, 1)
    wt = weights.permute(0, 3, 4, 1, 2).to(dtype)
    y0, x0 = py.floor(), px.floor()
    fy, fx = py.sub_(y0), px.sub_(x0)
    itype = torch.int32 if b * num_layers * hp * wp < 2**31 else torch.int64
    layer = torch.arange(b * num_layers, device=offsets.device, dtype=itype).view(b, 1, 1, num_layers, 1) * hp
    entries = fy.shape + (4, )
    index = torch.empty(entries, dtype=itype, device=offsets.device)
    top_left = index[..., 0]
    # clamped before the integer conversion (far keys would overflow it)
    torch.add(layer + _PAD, y0.clamp_(-_PAD, h).to(itype), out=top_left)
    top_left.mul_(wp).add_(x0.clamp_(-_PAD, w).to(itype) + _PAD)
    for corner, shift in enumerate((1, wp, wp + 1), 1):
        torch.add(top_left, shift, out=index[..., corner])
    upper, lower, gx = (1 - fy).mul_(wt), fy * wt, 1 - fx
    coef = torch.empty(entries, dtype=dtype, device=offsets.device)
    for corner, (wy, wx) in enumerate(((upper, gx), (upper, fx), (lower, gx), (lower, fx))):
        torch.mul(wy, wx, out=coef[..., corner])
    bags = b * h * w
    return index.view(bags, -1), coef.view(bags, -1), top_left, fy, fx, wt


def _fused_from_table(table, shape, offsets, weights):
    """Forward of the fused sampler without gradients, from a :func:`_padded_table` (no autograd graph)."""
    b, num_layers, c, h, w = shape
    index, coef = _bilinear_entries(offsets, weights, h, w)[:2]
    out = F.embedding_bag(index, table, per_sample_weights=coef.to(table.dtype), mode='sum')
    return out.view(b, h, w, c).permute(0, 3, 1, 2)


# Approximate bytes per key of a projected key layer in one step of the sparse evaluation (every key of the step's
# pixels, all open at worst): its offsets, the selected key's index, (pixel, layer), coordinates, 4 corner indices
# and weights.
_BYTES_PER_SPARSE_KEY = 100
# Largest step of the sparse evaluation (MiB), whatever the budget: on CPU (one thread, C=64, K=16, L=5, 96x96)
# steps of 8 to 64 MiB took the same time within the noise of a loaded machine, steps of 1 to 4 MiB up to 1.35x.
_SPARSE_CHUNK_MB = 32


def aggregate_open_keys(table, offsets, weights, is_open, first, size):
    """Weighted sum of the open keys of consecutive query pixels: one ``F.embedding_bag``, a bag of any size per pixel.

    The open keys are selected by one ``nonzero`` of ``is_open``; their coordinates, the 4 bilinear corners in the
    padded table (top-left corner clamped into its zero border, as :func:`_bilinear_entries` does for every key)
    and the corner weights are computed by 1D gathers and elementwise operations on the open keys alone, and one
    ``embedding_bag`` sums them, the bag of pixel p starting at 4 times the number of open keys of the pixels
    before it.

    Args:
        table (Tensor): (B * L' * (H + 4) * (W + 4), C) :func:`_padded_table` of the projected key layers' values.
        offsets (Tensor): (N, L', K, 2) offsets (dy, dx) of every key of N consecutive query pixels, in pixels.
        weights (Tensor): (N, L', K) their attention weights.
        is_open (Tensor): (N, L', K) bool, the keys that enter the sum.
        first (int): The first of the N pixels, an index into B*H*W.
        size (tuple[int]): (B, H, W).

    Returns:
        Tensor: (N, C) sums (a pixel without an open key gets zeros).
    """
    n, num_layers, k = weights.shape
    b, h, w = size
    hp, wp = h + 2 * _PAD, w + 2 * _PAD
    device = offsets.device
    itype = torch.int32 if table.shape[0] < 2**31 else torch.int64
    dtype = torch.promote_types(offsets.dtype, torch.float32)  # see _pixel_coordinates
    # per (pixel, layer), flat: the pixel's row and column, and where its layer's map starts in the padded
    # (B, L', H + 4, W + 4) table (border included)
    pixel = torch.arange(first, first + n, device=device)
    batch, rest = torch.div(pixel, h * w, rounding_mode='floor'), pixel % (h * w)
    layer = batch.view(n, 1) * num_layers + torch.arange(num_layers, device=device)
    base = ((layer * hp + _PAD) * wp + _PAD).view(-1).to(itype)
    row, col = (t.to(dtype).view(n, 1).expand(n, num_layers).reshape(-1)
                for t in (torch.div(rest, w, rounding_mode='floor'), rest % w))
    # the open keys alone from here on: one selection, then 1D gathers by the key or its (pixel, layer) (1D
    # elementwise operations: broadcasting over the 4 corners is several times slower on CPU)
    key = is_open.reshape(-1).nonzero().squeeze(1)
    pixel_layer = torch.div(key, k, rounding_mode='floor')
    offsets = offsets.reshape(-1, 2).index_select(0, key).to(dtype)
    py = offsets[:, 0] + row.index_select(0, pixel_layer)
    px = offsets[:, 1] + col.index_select(0, pixel_layer)
    y0, x0 = py.floor(), px.floor()
    fy, fx = py - y0, px - x0
    # the top-left corner clamped into the zero border before the integer conversion (far keys would overflow it);
    # the (key, corner) columns written in place (faster than stacking them)
    num = key.numel()
    index = torch.empty(num, 4, dtype=itype, device=device)
    top_left = index[:, 0]
    torch.add(base.index_select(0, pixel_layer), x0.clamp(-_PAD, w).to(itype), out=top_left)
    top_left.add_(y0.clamp(-_PAD, h).to(itype) * wp)
    for corner, shift in enumerate((1, wp, wp + 1), 1):
        torch.add(top_left, shift, out=index[:, corner])
    weight = weights.reshape(-1).index_select(0, key).to(dtype)
    upper, lower, gx = (1 - fy) * weight, fy * weight, 1 - fx
    corners = ((upper, gx), (upper, fx), (lower, gx), (lower, fx))
    if torch.is_grad_enabled() and (upper.requires_grad or fx.requires_grad):  # out= is not differentiable
        coef = torch.stack([wy * wx for wy, wx in corners], 1)
    else:
        coef = torch.empty(num, 4, dtype=dtype, device=device)
        for corner, (wy, wx) in enumerate(corners):
            torch.mul(wy, wx, out=coef[:, corner])
    index, coef = index.view(-1), coef.view(-1)
    counts = is_open.reshape(n, -1).sum(1, dtype=itype) * 4
    return F.embedding_bag(index, table, counts.cumsum(0, dtype=itype) - counts, mode='sum',
                           per_sample_weights=coef.to(table.dtype))


class _FusedSampling(torch.autograd.Function):
    """Bilinear key sampling with a hand-written backward pass (``method='fused'`` of :func:`sample_keys`).

    Forward: one ``F.embedding_bag`` over the 4 corners of every key (:func:`_bilinear_entries`) in a value
    table with a zero border (:func:`_padded_table`), as 'gather' without its masks. Backward, from the 4 dot
    products ``d_corner = g_p . table[corner]`` of every key (the per-sample-weight gradient of that
    ``embedding_bag``: one fused pass, nothing of size entries x C is built):

    - values: ``grad_table[r] = sum_{corners e at row r} coef_e g_{p(e)}``: the keys are sorted by the row of
      their top-left corner (one sort of L*K keys per pixel, not of the 4 corners); for each of the 4 corners an
      ``embedding_bag`` over the gradient rows with the keys in that order gives the sum at every top-left row,
      added into the table at the corner's offset 0, 1, W + 4 or W + 5 (one corner at a time: faster than one
      ``embedding_bag`` with a (4, rows, C) result, docs/cla_acla.md). This replaces ``embedding_bag``'s
      generic dense backward;
    - key weights: ``sum_corner a_corner d_corner``;
    - offsets (the derivatives of the bilinear weights): ``dy: w ((1 - fx)(d10 - d00) + fx (d11 - d01))``,
      ``dx: w ((1 - fy)(d01 - d00) + fy (d11 - d10))``.

    Corners outside the map read the zero border, so they get no gradient, as under zero padding.
    """

    @staticmethod
    def forward(ctx, values, offsets, weights):
        b, num_layers, c, h, w = values.shape
        table = _padded_table(values)
        index, coef, top_left, fy, fx, wt = _bilinear_entries(offsets, weights, h, w)
        coef = coef.to(table.dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # keep the graph of the per-sample weights only: its backward is the fused gather-dot of the d's
            with torch.enable_grad():
                leaf = coef.detach().requires_grad_()
                graph = F.embedding_bag(index, table, per_sample_weights=leaf, mode='sum')
            ctx.graph = (leaf, graph)
            out = graph.detach()
        else:
            out = F.embedding_bag(index, table, per_sample_weights=coef, mode='sum')
        ctx.save_for_backward(top_left.contiguous().view(index.shape[0], -1), coef, fy, fx, wt)
        ctx.shape, ctx.dtypes = values.shape, (offsets.dtype, weights.dtype)
        return out.view(b, h, w, c).permute(0, 3, 1, 2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        top_left, coef, fy, fx, wt = ctx.saved_tensors
        b, num_layers, c, h, w = ctx.shape
        hp, wp = h + 2 * _PAD, w + 2 * _PAD
        # bag p <-> row p; contiguous: for a batch of one the reshape is a column-major view, which both
        # embedding_bag and its per-sample-weight gradient read 20x slower
        grad = grad.permute(0, 2, 3, 1).reshape(b * h * w, c).to(coef.dtype).contiguous()
        grad_values = grad_offsets = grad_weights = None
        if ctx.needs_input_grad[0]:
            rows, keys = b * num_layers * hp * wp, top_left.numel()
            flat = top_left.view(-1)
            order = flat.argsort()
            counts = torch.bincount(flat, minlength=rows)
            starts = counts.cumsum(0) - counts
            pixel = torch.div(order, top_left.shape[1], rounding_mode='trunc')  # the bag (query pixel) of each key
            corner_coef = coef.view(keys, 4).index_select(0, order).t().contiguous()  # (4, keys), sorted
            table = None
            for corner, shift in enumerate((0, 1, wp, wp + 1)):
                sums = F.embedding_bag(pixel, grad, starts, mode='sum', per_sample_weights=corner_coef[corner])
                if table is None:
                    table = sums
                else:
                    table[shift:] += sums[:rows - shift]
            grad_values = table.view(b, num_layers, hp, wp, c)[:, :, _PAD:-_PAD, _PAD:-_PAD].permute(0, 1, 4, 2, 3)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            leaf, graph = ctx.graph
            # retain_graph: a second backward through the same graph (gradcheck) needs it; it dies with ctx
            dots = torch.autograd.grad(graph, leaf, grad, retain_graph=True)[0].view(fy.shape + (4, )).to(fy.dtype)
            d00, d01, d10, d11 = dots.unbind(-1)
            gy, gx = 1 - fy, 1 - fx
            if ctx.needs_input_grad[2]:
                grad_weights = gy * (gx * d00 + fx * d01) + fy * (gx * d10 + fx * d11)
                grad_weights = grad_weights.permute(0, 3, 4, 1, 2).to(ctx.dtypes[1])
            if ctx.needs_input_grad[1]:
                grad_y = wt * (gx * (d10 - d00) + fx * (d11 - d01))
                grad_x = wt * (gy * (d01 - d00) + fy * (d11 - d10))
                grad_offsets = torch.stack((grad_y, grad_x), -1).permute(0, 3, 4, 5, 1, 2).to(ctx.dtypes[0])
        return grad_values, grad_offsets, grad_weights


def _fused_sample_and_sum(values, offsets, weights):
    if torch.is_grad_enabled() and any(t.requires_grad for t in (values, offsets, weights)):
        return _FusedSampling.apply(values, offsets, weights)
    return _fused_from_table(_padded_table(values), values.shape, offsets, weights)


def _grid_sample_and_sum(values, offsets, weights):
    b, num_layers, c, h, w = values.shape
    k = offsets.shape[2]
    # normalised coordinates of the pixel centres (align_corners=False): pixel j <-> (2j + 1) / W - 1, in
    # float32 under autocast too (see _pixel_coordinates)
    dtype = torch.promote_types(values.dtype, torch.float32)  # grid_sample wants one dtype for both
    xs = (torch.arange(w, device=values.device, dtype=dtype) * 2 + 1) / w - 1
    ys = (torch.arange(h, device=values.device, dtype=dtype) * 2 + 1) / h - 1
    off = offsets.to(dtype).permute(0, 1, 4, 5, 2, 3)  # (B, L, H, W, K, 2), pairs (dy, dx)
    grid = torch.stack((xs.view(w, 1) + off[..., 1] * (2 / w), ys.view(h, 1, 1) + off[..., 0] * (2 / h)), -1)
    sampled = F.grid_sample(
        values.reshape(b * num_layers, c, h, w).to(dtype),
        grid.reshape(b * num_layers, h, w * k, 2).to(dtype),
        mode='bilinear',
        padding_mode='zeros',
        align_corners=False)
    out = torch.einsum('blchwk,blkhw->bchw', sampled.view(b, num_layers, c, h, w, k), weights.to(sampled.dtype))
    return out.to(values.dtype)


_SAMPLERS = {'fused': _fused_sample_and_sum, 'gather': _gather_and_sum, 'grid_sample': _grid_sample_and_sum}
# the samplers that read a channels-last value table: how to build it, and how to sample from a built one
_TABLE_SAMPLERS = {'fused': (_padded_table, _fused_from_table), 'gather': (_value_table, _gather_from_table)}


def sampling_chunks(shape, num_keys, max_memory_mb=DEFAULT_MAX_MEMORY_MB, method='fused', itemsize=4,
                    training=False):
    """Key layers and keys processed at once by :func:`sample_keys` so that one step fits the memory budget.

    One step holds the channels-last value table of its key layers (``fused``, ``gather``; with its gradient
    in training) and the gathered entries (or ``grid_sample``'s samples) of its keys in those layers. The floor
    is one key of one key layer: a budget below that is exceeded.

    Args:
        shape (tuple[int]): (B, L, C, H, W) of the values.
        num_keys (int): K.
        max_memory_mb (float): Memory budget (MiB). Default: 1024.
        method (str): 'fused', 'gather' or 'grid_sample'. Default: 'fused'.
        itemsize (int): Bytes per element of the values. Default: 4.
        training (bool): Whether gradients are computed. Default: False.

    Returns:
        tuple[int, int]: (key layers per step, keys per step).
    """
    b, num_layers, c, h, w = shape
    if max_memory_mb == math.inf:  # no size arithmetic: a symbolic trace (the ONNX export) cannot floor it
        return num_layers, num_keys
    budget = max_memory_mb * 2**20
    if method in _TABLE_SAMPLERS:
        pad = 2 * _PAD if method == 'fused' else 0  # the fused sampler's table has a zero border
        table = b * (h + pad) * (w + pad) * c * itemsize * (2 if training else 1)  # of one key layer
        per_entry = _BYTES_PER_FUSED_ENTRY if method == 'fused' else _BYTES_PER_GATHER_ENTRY
        entries = b * h * w * 4 * per_entry  # of one key in one key layer
    else:
        table, entries = 0, b * h * w * c * _BYTES_PER_SAMPLE
    layers = int(min(num_layers, max(1, budget // (table + num_keys * entries))))
    if layers == 1:
        keys = int(min(num_keys, max(1, (budget - table) // entries)))
    else:
        keys = num_keys
    return layers, keys


def sample_keys(values, offsets, weights, max_memory_mb=DEFAULT_MAX_MEMORY_MB, method='fused'):
    """Weighted sum of bilinearly sampled keys, one vectorised lookup for all key layers and keys.

    ``out[b, :, i, j] = sum_{l, k} weights[b, l, k, i, j] * values[b, l, :, i + dy, j + dx]`` with
    ``(dy, dx) = offsets[b, l, k, :, i, j]`` in pixels, bilinear interpolation and zero outside the map:
    the same as ``torchvision.ops.deform_conv2d(values[:, l], offsets[:, l, k], eye(C)[..., None, None])``
    summed with the weights, without the C*C MACs per key of the identity kernel.

    Pixel coordinates are float32 whatever the dtype of the offsets (autocast), see
    :func:`_pixel_coordinates`. The memory budget covers the channels-last value table that the gather
    reads and the gathered entries (:func:`sampling_chunks`): above it the key layers, then the keys, are
    processed in chunks. Without gradients the table of a chunk of key layers is built once for all its key
    chunks; with gradients every chunk builds its own and is recomputed in backward (activation
    checkpointing), so memory stays bounded in training too.

    Args:
        values (Tensor): (B, L, C, H, W) value maps of the L key layers.
        offsets (Tensor): (B, L, K, 2, H, W) key offsets (dy, dx) from each query pixel, in pixels.
        weights (Tensor): (B, L, K, H, W) weight of each key.
        max_memory_mb (float): Approximate memory budget (MiB) of the value table and the gathered keys; the
            floor is one key layer's table plus one key. Default: 1024.
        method (str): 'fused' (``F.embedding_bag`` over the four corners of every key, with the hand-written
            backward pass of :class:`_FusedSampling`), 'gather' (the same forward, autograd's backward of
            ``embedding_bag`` and of the corner weights) or 'grid_sample' (``F.grid_sample`` of all keys, then a
            weighted sum; builds the (B, L, C, H, W, K) samples; exportable to ONNX). Default: 'fused'.

    Returns:
        Tensor: (B, C, H, W).
    """
    if method not in _SAMPLERS:
        raise ValueError(f"method: '{method}' is unknown; use one of {', '.join(_SAMPLERS)}.")
    num_layers, k = values.shape[1], offsets.shape[2]
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (values, offsets, weights))
    layers, keys = sampling_chunks(values.shape, k, max_memory_mb, method, values.element_size(), training)
    sampler = _SAMPLERS[method]
    if layers >= num_layers and keys >= k:
        return sampler(values, offsets, weights)
    out = None
    for start in range(0, num_layers, layers):  # chunks of key layers, each with its own value table
        size = min(layers, num_layers - start)
        v, o, wt = (t.narrow(1, start, size) for t in (values, offsets, weights))
        if method in _TABLE_SAMPLERS and not training:
            build_table, from_table = _TABLE_SAMPLERS[method]
            table, shape = build_table(v), v.shape
            part = _chunked(lambda o, wt: from_table(table, shape, o, wt), k, keys, (o, wt), (), axis=2)
            del table
        else:
            part = _chunked(lambda o, wt, v: sampler(v, o, wt), k, keys, (o, wt), (v, ), axis=2)
        out = part if out is None else out + part
    return out


def set_sampling_method(network, method):
    """Make every CLA/ACLA module of ``network`` sample its keys with ``method`` (see :func:`sample_keys`).

    Args:
        network (nn.Module): Any network (the modules are found among its submodules).
        method (str): One of the methods of :func:`sample_keys`.

    Returns:
        int: The number of modules set.
    """
    if method not in _SAMPLERS:
        raise ValueError(f"method: '{method}' is unknown; use one of {', '.join(_SAMPLERS)}.")
    modules = [m for m in network.modules() if isinstance(m, CrossLayerAttention)]
    for module in modules:
        module.sampling_method = method
    return len(modules)


def _attend(q, k, v, scale):
    return torch.softmax(torch.matmul(q, k) * scale, dim=-1).matmul(v)


def dot_product_attention(query, key, value, max_memory_mb=DEFAULT_MAX_MEMORY_MB):
    """Softmax dot-product attention with explicit matmuls, chunked over queries to bound memory.

    Explicit matmuls (not ``F.scaled_dot_product_attention``) so that torch's flop counter counts them on
    every device.

    Args:
        query (Tensor): (B, N, D).
        key (Tensor): (B, D, M).
        value (Tensor): (B, M, D).
        max_memory_mb (float): Approximate memory budget (MiB) of the attention matrices; above it the
            queries are processed in chunks, recomputed in backward. Default: 1024.

    Returns:
        Tensor: (B, N, D).
    """
    b, n, d = query.shape
    scale = d**-0.5
    chunk = _chunk_size(max_memory_mb, b * key.shape[-1] * _BYTES_PER_ATTENTION)
    if chunk >= n:
        return _attend(query, key, value, scale)
    return _chunked(lambda q, k, v: _attend(q, k, v, scale), n, chunk, (query, ), (key, value), axis=1, cat_dim=1)


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name}: {value!r} must be an integer >= 1.')


def initial_offsets(num_keys):
    """Initial (dy, dx) of K keys: the 8-neighbourhood at radius 1, then 2, ... (deformable-attention style).

    Args:
        num_keys (int): K.

    Returns:
        Tensor: (K, 2).
    """
    index = torch.arange(num_keys, dtype=torch.float64)
    angle = 2 * torch.pi * (index % 8) / min(num_keys, 8)
    direction = torch.stack((torch.sin(angle), torch.cos(angle)), -1)
    direction = direction / direction.abs().max(-1, keepdim=True).values
    offsets = direction * (1 + torch.div(index, 8, rounding_mode='floor')).unsqueeze(-1)
    return offsets.round(decimals=6).float()


def cla_macs(num_feat, num_keys, height, width, key_layers, projected_layers, open_keys, scored_heads,
             aggregation=False):
    """MACs of one CLA/ACLA module: the cost model of the code (docs/cla_acla.md), written once.

    ``HW (C^2 + P (C^2 + 2 K C) + L h K C + n 4 a C)`` per image: the output projection; for each of the P key
    layers that have an open key its value projection and the 2 offsets of every one of its K keys (one matrix
    product per layer, open keys or not); the ``h`` 1x1 heads computed for every key of the L key layers (the
    logit, which the softmax needs for every key, and ACLA's gate); with ``aggregation`` (a = 1), the 4 bilinear
    corners of each of the n open keys, which torch's flop counter does not see. Every argument may be a tensor
    (an expectation: the MAC term of training and search).

    Args:
        num_feat (int): C.
        num_keys (int): K.
        height (int): H.
        width (int): W.
        key_layers (float | Tensor): L, the key layers whose logits (and gates) are computed.
        projected_layers (float | Tensor): P, the key layers projected and given offsets.
        open_keys (float | Tensor): n, the open keys summed over the key layers.
        scored_heads (int): h: 1 (CLA: the logit) or 2 (ACLA: logit and gate).
        aggregation (bool): Count the aggregation. Default: False.

    Returns:
        float | Tensor: MACs.
    """
    c = num_feat
    per_open_key = 4 * c if aggregation else 0
    return height * width * (c * c + projected_layers * (c * c + 2 * num_keys * c) +
                             key_layers * scored_heads * num_keys * c + open_keys * per_open_key)


def key_softmax(logits, layer_weights, dim):
    """Softmax over the L*K keys of ``logits``, whose dims ``dim`` and ``dim + 1`` are (L, K), in which the key-layer
    weights multiply each layer's exponentials (:meth:`CrossLayerAttention.softmax_weights` gives the formula).

    Args:
        logits (Tensor): Key logits, (L, K) at dims ``dim``, ``dim + 1``.
        layer_weights (Tensor | None): Key-layer weights broadcastable to ``logits`` (L at ``dim``, 1 at
            ``dim + 1``), or None for a plain softmax.
        dim (int): The dim of L.

    Returns:
        Tensor: the weights, the shape of ``logits`` (float32 at least when ``layer_weights`` is given).
    """
    if layer_weights is None:
        return logits.flatten(dim, dim + 1).softmax(dim).view(logits.shape)
    dtype = torch.promote_types(logits.dtype, torch.float32)  # exponentials in float32 under autocast
    logits, layer_weights = logits.to(dtype), layer_weights.to(dtype)
    with torch.no_grad():
        scores = logits + torch.log(layer_weights.clamp_min(LOG_FLOOR))
        scores = torch.where(layer_weights > 0, scores, torch.full_like(scores, float('-inf')))
        shift = scores.amax((dim, dim + 1), keepdim=True)
    exps = torch.exp((logits - shift).clamp(max=EXP_CAP)) * layer_weights
    return exps / exps.sum((dim, dim + 1), keepdim=True)


class CrossLayerAttention(nn.Module):
    """Cross-Layer Attention (CLA), ACLA paper Sec. 3 and Tables 4-7: K learned keys per key layer.

    ``y = x + W_o sum_{l, k} softmax_{l,k}(a_{lk}(x)) * W_l f_l(p + o_{lk}(x))`` for every query pixel p,
    where f_l are the key layers, W_l their 1x1 value projections, o_{lk} and a_{lk} the offsets and
    logits predicted from the query by 1x1 convs, W_o the zero-initialised output projection.

    Args:
        num_feat (int): Channel number C of the query and key layers.
        num_key_layers (int): Number L of key layers (the head feature plus every earlier insertion point).
        num_keys (int): Number K of keys sampled per key layer. Default: 8 (the paper's CLA, Table 7).
        max_memory_mb (float): Approximate memory budget (MiB) of the key sampling; above it keys are
            processed in chunks. Default: 1024.
    """

    heads_per_key = 3  # 1x1 conv output channels per key and key layer: 2 offsets + 1 logit
    # of which computed per projected key layer (for every key of it, open or not: one matrix product): the offsets;
    # the others (logit, ACLA's gate) for every key layer. A closed key saves no head, only its aggregation.
    offset_heads_per_key = 2
    # how sample_keys aggregates the keys (a runtime choice, not a YAML key: every method computes the same
    # function); set it on a whole network with set_sampling_method, e.g. 'grid_sample' for an ONNX export
    sampling_method = 'fused'
    # evaluation computes only the open keys (_sparse_update); CLA has no gates, every key is open
    sparse_eval = False

    def __init__(self, num_feat, num_key_layers, num_keys=8, max_memory_mb=DEFAULT_MAX_MEMORY_MB):
        super().__init__()
        _check_positive_int(num_keys, 'num_keys')
        _check_positive_int(num_key_layers, 'num_key_layers')
        self.num_feat = num_feat
        self.num_key_layers = num_key_layers
        self.num_keys = num_keys
        self.max_memory_mb = max_memory_mb
        self.value = nn.ModuleList(nn.Conv2d(num_feat, num_feat, 1) for _ in range(num_key_layers))
        self.offset = nn.Conv2d(num_feat, 2 * num_keys * num_key_layers, 1)
        self.logit = nn.Conv2d(num_feat, num_keys * num_key_layers, 1)
        # no bias: a zero aggregate (all keys closed) must give a zero update
        self.proj = nn.Conv2d(num_feat, num_feat, 1, bias=False)
        nn.init.zeros_(self.offset.weight)
        with torch.no_grad():
            self.offset.bias.copy_(initial_offsets(num_keys).repeat(num_key_layers, 1).flatten())
        nn.init.zeros_(self.logit.weight)
        nn.init.zeros_(self.logit.bias)
        nn.init.zeros_(self.proj.weight)

    def key_mask(self, x):
        """Per-key multiplier of the softmax weights, (B, L, K, H, W), or None to keep every key."""
        return None

    def softmax_weights(self, x, layer_weights=None):
        """Softmax weights of the K*L keys of every query pixel, before the gates: (B, L, K, H, W), summing to 1.

        ``lw_l exp(a_lk) / sum_{l'k'} lw_l' exp(a_l'k')``: a softmax over the keys' logits ``a`` in which the
        key-layer weights ``lw`` (supernet) multiply each layer's exponentials, i.e. ``softmax(a + log lw)``; ACLA's
        key gates multiply after it (:meth:`key_weights`). The weights are computed in that product
        form rather than in log space so that a layer weighted 0 (a closed candidate under straight-through
        position gates) still gets the gradient of the relaxation, ``d w / d lw_l = exp(a_l - m) / S`` (finite at
        ``lw_l = 0``; ``log(lw)`` would pass 0 there). ``m`` is the largest ``a + log lw`` of the layers that exist,
        so no exponential of an existing layer exceeds 1 and the sum ``S >= 1``; a removed layer's exponential is
        capped at ``exp(EXP_CAP)`` (its weight is 0 whatever it is), so a removed layer is removed exactly however
        large its logits are.
        """
        b, _, h, w = x.shape
        logits = self.logit(x).view(b, self.num_key_layers, self.num_keys, h, w)
        if layer_weights is not None:
            layer_weights = torch.as_tensor(layer_weights, device=x.device).reshape(-1, self.num_key_layers, 1, 1, 1)
        return key_softmax(logits, layer_weights, 1).to(x.dtype)

    def key_weights(self, x, layer_weights=None):
        """Weights of the K*L keys of every query pixel, (B, L, K, H, W), summing to at most 1: the
        :meth:`softmax_weights` times the gates of :meth:`key_mask` (no renormalisation)."""
        weights, mask = self.softmax_weights(x, layer_weights), self.key_mask(x)
        return weights if mask is None else weights * mask

    def forward(self, x, key_layers, layer_weights=None):
        """Attend from the query ``x`` to K keys in each of ``key_layers``.

        In training (and for ``sampling_method='grid_sample'``, the ONNX export, or on the meta device) every key
        is computed (:meth:`_dense_update`); in evaluation a module with :attr:`sparse_eval` computes only its open
        keys (:meth:`_sparse_update`), the same function.

        Args:
            x (Tensor): (B, C, H, W) query feature.
            key_layers (list[Tensor]): L key layers, each (B, C, H, W).
            layer_weights (Tensor | None): (L,) or (B, L) weights of each key layer's keys inside the softmax
                (:meth:`softmax_weights`; for the insert-position supernet: 0 removes a layer exactly, 1 keeps it).
                Default: None.

        Returns:
            Tensor: (B, C, H, W), ``x`` plus the attention update.
        """
        if len(key_layers) != self.num_key_layers:
            raise ValueError(f'{type(self).__name__} was built for {self.num_key_layers} key layers, '
                             f'got {len(key_layers)}.')
        sparse = (self.sparse_eval and not self.training and self.sampling_method != 'grid_sample'
                  and x.device.type != 'meta')
        if not sparse:
            return x + self.proj(self._dense_update(x, key_layers, self.key_weights(x, layer_weights)))
        return x + self.proj(self._sparse_update(x, key_layers, layer_weights))

    def _head_convs(self):
        """The 1x1 convs on the query that the sparse evaluation computes as one matrix product: the logits
        (ACLA: and the gates), K*L channels each."""
        return [self.logit]

    def _eval_gates(self, gate_logits):
        """Hook of :meth:`_sparse_update`: the open keys (N, L, K) bool from the outputs of the head convs after the
        logits, (N, K*L) gate logits in ACLA (None: no gates, every key open)."""
        return None

    def _project_values(self, key_layers, layers=None):
        """Value maps ``W_l f_l + b_l`` of the key layers ``layers`` (default: all), one batched matmul.

        The parameters stay those of the 1x1 convs ``value.{l}``; the result is channels-last, (L', B, H, W, C)
        contiguous, which the samplers' value tables copy fastest (:func:`_padded_table`).
        """
        layers = range(self.num_key_layers) if layers is None else layers
        feats = torch.stack([key_layers[l] for l in layers])  # (L', B, C, H, W)
        num, b, c, h, w = feats.shape
        weight = torch.stack([self.value[l].weight.view(c, c).t() for l in layers])  # (L', C_in, C_out)
        bias = torch.stack([self.value[l].bias for l in layers])
        # batch L' * B: the channels-first maps are read transposed (no copy), the weights broadcast over B
        table = torch.baddbmm(
            bias.view(num, 1, 1, c).expand(num, b, 1, c).reshape(num * b, 1, c),
            feats.view(num * b, c, h * w).transpose(1, 2),
            weight.unsqueeze(1).expand(num, b, c, c).reshape(num * b, c, c))
        return table.view(num, b, h, w, c)

    def _dense_update(self, x, key_layers, weights):
        """The aggregated keys (B, C, H, W), every key computed (training: the backward pass needs them)."""
        b, _, h, w = x.shape
        values = self._project_values(key_layers).permute(1, 0, 4, 2, 3)  # (B, L, C, H, W), a view
        offsets = self.offset(x).view(b, self.num_key_layers, self.num_keys, 2, h, w)
        return sample_keys(values, offsets, weights, self.max_memory_mb, method=self.sampling_method)

    def _sparse_update(self, x, key_layers, layer_weights):
        """The aggregated keys (B, C, H, W) from the open keys alone (evaluation), equal to :meth:`_dense_update` with
        the :meth:`key_weights`.

        The query pixels are read channels-last, (B*H*W, C). The logits (and ACLA's gates) of every key are one
        matrix product with the weights of their 1x1 convs (:meth:`_head_convs`; the softmax needs every logit),
        whose (pixel, layer, key) rows are the order of the bags: the softmax (:func:`key_softmax`) and the gates
        (:meth:`_eval_gates`) run on them with no permuted copy. A key is open when its gate is and its key layer
        is weighted above 0 (a closed key's weight is 0, so it contributes nothing). Only the key layers with an
        open key in the batch are projected (:meth:`_project_values`) and get offsets: the offset conv's weight
        rows of those layers, one matrix product over the query pixels for every key of the layers (2 K C MACs
        per pixel and projected layer, as torch's flop counter counts them; one GEMM is far faster than gathering
        the open (pixel, key) pairs, which was measured). The aggregation (:func:`aggregate_open_keys`) computes
        the corners of every key of those layers elementwise, selects the open keys by one mask and sums their 4
        bilinear corners by one ``F.embedding_bag`` with a bag of any size per query pixel over the padded
        channels-last table (:func:`_padded_table`); a pixel without an open key gets a zero. The query pixels
        are processed in chunks of at most ``min(max_memory_mb, 32)`` MiB.
        """
        b, c, h, w = x.shape
        num_layers, k = self.num_key_layers, self.num_keys
        pixels, keys = b * h * w, num_layers * k
        query = x.permute(0, 2, 3, 1).reshape(pixels, c)
        convs = self._head_convs()
        heads = torch.addmm(torch.cat([conv.bias for conv in convs]), query,
                            torch.cat([conv.weight.view(-1, c) for conv in convs]).t())
        if layer_weights is not None:
            layer_weights = torch.as_tensor(layer_weights, device=x.device).reshape(-1, 1, num_layers, 1)
        weights = key_softmax(heads[:, :keys].view(b, h * w, num_layers, k), layer_weights, 2)
        weights = weights.view(pixels, num_layers, k)
        is_open = self._eval_gates(heads[:, keys:])
        if is_open is None:
            is_open = torch.ones(pixels, num_layers, k, dtype=torch.bool, device=x.device)
        if layer_weights is not None:  # a key layer weighted 0 (supernet) has no open key
            is_open = (is_open.view(b, h * w, num_layers, k) & (layer_weights > 0)).view(pixels, num_layers, k)
        weights = weights.to(x.dtype) * is_open
        layer_open = is_open.any(2).any(0)
        self._count_projected_layers(layer_open, pixels)
        layers = layer_open.nonzero().squeeze(1)
        if not layers.numel():
            return x.new_zeros(x.shape)
        values = self._project_values(key_layers, layers.tolist()).permute(1, 0, 4, 2, 3)  # (B, L', C, H, W) view
        table = _padded_table(values)
        # (B*H*W, L', K): the keys of a pixel together, in the order of its bag
        num = layers.numel()
        if num < num_layers:
            weights, is_open = weights.index_select(1, layers), is_open.index_select(1, layers)
        # the offset conv restricted to the projected layers, as a product with the channels-last queries
        rows = self.offset.weight.view(num_layers, 2 * k, c).index_select(0, layers).view(num * 2 * k, c).t()
        bias = self.offset.bias.view(num_layers, 2 * k).index_select(0, layers).view(-1)
        chunk = _chunk_size(min(self.max_memory_mb, _SPARSE_CHUNK_MB), num * k * _BYTES_PER_SPARSE_KEY)
        out = []
        for start in range(0, pixels, chunk):
            size = min(chunk, pixels - start)
            offsets = torch.addmm(bias, query.narrow(0, start, size), rows).view(size, num, k, 2)
            out.append(aggregate_open_keys(table, offsets, weights.narrow(0, start, size),
                                           is_open.narrow(0, start, size), start, (b, h, w)))
        out = out[0] if len(out) == 1 else torch.cat(out)
        return out.view(b, h, w, c).permute(0, 3, 1, 2)

    def _count_projected_layers(self, layer_open, pixels):
        """Hook of :meth:`_sparse_update`: which key layers were projected for ``pixels`` query pixels."""

    @classmethod
    def macs(cls, num_feat, num_key_layers, num_keys, height, width, aggregation=False, active_keys=None,
             projected_layers=None, **kwargs):
        """Multiply-accumulates of one module as it computes them (:func:`cla_macs`); by default as torch's flop
        counter counts them (FLOPs / 2).

        Counted by the flop counter: the 1x1 convs and matmuls (value projections, offsets, logits, gates, output
        projection). Not counted by it: the key aggregation (``F.embedding_bag`` over the 4 bilinear corners of
        every open key, 4 MACs per channel per key), softmax, gates; ``aggregation=True`` adds the aggregation.
        With ``active_keys`` (ACLA in evaluation, :meth:`_sparse_update`) a closed key saves its aggregation (4 C
        per pixel); its logit and gate are computed (the softmax needs every logit), and so are its offsets when
        its key layer is projected (one matrix product for every key of the layer). A key layer without an open
        key saves its value projection and its offsets (C^2 + 2 K C, ``projected_layers``).

        Args:
            num_feat (int): C.
            num_key_layers (int): L.
            num_keys (int): K.
            height (int): H of the feature maps.
            width (int): W of the feature maps.
            aggregation (bool): Add the 4 * C MACs per pixel of the aggregation of every open key. Default: False.
            active_keys (float | list | Tensor | None): Mean number of open keys per key layer: one value for
                every layer, or L values (a tensor keeps the result differentiable); None: all K. Default: None.
            projected_layers (float | list | None): Key layers whose values are projected: a number, or L
                fractions of the pixels for which each was; None: all L. Default: None.

        Returns:
            float | Tensor: MACs.
        """
        if active_keys is None:
            open_keys = num_keys * num_key_layers
        elif torch.is_tensor(active_keys):
            open_keys = active_keys.sum() if active_keys.dim() else active_keys * num_key_layers
        elif isinstance(active_keys, (int, float)):
            open_keys = active_keys * num_key_layers
        else:
            open_keys = sum(active_keys)
        if projected_layers is None:
            projected_layers = num_key_layers
        elif not isinstance(projected_layers, (int, float)):
            projected_layers = sum(projected_layers)
        return cla_macs(num_feat, num_keys, height, width, num_key_layers, projected_layers, open_keys,
                        cls.heads_per_key - cls.offset_heads_per_key, aggregation)


class AdaptiveCrossLayerAttention(CrossLayerAttention):
    """Adaptive Cross-Layer Attention (ACLA), ACLA paper Sec. 3.2 and Table 8: CLA with a learned gate per key.

    A 1x1 conv (``gate``) predicts one gate logit g per key from the query; the key is open with probability
    sigmoid(g). Training: ``z = [g + s (log u - log(1 - u)) > 0]``, u ~ U(0, 1), a hard binary sample in the
    forward pass whose backward pass is the gradient of its relaxation ``sigmoid((g + s (log u - log(1 - u))) / t)``
    (straight-through Gumbel-sigmoid; with ``straight_through=False`` the relaxed value itself is used, a
    binary concrete gate). Evaluation: ``z = [g > 0]``. The noise scale ``s`` (:attr:`noise`, 1 at first) is
    annealed towards 0 by ``train.gate_temperature.noise_end``, so that the last training steps open the keys that
    evaluation opens (at s = 1 training opens a fraction E[sigmoid(g)], evaluation the fraction of g > 0). The
    gates multiply the softmax weights without renormalisation, so a closed key contributes nothing and shifting
    every gate logit changes the training output as it changes the evaluation output
    (:meth:`CrossLayerAttention.key_weights`).

    Observable after each forward pass: :attr:`last_active_keys` ((L,) mean number of open keys per key layer,
    detached), and after training passes their moving average :attr:`smoothed_active_keys` (decay 0.98, about the
    last 50 steps: one batch of patches is a noisy estimate, its open fraction varied from 0.02 to 0.67 between
    batches of the trained demo network, docs/cla_acla.md); after each training pass :attr:`expected_open_keys`
    ((L,) mean of sum_k sigmoid(g / max(s, t)), differentiable: the expectation the MAC penalty uses). Evaluation
    passes also accumulate the open keys until :meth:`reset_key_stats` (:meth:`measured_active_keys`), for the
    effective MACs of a trained network.

    Args:
        num_feat (int): Channel number C.
        num_key_layers (int): Number L of key layers.
        num_keys (int): Maximum number K of keys per key layer. Default: 16 (the paper's ACLA, Table 8).
        temperature (float): Temperature of the relaxation in training (annealed by ``train.gate_temperature``
            of RestorationModel); a settable attribute. Default: 1.0.
        straight_through (bool): Hard gates in the training forward pass, relaxed gradient. Default: True.
        max_memory_mb (float): Memory budget of the key sampling, see :class:`CrossLayerAttention`.
            Default: 1024.
    """

    # Initial gate logit: sigmoid(2) = 88 % of the keys open at the start of training.
    gate_bias_init = 2.0
    heads_per_key = 4  # 2 offsets + 1 logit + 1 gate; the gate is computed for every key
    sparse_eval = True

    def __init__(self,
                 num_feat,
                 num_key_layers,
                 num_keys=16,
                 temperature=1.0,
                 straight_through=True,
                 max_memory_mb=DEFAULT_MAX_MEMORY_MB):
        super().__init__(num_feat, num_key_layers, num_keys, max_memory_mb)
        self.temperature = temperature
        self.noise = 1.0
        self.straight_through = straight_through
        self.gate = nn.Conv2d(num_feat, num_keys * num_key_layers, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, self.gate_bias_init)
        self.last_active_keys = None
        self.smoothed_active_keys = None
        self.expected_open_keys = None
        self.reset_key_stats()

    @property
    def temperature(self):
        return self._temperature

    @temperature.setter
    def temperature(self, value):
        if not float(value) > 0:
            raise ValueError(f'temperature: {value!r} must be > 0.')
        self._temperature = float(value)

    @property
    def noise(self):
        """Scale s of the logistic gate noise in training, ``z = [g + s L > 0]`` (1: a Bernoulli(sigmoid(g))
        sample; 0: the evaluation gate [g > 0]); annealed by ``train.gate_temperature.noise_end``."""
        return self._noise

    @noise.setter
    def noise(self, value):
        if not float(value) >= 0:
            raise ValueError(f'gate noise: {value!r} must be >= 0.')
        self._noise = float(value)

    def key_mask(self, x):
        b, _, h, w = x.shape
        logits = self.gate(x).view(b, self.num_key_layers, self.num_keys, h, w)
        if self.training:
            u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
            noisy = logits + self.noise * (torch.log(u) - torch.log1p(-u))
            gates = torch.sigmoid(noisy / self.temperature)
            if self.straight_through:
                gates = (noisy > 0).to(gates) + (gates - gates.detach())  # exactly hard in forward
        else:
            gates = (logits > 0).to(logits)
        active = gates.detach().sum(2)
        if not self.training:
            self._record_eval_keys(active.sum((0, 2, 3)), active[:, 0].numel())
            return gates
        self.last_active_keys = active.mean((0, 2, 3))
        previous = self.smoothed_active_keys
        self.smoothed_active_keys = self.last_active_keys if previous is None else (
            previous * KEY_STATS_DECAY + self.last_active_keys * (1 - KEY_STATS_DECAY))
        # the expectation the MAC term differentiates: P(g + s L > 0) = sigmoid(g / s)
        self.expected_open_keys = torch.sigmoid(logits / max(self.noise, self.temperature)).sum(2).mean((0, 2, 3))
        return gates

    def _head_convs(self):
        return [self.logit, self.gate]

    def _eval_gates(self, gate_logits):
        is_open = (gate_logits > 0).view(gate_logits.shape[0], self.num_key_layers, self.num_keys)
        self._record_eval_keys(is_open.sum((0, 2), dtype=torch.float32), is_open.shape[0])
        return is_open

    def _record_eval_keys(self, total, pixels):
        """An evaluation pass opened ``total`` (L,) keys per key layer over ``pixels`` query pixels."""
        self.last_active_keys = total / pixels
        self._key_sum = self._key_sum.to(total) + total
        self._key_count += pixels

    def reset_key_stats(self):
        """Forget the open keys (and projected key layers) accumulated by evaluation passes."""
        self._key_sum, self._key_count = torch.zeros(self.num_key_layers), 0
        self._layer_sum, self._layer_count = torch.zeros(self.num_key_layers), 0

    def _count_projected_layers(self, layer_open, pixels):
        self._layer_sum = self._layer_sum.to(layer_open.device) + layer_open.to(self._layer_sum.dtype) * pixels
        self._layer_count += pixels

    def measured_projected_layers(self):
        """Fraction of the query pixels of the sparse evaluation passes since :meth:`reset_key_stats` for which each
        key layer was projected (a key layer without an open key in a batch is not).

        Returns:
            list[float] | None: L values, or None when no sparse evaluation pass has run.
        """
        return (self._layer_sum / self._layer_count).tolist() if self._layer_count else None

    def measured_active_keys(self):
        """Mean open keys per key layer over the pixels of every evaluation pass since :meth:`reset_key_stats`.

        Returns:
            list[float] | None: L values, or None when no evaluation pass has run.
        """
        return (self._key_sum / self._key_count).tolist() if self._key_count else None

    def expected_macs(self, height, width, layer_probs=None, aggregation=True):
        """Expected MACs of this module at (height, width) under its gates of the last training pass.

        The MACs of the sparse evaluation (:func:`cla_macs`) in expectation:
        ``HW (C^2 + sum_l P_l (C^2 + 2 K C + 2 K C + n_l 4 C))`` with ``n_l`` = :attr:`expected_open_keys` (the keys
        of layer l open in expectation, differentiable in the gate logits) and ``P_l`` the probability that key
        layer l exists (supernet; 1 by default): a key layer's value projection and offsets (C^2 + 2 K C) and its
        logits and gates (2 K C) are charged with its existence, an open key's aggregation (4 C) with its gate.
        The evaluation projects a key layer (and computes its offsets) when any pixel of the batch has an open key
        there, which is almost always the case for an existing layer; charging ``P_l`` alone for it keeps the
        expectation simple (and exact for a batch whose every existing layer has an open key). Before any forward
        pass every key counts as open.

        Args:
            height (int): Feature height.
            width (int): Feature width.
            layer_probs (Tensor | None): (L,) probabilities of the key layers. Default: None (all 1).
            aggregation (bool): Count the aggregation of the open keys (4 C each). Default: True.

        Returns:
            Tensor: scalar MACs (float64).
        """
        open_keys = self.expected_open_keys
        if open_keys is None:
            open_keys = torch.full((self.num_key_layers, ), float(self.num_keys))
        open_keys = open_keys.to(torch.float64)
        probs = torch.ones_like(open_keys) if layer_probs is None else torch.as_tensor(layer_probs).to(open_keys)
        return cla_macs(self.num_feat, self.num_keys, height, width, probs.sum(), probs.sum(),
                        (probs * open_keys).sum(), self.heads_per_key - self.offset_heads_per_key, aggregation)


class NonLocalAttention(nn.Module):
    """Non-local attention (NL; Wang et al., CVPR 2018, embedded Gaussian) over all positions of one layer.

    ``y = x + W_o softmax(theta(x)^T phi(x) / sqrt(C')) g(x)``; the comparison of ACLA Table 4.
    theta, phi and g are 1x1 convs to C' = C / reduction channels, W_o a zero-initialised 1x1 conv.

    Args:
        num_feat (int): Channel number C.
        num_key_layers (int): Ignored (NL attends within the query layer); kept for a uniform interface.
            Default: 0.
        reduction (int): C / C'. Default: 1 (calibrated on the MACs of ACLA Table 4, see docs/cla_acla.md).
        max_memory_mb (float): Approximate memory budget (MiB) of the attention matrix; above it the queries
            are processed in chunks. Default: 1024.
    """

    def __init__(self, num_feat, num_key_layers=0, reduction=1, max_memory_mb=DEFAULT_MAX_MEMORY_MB):
        super().__init__()
        _check_positive_int(reduction, 'nl_reduction')
        inter = max(1, num_feat // reduction)
        self.num_feat = num_feat
        self.reduction = reduction
        self.max_memory_mb = max_memory_mb
        self.query = nn.Conv2d(num_feat, inter, 1)
        self.key = nn.Conv2d(num_feat, inter, 1)
        self.value = nn.Conv2d(num_feat, inter, 1)
        self.proj = nn.Conv2d(inter, num_feat, 1, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, x, key_layers=None, layer_weights=None):
        b, _, h, w = x.shape
        out = dot_product_attention(
            self.query(x).flatten(2).transpose(1, 2), self.key(x).flatten(2),
            self.value(x).flatten(2).transpose(1, 2), self.max_memory_mb)
        return x + self.proj(out.transpose(1, 2).reshape(b, -1, h, w))

    @staticmethod
    def macs(num_feat, num_key_layers, num_keys, height, width, reduction=1, **kwargs):
        """MACs of one module as counted by torch's flop counter: embeddings and the two attention matmuls."""
        inter, n = max(1, num_feat // reduction), height * width
        return 4 * num_feat * inter * n + 2 * n * n * inter


class CrossLayerNonLocalAttention(nn.Module):
    """Vanilla cross-layer non-local attention (CLNL), ACLA paper Eq. (3) and Table 4.

    Dot-product attention from every query pixel to all positions of all L key layers, one softmax over
    the L*H*W keys: ``y = x + W_o softmax(theta(x)^T [phi_l(f_l)]_l / sqrt(C')) [g_l(f_l)]_l``, with a key
    and a value 1x1 projection per key layer (to C' = C / reduction channels).

    Args:
        num_feat (int): Channel number C.
        num_key_layers (int): Number L of key layers.
        reduction (int): C / C'. Default: 1 (calibrated on the MACs of ACLA Table 4, see docs/cla_acla.md).
        max_memory_mb (float): Approximate memory budget (MiB) of the attention matrix. Default: 1024.
    """

    def __init__(self, num_feat, num_key_layers, reduction=1, max_memory_mb=DEFAULT_MAX_MEMORY_MB):
        super().__init__()
        _check_positive_int(reduction, 'nl_reduction')
        _check_positive_int(num_key_layers, 'num_key_layers')
        inter = max(1, num_feat // reduction)
        self.num_feat = num_feat
        self.reduction = reduction
        self.num_key_layers = num_key_layers
        self.max_memory_mb = max_memory_mb
        self.query = nn.Conv2d(num_feat, inter, 1)
        self.key = nn.ModuleList(nn.Conv2d(num_feat, inter, 1) for _ in range(num_key_layers))
        self.value = nn.ModuleList(nn.Conv2d(num_feat, inter, 1) for _ in range(num_key_layers))
        self.proj = nn.Conv2d(inter, num_feat, 1, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, x, key_layers, layer_weights=None):
        if len(key_layers) != self.num_key_layers:
            raise ValueError(f'{type(self).__name__} was built for {self.num_key_layers} key layers, '
                             f'got {len(key_layers)}.')
        b, _, h, w = x.shape
        keys = torch.cat([proj(layer).flatten(2) for proj, layer in zip(self.key, key_layers)], 2)
        values = torch.cat([proj(layer).flatten(2) for proj, layer in zip(self.value, key_layers)], 2)
        out = dot_product_attention(
            self.query(x).flatten(2).transpose(1, 2), keys, values.transpose(1, 2), self.max_memory_mb)
        return x + self.proj(out.transpose(1, 2).reshape(b, -1, h, w))

    @staticmethod
    def macs(num_feat, num_key_layers, num_keys, height, width, reduction=1, **kwargs):
        """MACs of one module as counted by torch's flop counter: embeddings and the two attention matmuls."""
        inter, n = max(1, num_feat // reduction), height * width
        return (2 + 2 * num_key_layers) * num_feat * inter * n + 2 * n * num_key_layers * n * inter


ATTENTION_TYPES = {
    'cla': CrossLayerAttention,
    'acla': AdaptiveCrossLayerAttention,
    'nl': NonLocalAttention,
    'clnl': CrossLayerNonLocalAttention,
}
