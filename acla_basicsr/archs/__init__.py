"""Import every ``*_arch.py`` of this folder, so that its classes enter basicsr's ARCH_REGISTRY."""
import importlib
from os import path as osp

from basicsr.utils import scandir

__all__ = []

_folder = osp.dirname(osp.abspath(__file__))
_filenames = sorted(osp.splitext(v)[0] for v in scandir(_folder) if v.endswith('_arch.py'))
_modules = [importlib.import_module(f'acla_basicsr.archs.{name}') for name in _filenames]
