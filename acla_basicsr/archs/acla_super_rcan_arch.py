from basicsr.utils.registry import ARCH_REGISTRY

from .acla_rcan_arch import ACLARCAN
from .cla_modules import DEFAULT_MAX_MEMORY_MB
from .supernet import POSITION_LOGIT_INIT, PositionSearchMixin, check_candidates


@ARCH_REGISTRY.register()
class ACLASuperRCAN(PositionSearchMixin, ACLARCAN):
    """Insert-position supernet on RCAN: a gated candidate ACLA module after every residual group.

    See :class:`~acla_basicsr.archs.acla_super_edsr_arch.ACLASuperEDSR` and :mod:`acla_basicsr.archs.supernet`;
    the search exports an ``ACLARCAN`` (ACLA paper Table 9: groups 1, 3, 5, 9 of 10 for SR x2, lambda 0.3).

    Args:
        num_in_ch (int): Channel number of inputs. Default: 3.
        num_out_ch (int): Channel number of outputs. Default: 3.
        num_feat (int): Channel number of intermediate features. Default: 64.
        num_group (int): Number of ResidualGroup; one candidate follows each. Default: 10.
        num_block (int): Number of RCAB in ResidualGroup. Default: 20.
        squeeze_factor (int): Channel squeeze factor. Default: 16.
        upscale (int): Upsampling factor: 1, 2, 3, 4 or 8. Default: 2.
        res_scale (float): Used to scale the residual in residual block. Default: 1.
        img_range (float): Image range. Default: 255.
        rgb_mean (tuple[float] | None): See :class:`~acla_basicsr.archs.acla_edsr_arch.ACLAEDSR`.
            Default: (0.4488, 0.4371, 0.4040).
        candidates (list[int] | None): 1-indexed groups followed by a candidate; None: every group. Default: None.
        num_keys (int): Maximum keys K per key layer of the ACLA modules. Default: 16 (paper Table 8).
        temperature (float): Temperature of ACLA's relaxed per-key gates. Default: 1.0.
        straight_through (bool): Hard per-key ACLA gates in the training forward pass (relaxed gradient);
            false: relaxed gates. Default: True.
        position_logit_init (float): Initial architecture logit of every candidate. Default: 0.85
            (P(open) = 0.70, docs/search.md).
        max_memory_mb (float): Memory budget of the key sampling in MiB (see CrossLayerAttention). Default: 1024.
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
                 candidates=None,
                 num_keys=16,
                 temperature=1.0,
                 straight_through=True,
                 position_logit_init=POSITION_LOGIT_INIT,
                 max_memory_mb=DEFAULT_MAX_MEMORY_MB):
        positions = check_candidates(candidates, num_group, 'num_group')
        attention_kwargs = dict(num_keys=num_keys, temperature=temperature, straight_through=straight_through)
        super().__init__(num_in_ch, num_out_ch, num_feat, num_group, num_block, squeeze_factor, upscale, res_scale,
                         img_range, rgb_mean, 'acla', positions, max_memory_mb=max_memory_mb, **attention_kwargs)
        backbone_kwargs = dict(num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat, num_group=num_group,
                               num_block=num_block, squeeze_factor=squeeze_factor, upscale=upscale,
                               res_scale=res_scale, img_range=img_range,
                               rgb_mean=None if rgb_mean is None else [float(v) for v in rgb_mean])
        self._build_search('ACLARCAN', backbone_kwargs, attention_kwargs, position_logit_init)
