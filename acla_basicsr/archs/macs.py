"""MACs as this project counts them: torch's flop counter on the meta device, divided by 2 (SPEC section 2)."""
import torch
from torch.utils.flop_counter import FlopCounterMode


def counted_macs(build, height, width, num_in_ch=3):
    """MACs of ``build()`` on one (num_in_ch, height, width) input, as torch's flop counter counts them / 2.

    The network is built and run on the meta device (no weights, no arithmetic), the convention of
    ``scripts/complexity.py`` (SPEC section 2).

    Args:
        build (callable): Returns the network (an nn.Module) when called under ``torch.device('meta')``.
        height (int): Input height.
        width (int): Input width.
        num_in_ch (int): Input channels. Default: 3.

    Returns:
        float: MACs.
    """
    with torch.device('meta'):
        net = build().eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(torch.empty(1, num_in_ch, height, width))
    return counter.get_total_flops() / 2
