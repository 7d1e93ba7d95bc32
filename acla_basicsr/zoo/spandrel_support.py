"""spandrel support: load this project's networks with the loader that chaiNNer and ComfyUI use.

spandrel (https://github.com/chaiNNer-org/spandrel) detects an architecture from a state dict alone and
builds the network. :func:`register` adds basicsr's ``EDSR`` and this project's ``ACLAEDSR``, ``ACLARCAN``,
``ENLCN`` and ``EARN`` to ``spandrel.MAIN_REGISTRY`` (idempotent), after which::

    import spandrel
    from acla_basicsr.zoo.spandrel_support import register
    register()
    model = spandrel.ModelLoader().load_from_file('model_zoo/demo_ACLA_SRx2-<sha8>.pth')
    sr = model(lr_tensor)  # (1, C, H, W) in [0, 1] -> (1, C, sH, sW)

Detection (:mod:`acla_basicsr.inference.detect`): channels, widths, depths, scale, attention type, keys
per key layer, ENLCN's module positions, EARN's window and ablations come from the tensors; the arguments
that no tensor holds (ACLA's insert positions, ``res_scale``, ``img_range``, ...) from the ``network_g`` that
``scripts/publish_model.py`` stores in the state dict's metadata (``.pth`` files), else from documented
conventions. A state dict is only claimed when the detected network's parameter names are exactly its keys,
so these entries are tried before spandrel's own without taking their models.
"""
from spandrel import ArchSupport, Architecture, ImageModelDescriptor, MAIN_REGISTRY

from acla_basicsr.errors import DetectionError
from acla_basicsr.inference.detect import detect_family
from acla_basicsr.inference.network import build_detected

#: The spandrel architecture ids added by :func:`register`: the basicsr ``type`` of each network.
ARCH_TYPES = ('EDSR', 'ACLAEDSR', 'ACLARCAN', 'ENLCN', 'EARN')
_FAMILY = {'EDSR': 'EDSR', 'ACLAEDSR': 'EDSR', 'ENLCN': 'EDSR', 'ACLARCAN': 'RCAN', 'EARN': 'EARN'}


class BasicSRArch(Architecture):
    """One network type of this package as a spandrel architecture (id = the basicsr ``type``).

    Args:
        arch_type (str): One of :data:`ARCH_TYPES`.
    """

    def __init__(self, arch_type):
        self.arch_type = arch_type
        super().__init__(id=arch_type, name=f'{arch_type} (acla_basicsr)', detect=self._detect)

    def _detect(self, state_dict):
        if detect_family(state_dict) != _FAMILY[self.arch_type]:  # cheap key test first
            return False
        try:
            _, options = build_detected(state_dict)
        except DetectionError:
            return False
        return options['type'] == self.arch_type

    def load(self, state_dict):
        net, options = build_detected(state_dict)
        scale = int(options.get('upscale', 1))
        tags = [f"{options['num_feat']}nf"]
        if 'num_block' in options:
            tags.append(f"{options['num_block']}nb")
        if options.get('attention') not in (None, 'none'):
            tags.append(f"{options['attention']}@{','.join(map(str, options['insert_positions']))}")
        plain = self.arch_type == 'EDSR'
        return ImageModelDescriptor(
            net,
            state_dict,
            architecture=self,
            purpose='SR' if scale > 1 else 'Restoration',
            tags=tags,
            supports_half=plain,  # the attention networks are tested in float32 (and bfloat16 autocast) only
            supports_bfloat16=plain,
            scale=scale,
            input_channels=int(options['num_in_ch']),
            output_channels=int(options['num_out_ch']))


def register(registry=None):
    """Add the architectures of :data:`ARCH_TYPES` to spandrel's registry; calling it again changes nothing.

    They are detected before spandrel's own architectures (a state dict is claimed only when its keys are
    exactly those of the detected network).

    Args:
        registry (spandrel.ArchRegistry | None): Default: ``spandrel.MAIN_REGISTRY``.

    Returns:
        list[str]: Ids of the architectures added by this call (empty when already registered).
    """
    registry = MAIN_REGISTRY if registry is None else registry
    others = tuple(arch.architecture.id for arch in registry.architectures() if arch.architecture.id not in ARCH_TYPES)
    added = registry.add(*(ArchSupport.from_architecture(BasicSRArch(t), before=others) for t in ARCH_TYPES),
                         ignore_duplicates=True)
    return [arch.architecture.id for arch in added]
