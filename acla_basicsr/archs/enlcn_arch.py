from torch import nn as nn

from basicsr.archs.edsr_arch import EDSR
from basicsr.utils.registry import ARCH_REGISTRY
from .enlca_modules import ENLCA


@ARCH_REGISTRY.register()
class ENLCN(EDSR):
    """Efficient Non-Local Contrastive Network: EDSR with ENLCA modules (paper section 3.3, Fig. 3).

    Paper: Efficient Non-Local Contrastive Attention for Image Super-Resolution (AAAI 2022).

    basicsr's EDSR, with its parameter names (``conv_first``, ``body``, ``conv_after_body``,
    ``upsample``, ``conv_last``), and an ENLCA module after the head (position 0) and after
    residual blocks ``attention_positions`` (1-indexed); the modules are ``attention.<position>``.
    The paper's network has 32 blocks of 256 channels and five modules: after the head and after
    every 8 blocks. Module p draws its random matrices with seed ``seed + p``.

    Each module adds ``attention_res_scale * attention(x)`` to its input: 0.1, the public ENLCA
    code's ``res_scale`` (the paper does not say; at 1 the five attention outputs would enter the
    0.1-scaled trunk at ten times the public scale). Embeddings are plain 1x1 convolutions as in
    the public code (``embedding_activation: prelu`` adds a PReLU after each).

    Args:
        num_in_ch (int): Channel number of inputs. Default: 3.
        num_out_ch (int): Channel number of outputs. Default: 3.
        num_feat (int): Channel number of intermediate features. Default: 256.
        num_block (int): Residual blocks in the trunk. Default: 32.
        upscale (int): Upsampling factor, 2^n or 3 (1: no upsampling). Default: 4.
        res_scale (float): Scale of the residual in residual blocks. Default: 0.1.
        img_range (float): Image range. Default: 255.
        rgb_mean (tuple[float]): Image mean in RGB order. Default: (0.4488, 0.4371, 0.4040).
        attention_positions (list[int] | None): Where ENLCA modules go: 0 after the head, p after
            residual block p. None: 0 and every 8th block. Default: None.
        num_embed_feat (int): Channels of the query and key embeddings. Default: 64.
        num_samples (int): m, random samples of ENLA. Default: 128.
        amplification (float): k of Eq. 3. Default: 6.
        orthogonal (bool): Orthogonal random samples. Default: True.
        redraw_every (int): Training forward passes between draws of the random matrices (the
            paper: every epoch, 1000 iterations); 0 never redraws. Default: 1000.
        seed (int): Base seed of the random matrices. Default: 0.
        attention_res_scale (float): Scale of each ENLCA output before its residual add. Default: 0.1.
        embedding_activation (str | None): None (plain 1x1 embeddings) or 'prelu'. Default: None.
    """

    def __init__(self,
                 num_in_ch=3,
                 num_out_ch=3,
                 num_feat=256,
                 num_block=32,
                 upscale=4,
                 res_scale=0.1,
                 img_range=255.,
                 rgb_mean=(0.4488, 0.4371, 0.4040),
                 attention_positions=None,
                 num_embed_feat=64,
                 num_samples=128,
                 amplification=6.,
                 orthogonal=True,
                 redraw_every=1000,
                 seed=0,
                 attention_res_scale=0.1,
                 embedding_activation=None):
        if not isinstance(num_block, int) or num_block < 0:
            raise ValueError(f'num_block: {num_block!r} must be an integer >= 0.')
        if not isinstance(upscale, int) or upscale < 1 or (upscale & (upscale - 1) and upscale != 3):
            raise ValueError(f'upscale: {upscale!r} is not supported; use 2, 3 or 4 (a power of 2 or 3).')
        if attention_positions is None:
            attention_positions = list(range(0, num_block + 1, 8))
        if not isinstance(attention_positions, (list, tuple)):
            raise ValueError(f'attention_positions: {attention_positions!r} must be a list of block indices.')
        for p in attention_positions:
            if not isinstance(p, int) or not 0 <= p <= num_block:
                raise ValueError(f'attention_positions: {p!r} is out of range 0..{num_block} (num_block; '
                                 '0 is after the head, p after residual block p).')
        if len(set(attention_positions)) != len(attention_positions):
            raise ValueError(f'attention_positions: {list(attention_positions)} repeats a position; list each once.')
        super().__init__(num_in_ch, num_out_ch, num_feat, num_block, upscale, res_scale, img_range, rgb_mean)
        self.attention_positions = sorted(attention_positions)
        self.attention = nn.ModuleDict({
            str(p): ENLCA(num_feat, num_embed_feat, num_samples, amplification, orthogonal, redraw_every, seed + p,
                          attention_res_scale, embedding_activation)
            for p in self.attention_positions
        })

    def forward(self, x):
        self.mean = self.mean.type_as(x)

        x = (x - self.mean) * self.img_range
        x = self.conv_first(x)
        res = x
        for position in range(len(self.body) + 1):
            if position:
                res = self.body[position - 1](res)
            if str(position) in self.attention:
                res = self.attention[str(position)](res)
        res = self.conv_after_body(res)
        res += x

        x = self.conv_last(self.upsample(res))
        x = x / self.img_range + self.mean

        return x
