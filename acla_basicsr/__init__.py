"""acla_basicsr: ACLA, ENLCA and EARN image restoration, plugged into BasicSR's registries.

Importing this package makes basicsr 1.4.2 importable with current torchvision (the one fix of
:mod:`acla_basicsr.compat` applied at import; the others apply per run or per model) and registers every
network, model, loss and dataset of the project in basicsr's registries.

The public API, three lines from a checkpoint to a restored image (docs/inference.md)::

    from acla_basicsr import load_network, restore
    net = load_network('options/test/ACLA_SRx2.yml', 'net_g_latest.pth')  # builds network_g, loads params(_ema)
    sr = restore(net, rgb_uint8, tile=256, self_ensemble=False)            # uint8 in, uint8 out

``load_zoo_model(path_or_url)`` loads a published network (docs/model_zoo.md), checking its hash; and the
networks themselves: ``ACLAEDSR``, ``ACLARCAN``, ``ENLCN``, ``EARN``.
"""
# flake8: noqa
from .compat import alias_functional_tensor

alias_functional_tensor()

from .archs import *
from .data import *
from .losses import *
from .models import *
from .version import __version__
from .archs.acla_edsr_arch import ACLAEDSR
from .archs.acla_rcan_arch import ACLARCAN
from .archs.earn_arch import EARN
from .archs.enlcn_arch import ENLCN
from .inference import load_network, restore
from .zoo.published import load_zoo_model

__all__ = ['ACLAEDSR', 'ACLARCAN', 'ENLCN', 'EARN', 'load_network', 'load_zoo_model', 'restore', '__version__']
