"""Compatibility fixes that let basicsr 1.4.2 run with current torch, on CPU and GPU.

basicsr 1.4.2 (2022) is the last release on PyPI. Each fix below targets one measured
failure (``SPEC.md`` section 1) and delegates to basicsr wherever basicsr is right; nothing
here forks basicsr. :func:`patch_basicsr` is idempotent and runs when ``acla_basicsr`` is
imported, also when basicsr was imported first.

1. ``basicsr.data.degradations`` imports ``torchvision.transforms.functional_tensor``,
   removed in torchvision 0.17: the name is aliased to ``torchvision.transforms.functional``.
2. ``init_dist`` divides by ``torch.cuda.device_count()`` and always uses nccl: replaced by
   :func:`init_dist`, which picks gloo on CPU and nccl on GPUs unless the options name a
   backend (``dist_params: {backend: gloo}``), and selects the GPU from ``LOCAL_RANK``.
3. ``BaseModel.model_to_device`` builds DDP with ``device_ids=[torch.cuda.current_device()]``:
   on CPU the network is wrapped without ``device_ids``.
4. ``basicsr.train.load_resume_state`` maps the state to ``cuda``, looks for
   ``experiments/`` relative to the working directory, and picks a half-written file if a run
   was killed while saving: replaced by :func:`load_resume_state`.
5. Checkpoints and training states are written to a temporary name and renamed, so a run
   killed while saving never leaves a truncated ``.pth`` or ``.state`` behind.
"""
import datetime
import os
import sys
import tempfile
from collections import Counter, defaultdict

_PATCHED = False


def alias_functional_tensor():
    """Make ``torchvision.transforms.functional_tensor`` importable (removed in 0.17)."""
    name = 'torchvision.transforms.functional_tensor'
    if name not in sys.modules:
        try:
            import torchvision.transforms.functional_tensor  # noqa: F401  (old torchvision)
        except ImportError:
            import torchvision.transforms.functional as functional
            sys.modules[name] = functional


def default_backend():
    """Return the distributed backend that fits this machine: nccl with GPUs, gloo without."""
    import torch
    return 'nccl' if torch.cuda.is_available() else 'gloo'


# Filled by the entry points from the options' ``dist_params`` (basicsr passes them to the
# slurm launcher only); read by :func:`init_dist`.
DIST_PARAMS = {}


def init_dist(launcher, backend=None, **kwargs):
    """Initialise torch.distributed for the ``pytorch`` (torchrun) or ``slurm`` launcher.

    Args:
        launcher (str): 'pytorch' (torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
            MASTER_PORT) or 'slurm'.
        backend (str | None): 'nccl' or 'gloo'. Default: ``dist_params.backend`` from the
            options, else nccl when CUDA is available and gloo otherwise.
        **kwargs: ``port`` (slurm only: torchrun takes ``--master_port``) and ``timeout`` in
            seconds, as in ``dist_params``.
    """
    import subprocess

    import torch
    import torch.distributed as dist

    params = dict(DIST_PARAMS)
    params.update(kwargs)
    backend = backend or params.get('backend') or default_backend()
    if backend == 'nccl' and not torch.cuda.is_available():
        raise RuntimeError('dist_params.backend is nccl but no CUDA device is visible; '
                           'use backend: gloo (or leave it unset) to train distributed on CPU.')
    if launcher == 'slurm':
        proc_id, ntasks = int(os.environ['SLURM_PROCID']), int(os.environ['SLURM_NTASKS'])
        num_gpus = max(torch.cuda.device_count(), 1)
        addr = subprocess.getoutput(f"scontrol show hostname {os.environ['SLURM_NODELIST']} | head -n1")
        if params.get('port') is not None:
            os.environ['MASTER_PORT'] = str(params['port'])
        os.environ.setdefault('MASTER_PORT', '29500')
        os.environ.update(MASTER_ADDR=addr, WORLD_SIZE=str(ntasks), RANK=str(proc_id),
                          LOCAL_RANK=str(proc_id % num_gpus))
    elif launcher != 'pytorch':  # torchrun's --master_addr/--master_port set the rendezvous; port is slurm's
        raise ValueError(f"Invalid launcher '{launcher}': use --launcher pytorch (torchrun) or slurm.")
    group_kwargs = {}
    if params.get('timeout') is not None:  # seconds
        group_kwargs['timeout'] = datetime.timedelta(seconds=float(params['timeout']))
    if backend == 'nccl':
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count())
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, **group_kwargs)


def load_state_file(path):
    """Load a basicsr training state (``*.state``) onto the CPU, whatever device saved it."""
    import torch
    with torch.serialization.safe_globals([Counter, defaultdict]):
        return torch.load(path, map_location='cpu', weights_only=True)


def load_resume_state(opt):
    """basicsr's ``load_resume_state`` made device- and working-directory-independent.

    With ``--auto_resume`` the newest readable state in ``<experiments_root>/training_states``
    is used; a state that cannot be read (a run killed by an older version while saving) is
    skipped with a warning. States are loaded onto the CPU; optimizers move them to the
    parameters' device when they load them.
    """
    from basicsr.utils import check_resume, scandir

    candidates = []
    if opt['auto_resume']:
        state_dir = opt['path']['training_states']
        if os.path.isdir(state_dir):
            names = [v for v in scandir(state_dir, suffix='.state', recursive=False) if v[:-6].isdigit()]
            candidates = [os.path.join(state_dir, v) for v in sorted(names, key=lambda v: -int(v[:-6]))]
    elif opt['path'].get('resume_state'):
        candidates = [opt['path']['resume_state']]
    for i, path in enumerate(candidates):
        try:
            state = load_state_file(path)
        except Exception as error:  # a truncated or foreign file
            if not opt['auto_resume']:
                raise RuntimeError(f'path.resume_state: cannot read {path} ({error}); '
                                   'point it at a *.state file written by training.') from error
            print(f'Skip unreadable training state {path}: {error}', flush=True)
            continue
        opt['path']['resume_state'] = path
        check_resume(opt, state['iter'])
        return state
    return None


def atomic_torch_save(obj, path, *args, **kwargs):
    """``torch.save`` to ``path`` through a temporary file in the same folder and a rename."""
    import torch
    if not isinstance(path, (str, os.PathLike)):
        return torch.save(obj, path, *args, **kwargs)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path), suffix='.tmp', dir=folder)
    os.close(fd)
    try:
        torch.save(obj, tmp, *args, **kwargs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class _TorchWithAtomicSave:
    """``torch`` as seen by ``basicsr.models.base_model``: the same, except that save is atomic."""

    def __getattr__(self, name):
        import torch
        return atomic_torch_save if name == 'save' else getattr(torch, name)


def _model_to_device(self, net):
    """Wrap ``net`` like basicsr does, without ``device_ids`` when training on the CPU."""
    from torch.nn.parallel import DistributedDataParallel
    if self.opt['dist'] and self.device.type == 'cpu':
        return DistributedDataParallel(
            net.to(self.device), find_unused_parameters=self.opt.get('find_unused_parameters', False))
    return _model_to_device.original(self, net)


def patch_basicsr():
    """Apply the fixes listed in the module docstring; safe to call more than once."""
    global _PATCHED
    alias_functional_tensor()
    if _PATCHED:
        return
    import basicsr.models.base_model as base_model
    import basicsr.train
    import basicsr.utils.options as options

    options.init_dist = init_dist
    basicsr.train.load_resume_state = load_resume_state
    if base_model.BaseModel.model_to_device is not _model_to_device:
        _model_to_device.original = base_model.BaseModel.model_to_device
        base_model.BaseModel.model_to_device = _model_to_device
    base_model.torch = _TorchWithAtomicSave()
    _PATCHED = True
