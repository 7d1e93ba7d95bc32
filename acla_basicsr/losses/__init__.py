"""Import every ``*_loss.py`` of this folder, so that its classes enter basicsr's LOSS_REGISTRY."""
import importlib
from os import path as osp

from basicsr.utils import scandir

__all__ = []

_folder = osp.dirname(osp.abspath(__file__))
_filenames = sorted(osp.splitext(v)[0] for v in scandir(_folder) if v.endswith('_loss.py'))
_modules = [importlib.import_module(f'acla_basicsr.losses.{name}') for name in _filenames]
