"""Options of the gate-temperature schedule and of the MAC penalty (unregistered helpers of the models).

Both are read by :class:`~acla_basicsr.models.restoration_model.RestorationModel` from ``train`` and declared
with :mod:`acla_basicsr.option_spec` (docs/options.md lists them):

- ``gate_temperature: {start, end, iters, mode, noise_end}``: the temperature of the relaxation of ACLA's key
  gates, set on every network that has ``set_temperature`` before each training step; ``exp`` (geometric,
  default) or ``linear`` from ``start`` to ``end`` over ``iters`` iterations (default: ``train.total_iter``), then
  constant. The scale of the gates' logistic noise falls linearly from 1 to ``noise_end`` (default 0) over the
  same iterations, so that the gates of the last training steps are the evaluation gates ``[g > 0]``. A function
  of the iteration only, so a resumed run continues the schedule.
- ``macs_penalty: {lambda, macs_size, start_iter, ramp_iter}``: the objective becomes
  ``L_rec * (1 + lambda_t * E[added MACs] / backbone MACs)`` (docs/search.md says why multiplicative), with the
  expectation over the network's gates (``expected_attention_macs``) at an LR input of ``macs_size`` (default:
  the training patch, ``gt_size // scale``), from iteration ``start_iter`` on, ``lambda_t`` rising linearly from 0
  to ``lambda`` over ``ramp_iter`` iterations (:func:`macs_weight`). The zero-initialised output projection
  gives the key gates no reconstruction gradient at first, so a MAC term at full weight from the first step
  would close keys by its sign alone under Adam (docs/cla_acla.md). The insert-position search uses
  the same term with ``train.search.lambda``.
"""
from acla_basicsr.errors import OptionError
from acla_basicsr.option_spec import Option, read_section

GATE_TEMPERATURE_OPTIONS = {
    'start': Option('float', 1.0, 'Temperature of the key-gate relaxation at iteration 0.', low=0, low_open=True),
    'end': Option('float', 1.0, 'Temperature after `iters` iterations.', low=0, low_open=True),
    'iters': Option('int', None, 'Iterations of the annealing (~: train.total_iter).', low=1),
    'mode': Option('exp|linear', 'exp', 'Geometric (exp) or linear annealing.'),
    'noise_end': Option('float', 0.0, 'Scale of the logistic gate noise after `iters` (1 at iteration 0, linear); '
                        '0: the last steps open the keys evaluation opens.', low=0, high=1),
}
MACS_SIZE = Option('int|list', None, 'LR input size (one side, or [height, width]) at which MACs are counted '
                   '(~: datasets.train.gt_size // scale).', low=1)
MACS_PENALTY_OPTIONS = {
    'lambda': Option('float', None, 'Weight of the expected added MACs / backbone MACs (the ACLA configs use 0.2-1).',
                     low=0, required=True),
    'macs_size': MACS_SIZE,
    'start_iter': Option('int', 0, 'First iteration with the MAC term.', low=0),
    'ramp_iter': Option('int', 0, 'Iterations after start_iter over which lambda rises linearly from 0.', low=0),
}


def anneal(start, end, iters, current_iter, mode='exp'):
    """``start`` -> ``end`` over ``iters`` iterations, geometric (``exp``) or ``linear``, then ``end``."""
    progress = min(max(current_iter, 0) / max(iters, 1), 1.0)
    if mode == 'linear':
        return start + (end - start) * progress
    return start * (end / start)**progress


def macs_weight(penalty, current_iter):
    """``lambda_t`` of a checked MAC term at an iteration: 0 up to ``start_iter``, then a linear ramp to ``lambda``
    over ``ramp_iter`` iterations (immediately with ``ramp_iter: 0``)."""
    if current_iter <= penalty['start_iter']:
        return 0.0
    ramp = penalty.get('ramp_iter', 0)
    return penalty['lambda'] * (min(1.0, (current_iter - penalty['start_iter']) / ramp) if ramp else 1.0)


def gate_noise(schedule, current_iter):
    """Scale of the key gates' logistic noise at an iteration: linear from 1 to ``noise_end`` over ``iters``."""
    return anneal(1.0, schedule['noise_end'], schedule['iters'], current_iter, 'linear')


def check_gate_temperature(opt):
    """The checked ``train.gate_temperature`` (defaults filled in), or None when it is absent."""
    train = opt.get('train') or {}
    if train.get('gate_temperature') is None:
        return None
    result = read_section(train['gate_temperature'], GATE_TEMPERATURE_OPTIONS, 'train.gate_temperature')
    result['iters'] = int(result['iters'] or train.get('total_iter') or 1)
    return result


def macs_size(opt, size, where):
    """``size`` (one side or [h, w]; None: the LR training patch ``gt_size // scale``) as (height, width)."""
    if size is None:
        train_set = (opt.get('datasets') or {}).get('train') or {}
        gt_size, scale = train_set.get('gt_size'), opt.get('scale', 1)
        if not gt_size:
            raise OptionError(f'{where}: missing and datasets.train has no gt_size; give the LR input size at which '
                              'MACs are counted, e.g. 48.')
        size = gt_size // scale
    size = list(size) if isinstance(size, (list, tuple)) else [size, size]
    if len(size) != 2:
        raise OptionError(f'{where}: {size!r}; give one size or [height, width].')
    return tuple(Option('int', low=1).check(v, where) for v in size)


def check_macs_penalty(opt):
    """The checked ``train.macs_penalty`` (defaults filled in, ``macs_size`` as (h, w)), or None when absent."""
    train = opt.get('train') or {}
    if train.get('macs_penalty') is None:
        return None
    result = read_section(train['macs_penalty'], MACS_PENALTY_OPTIONS, 'train.macs_penalty')
    result['macs_size'] = macs_size(opt, result['macs_size'], 'train.macs_penalty.macs_size')
    return result
