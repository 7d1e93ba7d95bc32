"""The import path of the spandrel support documented by earlier releases and model cards; it lives in
:mod:`acla_basicsr.zoo.spandrel_support`."""
from acla_basicsr.zoo.spandrel_support import register  # noqa: F401
