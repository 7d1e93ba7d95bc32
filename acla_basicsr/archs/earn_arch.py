import math

import torch
from torch import nn as nn

from basicsr.archs.arch_util import Upsample
from basicsr.utils.registry import ARCH_REGISTRY
from .earn_modules import ERAB


@ARCH_REGISTRY.register()
class EARN(nn.Module):
    """EARN: Efficient Multi-Attention Residual Network for image super-resolution.

    Senturk and Cakici, "Efficient Multi-Attention Residual Network for Image Super
    Resolution", Fig. 4: a head conv, ``num_block`` efficient residual attention blocks
    (:class:`~acla_basicsr.archs.earn_modules.ERAB`, Eq. 3-4) each with its local skip, a conv,
    the global skip from the head, a sub-pixel upsampler (basicsr's :class:`Upsample`) and a
    last conv. Inputs are normalised as in basicsr's EDSR (``img_range``, ``rgb_mean``).

    The ablations of Table 2 are options: ``use_asca: false`` (w/o ASCA),
    ``use_local_attention: false`` (w/o LA) and ``use_skip_connections: false`` (w/o SC: no
    global skip and no ``+ x`` of Eq. 4; the identity paths inside residual blocks stay, since
    they define a residual block).

    Args:
        num_in_ch (int): Channel number of inputs. Default: 3.
        num_out_ch (int): Channel number of outputs. Default: 3.
        num_feat (int): Channel number of intermediate features; a multiple of 4 (group
            convs), of 2 and of num_heads. Default: 64 (paper, section 4).
        num_block (int): Number of E-RABs. Default: 4 (paper, section 4).
        upscale (int): Upsampling factor, 2, 3 or 4 (any 2^n works). Default: 4.
        reduction (int): Squeeze-excitation reduction in the ASCA layers. Default: 16.
        window_size (int): Odd window side of the local self-attention (Eq. 5). Default: 7.
        num_heads (int): Heads of the local self-attention. Default: 4.
        use_asca (bool): Use the ASCA layers. Default: True.
        use_local_attention (bool): Use the local self-attention in the mask branches. Default: True.
        use_skip_connections (bool): Use the global skip and the E-RABs' local skips. Default: True.
        use_mask_branch (bool): Use the mask branches; False gives ``trunk(a) + x`` in every E-RAB
            (an ablation of this project). Default: True.
        scale_logits (bool): Multiply the local attention's logits by ``1/sqrt(d)`` (d channels
            per head), which keeps its softmax trainable at initialisation; False is Eq. 5 as
            printed (see :class:`~acla_basicsr.archs.earn_modules.LocalSelfAttention`). Default: True.
        img_range (float): Inputs are scaled to ``img_range`` after the mean is subtracted. Default: 1,
            as in SwinIR and other attention networks of basicsr: with 255 (the EDSR/RNAN code that EARN
            builds on) the local attention's logits start with a standard deviation of 40-300 and its
            softmax near an argmax even with ``scale_logits`` (measured; docs/earn.md).
        rgb_mean (tuple[float]): Image mean in RGB orders. Default: (0.4488, 0.4371, 0.4040),
            the DIV2K mean.
    """

    TAIL_BAND_ELEMENTS = 2**22  # upsampled numbers computed at a time without grad (16 MiB in float32)

    def __init__(self,
                 num_in_ch=3,
                 num_out_ch=3,
                 num_feat=64,
                 num_block=4,
                 upscale=4,
                 reduction=16,
                 window_size=7,
                 num_heads=4,
                 use_asca=True,
                 use_local_attention=True,
                 use_skip_connections=True,
                 use_mask_branch=True,
                 scale_logits=True,
                 img_range=1.,
                 rgb_mean=(0.4488, 0.4371, 0.4040)):
        super().__init__()
        self._check_args(num_in_ch, num_feat, num_block, upscale, reduction, window_size, num_heads, rgb_mean)
        self.img_range = img_range
        self.upscale = upscale
        self.use_skip_connections = use_skip_connections
        self.register_buffer('mean', torch.Tensor(rgb_mean).view(1, num_in_ch, 1, 1))

        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[
            ERAB(num_feat, reduction, window_size, num_heads, use_asca, use_local_attention, use_skip_connections,
                 use_mask_branch, scale_logits)
            for _ in range(num_block)
        ])
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = Upsample(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    @staticmethod
    def _check_args(num_in_ch, num_feat, num_block, upscale, reduction, window_size, num_heads, rgb_mean):
        if not isinstance(num_feat, int) or num_feat < 4 or num_feat % 4:
            raise ValueError(f'num_feat: {num_feat} is not a positive multiple of 4 (the group convs use '
                             'num_feat/4 groups); use e.g. 64.')
        if not isinstance(num_block, int) or num_block < 1:
            raise ValueError(f'num_block: {num_block} must be a positive integer (the paper uses 4).')
        if upscale not in (2, 3) and not (isinstance(upscale, int) and upscale > 0 and upscale & (upscale - 1) == 0):
            raise ValueError(f'upscale: {upscale} is not supported; use 2, 3, 4 (or another power of 2).')
        if not isinstance(reduction, int) or reduction < 1 or num_feat // reduction < 1:
            raise ValueError(f'reduction: {reduction} leaves no channel in the ASCA squeeze of num_feat {num_feat}; '
                             f'use an integer from 1 to {num_feat}.')
        if not isinstance(window_size, int) or window_size < 1 or window_size % 2 == 0:
            raise ValueError(f'window_size: {window_size} must be an odd positive integer (the window is centred '
                             'on its pixel); use e.g. 3, 5 or 7.')
        if not isinstance(num_heads, int) or num_heads < 1 or num_feat % num_heads or (num_feat // num_heads) % 2:
            raise ValueError(f'num_heads: {num_heads} does not divide num_feat {num_feat} into heads of an even number '
                             'of channels (half row, half column embeddings); use a divisor such as 4.')
        if len(rgb_mean) != num_in_ch:
            raise ValueError(f'rgb_mean: {len(rgb_mean)} values for num_in_ch {num_in_ch}; give one per channel.')

    def forward(self, x):
        self.mean = self.mean.type_as(x)
        x = (x - self.mean) * self.img_range
        x = self.conv_first(x)
        res = self.conv_after_body(self.body(x))
        if self.use_skip_connections:
            res += x
        del x
        # one band with grad, and with TAIL_BAND_ELEMENTS inf (the ONNX export: no loop over a symbolic size)
        one_band = torch.is_grad_enabled() or self.TAIL_BAND_ELEMENTS == math.inf
        x = self.conv_last(self.upsample(res)) if one_band else self.tail_in_bands(res)
        return x / self.img_range + self.mean

    def tail_in_bands(self, res):
        """``conv_last(upsample(res))`` computed in bands of rows, without grad: the same values.

        The upsampler's ``scale^2 num_feat``-channel map and its pixel-shuffled copy are the largest
        tensors of inference (2 x 256 MiB for a 512x512 x2 input); bands of at most
        ``TAIL_BAND_ELEMENTS`` upsampled numbers bound them. Each band is computed with 2 extra rows
        of ``res`` above and below (the receptive field of the 3x3 convolutions before and after the
        pixel shuffles is less than 2 low-resolution rows), which are cropped off, so that each band's
        output equals the full computation's.
        """
        n, c, h, w = res.shape
        s, halo = self.upscale, 2
        rows = max(1, self.TAIL_BAND_ELEMENTS // (n * c * s * s * w))
        out = None
        for top in range(0, h, rows):
            bottom = min(h, top + rows)
            start, stop = max(0, top - halo), min(h, bottom + halo)
            band = self.conv_last(self.upsample(res[:, :, start:stop]))
            if out is None:
                out = band.new_empty(n, band.shape[1], h * s, w * s)
            out[:, :, top * s:bottom * s] = band[:, :, (top - start) * s:(bottom - start) * s]
        return out
