"""Building blocks of EARN (Efficient Multi-Attention Residual Network), unregistered.

Senturk and Cakici, "Efficient Multi-Attention Residual Network for Image Super Resolution"
(``papers/EARN_paper.txt``). The registered network is :class:`acla_basicsr.archs.earn_arch.EARN`.

- :class:`ASCALayer`: adaptively scaled channel attention (Fig. 3b, Eq. 2).
- :class:`EfficientResidualBlock`: two 3x3 group convolutions and a 1x1 conv (Fig. 1a, after CARN).
- :class:`LocalSelfAttention`: local self-attention with relative position embeddings (Eq. 5,
  after Stand-Alone Self-Attention, Ramachandran et al. 2019).
- :class:`MaskBranch`: the U-shaped mask branch with a sigmoid gate (Fig. 3a).
- :class:`ERAB`: the efficient residual attention block (Fig. 2, Eq. 3-4).

The paper leaves several sizes open; the choices made here are stated in each docstring
(SE reduction 16 as in RCAN, attention window 7 and 4 heads as in SASA, std with an epsilon).
"""
import math

import torch
from torch import nn as nn
from torch.nn import functional as F

from basicsr.archs.arch_util import ResidualBlockNoBN, make_layer


def squeeze_excitation(num_feat, reduction):
    """A squeeze-excitation pair of 1x1 convs, ``C -> C/reduction -> C`` with a ReLU between (Fig. 3b)."""
    return nn.Sequential(
        nn.Conv2d(num_feat, num_feat // reduction, 1), nn.ReLU(inplace=True),
        nn.Conv2d(num_feat // reduction, num_feat, 1))


class ASCALayer(nn.Module):
    """Adaptively Scaled Channel Attention (ASCA) layer (EARN, Fig. 3b and Eq. 2).

    The per-channel mean and standard deviation of the input are each refined by a
    squeeze-excitation pair of 1x1 convs, concatenated, fused by a 1x1 conv (``z``), and turned
    into a per-channel mask ``m(z) = sigmoid(W_F ReLU(W_P z))`` (Eq. 2) that scales the input.

    The standard deviation is ``sqrt(var + eps)`` (population variance), so that its gradient
    stays finite on constant feature maps.

    Args:
        num_feat (int): Channel number of the features. Default: 64.
        reduction (int): Channel reduction of the squeeze-excitation pairs (not given in the
            paper; 16 as in RCAN/SE-Net). Default: 16.
        eps (float): Added to the variance before the square root. Default: 1e-6.
    """

    def __init__(self, num_feat=64, reduction=16, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.se_mean = squeeze_excitation(num_feat, reduction)
        self.se_std = squeeze_excitation(num_feat, reduction)
        self.fusion = nn.Conv2d(2 * num_feat, num_feat, 1)
        self.se_mask = squeeze_excitation(num_feat, reduction)  # W_P, ReLU, W_F of Eq. 2

    def mask(self, x):
        """The per-channel mask in (0, 1), of shape (N, C, 1, 1)."""
        var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
        std = (var + self.eps).sqrt()
        z = self.fusion(torch.cat([self.se_mean(mean), self.se_std(std)], dim=1))
        return torch.sigmoid(self.se_mask(z))

    def forward(self, x):
        return x * self.mask(x)


class EfficientResidualBlock(nn.Module):
    """Efficient residual block (EARN, Fig. 1a; CARN's efficient residual block).

    ``relu(x + conv1x1(relu(gconv3x3(relu(gconv3x3(x))))))``, where the two 3x3 convolutions
    are group convolutions with ``num_feat / 4`` groups (EARN, section 4: "Group number is
    (number of input channel)/4"), and the 1x1 conv mixes the groups.

    Args:
        num_feat (int): Channel number of the features; a multiple of 4. Default: 64.
    """

    def __init__(self, num_feat=64):
        super().__init__()
        groups = num_feat // 4
        self.body = nn.Sequential(
            nn.Conv2d(num_feat, num_feat, 3, 1, 1, groups=groups), nn.ReLU(inplace=True),
            nn.Conv2d(num_feat, num_feat, 3, 1, 1, groups=groups), nn.ReLU(inplace=True),
            nn.Conv2d(num_feat, num_feat, 1))

    def forward(self, x):
        return F.relu(x + self.body(x))


def local_windows(x, window_size):
    """A (N, C, H, W, k, k) view of the zero-padded k x k neighbourhood of every pixel (no copy)."""
    pad = window_size // 2
    return F.pad(x, (pad, pad, pad, pad)).unfold(2, window_size, 1).unfold(3, window_size, 1)


def window_mask(x, window_size):
    """(k*k, H, W) bool: whether neighbour (a, b) (offset ``o = a * k + b``) of each pixel of ``x`` is inside.

    The same values as ``local_windows(ones)``, from index arithmetic: neighbour (a, b) of pixel (i, j) is
    inside when row ``i + a - k // 2`` and column ``j + b - k // 2`` are, an outer product of a (k, H) and a
    (k, W) test. No ``Tensor.unfold``, which torch's ONNX exporter cannot export at a dynamic size.
    """
    h, w = x.shape[-2:]
    k = window_size
    shift = torch.arange(k, device=x.device) - k // 2
    rows = torch.arange(h, device=x.device)[None] + shift[:, None]  # (k, H)
    cols = torch.arange(w, device=x.device)[None] + shift[:, None]  # (k, W)
    rows_inside = (rows >= 0) & (rows < h)
    cols_inside = (cols >= 0) & (cols < w)
    return (rows_inside[:, None, :, None] & cols_inside[None, :, None, :]).reshape(k * k, h, w)


class LocalSelfAttention(nn.Module):
    """Local self-attention with relative position embeddings (EARN, Eq. 5).

    ``y_ij = sum_{ab in N_k(i,j)} softmax_ab(s (q_ij^T k_ab + q_ij^T r_{a-i,b-j})) v_ab``, where
    the queries, keys and values come from 1x1 convs and ``N_k(i, j)`` is the ``k x k`` window
    centred on ``(i, j)``. As in Stand-Alone Self-Attention (the paper's reference [6]), the
    channels are split into ``num_heads`` heads, each with its own softmax, and the relative
    embedding of offset ``(a-i, b-j)`` is a row embedding of ``a-i`` concatenated with a column
    embedding of ``b-j``: within every head, the first half of its channels carries the row
    embedding and the second half the column embedding, so that every head sees both offsets.

    Scale ``s``: Eq. 5 has none (``scale_logits: false``). With EARN's inputs in 0..255 its logits
    start with a standard deviation of hundreds and the softmax near an argmax, where its gradient
    vanishes (SPEC section 5, measured); ``scale_logits: true`` (default) multiplies them by
    ``1 / sqrt(d)``, d the channels of a head, as in Transformers and SASA.

    Borders: the window is cut at the image border; neighbours outside the image are left out
    of the softmax (their logits are -inf), so no padding value ever enters the output. Any odd
    window size and any input size work.

    Memory: no k x k copy of the keys and values is made. The ``k^2`` window offsets are visited
    in turn, each a shifted view of the zero-padded keys (values) contracted with the queries
    (attention weights) over all images and all pixels of a band of rows at once; the 1x1
    projections are computed band by band too. Without grad, the memory beyond the output is the
    queries, keys and values of one band and its logits and weights (at most ``BAND_ELEMENTS``
    numbers each: small bands also keep the allocator's heap from fragmenting, measured). With
    grad the whole map is one band, since autograd keeps every band anyway: the weights,
    ``k^2 x num_heads`` numbers per pixel (196 for k = 7 and 4 heads: about 3 times a 64-channel
    feature map), and the queries, keys and values.

    Args:
        num_feat (int): Channel number of input and output; divisible by num_heads, with an even
            number of channels per head. Default: 64.
        window_size (int): Odd side of the local window (k). Default: 7 (as in SASA).
        num_heads (int): Number of attention heads. Default: 4.
        scale_logits (bool): Multiply the logits by ``1 / sqrt(num_feat / num_heads)``; False is
            Eq. 5 as printed. Default: True.
    """

    BAND_ELEMENTS = 2**20  # logits computed at a time without grad (4 MiB in float32)

    def __init__(self, num_feat=64, window_size=7, num_heads=4, scale_logits=True):
        super().__init__()
        if num_feat % num_heads or (num_feat // num_heads) % 2:
            raise ValueError(f'num_heads: {num_heads} must divide num_feat {num_feat} into heads of an even number '
                             'of channels (half row, half column embeddings); use e.g. 4 with 64 channels.')
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale_logits = scale_logits
        self.scale = (num_feat // num_heads)**-0.5 if scale_logits else 1.
        self.query = nn.Conv2d(num_feat, num_feat, 1, bias=False)
        self.key = nn.Conv2d(num_feat, num_feat, 1, bias=False)
        self.value = nn.Conv2d(num_feat, num_feat, 1, bias=False)
        half = num_feat // 2
        self.rel_row = nn.Parameter(torch.randn(half, window_size) * half**-0.5)
        self.rel_col = nn.Parameter(torch.randn(num_feat - half, window_size) * half**-0.5)

    def relative_embeddings(self):
        """``r`` of Eq. 5 as a (C, k, k) tensor: entry [:, a, b] embeds offset (a - k//2, b - k//2).

        Head g holds channels [g d, (g + 1) d): its first d/2 carry rows ``g d/2 .. (g + 1) d/2``
        of ``rel_row`` (the row offset), its last d/2 the same rows of ``rel_col`` (the column offset).
        """
        k, heads = self.window_size, self.num_heads
        rows = self.rel_row[:, :, None].expand(-1, k, k).reshape(heads, -1, k, k)
        cols = self.rel_col[:, None, :].expand(-1, k, k).reshape(heads, -1, k, k)
        return torch.cat([rows, cols], dim=1).reshape(-1, k, k)

    def forward(self, x):
        n, c, h, w = x.shape
        k, heads = self.window_size, self.num_heads
        rel = self.relative_embeddings().view(heads, c // heads, k * k)
        # neighbour (a, b) of pixel (i, j) inside the image: (k*k, H, W)
        inside = window_mask(x, k)
        # without grad, bands of rows, so that the logits of a band stay below BAND_ELEMENTS numbers. With grad
        # autograd keeps every band: one band; and one with BAND_ELEMENTS inf (the ONNX export, whose graph must not
        # fix the number of bands of the traced size), without a loop over a symbolic size
        if torch.is_grad_enabled() or self.BAND_ELEMENTS == math.inf:
            return self._band(x, 0, h, rel, inside).view(n, c, h, w)
        rows = max(1, self.BAND_ELEMENTS // (n * heads * k * k * w))
        out = x.new_empty(n, heads, c // heads, h, w)
        for top in range(0, h, rows):
            bottom = min(h, top + rows)
            out[:, :, :, top:bottom] = self._band(x, top, bottom, rel, inside)
        return out.view(n, c, h, w)

    def _band(self, x, top, bottom, rel, inside):
        """The attention of rows ``top:bottom`` of ``x``, (N, heads, d, bottom - top, W).

        The 1x1 projections are computed for the band alone (keys and values with its k//2 rows above and below),
        so that no full-size query, key or value map exists.
        """
        n, c, h, w = x.shape
        k, heads = self.window_size, self.num_heads
        d, pad = c // heads, k // 2
        q = self.query(x[:, :, top:bottom])
        if self.scale != 1:
            q = q * self.scale
        q = q.view(n, heads, d, bottom - top, w)
        # the projections have no bias, so projecting zero padding gives zeros: pad after projecting
        halo = x[:, :, max(0, top - pad):min(h, bottom + pad)]
        padding = (pad, pad, pad - (top - max(0, top - pad)), pad - (min(h, bottom + pad) - bottom))
        keys = F.pad(self.key(halo), padding).view(n, heads, d, bottom - top + 2 * pad, w + 2 * pad)
        values = F.pad(self.value(halo), padding).view(n, heads, d, bottom - top + 2 * pad, w + 2 * pad)
        # q^T r_ab for every offset at once, then q^T k_ab added offset by offset: (N, heads, k*k, rows, W)
        logits = torch.einsum('nhdij,hdo->nhoij', q, rel)
        for o in range(k * k):
            a, b = divmod(o, k)
            logits[:, :, o] += (q * keys[:, :, :, a:a + bottom - top, b:b + w]).sum(2)
        logits = logits.masked_fill_(~inside[:, top:bottom], float('-inf'))
        attn = torch.softmax(logits, dim=2)
        del logits, keys
        band = torch.zeros_like(q)
        for o in range(k * k):
            a, b = divmod(o, k)
            band = band.addcmul_(attn[:, :, o:o + 1], values[:, :, :, a:a + bottom - top, b:b + w])
        return band


class MaskBranch(nn.Module):
    """U-shaped mask branch with a sigmoid gate (EARN, Fig. 3a).

    Local self-attention (Eq. 5), a 3x3 convolution of stride 2 (downsampling, no pooling),
    an efficient residual block, pixel-shuffle upsampling (3x3 conv to 4C, PixelShuffle(2)),
    the U-net skip from before the downsampling, a 1x1 conv and a sigmoid. Odd sizes work: the
    upsampled map is cropped to the input size.

    Args:
        num_feat (int): Channel number of the features. Default: 64.
        window_size (int): Window of the local self-attention. Default: 7.
        num_heads (int): Heads of the local self-attention. Default: 4.
        use_local_attention (bool): False replaces the local self-attention by the identity
            (the "w/o LA" ablation, EARN Table 2). Default: True.
        scale_logits (bool): ``1/sqrt(d)`` on the attention logits (see LocalSelfAttention).
            Default: True.
    """

    def __init__(self, num_feat=64, window_size=7, num_heads=4, use_local_attention=True, scale_logits=True):
        super().__init__()
        self.attention = (LocalSelfAttention(num_feat, window_size, num_heads, scale_logits)
                          if use_local_attention else nn.Identity())
        self.down = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
        self.body = EfficientResidualBlock(num_feat)
        self.up = nn.Sequential(nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2))
        self.conv_last = nn.Conv2d(num_feat, num_feat, 1)

    def forward(self, x):
        h, w = x.shape[-2:]
        feat = self.attention(x)
        up = self.up(self.body(self.down(feat)))[..., :h, :w]
        up += feat  # in place, and feat freed: inference on large images peaks here
        del feat
        return torch.sigmoid_(self.conv_last(up))


class ERAB(nn.Module):
    """Efficient Residual Attention Block (E-RAB) (EARN, Fig. 2 and Eq. 3-4).

    ``a = RB(ASCA(conv(x)))`` (the pre-attention ``att_pre`` of Eq. 3, with the residual block
    that regulates the masking), then ``F_RAB(x) = trunk(a) * mask(a) + x`` (Eq. 4), where the
    trunk is two residual blocks and the mask is :class:`MaskBranch`; two residual blocks
    follow. Residual blocks are basicsr's :class:`ResidualBlockNoBN` (Fig. 1b).

    Args:
        num_feat (int): Channel number of the features. Default: 64.
        reduction (int): Squeeze-excitation reduction of the ASCA layer. Default: 16.
        window_size (int): Window of the local self-attention. Default: 7.
        num_heads (int): Heads of the local self-attention. Default: 4.
        use_asca (bool): False leaves out the ASCA layer ("w/o ASCA", Table 2). Default: True.
        use_local_attention (bool): False leaves out the local self-attention ("w/o LA").
            Default: True.
        use_skip (bool): False drops the ``+ x`` of Eq. 4 (part of "w/o SC"). Default: True.
        use_mask_branch (bool): False leaves out the mask branch: ``trunk(a) + x`` (an ablation
            of this project, not in Table 2). Default: True.
        scale_logits (bool): ``1/sqrt(d)`` on the attention logits. Default: True.
    """

    def __init__(self,
                 num_feat=64,
                 reduction=16,
                 window_size=7,
                 num_heads=4,
                 use_asca=True,
                 use_local_attention=True,
                 use_skip=True,
                 use_mask_branch=True,
                 scale_logits=True):
        super().__init__()
        self.use_skip = use_skip
        self.conv_first = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.asca = ASCALayer(num_feat, reduction) if use_asca else nn.Identity()
        self.pre = ResidualBlockNoBN(num_feat)
        self.trunk = make_layer(ResidualBlockNoBN, 2, num_feat=num_feat)
        self.mask = (MaskBranch(num_feat, window_size, num_heads, use_local_attention, scale_logits)
                     if use_mask_branch else None)
        self.post = make_layer(ResidualBlockNoBN, 2, num_feat=num_feat)

    def forward(self, x):
        att = self.pre(self.asca(self.conv_first(x)))
        if self.mask is None:
            out = self.trunk(att)
        else:  # the mask first: its peak then comes without the trunk's output alive
            mask = self.mask(att)
            out = self.trunk(att) * mask
            del mask
        if self.use_skip:
            out = out + x
        return self.post(out)
