"""Options of the insert-position search, ``train.search`` and ``train.optim_arch`` (unregistered helpers of
:class:`~acla_basicsr.models.acla_search_model.ACLASearchModel`), declared with :mod:`acla_basicsr.option_spec`;
the design is documented in docs/search.md, the options in docs/options.md."""
import os.path as osp

from acla_basicsr.errors import OptionError
from acla_basicsr.option_spec import Option, read_section
from .schedule_options import MACS_SIZE, anneal, macs_size

SEARCH_OPTIONS = {
    'lambda': Option('float', None, 'Weight of the expected added MACs / backbone MACs (ACLA Table 9: 0.15-0.3).',
                     low=0, required=True),
    'temperature_start': Option('float', 1.0, 'Temperature of the position gates at iteration 0.', low=0,
                                low_open=True),
    'temperature_end': Option('float', 0.1, 'Temperature after anneal_iter iterations.', low=0, low_open=True),
    'anneal_iter': Option('int', None, 'Iterations of the geometric annealing (~: train.total_iter).', low=1),
    'straight_through': Option('bool', True, 'Hard 0/1 position gates in the forward pass, relaxed gradients '
                               '(false: relaxed gates in the forward pass too).'),
    'mode': Option('joint|alternate', 'joint', 'One-shot (joint) or weights and logits stepped on disjoint parts '
                   'of each batch (alternate).'),
    'arch_fraction': Option('float', 0.5, 'Part of each batch that steps the logits in mode alternate.', low=0,
                            high=1, low_open=True, high_open=True),
    'arch_start_iter': Option('int', 0, 'First iteration that steps the architecture logits.', low=0),
    'ramp_iter': Option('int', None, 'Iterations over which lambda rises from 0 on the key gates (~: arch_start_iter).',
                        low=0),
    'readout': Option('most_probable|expected_count|threshold', 'most_probable', 'Final positions: the most '
                      'probable selection of at least the most probable number of open candidates (most_probable), '
                      'the round(sum P) most probable candidates (expected_count) or those with P > 0.5 (threshold).'),
    'macs_size': MACS_SIZE,
    'final_config': Option('str', None, "The task's training config whose recipe train_searched.yml takes."),
}
OPTIM_ARCH_OPTIONS = {
    'type': Option('Adam', 'Adam', 'The architecture optimizer (Adam only).'),
    'lr': Option('float', 1e-3, 'Learning rate of the architecture logits.', low=0, low_open=True),
    'betas': Option('list', [0.5, 0.999], "Adam's betas."),
    'weight_decay': Option('float', 0, "Adam's weight decay.", low=0),
}


def check_search_options(opt):
    """Check ``train.search`` and ``train.optim_arch`` of a search config; return the completed search options.

    Args:
        opt (dict): Parsed options of a training run with ``model_type: ACLASearchModel``.

    Returns:
        dict: ``train.search`` with defaults filled in; ``macs_size`` as (height, width) and
        ``optim_arch`` (completed) added.

    Raises:
        OptionError: one line naming the option and the fix.
    """
    train = opt.get('train') or {}
    if not isinstance(train.get('search'), dict):
        raise OptionError('train.search: missing; the position search needs at least train.search.lambda '
                          '(weight of the expected added MACs / backbone MACs, e.g. 0.15 as ACLA Table 9).')
    given = {k: v for k, v in train['search'].items() if k != 'final_config_path'}  # added by an earlier check
    result = read_section(given, SEARCH_OPTIONS, 'train.search')
    result['anneal_iter'] = int(result['anneal_iter'] or train.get('total_iter') or 1)
    if result['ramp_iter'] is None:
        result['ramp_iter'] = result['arch_start_iter']
    train_set = (opt.get('datasets') or {}).get('train') or {}
    if result['mode'] == 'alternate' and int(train_set.get('batch_size_per_gpu', 0)) < 2:
        raise OptionError('datasets.train.batch_size_per_gpu: mode alternate splits each batch into a weights part '
                          'and an architecture part; use a batch of at least 2.')
    result['macs_size'] = macs_size(opt, result['macs_size'], 'train.search.macs_size')
    final = result['final_config']
    if final is not None:
        path = final if osp.isabs(final) or opt.get('root_path') is None else osp.join(opt['root_path'], final)
        if not osp.isfile(path):
            raise OptionError(f'train.search.final_config: {final!r} is not a file; give the training config of the '
                              "task (e.g. options/train/ACLA_SRx2.yml) whose recipe the final network takes, or ~.")
        result['final_config_path'] = path
    if train.get('macs_penalty') is not None:
        raise OptionError('train.macs_penalty: a search takes its MAC term from train.search.lambda (it covers the '
                          'positions and the open keys); remove train.macs_penalty.')
    if float(train.get('ema_decay') or 0) > 0:
        raise OptionError('train.ema_decay: the position search needs 0 (an EMA copy would average the '
                          'architecture logits and validate another selection); set ema_decay: 0.')
    result['optim_arch'] = read_section(train.get('optim_arch'), OPTIM_ARCH_OPTIONS, 'train.optim_arch')
    return result


def search_temperature(search, current_iter):
    """Temperature of the position gates at an iteration: exponential from start to end over anneal_iter.

    ``tau(t) = start * (end / start) ** min(t / anneal_iter, 1)``; a function of the iteration only, so a
    resumed search continues the schedule.
    """
    return anneal(search['temperature_start'], search['temperature_end'], search['anneal_iter'], current_iter)
