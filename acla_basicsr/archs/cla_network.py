"""What ACLAEDSR and ACLARCAN share: argument checks, mean shift, attention modules and their forward pass.

Unregistered; :class:`CrossLayerAttentionMixin` is mixed into subclasses of basicsr's EDSR and RCAN, whose
parameter names (``conv_first``, ``body.N``, ``conv_after_body``, ``upsample``, ``conv_last``) it keeps, so
plain EDSR/RCAN weights load into the backbone with ``strict=False`` (only ``attention.*`` are missing).
"""
import torch
from torch import nn as nn

from basicsr.utils.registry import ARCH_REGISTRY

from .cla_modules import (AdaptiveCrossLayerAttention, CrossLayerAttention, CrossLayerNonLocalAttention,
                          NonLocalAttention)

ATTENTION_CHOICES = ('none', 'cla', 'acla', 'nl', 'clnl')
# the paper's number of keys per key layer: CLA K = 8 (Table 7), ACLA maximum K = 16 (Table 8)
PAPER_NUM_KEYS = {'cla': 8, 'acla': 16}


def check_insert_positions(insert_positions, num_positions, unit, attention):
    """Return ``insert_positions`` as a list after checking it; raise a one-line ValueError otherwise.

    Args:
        insert_positions (list[int] | None): 1-indexed blocks (EDSR) or groups (RCAN) followed by a module.
        num_positions (int): Number of blocks or groups of the backbone.
        unit (str): 'num_block' or 'num_group', the YAML key that bounds the positions.
        attention (str): The attention type; every type but 'none' needs at least one position.
    """
    positions = [] if insert_positions is None else insert_positions
    positions = [positions] if isinstance(positions, int) else list(positions)
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, int):
            raise ValueError(f'insert_positions: {p!r} is not an integer; give 1-indexed positions 1..{num_positions} '
                             f'({unit}), e.g. [1, {num_positions}].')
    if attention != 'none' and not positions:
        raise ValueError(f"insert_positions: empty, but attention '{attention}' needs at least one position; "
                         f'give 1-indexed positions 1..{num_positions} ({unit}) or set attention: none.')
    for p in positions:
        if not 1 <= p <= num_positions:
            raise ValueError(f'insert_positions: {p} is out of range 1..{num_positions} ({unit}); '
                             'positions are 1-indexed and a module follows the block or group with that number.')
    duplicates = sorted({p for p in positions if positions.count(p) > 1})
    if duplicates:
        raise ValueError(f'insert_positions: {duplicates[0]} is listed twice; give each position once.')
    if positions != sorted(positions):
        raise ValueError(f'insert_positions: {positions} is not in increasing order; write {sorted(positions)}.')
    return positions


def channel_mean(rgb_mean, num_ch, key):
    """The (1, num_ch, 1, 1) mean subtracted from the input (or added to the output).

    ``rgb_mean`` may hold one value per channel, 3 RGB values for a 1-channel image (their average is used:
    gray images, Bayer mosaics), or be None for no mean shift.
    """
    if rgb_mean is None:
        return torch.zeros(1, num_ch, 1, 1)
    mean = [float(v) for v in rgb_mean]
    if len(mean) == 3 and num_ch == 1:
        mean = [sum(mean) / 3]
    if len(mean) != num_ch:
        raise ValueError(f'rgb_mean: {len(mean)} values do not fit {key}={num_ch}; give {num_ch} values, 3 RGB values '
                         '(averaged for 1 channel) or ~ for no mean shift.')
    return torch.tensor(mean).view(1, num_ch, 1, 1)


def check_attention_args(attention, insert_positions, num_positions, unit, num_keys, temperature, upscale):
    """Check the attention arguments of ACLAEDSR/ACLARCAN; return (positions, num_keys)."""
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"attention: '{attention}' is unknown; use one of {', '.join(ATTENTION_CHOICES)}.")
    if not (upscale == 3 or (isinstance(upscale, int) and upscale >= 1 and upscale & (upscale - 1) == 0)):
        raise ValueError(f'upscale: {upscale!r} is not supported; use 1 (restoration), 2, 3, 4 or 8.')
    positions = check_insert_positions(insert_positions, num_positions, unit, attention)
    if num_keys is None:
        num_keys = PAPER_NUM_KEYS.get(attention, 8)
    if isinstance(num_keys, bool) or not isinstance(num_keys, int) or num_keys < 1:
        raise ValueError(f'num_keys: {num_keys!r} must be an integer >= 1 (the paper: 8 for cla, 16 for acla).')
    if not float(temperature) > 0:
        raise ValueError(f'temperature: {temperature!r} must be > 0 (the temperature of the relaxed gates).')
    return (positions if attention != 'none' else []), num_keys


class CrossLayerAttentionMixin:
    """Cross-layer attention after chosen blocks of a basicsr EDSR/RCAN (ACLA paper Sec. 3).

    The m-th module (in ``insert_positions`` order) queries the feature after its block and has m key
    layers: the head feature (output of ``conv_first``) and the features at the m - 1 earlier insertion
    points, taken before their own attention was added. Modules live in ``self.attention`` (ModuleList).
    """

    def _build_attention(self, num_in_ch, num_out_ch, num_feat, img_range, rgb_mean, attention, positions,
                         num_keys, temperature, straight_through, nl_reduction, max_memory_mb):
        del self.mean  # basicsr's 3-channel mean attribute; replaced by per-side buffers below
        self.img_range = img_range
        self.register_buffer('mean_in', channel_mean(rgb_mean, num_in_ch, 'num_in_ch'), persistent=False)
        self.register_buffer('mean_out', channel_mean(rgb_mean, num_out_ch, 'num_out_ch'), persistent=False)
        self.attention_type = attention
        self.insert_positions = positions
        self.num_keys = num_keys
        self.nl_reduction = nl_reduction
        modules = []
        for index in range(len(positions)):
            num_key_layers = index + 1
            if attention == 'cla':
                module = CrossLayerAttention(num_feat, num_key_layers, num_keys, max_memory_mb)
            elif attention == 'acla':
                module = AdaptiveCrossLayerAttention(num_feat, num_key_layers, num_keys, temperature, straight_through,
                                                     max_memory_mb)
            elif attention == 'nl':
                module = NonLocalAttention(num_feat, 0, nl_reduction, max_memory_mb)
            else:
                module = CrossLayerNonLocalAttention(num_feat, num_key_layers, nl_reduction, max_memory_mb)
            modules.append(module)
        self.attention = nn.ModuleList(modules)

    def forward_body(self, feat):
        """Run ``self.body`` on the head feature with the attention modules after their positions."""
        key_layers, start = [feat], 0
        for position, module in zip(self.insert_positions, self.attention):
            feat = self.body[start:position](feat)
            key_layers.append(feat)
            feat = module(feat, key_layers[:-1])
            start = position
        return self.body[start:](feat)

    def forward(self, x):
        x = (x - self.mean_in) * self.img_range
        x = self.conv_first(x)
        res = self.conv_after_body(self.forward_body(x)) + x
        return self.conv_last(self.upsample(res)) / self.img_range + self.mean_out

    def key_layer_names(self, index):
        """Names of the key layers of the ``index``-th module: 'head', then 'p<position>' of earlier modules."""
        return ['head'] + [f'p{p}' for p in self.insert_positions[:index]]

    def active_keys(self, smoothed=False):
        """Mean number of open keys per key layer in the last forward pass of every ACLA module.

        Args:
            smoothed (bool): Their moving average over the training passes instead (``smoothed_active_keys``).
                Default: False.

        Returns:
            dict: ``{position: {key layer name: mean open keys}}``; empty for other attention types or before
            the first forward pass.
        """
        result = {}
        for index, (position, module) in enumerate(zip(self.insert_positions, self.attention)):
            active = getattr(module, 'smoothed_active_keys' if smoothed else 'last_active_keys', None)
            if active is not None:
                result[position] = dict(zip(self.key_layer_names(index), active.tolist()))
        return result

    def training_stats(self):
        """Values logged by RestorationModel: ``keys_p<query position>_<key layer>`` = mean open keys (ACLA), a
        moving average over about the last 50 training steps."""
        return {f'keys_p{position}_{name}': value
                for position, layers in self.active_keys(smoothed=True).items() for name, value in layers.items()}

    def set_temperature(self, temperature, noise=None):
        """Set the gate temperature (and the gate noise scale, unless None) of every ACLA module
        (RestorationModel's ``train.gate_temperature`` schedule)."""
        for module in self.attention:
            if hasattr(module, 'temperature'):
                module.temperature = temperature
                if noise is not None:
                    module.noise = noise

    def reset_key_stats(self):
        """Forget the open keys that evaluation passes accumulated (see :meth:`measured_active_keys`)."""
        for module in self.attention:
            if hasattr(module, 'reset_key_stats'):
                module.reset_key_stats()

    def measured_active_keys(self):
        """Mean open keys per key layer over every evaluation pass since :meth:`reset_key_stats`.

        Returns:
            dict: ``{position: [open keys of each key layer]}`` for the ACLA modules that have been evaluated.
        """
        result = {}
        for position, module in zip(self.insert_positions, self.attention):
            measured = module.measured_active_keys() if hasattr(module, 'measured_active_keys') else None
            if measured is not None:
                result[position] = measured
        return result

    def backbone_macs(self, height, width):
        """MACs of the backbone alone (this network without attention) at a (height, width) input.

        Counted with torch's flop counter on the meta device (SPEC section 2) and cached.
        """
        cache = self.__dict__.setdefault('_backbone_macs', {})
        if (height, width) not in cache:
            from .macs import counted_macs
            cls = ARCH_REGISTRY.get(getattr(self, 'final_arch_type', None) or type(self).__name__)
            cache[(height, width)] = counted_macs(
                lambda: cls(**self.backbone_kwargs, attention='none', insert_positions=[]), height, width,
                self.backbone_kwargs['num_in_ch'])
        return cache[(height, width)]

    def expected_attention_macs(self, height, width):
        """Expected MACs of the attention modules under the key gates of the last training pass (differentiable).

        The MAC term of RestorationModel's ``train.macs_penalty``: the MACs of the sparse evaluation, where every
        open key costs its aggregation and every existing key layer its projection, offsets, logits and gates
        (:meth:`~acla_basicsr.archs.cla_modules.AdaptiveCrossLayerAttention.expected_macs`); other attention types
        cost their dense MACs with the aggregation of all their keys.

        Args:
            height (int): Feature (= LR input) height.
            width (int): Feature width.

        Returns:
            Tensor: scalar MACs (float64).
        """
        total = torch.zeros((), dtype=torch.float64)
        for index, module in enumerate(self.attention):
            if hasattr(module, 'expected_macs'):
                total = total + module.expected_macs(height, width)
            else:
                total = total + type(module).macs(module.num_feat, index + 1, self.num_keys, height, width,
                                                  aggregation=True, reduction=getattr(module, 'reduction', 1))
        return total

    def effective_macs(self, height, width):
        """MACs of the whole network as its evaluation computed them, with the open keys measured by evaluation passes.

        The backbone as torch's flop counter counts it, plus each attention module as
        :meth:`~acla_basicsr.archs.cla_modules.CrossLayerAttention.macs` models it, aggregation included: with
        the measured open keys (:meth:`measured_active_keys`) and projected key layers of ACLA's sparse
        evaluation (a closed key is not aggregated, a key layer without an open key is neither projected nor given
        offsets), every key of the modules not yet evaluated and of CLA. So after one evaluation pass of a
        batch of one image this is the flop counter's count of that pass plus the 4 C MACs per pixel of the
        aggregation of every open key, which the counter does not see (tested).

        Args:
            height (int): LR input height.
            width (int): LR input width.

        Returns:
            float: MACs.
        """
        measured = self.measured_active_keys()
        total = self.backbone_macs(height, width)
        for index, (position, module) in enumerate(zip(self.insert_positions, self.attention)):
            projected = module.measured_projected_layers() if hasattr(module, 'measured_projected_layers') else None
            total += float(type(module).macs(module.num_feat, index + 1, self.num_keys, height, width,
                                             aggregation=True, active_keys=measured.get(position),
                                             projected_layers=projected, reduction=getattr(module, 'reduction', 1)))
        return total

    def attention_macs(self, height, width, aggregation=False, active_keys=None):
        """MACs of all attention modules at a (height, width) feature map (by default as torch's counter counts).

        Args:
            height (int): Feature (= input) height.
            width (int): Feature width.
            aggregation (bool): Add the uncounted key aggregation of CLA/ACLA, see
                :meth:`~acla_basicsr.archs.cla_modules.CrossLayerAttention.macs`. Default: False.
            active_keys (float | None): Open keys per key layer for that aggregation; None: all. Default: None.
        """
        return sum(
            type(module).macs(module.num_feat, index + 1, self.num_keys, height, width, aggregation=aggregation,
                              active_keys=active_keys, reduction=getattr(module, 'reduction', 1))
            for index, module in enumerate(self.attention))
