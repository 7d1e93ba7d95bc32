"""Divergence stops: a step with a non-finite (or, optionally, exploding) loss or gradient is never taken.

basicsr trains on when the loss becomes NaN: every later loss is NaN, validation reports a few dB, and
checkpoints of NaN weights are saved, with exit status 0. :class:`DivergenceGuard` looks at every step of
``RestorationModel`` (and of the models built on it) after the backward pass and before the optimizers
step, and either lets it through, skips it (at most ``skip_steps`` times in the run, each logged, as the
gradient scalers of mixed-precision training skip steps with infinite gradients), or stops the run with
:class:`DivergenceError`: one line, exit status 2 through the launcher, raised before the iteration's
checkpoint is written, so no checkpoint of non-finite weights exists.

Options (``train.divergence``, all optional):

- ``skip_steps`` (int): bad steps that may be skipped in the run before it stops. Default: 0.
- ``spike_factor`` (float): a loss above this factor of the median of the last ``spike_window`` good
  losses counts as a bad step too. Default: ~ (off).
- ``spike_window`` (int): losses in that running median; the check starts once it is full. Default: 100.
"""
import glob
import math
import os.path as osp
import statistics
from collections import deque

import torch

from acla_basicsr.errors import DivergenceError
from acla_basicsr.option_spec import Option, read_section

#: ``train.divergence`` (module docstring).
DIVERGENCE_OPTIONS = {
    'skip_steps': Option('int', 0, 'Bad steps that may be skipped in the run before it stops.', low=0),
    'spike_factor': Option('float', None, 'A loss above this factor of the running median counts as a bad step '
                           '(~: off).', low=1, low_open=True),
    'spike_window': Option('int', 100, 'Losses in that running median; the check starts once it is full.', low=1),
}


def newest_state(state_dir):
    """The newest ``<iter>.state`` in ``state_dir``, or None."""
    states = [p for p in glob.glob(osp.join(state_dir or '', '*.state')) if osp.basename(p)[:-6].isdigit()]
    return max(states, key=lambda p: int(osp.basename(p)[:-6])) if states else None


class DivergenceGuard:
    """Decides whether an optimizer step is taken, skipped or ends the run (see the module docstring).

    Args:
        options (dict | None): ``train.divergence``.
        state_dir (str | None): The run's ``training_states`` folder, named in the error message.
        lr_hint (str): The option to lower, named in the error message. Default: 'train.optim_g.lr'.
        dist (bool): Whether the run is distributed: the ranks then agree on every decision (one all-reduce of
            a flag per step), so that they step, skip or stop together.
    """

    def __init__(self, options=None, state_dir=None, lr_hint='train.optim_g.lr', dist=False):
        options = read_section(options, DIVERGENCE_OPTIONS, 'train.divergence')
        self.skip_steps = int(options['skip_steps'])
        self.spike_factor = None if options['spike_factor'] is None else float(options['spike_factor'])
        self.recent = deque(maxlen=int(options['spike_window']))
        self.state_dir = state_dir
        self.lr_hint = lr_hint
        self.dist = dist
        self.skipped = 0

    @staticmethod
    def _first_non_finite(named_tensors):
        """The name and value of the first tensor that is not finite, or None (one reduction for all)."""
        named_tensors = [(n, t) for n, t in named_tensors if t is not None]
        if not named_tensors:
            return None
        norms = torch.stack([n.float() for n in torch._foreach_norm([t.detach() for _, t in named_tensors])])
        finite = torch.isfinite(norms)
        if bool(finite.all()):
            return None
        index = int((~finite).nonzero()[0])
        name, tensor = named_tensors[index]
        return name, float('nan') if torch.isnan(tensor.detach()).any() else float('inf')

    def _problem(self, loss_dict, named_parameters, current_iter):
        bad = self._first_non_finite([(k, v.reshape(-1)) for k, v in loss_dict.items() if torch.is_tensor(v)])
        if bad:
            return f'loss is {bad[1]} at iteration {current_iter} ({bad[0]})'
        bad = self._first_non_finite([(n, p.grad) for n, p in named_parameters])
        if bad:
            return f'the gradient of {bad[0]} is {bad[1]} at iteration {current_iter}'
        total = float(sum(v.detach().float().sum() for v in loss_dict.values() if torch.is_tensor(v)))
        if self.spike_factor is not None and len(self.recent) == self.recent.maxlen:
            median = statistics.median(self.recent)
            if total > self.spike_factor * median:
                return (f'loss is {total:.4g} at iteration {current_iter}, {total / median:.1f}x its running '
                        f'median {median:.4g} (train.divergence.spike_factor: {self.spike_factor:g})')
        self.recent.append(total)
        return None

    def _agree(self, bad):
        if not self.dist:
            return bad
        flag = torch.tensor([1.0 if bad else 0.0])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bad or ('another process diverged at this iteration' if flag.item() > 0 else None)

    def _error(self, problem):
        state = newest_state(self.state_dir)
        where = f'the last good state is {state} (resume from it with --auto_resume)' if state else \
            'no training state was saved yet'
        skip = '' if self.skip_steps else ' or allow skipping bad steps with train.divergence.skip_steps'
        return DivergenceError(f'{problem}; {where}; lower {self.lr_hint}{skip}.')

    def check_step(self, loss_dict, named_parameters, current_iter, logger=None):
        """Call after backward, before the optimizer step: True to step, False to skip (logged).

        Raises:
            DivergenceError: when the step is bad and no skip is left.
        """
        named_parameters = list(named_parameters)
        problem = self._agree(self._problem(loss_dict, named_parameters, current_iter))
        if problem is None:
            return True
        if self.skipped < self.skip_steps:
            self.skipped += 1
            if logger is not None:
                logger.warning(f'Skipped the step of iteration {current_iter}: {problem} '
                               f'({self.skipped} of train.divergence.skip_steps: {self.skip_steps}).')
            return False
        raise self._error(problem)

    def check_weights(self, named_parameters, current_iter):
        """Call after the optimizer step: raise DivergenceError if a weight is no longer finite."""
        bad = self._first_non_finite(list(named_parameters))
        problem = self._agree(bad and f'{bad[0]} is {bad[1]} after the step of iteration {current_iter}')
        if problem:
            raise self._error(problem)

    def state_dict(self):
        return {'skipped': self.skipped, 'recent': [float(v) for v in self.recent]}

    def load_state_dict(self, state):
        self.skipped = int(state.get('skipped', 0))
        self.recent.clear()
        self.recent.extend(v for v in state.get('recent', []) if math.isfinite(v))
