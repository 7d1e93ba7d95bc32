"""What an exact resume needs beyond basicsr 1.4.2's training state: random states and the data position.

basicsr's ``*.state`` holds the iteration, the epoch, the optimizers and the schedulers, and the
network comes back from ``net_g_<iter>.pth``. Two things are lost, so a run resumed with
``--auto_resume`` used to continue differently from one never interrupted (measured: different
weights after the same number of iterations):

1. The random states (Python's ``random``, NumPy's global generator, torch's CPU and CUDA
   generators). After resuming, the random crops, flips and rotations of the training patches
   (drawn in the main process when ``num_worker_per_gpu`` is 0) and any noise of the network (the
   Gumbel noise of ACLA's gates and of the position search) come from the seed instead.
2. The position in the epoch. ``train_pipeline`` restarts the epoch of the state from its first
   batch, so the batches already used in that epoch are used again and the last ones of the epoch
   are never seen.

:class:`ResumableSampler` (basicsr's ``EnlargedSampler`` with a resume position; the launcher
substitutes it in ``basicsr.train`` for the run) starts the resumed epoch after the batches
already used, and restores the random states saved with the state right before the first resumed
batch is drawn, after the data loader has drawn its own seed. ``RestorationModel`` saves the
states (:func:`capture_rng_state`) in every training state and runs validation without touching
them, so that where checkpoints and validations fall does not change training.

Exact (bit-identical on the CPU, ``tests/test_resume.py``) with ``num_worker_per_gpu: 0``. With
worker processes the data order is still exact, but basicsr seeds each worker again at every epoch
and workers take batches in turn, so the augmentation of the rest of the resumed epoch differs.
"""
import random

import numpy as np
import torch
from basicsr.data.data_sampler import EnlargedSampler


def capture_rng_state():
    """The states of Python's, NumPy's and torch's global generators (CPU and every CUDA device)."""
    state = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state):
    """Restore what :func:`capture_rng_state` returned (CUDA states only where CUDA is in use)."""
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'].cpu() if torch.is_tensor(state['torch']) else torch.tensor(state['torch']))
    if state.get('cuda') is not None and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state['cuda']]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def rng_state_for_save(state):
    """The random states as plain lists and tensors, loadable with ``torch.load(weights_only=True)``."""
    version, internal, gauss = state['python']
    name, keys, pos, has_gauss, cached = state['numpy']
    saved = {'python': [version, list(internal), gauss], 'numpy': [name, torch.from_numpy(keys.astype(np.int64)),
                                                                   int(pos), int(has_gauss), float(cached)],
             'torch': state['torch']}
    if 'cuda' in state:
        saved['cuda'] = state['cuda']
    return saved


def rng_state_from_save(saved):
    """Inverse of :func:`rng_state_for_save`."""
    version, internal, gauss = saved['python']
    name, keys, pos, has_gauss, cached = saved['numpy']
    return {'python': (version, tuple(internal), gauss),
            'numpy': (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached),
            'torch': saved['torch'], 'cuda': saved.get('cuda')}


class ResumableSampler(EnlargedSampler):
    """basicsr's ``EnlargedSampler`` that can start an epoch after the batches a resumed run already used.

    Args:
        dataset, num_replicas, rank, ratio: as ``EnlargedSampler``.
        batch_size (int): Batch size of the data loader (per process); batches are whole (drop_last).
        resume_state (dict | None): The training state the run resumes from: its ``iter`` and ``epoch`` give
            the batches to skip in that epoch, its ``rng`` (if saved) the random states to restore.
    """

    def __init__(self, dataset, num_replicas, rank, ratio=1, batch_size=1, resume_state=None):
        super().__init__(dataset, num_replicas, rank, ratio)
        self.batch_size = batch_size
        self.skip_batches = 0
        self.pending_rng = None
        self.resume_epoch = None
        if resume_state is not None:
            batches_per_epoch = self.num_samples // batch_size
            done = int(resume_state['iter']) - int(resume_state['epoch']) * batches_per_epoch
            if 0 <= done <= batches_per_epoch:  # else a state of another batch size or data set: start the epoch
                self.skip_batches = done
            self.resume_epoch = int(resume_state['epoch'])
            # every rank's own states (distributed runs save them all), else those of the saving process (rank 0)
            if rank < len(resume_state.get('rng_ranks') or []):
                self.pending_rng = rng_state_from_save(resume_state['rng_ranks'][rank])
            elif resume_state.get('rng') is not None and resume_state.get('rng_rank', 0) == rank:
                self.pending_rng = rng_state_from_save(resume_state['rng'])

    def __iter__(self):
        indices = list(super().__iter__())
        if self.resume_epoch is not None and self.epoch == self.resume_epoch:
            self.resume_epoch = None
            indices = indices[self.skip_batches * self.batch_size:]
            if self.pending_rng is not None:
                # the data loader drew its seed already; from here on, the run draws what the
                # uninterrupted run drew after the saved iteration
                restore_rng_state(self.pending_rng)
                self.pending_rng = None
        return iter(indices)
