"""Import every ``*_model.py`` of this folder, so that its classes enter basicsr's MODEL_REGISTRY."""
import importlib
from os import path as osp

from basicsr.utils import scandir

__all__ = []

_folder = osp.dirname(osp.abspath(__file__))
_filenames = sorted(osp.splitext(v)[0] for v in scandir(_folder) if v.endswith('_model.py'))
_modules = [importlib.import_module(f'acla_basicsr.models.{name}') for name in _filenames]
