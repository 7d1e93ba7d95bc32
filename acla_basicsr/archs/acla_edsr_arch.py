from basicsr.archs.edsr_arch import EDSR
from basicsr.utils.registry import ARCH_REGISTRY

from .cla_modules import DEFAULT_MAX_MEMORY_MB
from .cla_network import CrossLayerAttentionMixin, check_attention_args


@ARCH_REGISTRY.register()
class ACLAEDSR(CrossLayerAttentionMixin, EDSR):
    """EDSR with cross-layer attention (CLA / ACLA) or the paper's comparisons (NL / CLNL) after chosen blocks.

    Paper: Adaptive Cross-Layer Attention for Image Restoration (ACLA), Sec. 3 and Tables 4-9.
    The backbone is basicsr's :class:`~basicsr.archs.edsr_arch.EDSR` with its parameter names, so a plain
    EDSR checkpoint loads into it with ``strict_load_g: false`` (only ``attention.*`` stay missing). The
    defaults are the paper's SR x2 network: EDSR-large (32 blocks, 256 channels, res_scale 0.1) with ACLA
    after blocks 3, 12, 26, 31, 32 (searched, Table 9).

    Args:
        num_in_ch (int): Channel number of inputs (1 for gray images and Bayer mosaics). Default: 3.
        num_out_ch (int): Channel number of outputs. Default: 3.
        num_feat (int): Channel number of intermediate features. Default: 256.
        num_block (int): Block number in the trunk network. Default: 32.
        upscale (int): Upsampling factor: 1 (restoration tasks: no upsampling), 2, 3, 4 or 8. Default: 2.
        res_scale (float): Used to scale the residual in residual block. Default: 0.1.
        img_range (float): Image range. Default: 255.
        rgb_mean (tuple[float] | None): Mean subtracted from the input and added to the output: one value per
            channel, or 3 RGB values (averaged for a 1-channel side), or ~ for none.
            Default: (0.4488, 0.4371, 0.4040), calculated from DIV2K dataset.
        attention (str): 'acla', 'cla', 'nl' (non-local), 'clnl' (cross-layer non-local) or 'none'.
            Default: 'acla'.
        insert_positions (list[int]): 1-indexed blocks followed by an attention module, increasing.
            Default: (3, 12, 26, 31, 32) (Table 9, SR).
        num_keys (int | None): Keys K per key layer (CLA) or their maximum (ACLA); None: the paper's, 8 for
            'cla' (Table 7) and 16 for 'acla' (Table 8). Default: None.
        temperature (float): Initial temperature of the relaxation of ACLA's key gates in training (annealed
            by ``train.gate_temperature`` of RestorationModel). Default: 1.0.
        straight_through (bool): Hard ACLA key gates in the training forward pass with the relaxed gradient
            (a closed key contributes nothing, as in evaluation); false: relaxed gates. Default: True.
        nl_reduction (int): Channel reduction C / C' of the NL / CLNL embeddings. Default: 1 (the MACs of
            Table 4 fit full-width embeddings, see docs/cla_acla.md).
        max_memory_mb (float): Approximate memory budget (MiB) of one attention step; larger key sets or
            attention matrices are processed in chunks. Default: 1024.
    """

    def __init__(self,
                 num_in_ch=3,
                 num_out_ch=3,
                 num_feat=256,
                 num_block=32,
                 upscale=2,
                 res_scale=0.1,
                 img_range=255.,
                 rgb_mean=(0.4488, 0.4371, 0.4040),
                 attention='acla',
                 insert_positions=(3, 12, 26, 31, 32),
                 num_keys=None,
                 temperature=1.0,
                 straight_through=True,
                 nl_reduction=1,
                 max_memory_mb=DEFAULT_MAX_MEMORY_MB):
        positions, num_keys = check_attention_args(attention, insert_positions, num_block, 'num_block', num_keys,
                                                   temperature, upscale)
        super().__init__(num_in_ch, num_out_ch, num_feat, num_block, upscale, res_scale, img_range, (0, 0, 0))
        self.backbone_kwargs = dict(num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat, num_block=num_block,
                                    upscale=upscale, res_scale=res_scale, img_range=img_range,
                                    rgb_mean=None if rgb_mean is None else [float(v) for v in rgb_mean])
        self._build_attention(num_in_ch, num_out_ch, num_feat, img_range, rgb_mean, attention, positions, num_keys,
                              temperature, straight_through, nl_reduction, max_memory_mb)
