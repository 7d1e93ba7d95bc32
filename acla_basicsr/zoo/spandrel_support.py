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

What the descriptors declare (measured on the seven networks of ``model_zoo/``, docs/model_zoo.md "spandrel"):

- ``tiling`` (:data:`TILING`): EDSR has a finite receptive field (12 LR pixels for the demo EDSR 32x4 at x2, 11 at
  x1): tiles with that much context give the untiled output up to float rounding. RCAN's channel attention and
  EARN's ASCA layer pool over the whole input and ACLA's keys sit at learnt, unbounded offsets (up to 19 pixels
  in the demo network on Set5), so tiles change their output, but by little: tiles of 64 LR pixels with 16 of
  context change the demo ACLA and EARN outputs by at most 0.04/255 on Set5 x2 (32 with 8: 0.2/255), less than
  half an 8-bit level. They are SUPPORTED, as spandrel's own RCAN is. ENLCA attends to every position of the
  image: the same tiles change the demo ENLCN's output by up to 9.5/255 (46.9 dB against the whole image), so
  ENLCN is DISCOURAGED (not INTERNAL: it does not tile itself; its memory chunks compute the whole-image
  function). ACLARCAN has no trained network to measure; its parts are those measured above.
- ``size_requirements``: none (``SizeRequirements()``). Every family runs at every size from 1x1 on (tested
  1..16 x 1..16 on the zoo networks, 1..16 x {1, 2, 3, 5, 16} on tiny ones of each type, 1x1 to 9x16 on every
  network of ``options/train/``): convolutions are zero-padded, EARN's windows are masked where they leave the
  image, ENLCA and ACLA need no divisible size, and chunks and bands adapt to any size.
- ``supports_half`` / ``supports_bfloat16``: the descriptor's model cast with ``.to(dtype)`` (spandrel's
  ``model.half()`` / ``model.bfloat16()``) and given the image in that dtype, as spandrel's call expects, gives
  an output within :data:`PRECISION_PSNR` dB of the float32 output on every Set5 x2 image (the restoration
  networks: on noisy, JPEG and mosaic versions of Set5): bfloat16 55.4 dB at worst (largest pixel error
  4.6/255, at a pixel of the demo ACLA where a key gate flips), float16 73.4 dB at worst (largest 1.3/255).
  ENLCA computes its attention in float32 whatever the input's dtype, ACLA its sampling coordinates. float16
  was measured with torch's CPU kernels (no GPU was lent): storage, range and rounding are float16's, the
  kernels are not CUDA's. ACLARCAN: measured on a tiny network with random weights only (tests/test_zoo.py).
"""
from spandrel import ArchSupport, Architecture, ImageModelDescriptor, MAIN_REGISTRY, ModelTiling, SizeRequirements

from acla_basicsr.errors import DetectionError
from acla_basicsr.inference.detect import detect_family
from acla_basicsr.inference.network import build_detected

#: The spandrel architecture ids added by :func:`register`: the basicsr ``type`` of each network.
ARCH_TYPES = ('EDSR', 'ACLAEDSR', 'ACLARCAN', 'ENLCN', 'EARN')
_FAMILY = {'EDSR': 'EDSR', 'ACLAEDSR': 'EDSR', 'ENLCN': 'EDSR', 'ACLARCAN': 'RCAN', 'EARN': 'EARN'}
#: spandrel's tiling advice per type (see the module's docstring for the measurements).
TILING = {'EDSR': ModelTiling.SUPPORTED, 'ACLAEDSR': ModelTiling.SUPPORTED, 'ACLARCAN': ModelTiling.SUPPORTED,
          'ENLCN': ModelTiling.DISCOURAGED, 'EARN': ModelTiling.SUPPORTED}
#: The tolerance of the float16 and bfloat16 declarations: PSNR (dB) of the output against float32's, images in
#: [0, 1] (50 dB: a root mean square error of 0.81/255).
PRECISION_PSNR = 50.


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
        return ImageModelDescriptor(
            net,
            state_dict,
            architecture=self,
            purpose='SR' if scale > 1 else 'Restoration',
            tags=tags,
            supports_half=True,  # every type measured within PRECISION_PSNR (tests/test_zoo.py)
            supports_bfloat16=True,
            scale=scale,
            input_channels=int(options['num_in_ch']),
            output_channels=int(options['num_out_ch']),
            size_requirements=SizeRequirements(),  # any size from 1x1
            tiling=TILING[self.arch_type])


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
