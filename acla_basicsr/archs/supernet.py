"""The insert-position supernet shared by ACLASuperEDSR and ACLASuperRCAN (unregistered helpers).

The ACLA paper reports only the outcome of its insert-position search (Table 9); the design here is ours
(docs/search.md):

- A candidate ACLA module follows every residual block (EDSR) or residual group (RCAN), or every position
  listed in ``candidates``. Candidate p has an architecture logit ``alpha_p`` (the ``arch_logits``
  parameter, one entry per candidate) and a relaxed binary gate ``z_p``.
- Training: ``z_p = sigmoid((alpha_p + log u - log(1 - u)) / tau)``, u ~ U(0, 1), drawn per sample and
  candidate (Gumbel-sigmoid, i.e. the binary concrete relaxation of a Bernoulli(sigmoid(alpha_p)) gate);
  ``tau`` is :attr:`position_temperature`, annealed by the search model. With
  :attr:`position_straight_through` the forward pass uses the hard sample ``[z_p > 0.5]`` and the backward
  pass the relaxed gradient.
- Evaluation: deterministic hard gates of the selected positions (:func:`readout_selection`: by default the
  most probable selection of at least the most probable number of open candidates); closed candidates are
  skipped and their key layers removed from the softmax, so the supernet in eval mode computes exactly what the
  final network with the open positions computes with :meth:`PositionSearchMixin.final_state_dict` (tested).
- Candidate p's query is the feature after its block; its key layers are the head feature (weight 1) and
  the features at the earlier candidates q < p (before their attention), each weighted by ``z_q`` through
  the module's ``layer_weights``, added in log space to the key logits before the softmax (so a weight of 0
  removes the layer exactly, however large its logits). Its output is ``x + z_p * attention(x)``. A closed
  position (z = 0) is therefore neither a query nor a key.
- Expected added MACs (:meth:`PositionSearchMixin.expected_attention_macs`): an open candidate has the head
  and the open earlier candidates as key layers, and each of its keys costs MACs only when its key gate is
  open. With independent gates, ``E[MACs] = sum_p P_p * (C^2 + sum_{l <= p} P_l * (per_layer + n_pl * per_key))``,
  ``P_p = sigmoid(alpha_p)``, ``P_head = 1``, ``n_pl`` the expected open keys of candidate p in layer l: the
  pairwise ``P_p * P_q`` terms are the quadratic cost of cross-layer keys, and the key gates enter the same
  term as in the final training (RestorationModel's ``train.macs_penalty``). For 0/1 probabilities and every
  key open this is the attention MACs of the final network as torch's flop counter counts them (tested).
"""
import math
from collections import OrderedDict

import numpy as np
import torch
from scipy.stats import poisson_binom
from torch import nn as nn


from .cla_network import check_insert_positions

# Initial architecture logit: sigmoid(0.85) = 0.70, every candidate is on in 70 % of the samples of the weights'
# warm-up. Measured (docs/search.md): from 0.88 straight-through gates co-adapt the network to the modules that
# are nearly always on and EDSR-16 DN kept 10 of 16 at lambda 0.2; from 0.5 the demo's modules are trained too
# little to rise at lambda 0 within its 600 iterations.
POSITION_LOGIT_INIT = 0.85
# How the final positions are read from the gate probabilities (readout_selection).
READOUTS = ('most_probable', 'expected_count', 'threshold')
DEFAULT_READOUT = 'most_probable'


def check_candidates(candidates, num_positions, unit):
    """The candidate positions (1-indexed) of a supernet; all ``1..num_positions`` when None.

    Raises a one-line ValueError naming the YAML key when the backbone has no position or the list is wrong.
    """
    if isinstance(num_positions, bool) or not isinstance(num_positions, int) or num_positions < 1:
        raise ValueError(f'{unit}: {num_positions!r} leaves the supernet no candidate position (an ACLA candidate '
                         f'follows every {"residual block" if unit == "num_block" else "residual group"}); '
                         f'use {unit} >= 1.')
    if candidates is None:
        return list(range(1, num_positions + 1))
    try:
        return check_insert_positions(candidates, num_positions, unit, 'acla')
    except ValueError as error:
        raise ValueError(str(error).replace('insert_positions', 'candidates', 1)) from None


def most_probable_count(probs):
    """The most probable number of open candidates under independent Bernoulli(P_p) gates: the mode of their
    count's Poisson-binomial distribution (``scipy.stats.poisson_binom``; ties: the smaller count).

    It is within 1 of the expected number ``sum_p P_p`` (Darroch, 1964), but is the count the search's
    distribution puts most mass on: at P = 0.886, 0.099, 0.491, 0.029 (sum 1.51) one open candidate has
    probability 0.451 and two 0.443, where rounding the sum reads two.
    """
    if not len(probs):
        return 0
    return int(np.argmax(poisson_binom(list(probs)).pmf(np.arange(len(probs) + 1))))


def readout_selection(probs, readout=DEFAULT_READOUT):
    """Indices of the candidates a search selects from their gate probabilities, in increasing order.

    Under independent Bernoulli(P_p) gates the probability of a selection is ``prod P_p^z_p (1 - P_p)^(1 - z_p)``.
    For a fixed size n it is largest on the n largest P (ties: the earlier candidate), and over all sizes on the
    candidates with P > 0.5 (the mode); the largest probability of size n grows with n up to the mode's size and
    falls after it.

    - ``'most_probable'`` (default): the most probable selection of at least the most probable number of open
      candidates (:func:`most_probable_count`): the mode, topped up with the next most probable candidates when it
      is smaller, i.e. the ``max(#{P > 0.5}, n*)`` largest P. Near the symmetric point where every P is below 0.5
      but their sum is a handful it selects that handful; when the gates lean open without being decided (every
      P 0.75: three of 4 open is the most probable count) it keeps the mode, all four (docs/search.md).
    - ``'expected_count'``: the ``round(sum_p P_p)`` largest P, the most probable selection of the expected size.
    - ``'threshold'``: the mode, every candidate with P > 0.5.

    Args:
        probs (list[float]): P(open) of each candidate.
        readout (str): One of :data:`READOUTS`. Default: 'most_probable'.

    Returns:
        list[int]: Indices into ``probs``.
    """
    if readout == 'threshold':
        return [i for i, p in enumerate(probs) if p > 0.5]
    if readout not in READOUTS:
        raise ValueError(f"readout: '{readout}' is unknown; use one of {', '.join(READOUTS)}.")
    if readout == 'most_probable':
        count = max(most_probable_count(probs), sum(p > 0.5 for p in probs))
    else:
        count = int(math.floor(sum(probs) + 0.5))
    return sorted(sorted(range(len(probs)), key=lambda i: (-probs[i], i))[:count])


class _StraightThrough(torch.autograd.Function):
    """Forward: the hard gates exactly; backward: the gradient of the relaxed ones."""

    @staticmethod
    def forward(ctx, soft, hard):
        return hard

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class PositionSelection(float):
    """The open positions of a search, for a log line: its float value is their number (for tensorboard),
    formatted (whatever the format spec, e.g. basicsr's ``{v:.4e}``) as the list itself, e.g. ``[3,12,26]``."""

    def __new__(cls, positions):
        obj = super().__new__(cls, len(positions))
        obj.positions = list(positions)
        return obj

    def __format__(self, spec):
        return '[' + ','.join(map(str, self.positions)) + ']'

    def __reduce__(self):
        return (PositionSelection, (self.positions, ))


class PositionSearchMixin:
    """Insert-position search on a CrossLayerAttentionMixin network whose ``insert_positions`` are the candidates.

    Mixed in before :class:`~acla_basicsr.archs.acla_edsr_arch.ACLAEDSR` or
    :class:`~acla_basicsr.archs.acla_rcan_arch.ACLARCAN` built with ``attention='acla'`` and every candidate
    as an insert position (candidate m then has m key layers). See the module docstring for the gates and
    the MAC model.
    """

    #: Marks a supernet for the search model.
    is_position_supernet = True

    def _build_search(self, final_arch_type, backbone_kwargs, attention_kwargs, position_logit_init):
        self.final_arch_type = final_arch_type
        self.backbone_kwargs = dict(backbone_kwargs)
        self.attention_kwargs = dict(attention_kwargs)
        self.arch_logits = nn.Parameter(torch.full((len(self.insert_positions), ), float(position_logit_init)))
        self.position_temperature = 1.0
        self.position_straight_through = False
        self.readout = DEFAULT_READOUT

    @property
    def position_temperature(self):
        """Temperature tau of the relaxed position gates (set by the search model's schedule)."""
        return self._position_temperature

    @position_temperature.setter
    def position_temperature(self, value):
        if not float(value) > 0:
            raise ValueError(f'position temperature: {value!r} must be > 0.')
        self._position_temperature = float(value)

    # ------------------------------------------------------------------ gates
    def gate_probabilities(self):
        """P(candidate open) = sigmoid(alpha), (num_candidates,), detached."""
        return torch.sigmoid(self.arch_logits.detach())

    def selected_positions(self):
        """The positions of the final network: :func:`readout_selection` of the gate probabilities with
        :attr:`readout` (set by the search model from ``train.search.readout``)."""
        chosen = readout_selection(self.gate_probabilities().cpu().tolist(), self.readout)
        return [self.insert_positions[i] for i in chosen]

    def position_gates(self, batch):
        """Gates of the candidates: (batch, P) relaxed samples in training, (P,) hard 0/1 gates of the
        :meth:`selected_positions` in eval."""
        logits = self.arch_logits
        if not self.training:
            chosen = set(self.selected_positions())
            return torch.tensor([float(p in chosen) for p in self.insert_positions], dtype=logits.dtype,
                                device=logits.device)
        u = torch.rand(batch, logits.numel(), device=logits.device, dtype=logits.dtype).clamp_(1e-6, 1 - 1e-6)
        noisy = logits + torch.log(u) - torch.log1p(-u)
        soft = torch.sigmoid(noisy / self.position_temperature)
        if self.position_straight_through:
            return _StraightThrough.apply(soft, (noisy > 0).to(soft))
        return soft

    def forward_body(self, feat):
        """``self.body`` with a gated candidate ACLA module after each candidate position."""
        gates = self.position_gates(feat.shape[0])
        hard = not self.training
        is_open = (gates > 0).tolist() if hard else None
        # key-layer weights: 1 for the head feature, z_q for the feature at candidate q
        layer_weights = torch.cat((gates.new_ones(gates.shape[:-1] + (1, )), gates), -1)
        key_layers, start = [feat], 0
        for index, (position, module) in enumerate(zip(self.insert_positions, self.attention)):
            feat = self.body[start:position](feat)
            start = position
            key_layers.append(feat)
            if hard:
                if is_open[index]:
                    feat = module(feat, key_layers[:-1], layer_weights[:index + 1])
                continue
            out = module(feat, key_layers[:-1], layer_weights[:, :index + 1])
            feat = feat + gates[:, index].view(-1, 1, 1, 1) * (out - feat)
        return self.body[start:](feat)

    # ------------------------------------------------------------------ MAC model
    def expected_attention_macs(self, height, width, probs=None, key_gates=True, aggregation=True):
        """Expected MACs added by the candidates, differentiable in ``arch_logits`` and the key-gate logits.

        ``E = sum_p P_p * m_p(P_head = 1, P_q for q < p)``, where ``m_p`` is candidate p's
        :meth:`~acla_basicsr.archs.cla_modules.AdaptiveCrossLayerAttention.expected_macs` with each key layer
        weighted by the probability that it exists and each key by the probability that its gate is open (from
        the last forward pass), in float64. With ``key_gates=False, aggregation=False`` and 0/1 probabilities
        this is the attention MACs of the final network as torch's flop counter counts them (tested).

        The value is E; its gradient in the position probabilities is each candidate's *share* of it: its own
        module (output projection, head key layer) plus half of every key-layer pair it belongs to,
        ``dE/dP_p = a_p + 1/2 sum_{q != p} P_q c_pq``, so that ``sum_p P_p dE/dP_p = E`` (Euler's identity for
        shares; the plain derivative charges every pair in full to both of its candidates, twice its cost in
        sum: docs/search.md).

        Args:
            height (int): Feature (= LR input) height.
            width (int): Feature width.
            probs (Tensor | list | None): Gate probabilities per candidate; None: sigmoid(arch_logits).
                Default: None.
            key_gates (bool): Count the keys open in expectation under the key gates; False: all K. Default: True.
            aggregation (bool): Count the aggregation of the open keys (4 C each). Default: True.

        Returns:
            Tensor: scalar, MACs.
        """
        if probs is None:
            probs = torch.sigmoid(self.arch_logits)
        probs = torch.as_tensor(probs).to(torch.float64)
        fixed = probs.detach()
        head_only = torch.cat((probs.new_ones(1), probs.new_zeros(len(probs))))
        total = probs.new_zeros(())
        for index, module in enumerate(self.attention):
            saved = module.expected_open_keys
            if not key_gates:
                module.expected_open_keys = None
            try:
                layers = torch.cat((probs.new_ones(1), probs[:index]))
                own = module.expected_macs(height, width, head_only[:index + 1], aggregation)  # a_p
                with_pairs = module.expected_macs(height, width, layers, aggregation)  # a_p + sum_q P_q c_pq
                pairs_fixed = module.expected_macs(height, width, layers.detach(), aggregation)
                # value P_p m_p; gradient: a_p and half of each pair for P_p, half of each pair for P_q
                total = total + (probs[index] * own + 0.5 * probs[index] * (pairs_fixed - own)
                                 + 0.5 * fixed[index] * (with_pairs - own))
            finally:
                module.expected_open_keys = saved
        return total

    # ------------------------------------------------------------------ export and logs
    def final_network_opt(self, positions):
        """The ``network_g`` options of the final network with ACLA at ``positions`` (none: the plain backbone)."""
        opt = {'type': self.final_arch_type, **self.backbone_kwargs}
        if positions:
            opt.update(attention='acla', insert_positions=list(positions), **self.attention_kwargs)
        else:
            opt.update(attention='none', insert_positions=[])
        return opt

    def final_state_dict(self, positions):
        """The weights of the final network with ACLA at ``positions``, taken from the supernet.

        The backbone's weights as they are; the m-th kept module gets the weights of its candidate, restricted to
        the key layers that remain (the head and the kept earlier positions): their value projections and their
        rows of the offset, logit and gate convs. In evaluation the final network with these weights computes
        exactly what the supernet computes with the same positions open (tested).

        Args:
            positions (list[int]): Kept positions, a subset of the candidates.

        Returns:
            OrderedDict: A state dict for ``ARCH_REGISTRY.get(final_arch_type)(**final_network_opt(positions))``.
        """
        positions = check_insert_positions(list(positions), max(self.insert_positions), 'positions', 'none')
        missing = sorted(set(positions) - set(self.insert_positions))
        if missing:
            raise ValueError(f'positions: {missing[0]} is not a candidate of this supernet {self.insert_positions}.')
        k = self.num_keys
        state = OrderedDict((name, value) for name, value in self.state_dict().items()
                            if not name.startswith('attention.') and name != 'arch_logits')
        for m, position in enumerate(positions):
            index = self.insert_positions.index(position)
            module = self.attention[index]
            # key layers of candidate `index`: head (0), then candidate q at layer q + 1
            layers = [0] + [self.insert_positions.index(p) + 1 for p in positions[:m]]
            prefix = f'attention.{m}.'
            for j, layer in enumerate(layers):
                for name, value in module.value[layer].state_dict().items():
                    state[f'{prefix}value.{j}.{name}'] = value.clone()
            for head, per_key in (('offset', 2), ('logit', 1), ('gate', 1)):
                conv = getattr(module, head)
                rows = torch.cat([torch.arange(layer * k * per_key, (layer + 1) * k * per_key) for layer in layers])
                state[f'{prefix}{head}.weight'] = conv.weight.detach()[rows].clone()
                state[f'{prefix}{head}.bias'] = conv.bias.detach()[rows].clone()
            state[f'{prefix}proj.weight'] = module.proj.weight.detach().clone()
        return state

    def training_stats(self):
        """Logged by RestorationModel: the mean number of open keys over every candidate and key layer (moving
        average over the training steps)."""
        active = [module.smoothed_active_keys for module in self.attention if module.smoothed_active_keys is not None]
        if not active:
            return {}
        return {'keys_open': torch.cat(active).mean().item()}
