from basicsr.archs.rcan_arch import RCAN
from basicsr.utils.registry import ARCH_REGISTRY

from .cla_modules import DEFAULT_MAX_MEMORY_MB
from .cla_network import CrossLayerAttentionMixin, check_attention_args


@ARCH_REGISTRY.register()
class ACLARCAN(CrossLayerAttentionMixin, RCAN):
    """RCAN with cross-layer attention (CLA / ACLA) or NL / CLNL after chosen residual groups.

    Paper: Adaptive Cross-Layer Attention for Image Restoration (ACLA), Sec. 3, Tables 1 and 9.
    The backbone is basicsr's :class:`~basicsr.archs.rcan_arch.RCAN` with its parameter names, so a plain
    RCAN checkpoint loads into it with ``strict_load_g: false`` (only ``attention.*`` stay missing). The
    defaults are the paper's SR x2 network: RCAN (10 groups of 20 RCABs, 64 channels) with ACLA after groups
    1, 3, 5, 9 (searched, Table 9).

    Args:
        num_in_ch (int): Channel number of inputs. Default: 3.
        num_out_ch (int): Channel number of outputs. Default: 3.
        num_feat (int): Channel number of intermediate features. Default: 64.
        num_group (int): Number of ResidualGroup. Default: 10.
        num_block (int): Number of RCAB in ResidualGroup. Default: 20 (the RCAN paper).
        squeeze_factor (int): Channel squeeze factor. Default: 16.
        upscale (int): Upsampling factor: 1, 2, 3, 4 or 8. Default: 2.
        res_scale (float): Used to scale the residual in residual block. Default: 1.
        img_range (float): Image range. Default: 255.
        rgb_mean (tuple[float] | None): See :class:`~acla_basicsr.archs.acla_edsr_arch.ACLAEDSR`.
            Default: (0.4488, 0.4371, 0.4040).
        attention (str): 'acla', 'cla', 'nl', 'clnl' or 'none'. Default: 'acla'.
        insert_positions (list[int]): 1-indexed residual groups followed by an attention module, increasing.
            Default: (1, 3, 5, 9) (Table 9, SR).
        num_keys (int | None): Keys per key layer; None: 8 for 'cla', 16 for 'acla'. Default: None.
        temperature (float): Initial temperature of the relaxation of ACLA's key gates in training (annealed
            by ``train.gate_temperature`` of RestorationModel). Default: 1.0.
        straight_through (bool): Hard ACLA key gates in the training forward pass with the relaxed gradient
            (a closed key contributes nothing, as in evaluation); false: relaxed gates. Default: True.
        nl_reduction (int): Channel reduction C / C' of the NL / CLNL embeddings. Default: 1.
        max_memory_mb (float): Approximate memory budget (MiB) of one attention step. Default: 1024.
    """

    def __init__(self,
                 num_in_ch=3,
                 num_out_ch=3,
                 num_feat=64,
                 num_group=10,
                 num_block=20,
                 squeeze_factor=16,
                 upscale=2,
                 res_scale=1,
                 img_range=255.,
                 rgb_mean=(0.4488, 0.4371, 0.4040),
                 attention='acla',
                 insert_positions=(1, 3, 5, 9),
                 num_keys=None,
                 temperature=1.0,
                 straight_through=True,
                 nl_reduction=1,
                 max_memory_mb=DEFAULT_MAX_MEMORY_MB):
        positions, num_keys = check_attention_args(attention, insert_positions, num_group, 'num_group', num_keys,
                                                   temperature, upscale)
        super().__init__(num_in_ch, num_out_ch, num_feat, num_group, num_block, squeeze_factor, upscale, res_scale,
                         img_range, (0, 0, 0))
        self.backbone_kwargs = dict(num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat, num_group=num_group,
                                    num_block=num_block, squeeze_factor=squeeze_factor, upscale=upscale,
                                    res_scale=res_scale, img_range=img_range,
                                    rgb_mean=None if rgb_mean is None else [float(v) for v in rgb_mean])
        self._build_attention(num_in_ch, num_out_ch, num_feat, img_range, rgb_mean, attention, positions, num_keys,
                              temperature, straight_through, nl_reduction, max_memory_mb)
