"""acla_basicsr: ACLA, ENLCA and EARN image restoration, plugged into BasicSR's registries.

Importing this package makes basicsr 1.4.2 importable with current torchvision, applies the
fixes of :mod:`acla_basicsr.compat`, and registers every network, model, loss and dataset
of the project in basicsr's registries.
"""
# flake8: noqa
from .compat import patch_basicsr

patch_basicsr()

from .archs import *
from .data import *
from .losses import *
from .models import *
from .version import __version__
