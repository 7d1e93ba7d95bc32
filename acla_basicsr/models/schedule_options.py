"""Options of the gate-temperature schedule and of the MAC penalty (unregistered helpers of the models).

Both are read by :class:`~acla_basicsr.models.restoration_model.RestorationModel` from ``train``:

- ``gate_temperature: {start, end, iters, mode}``: the temperature of the relaxation of ACLA's key gates, set on
  every network that has ``set_temperature`` before each training step; ``exp`` (geometric, default) or
  ``linear`` from ``start`` to ``end`` over ``iters`` iterations (default: ``train.total_iter``), then constant.
  A function of the iteration only, so a resumed run continues the schedule.
- ``macs_penalty: {lambda, macs_size, start_iter}``: the objective becomes
  ``L_rec * (1 + lambda * E[added MACs] / backbone MACs)`` (docs/search.md says why multiplicative), with the
  expectation over the network's gates (``expected_attention_macs``) at an LR input of ``macs_size`` (default:
  the training patch, ``gt_size // scale``), from iteration ``start_iter`` on. The insert-position search uses
  the same term with ``train.search.lambda``.
"""
from acla_basicsr.utils import OptionError

TEMPERATURE_MODES = ('exp', 'linear')
GATE_TEMPERATURE_DEFAULTS = {'start': 1.0, 'end': 1.0, 'iters': None, 'mode': 'exp'}
MACS_PENALTY_DEFAULTS = {'lambda': None, 'macs_size': None, 'start_iter': 0}


def number(value, where, low=None, strict=False, integer=False):
    """``value`` as a float (or int) after checking it; a one-line OptionError naming ``where`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        kind = 'an integer' if integer else 'a number'
        raise OptionError(f'{where}: {value!r} is not {kind}.')
    if low is not None and (value < low or (strict and value == low)):
        raise OptionError(f"{where}: {value!r} must be {'>' if strict else '>='} {low}.")
    return int(value) if integer else float(value)


def anneal(start, end, iters, current_iter, mode='exp'):
    """``start`` -> ``end`` over ``iters`` iterations, geometric (``exp``) or ``linear``, then ``end``."""
    progress = min(max(current_iter, 0) / max(iters, 1), 1.0)
    if mode == 'linear':
        return start + (end - start) * progress
    return start * (end / start)**progress


def _section(train, key, defaults):
    section = train.get(key)
    if section is None:
        return None
    if not isinstance(section, dict):
        raise OptionError(f'train.{key}: must be a mapping with keys {", ".join(defaults)}.')
    unknown = sorted(set(section) - set(defaults))
    if unknown:
        raise OptionError(f"train.{key}.{unknown[0]}: unknown option; known: {', '.join(defaults)}.")
    return dict(defaults, **section)


def check_gate_temperature(opt):
    """The checked ``train.gate_temperature`` (defaults filled in), or None when it is absent."""
    train = opt.get('train') or {}
    result = _section(train, 'gate_temperature', GATE_TEMPERATURE_DEFAULTS)
    if result is None:
        return None
    for key in ('start', 'end'):
        result[key] = number(result[key], f'train.gate_temperature.{key}', 0, strict=True)
    result['iters'] = number(result['iters'] or train.get('total_iter') or 1, 'train.gate_temperature.iters', 1,
                             integer=True)
    if result['mode'] not in TEMPERATURE_MODES:
        raise OptionError(f"train.gate_temperature.mode: {result['mode']!r} is unknown; use exp or linear.")
    return result


def default_macs_size(opt, where):
    """The LR training patch, ``datasets.train.gt_size // scale``, as (height, width)."""
    train_set = (opt.get('datasets') or {}).get('train') or {}
    gt_size, scale = train_set.get('gt_size'), opt.get('scale', 1)
    if not gt_size:
        raise OptionError(f'{where}: missing and datasets.train has no gt_size; give the LR input size at which '
                          'MACs are counted, e.g. 48.')
    return gt_size // scale


def check_macs_size(size, where):
    size = list(size) if isinstance(size, (list, tuple)) else [size, size]
    if len(size) != 2:
        raise OptionError(f'{where}: {size!r}; give one size or [height, width].')
    return tuple(number(v, where, 1, integer=True) for v in size)


def check_macs_penalty(opt):
    """The checked ``train.macs_penalty`` (defaults filled in, ``macs_size`` as (h, w)), or None when absent."""
    train = opt.get('train') or {}
    result = _section(train, 'macs_penalty', MACS_PENALTY_DEFAULTS)
    if result is None:
        return None
    if result['lambda'] is None:
        raise OptionError('train.macs_penalty.lambda: missing; give the weight of the expected added MACs / '
                          'backbone MACs (>= 0; the ACLA configs use 0.2).')
    result['lambda'] = number(result['lambda'], 'train.macs_penalty.lambda', 0)
    size = result['macs_size']
    if size is None:
        size = default_macs_size(opt, 'train.macs_penalty.macs_size')
    result['macs_size'] = check_macs_size(size, 'train.macs_penalty.macs_size')
    result['start_iter'] = number(result['start_iter'], 'train.macs_penalty.start_iter', 0, integer=True)
    return result
