"""Running a trained network on your own images: loading (:mod:`.network`), tiles and self-ensemble
(:mod:`.tiles`), images in and out (:mod:`.images`). Used by ``acla-restore``, the Python API
(``acla_basicsr.load_network``, ``acla_basicsr.restore``) and the validation of ``RestorationModel``."""
from .images import match_channels, peak_memory_mib, read_image, restore, write_image
from .network import build_network, input_channels, load_network, load_state_dict, read_options
from .memory import precision_context
from .tiles import DEFAULT_TILE_PAD, check_tile, run_network, self_ensemble_forward, tile_forward

__all__ = ['DEFAULT_TILE_PAD', 'build_network', 'check_tile', 'input_channels', 'load_network', 'load_state_dict',
           'match_channels', 'peak_memory_mib', 'precision_context', 'read_image', 'read_options', 'restore',
           'run_network', 'self_ensemble_forward', 'tile_forward', 'write_image']
