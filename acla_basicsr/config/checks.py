"""Checks of a parsed options dict, run before basicsr writes anything to ``experiments/``.

basicsr finds a wrong option deep inside training (a ``KeyError`` from a registry, an
``AssertionError`` from a dataset) after it has created the experiment folder. The entry points
call :func:`check_options` right after ``parse_options``, so bad input ends with one line that
names the option and the fix, and nothing is written.

A registered dataset may define a ``check_options(opt)`` static method; it is called here with
the dataset's options and raises :class:`OptionError` for what it rejects. A registered model
may define a ``check_options(opt)`` class method, called with the whole options dict. The data itself
is checked by :func:`acla_basicsr.data.checks.check_dataset`.
"""
import logging
from os import path as osp

from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY

from acla_basicsr.config.schema import check_schema, scheduler_classes
from acla_basicsr.option_spec import registered_class
from acla_basicsr.data.checks import check_dataset
from acla_basicsr.errors import OptionError


def _check_devices(opt):
    """``num_gpu`` within the GPUs this machine has (basicsr fails deep inside torch otherwise)."""
    import torch
    num_gpu = opt.get('num_gpu')
    available = torch.cuda.device_count()
    if isinstance(num_gpu, int) and num_gpu > available and not opt.get('dist'):
        raise OptionError(f'num_gpu: {num_gpu}, but this machine has {available} CUDA device(s); use num_gpu: '
                          f"{'auto' if available else 0}{' (CPU)' if not available else ''}.")


def _check_optimizers(train):
    """Build every ``train.optim_*`` and the scheduler on a stand-in parameter, so that a value torch refuses
    (``lr: -1``, ``betas: [0.9, 1.5]``, ``gamma: -1``) ends here with one line, not mid-setup with a traceback."""
    import torch
    param = torch.zeros(1, requires_grad=True)
    optimizer = None
    for key, value in train.items():
        if key.startswith('optim_') and isinstance(value, dict) and isinstance(value.get('type'), str):
            kwargs = {k: v for k, v in value.items() if k != 'type'}
            try:
                built = getattr(torch.optim, value['type'])([param], **kwargs)
            except (TypeError, ValueError) as error:
                raise OptionError(f'train.{key}: torch refuses it ({error}); fix that value.') from None
            optimizer = optimizer or built
    scheduler = train.get('scheduler')
    if optimizer is not None and isinstance(scheduler, dict) and scheduler.get('type'):
        classes = scheduler_classes()
        kwargs = {k: v for k, v in scheduler.items() if k != 'type'}
        try:
            classes[scheduler['type']](optimizer, **kwargs)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
            raise OptionError(f'train.scheduler: basicsr refuses it ({error}); fix that value.') from None


def check_options(opt):
    """Check the keys and their types (:mod:`acla_basicsr.config.schema`), the registered types, data
    paths and sizes of a parsed basicsr options dict.

    Args:
        opt (dict): Options returned by ``basicsr.utils.options.parse_options``.

    Raises:
        OptionError: naming the first wrong option and how to fix it.
    """
    # unknown and mistyped keys first (acla_basicsr/config/schema.py); the launcher checked the required
    # ones in the file before basicsr parsed it
    check_schema(opt, required=False)
    _check_devices(opt)
    registered_class(MODEL_REGISTRY, opt.get('model_type'), 'model_type')
    scale = opt.get('scale', 1)
    if not isinstance(scale, int) or scale < 1:
        raise OptionError(f'scale: {scale!r} is not a positive integer; use 1 (restoration), 2, 3 or 4.')
    for key in [k for k in opt if k.startswith('network_')]:
        arch = dict(opt[key])
        cls = registered_class(ARCH_REGISTRY, arch.pop('type', None), f'{key}.type')
        if arch.get('upscale', scale) != scale:
            raise OptionError(f"{key}.upscale: {arch['upscale']} differs from scale {scale}; make them equal.")
        try:
            cls(**arch)
        except (TypeError, ValueError) as error:
            raise OptionError(f'{key}: {error}') from None
    model_cls = MODEL_REGISTRY.get(opt['model_type'])
    if hasattr(model_cls, 'check_options'):
        model_cls.check_options(opt)
    if opt.get('is_train'):
        _check_optimizers(opt.get('train') or {})
        for key, value in opt.get('train', {}).items():
            if key.endswith('_opt') and isinstance(value, dict) and 'type' in value:
                loss_cls = registered_class(LOSS_REGISTRY, value['type'], f'train.{key}.type')
                if hasattr(loss_cls, 'check_options'):  # e.g. a missing VGG19 weights file
                    try:
                        loss_cls.check_options(value)
                    except ValueError as error:
                        raise OptionError(f'train.{key}.{error}') from None
        for index, value in enumerate(opt.get('train', {}).get('network_opt') or []):
            loss_cls = registered_class(LOSS_REGISTRY, value.get('type'), f'train.network_opt[{index}].type')
            try:  # losses on the network are light to build; build them to check their arguments
                loss_cls(**{k: v for k, v in value.items() if k not in ('type', 'name')})
            except (TypeError, ValueError) as error:
                raise OptionError(f'train.network_opt[{index}]: {error}') from None
        if not any(p == 'train' for p in opt['datasets']):
            raise OptionError('datasets.train: missing; a training config needs a train dataset.')
    if not opt.get('datasets'):
        raise OptionError('datasets: empty; give at least one dataset.')
    for phase, dataset_opt in opt['datasets'].items():
        check_dataset(dataset_opt, phase, scale, opt.get('world_size', 1) if opt.get('dist') else 1)
    for key, value in opt.get('path', {}).items():
        if key.startswith('pretrain_network') and value is not None and not osp.isfile(value):
            raise OptionError(f'path.{key}: {value} does not exist; give a local .pth file or ~ to train from scratch.')
    # Building networks and datasets above may have initialised basicsr's logger without its log
    # file; forget it so that the pipeline sets it up with the file, as it expects.
    from basicsr.utils import logger as basicsr_logger
    if basicsr_logger.initialized_logger.pop('basicsr', None):
        logging.getLogger('basicsr').handlers.clear()
