"""Fixes that let basicsr 1.4.2 (2022, the last release) run with current torch, on CPU and GPU: one place.

Each fix targets one measured failure (``SPEC.md`` section 1) and delegates to basicsr wherever basicsr is
right; nothing here forks basicsr. Importing ``acla_basicsr`` applies only the first fix, without which
basicsr cannot be imported at all; every other fix applies to one run or one model, never to every importer
of basicsr:

1. ``basicsr.data.degradations`` imports ``torchvision.transforms.functional_tensor``, removed in
   torchvision 0.17 (``import basicsr`` fails): :func:`alias_functional_tensor` aliases the name to
   ``torchvision.transforms.functional``, at import.
2. ``init_dist`` divides by ``torch.cuda.device_count()`` (ZeroDivisionError on a CPU machine) and always
   uses nccl: :func:`init_dist` picks gloo on CPU and nccl on GPUs unless the options name a backend
   (``dist_params: {backend: gloo}``), and selects the GPU from ``LOCAL_RANK``. The launcher hands it to
   ``parse_options`` for the run (:func:`replaced_globals`).
3. ``basicsr.train.load_resume_state`` maps the state to ``cuda`` (fails on a CPU machine), looks for
   ``experiments/`` relative to the working directory, and picks a half-written file if a run was killed
   while saving: :func:`load_resume_state`, handed to ``train_pipeline`` for the run.
4. ``BaseModel.save_network`` writes checkpoints in place, so a run killed while saving leaves a truncated
   ``.pth``: :func:`atomic_saves`, used by ``RestorationModel.save_network`` around basicsr's method.
5. ``BaseModel.model_to_device`` builds DDP with ``device_ids=[torch.cuda.current_device()]``, which fails
   on CPU: ``RestorationModel.model_to_device`` wraps without ``device_ids`` there.

How to check that importing ``acla_basicsr`` changes nothing else in basicsr: ``tests/test_layout.py``
compares every attribute of every basicsr module before and after the import (and after a run through the
launcher). basicsr's own test suite (v1.4.2's ``tests/``, from its source repository) needs the alias to import
basicsr at all: run it as ``python -c "import sys, torchvision.transforms.functional as F;
sys.modules['torchvision.transforms.functional_tensor'] = F; import pytest; pytest.main(['tests'])"`` and again
with ``import acla_basicsr;`` before ``import pytest``; the two must give the same results.
"""
import contextlib
import datetime
import os
import sys
import warnings
from collections import Counter, defaultdict

from acla_basicsr import fileio
from acla_basicsr.errors import OptionError


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


def shared_store_warning(environ=None):
    """The warning for an elastic torchrun run that restarts its workers with one shared store, else None.

    torchrun's elastic agent keeps one key-value store for every restart unless
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``; the dead workers' gloo addresses stay in it and a restarted worker
    may connect to a dead port: a restart used up, or a hang (pytorch/pytorch#135712; docs/reliability.md).

    Args:
        environ (Mapping | None): The environment; default ``os.environ``.
    """
    environ = os.environ if environ is None else environ
    try:
        restarts = int(environ.get('TORCHELASTIC_MAX_RESTARTS', 0))
    except ValueError:
        restarts = 0
    if restarts > 0 and environ.get('TORCH_DISABLE_SHARE_RDZV_TCP_STORE') != '1' and environ.get('RANK') == '0':
        return (f'torchrun --max-restarts={restarts} shares one rendezvous store between restarts, where the dead '
                "workers' addresses stay: a restarted run may fail or hang (pytorch/pytorch#135712); start torchrun "
                'with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (README, distributed training).')
    return None


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

    params = dict(kwargs)
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
    elif shared_store_warning() is not None:
        warnings.warn(shared_store_warning(), RuntimeWarning, stacklevel=2)
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


def load_resume_state(opt, warn=None):
    """basicsr's ``load_resume_state`` made device- and working-directory-independent.

    With ``--auto_resume`` the newest readable state in ``<experiments_root>/training_states``
    is used; a state that cannot be read (a truncated file, e.g. of a full disk, or of a run killed by an
    older version while saving) is skipped with a warning. States are loaded onto the CPU; optimizers move
    them to the parameters' device when they load them.

    Args:
        opt (dict): The parsed options.
        warn (Callable[[str], None] | None): Receives the line of each skipped state (the launcher logs it
            in the run's log once the log exists). Default: print it on stderr.
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
                raise OptionError(f'path.resume_state: cannot read {path} ({str(error).splitlines()[0]}); '
                                  'point it at a *.state file written by training.') from None
            line = (f'skipped the unreadable training state {path} ({str(error).splitlines()[0]}); '
                    'resuming from the newest readable one')
            (warn or (lambda text: print(f'warning: {text}', file=sys.stderr, flush=True)))(line)
            continue
        opt['path']['resume_state'] = path
        check_resume(opt, state['iter'])
        return state
    return None


@contextlib.contextmanager
def atomic_saves(prepare=None):
    """Within the block, ``basicsr.models.base_model`` saves with :func:`acla_basicsr.fileio.torch_save`.

    ``prepare(obj)``, when given, returns what is saved instead of ``obj`` (``RestorationModel.save_network``
    adds each state dict's description).

    basicsr retries a failed save three times, then logs "Just ignore it" and trains on without checkpoints
    (a full disk goes unnoticed until the run ends): a save that still fails after the block's last attempt
    raises its :class:`~acla_basicsr.errors.WriteError` when the block ends.
    """
    import basicsr.models.base_model as base_model
    torch = base_model.torch
    failure = []

    def save(obj, path, *args, **kwargs):
        failure.clear()
        try:
            fileio.torch_save(prepare(obj) if prepare else obj, path)
        except OSError as error:
            failure.append(error)
            raise

    class TorchWithAtomicSave:
        def __getattr__(self, name):
            return save if name == 'save' else getattr(torch, name)

    base_model.torch = TorchWithAtomicSave()
    try:
        yield
    finally:
        base_model.torch = torch
    if failure:
        raise failure[0]


@contextlib.contextmanager
def replaced_globals(function, replacements):
    """Within the block, the module globals that ``function`` reads are replaced by ``replacements``.

    The launcher's way to run one of basicsr's pipelines with this project's pieces (:mod:`acla_basicsr.cli.launch`):
    the names are restored afterwards, so nothing outlives the run.
    """
    names = function.__globals__
    originals = {name: names[name] for name in replacements}
    names.update(replacements)
    try:
        yield
    finally:
        names.update(originals)
