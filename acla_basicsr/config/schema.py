"""The schema of basicsr options files: every key that basicsr 1.4.2 or this package reads, with its type.

:func:`check_schema` walks an options dict and raises :class:`~acla_basicsr.errors.OptionError`
(one line, exit status 2 through the launcher) for the first key that is unknown (with the nearest known
name: ``network_g: ... unknown option 'netwrok_g'; did you mean 'network_g'?``), missing although
required, or of the wrong type (``network_g.num_feat: expected an integer, got 'eight'``).

Where the keys come from:

- :data:`KNOWN_KEYS`: one dict of known keys per section (top level, ``train``, ``val``, ``logger``,
  ``path``, ``dist_params``, ``datasets.<phase>``), taken from basicsr 1.4.2's ``train.py``,
  ``test.py``, ``utils/options.py``, ``models/*`` and ``data/*`` and from this package. Adding a key is
  one line here.
- :data:`DATASET_KEYS`: the keys of each of basicsr's datasets (by class name).
- A registered model, dataset or loss may declare more in a class attribute ``extra_option_keys``
  (collected along the class's bases): a model ``{'train': {'network_opt': 'list'}, 'val': {...}}`` (by
  section), a dataset its own keys ``{'degradation': 'dict', ...}``. Later models extend the schema so,
  without editing this file.
- Networks (``network_*``), losses (``train.*_opt``), optimizers (``train.optim_*``), schedulers and
  metrics are checked against the constructor (or function) of their registered ``type``: its parameter
  names, and for each the type that its annotation or its Google-style docstring (``num_feat (int):``)
  states, else the type of its default (an integer default accepts any number). A constructor with
  ``**kwargs`` accepts other names.

Keys are declared as in :mod:`acla_basicsr.option_spec`: an :class:`~acla_basicsr.option_spec.Option` (type,
default, range, meaning) or its type as a string (``int``, ``float|list``, ``int|auto``); a dict is a nested
section. ``~`` is accepted for every key that is not required (basicsr reads it as "unset").

Keys that other plugins add are allowed by the top-level option ``allow_unknown_options``: ``true`` (every
unknown key is reported as a warning on stderr instead of an error) or a list of dotted keys, where ``*``
stands for any one level (``[train.my_loss_opt, datasets.*.my_key]``).
"""
import difflib
import fnmatch
import inspect
import re
import sys

from acla_basicsr.option_spec import Option, check_value, registered_class, unknown_option
from acla_basicsr.errors import OptionError

# ---------------------------------------------------------------------------------------------- known keys
# Added by basicsr's parse_options / train_pipeline at run time (never needed in a file).
RUNTIME_KEYS = {'is_train': 'bool', 'dist': 'bool', 'rank': 'int', 'world_size': 'int', 'auto_resume': 'bool',
                'root_path': 'str'}
# Top-level keys of basicsr's RealESRGAN/RealESRNet models (second-order degradation on the fly).
REALESRGAN_TOP_KEYS = ('high_order_degradation', 'queue_size', 'gt_usm', 'l1_gt_usm', 'percep_gt_usm', 'gan_gt_usm',
                       'gt_size', 'resize_prob', 'resize_range', 'gaussian_noise_prob', 'noise_range',
                       'poisson_scale_range', 'gray_noise_prob', 'jpeg_range', 'second_blur_prob', 'resize_prob2',
                       'resize_range2', 'gaussian_noise_prob2', 'noise_range2', 'poisson_scale_range2',
                       'gray_noise_prob2', 'jpeg_range2')

DATASET_COMMON_KEYS = {
    'name': 'str', 'type': 'str', 'phase': 'str', 'scale': 'int',
    'dataroot_gt': 'str', 'dataroot_lq': 'str', 'meta_info_file': 'str', 'filename_tmpl': 'str',
    'io_backend': {'type': 'disk|lmdb|memcached', 'db_paths': 'list|str', 'client_keys': 'list|str',
                   'server_list_cfg': 'str', 'client_cfg': 'str', 'sys_path': 'str'},
    # data loader (basicsr/data/__init__.py build_dataloader, train.py)
    'batch_size_per_gpu': 'int', 'num_worker_per_gpu': 'int', 'use_shuffle': 'bool', 'dataset_enlarge_ratio': 'int',
    'prefetch_mode': 'cpu|cuda', 'num_prefetch_queue': 'int', 'pin_memory': 'bool', 'persistent_workers': 'bool',
    # this package (acla_basicsr/data/bad_images.py), for every dataset type
    'skip_bad_images': Option('bool', False, 'Training sets only: an image that cannot be read or decoded mid-run '
                              'is skipped (the next sample instead) with a warning in the log, instead of ending the '
                              'run with one line naming it.'),
}

KNOWN_KEYS = {
    '': {  # the top level
        'name': 'str', 'model_type': 'str', 'scale': 'int', 'num_gpu': 'int|auto', 'manual_seed': 'int',
        'datasets': 'dict', 'path': 'dict', 'train': 'dict', 'val': 'dict', 'logger': 'dict', 'dist_params': 'dict',
        'find_unused_parameters': 'bool', 'allow_unknown_options': 'bool|list',
        **RUNTIME_KEYS, **{k: 'any' for k in REALESRGAN_TOP_KEYS},
    },
    'train': {
        'total_iter': 'int', 'warmup_iter': 'int', 'ema_decay': 'float',
        'optim_g': 'dict', 'optim_d': 'dict', 'scheduler': 'dict',
        'pixel_opt': 'dict', 'perceptual_opt': 'dict', 'gan_opt': 'dict', 'ldl_opt': 'dict',
        'feature_matching_opt': 'dict',
        # basicsr's GAN, video and StyleGAN2 models
        'net_d_iters': 'int', 'net_d_init_iters': 'int', 'dcn_lr_mul': 'float', 'flow_lr_mul': 'float',
        'fix_flow': 'int', 'tsa_iter': 'int', 'lr_flow': 'float', 'mixing_prob': 'float', 'net_d_reg_every': 'int',
        'net_g_reg_every': 'int', 'path_reg_weight': 'float', 'r1_reg_weight': 'float', 'path_batch_shrink': 'int',
    },
    'val': {
        'val_freq': 'int', 'save_img': 'bool', 'suffix': 'str', 'pbar': 'bool', 'metrics': 'dict',
        'num_val_samples': 'int', 'center_frame_only': 'bool', 'flip_seq': 'bool',
    },
    'logger': {
        'print_freq': 'int', 'save_checkpoint_freq': 'int', 'use_tb_logger': 'bool',
        'wandb': {'project': 'str', 'resume_id': 'str'},
    },
    'path': {
        'resume_state': 'str', 'ignore_resume_networks': 'list|str',
        'pretrain_network_*': 'str', 'strict_load_*': 'bool', 'param_key_*': 'str',
        # set by parse_options
        'experiments_root': 'str', 'models': 'str', 'training_states': 'str', 'log': 'str', 'visualization': 'str',
        'results_root': 'str',
    },
    'dist_params': {'backend': 'nccl|gloo', 'port': 'int', 'timeout': 'float'},
    'datasets.*': DATASET_COMMON_KEYS,
}

# Keys that must be present (train, test): basicsr reads them with opt[...] and dies with a KeyError otherwise.
REQUIRED = {
    'train': {'': ('name', 'model_type', 'num_gpu', 'datasets', 'path', 'network_g', 'train', 'logger'),
              'train': ('total_iter', 'optim_g', 'scheduler'),
              'val': ('val_freq', 'save_img'),
              'logger': ('print_freq', 'save_checkpoint_freq', 'use_tb_logger'),
              'datasets.train': ('name', 'type', 'batch_size_per_gpu', 'num_worker_per_gpu'),
              'datasets.*': ('name', 'type')},
    'test': {'': ('name', 'model_type', 'num_gpu', 'datasets', 'path', 'network_g', 'val'),
             'val': ('save_img', ),
             'datasets.*': ('name', 'type')},
}

_FLOAT_IO = {'mean': 'list', 'std': 'list', 'color': 'str'}
_AUG = {'gt_size': 'int', 'use_hflip': 'bool', 'use_rot': 'bool'}
_REALESRGAN = {k: 'any' for k in (
    'blur_kernel_size', 'kernel_list', 'kernel_prob', 'blur_sigma', 'betag_range', 'betap_range', 'sinc_prob',
    'blur_kernel_size2', 'kernel_list2', 'kernel_prob2', 'blur_sigma2', 'betag_range2', 'betap_range2',
    'sinc_prob2', 'final_sinc_prob')}
_VIDEO = {'dataroot_flow': 'str', 'num_frame': 'int', 'interval_list': 'list', 'random_reverse': 'bool',
          'val_partition': 'str', 'test_mode': 'bool', 'flip_sequence': 'bool', 'cache_data': 'bool',
          'padding': 'str', 'use_duf_downsampling': 'bool'}
# basicsr 1.4.2's datasets, by class name (basicsr/data/*_dataset.py)
DATASET_KEYS = {
    'PairedImageDataset': {**_FLOAT_IO, **_AUG},
    'SingleImageDataset': dict(_FLOAT_IO),
    'FFHQDataset': {'mean': 'list', 'std': 'list', 'use_hflip': 'bool'},
    'RealESRGANDataset': {**_REALESRGAN, 'meta_info': 'str', 'use_hflip': 'bool', 'use_rot': 'bool'},
    'RealESRGANPairedDataset': {**_FLOAT_IO, **_AUG, 'meta_info': 'str'},
    'REDSDataset': {**_AUG, **_VIDEO}, 'REDSRecurrentDataset': {**_AUG, **_VIDEO},
    'Vimeo90KDataset': {**_AUG, **_VIDEO}, 'Vimeo90KRecurrentDataset': {**_AUG, **_VIDEO},
    'VideoTestDataset': dict(_VIDEO), 'VideoTestVimeo90KDataset': dict(_VIDEO), 'VideoTestDUFDataset': dict(_VIDEO),
    'VideoRecurrentTestDataset': dict(_VIDEO),
}

# ---------------------------------------------------------------------------------------------- type specs
def kinds_from_text(text):
    """Kinds (a spec) from a type's text: an annotation or a docstring type such as ``tuple[float] | None``."""
    text = text.strip().lower()
    if re.match(r'^(list|tuple|sequence|iterable|typing\.list|typing\.tuple)\b', text):
        return 'list'
    if re.match(r'^(dict|mapping)\b', text):
        return 'dict'
    mapping = {'int': 'int', 'float': 'float', 'number': 'float', 'bool': 'bool', 'str': 'str', 'list': 'list',
               'tuple': 'list', 'dict': 'dict', 'sequence': 'list'}
    words = re.findall(r'[a-z_]+', text)
    kinds = {mapping[w] for w in words if w in mapping}
    if not kinds or any(w not in mapping and w not in ('none', 'optional', 'union', 'tensor', 'torch', 'typing')
                        for w in words):
        return 'any'
    return '|'.join(sorted(kinds))


def _docstring_types(cls, function):
    """``{name: type text}`` from the ``name (type): ...`` lines of a function's and a class's docstrings."""
    types = {}
    for obj in (function, cls):
        doc = (inspect.getdoc(obj) or '') if obj is not None else ''
        for name, text in re.findall(r'^\s*(\w+) \(([^)]*)\):', doc, flags=re.M):
            types.setdefault(name, re.sub(r',\s*optional$', '', text.strip()))
    return types


def signature_schema(target, skip=('self', )):
    """Known keys of a constructor or function: ``({name: spec}, accepts_other_keys, required names)``."""
    function = target.__init__ if inspect.isclass(target) else target
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return {}, True, ()
    doc_types = _docstring_types(target if inspect.isclass(target) else None, function)
    keys, open_ended, required = {}, False, []
    for name, param in parameters.items():
        if name in skip:
            continue
        if param.kind == param.VAR_KEYWORD:
            open_ended = True
            continue
        if param.kind == param.VAR_POSITIONAL:
            continue
        if param.annotation is not param.empty:
            annotation = param.annotation if isinstance(param.annotation, str) else (
                getattr(param.annotation, '__name__', None) if isinstance(param.annotation, type)
                else str(param.annotation))
            spec = kinds_from_text(annotation)
        elif name in doc_types:
            spec = kinds_from_text(doc_types[name])
        elif param.default is not param.empty and param.default is not None:
            default = param.default
            spec = ('bool' if isinstance(default, bool) else 'float' if isinstance(default, (int, float)) else
                    'str' if isinstance(default, str) else 'list' if isinstance(default, (list, tuple)) else
                    'dict' if isinstance(default, dict) else 'any')
        else:
            spec = 'any'
        keys[name] = spec
        if param.default is param.empty:
            required.append(name)
    return keys, open_ended, tuple(required)


def scheduler_classes():
    """basicsr 1.4.2's schedulers by the ``train.scheduler.type`` that names them (``models/sr_model.py``)."""
    from basicsr.models import lr_scheduler
    return {'MultiStepLR': lr_scheduler.MultiStepRestartLR, 'MultiStepRestartLR': lr_scheduler.MultiStepRestartLR,
            'CosineAnnealingRestartLR': lr_scheduler.CosineAnnealingRestartLR}


def extra_option_keys(cls, section=None):
    """The ``extra_option_keys`` declared by ``cls`` and its bases (of one ``section`` for a model)."""
    keys = {}
    for base in reversed(getattr(cls, '__mro__', (cls, ))):
        declared = base.__dict__.get('extra_option_keys') or {}
        if section is not None:
            declared = declared.get(section) or {}
        keys.update(declared)
    return keys


# ---------------------------------------------------------------------------------------------- the walk
class SchemaChecker:
    """Walks one options dict; see the module docstring. ``warn`` receives the unknown keys that are allowed."""

    def __init__(self, opt, is_train, warn=None, required=True):
        self.opt = opt
        self.is_train = is_train
        self.required = REQUIRED['train' if is_train else 'test'] if required else {}
        allow = opt.get('allow_unknown_options')
        check_value(allow, KNOWN_KEYS['']['allow_unknown_options'], 'allow_unknown_options')
        self.allow_all = allow is True
        self.allowed = list(allow) if isinstance(allow, (list, tuple)) else []
        self.warn = warn or (lambda line: print(f'warning: {line}', file=sys.stderr, flush=True))

    # -------------------------------------------------------------- helpers
    def _join(self, where, key):
        return f'{where}.{key}' if where else str(key)

    def _unknown(self, where, key, known):
        path = self._join(where, key)
        if self.allow_all or any(fnmatch.fnmatchcase(path, p) or path.startswith(p + '.') for p in self.allowed):
            self.warn(f'{path}: unknown option, allowed by allow_unknown_options.')
            return
        raise unknown_option(where, key, known)

    @staticmethod
    def _lookup(known, key):
        if key in known:
            return known[key]
        for pattern, spec in known.items():
            if '*' in pattern and fnmatch.fnmatchcase(str(key), pattern):
                return spec
        return None

    def check_section(self, section, known, where, required=(), open_ended=False):
        """Check the keys of one mapping against ``known`` ({key: spec or nested dict})."""
        if section is None:
            return
        if not isinstance(section, dict):
            raise OptionError(f'{where}: expected a mapping of options, got {section!r}.')
        for key in section:  # unknown keys first: a misspelt key is also a missing one
            if self._lookup(known, key) is None and not open_ended:
                self._unknown(where, key, known)
        for key in required:
            if section.get(key) is None:
                raise OptionError(f"{where or 'options'}: missing required option '{key}'.")
        for key, spec in known.items():  # options declared required (an Option of a model's section)
            if getattr(spec, 'required', False) and section.get(key) is None:
                spec.check(None, self._join(where, key))
        for key, value in section.items():
            spec = self._lookup(known, key)
            if isinstance(spec, dict):
                self.check_section(value, spec, self._join(where, key))
            elif spec is not None:
                check_value(value, spec, self._join(where, key))

    @staticmethod
    def _registered(registry, name, where):
        return registered_class(registry, name, f'{where}.type')

    def check_constructor(self, section, target, where, extra=None, skip=('self', ), closed=False):
        """Check a ``{type: ..., **kwargs}`` mapping against the constructor or function ``target``.

        ``closed``: reject names that the signature does not list even when it takes ``**kwargs``.
        """
        keys, open_ended, required = signature_schema(target, skip)
        open_ended = open_ended and not closed
        keys = {**keys, 'type': 'str', **(extra or {})}
        if inspect.isclass(target):
            keys.update(extra_option_keys(target))
        self.check_section(section, keys, where, required=required, open_ended=open_ended)

    # -------------------------------------------------------------- sections
    def check(self):
        from basicsr.utils.registry import MODEL_REGISTRY
        opt = self.opt
        if not isinstance(opt, dict):
            raise OptionError(f'options: expected a mapping of options, got {opt!r}.')
        model_cls = None
        if isinstance(opt.get('model_type'), str) and opt['model_type'] in MODEL_REGISTRY:
            model_cls = MODEL_REGISTRY.get(opt['model_type'])
        top = dict(KNOWN_KEYS[''], **{'network_g': 'dict', 'network_d': 'dict', 'network_*': 'dict'})
        top.update(extra_option_keys(model_cls, '') if model_cls else {})
        self.check_section(opt, top, '', required=self.required.get('', ()))
        for key in [k for k in opt if str(k).startswith('network_')]:
            self.check_network(opt[key], key)
        for name in ('train', 'val', 'logger', 'path', 'dist_params'):
            if name == 'train' and not self.is_train:
                continue
            known = dict(KNOWN_KEYS[name], **(extra_option_keys(model_cls, name) if model_cls else {}))
            if name == 'path':  # the names of this config's networks, for the suggestions
                for net in [str(k)[len('network_'):] for k in opt if str(k).startswith('network_')]:
                    known.update({f'pretrain_network_{net}': 'str', f'strict_load_{net}': 'bool',
                                  f'param_key_{net}': 'str'})
            self.check_section(opt.get(name), known, name, required=self.required.get(name, ()))
        if self.is_train:
            self.check_train(opt.get('train') or {})
        self.check_metrics((opt.get('val') or {}).get('metrics'))
        datasets = opt.get('datasets') or {}
        if not isinstance(datasets, dict):
            raise OptionError(f'datasets: expected a mapping of phases (train, val, ...), got {datasets!r}.')
        for phase, dataset_opt in datasets.items():
            if self.is_train and str(phase).split('_')[0] not in ('train', 'val'):  # basicsr's train.py rejects others
                close = difflib.get_close_matches(str(phase).split('_')[0], ['train', 'val'], n=1, cutoff=0.6)
                hint = f"did you mean '{close[0]}'?" if close else 'use train, val or val_<n>.'
                raise OptionError(f"datasets: unknown phase '{phase}' in a training config; {hint}")
            self.check_dataset(dataset_opt, phase)

    def check_network(self, net_opt, where):
        from basicsr.utils.registry import ARCH_REGISTRY
        if not isinstance(net_opt, dict):
            raise OptionError(f'{where}: expected a mapping with the network type and arguments, got {net_opt!r}.')
        cls = self._registered(ARCH_REGISTRY, net_opt.get('type'), where)
        self.check_constructor(net_opt, cls, where)

    def check_loss(self, loss_opt, where, extra=None):
        from basicsr.utils.registry import LOSS_REGISTRY
        if not isinstance(loss_opt, dict):
            raise OptionError(f'{where}: expected a mapping with the loss type and arguments, got {loss_opt!r}.')
        cls = self._registered(LOSS_REGISTRY, loss_opt.get('type'), where)
        self.check_constructor(loss_opt, cls, where, extra=extra)

    def check_train(self, train):
        import torch
        for key, value in train.items():
            if key.endswith('_opt') and isinstance(value, dict):
                self.check_loss(value, f'train.{key}')
            elif key.startswith('optim_') and isinstance(value, dict):
                where = f'train.{key}'
                optim_type = value.get('type')
                optimizer = getattr(torch.optim, optim_type, None) if isinstance(optim_type, str) else None
                if not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)):
                    raise OptionError(f"{where}.type: unknown optimizer {optim_type!r}; use Adam (basicsr 1.4.2's "
                                      'models build Adam only).')
                self.check_constructor(value, optimizer, where, skip=('self', 'params'))
        network_opt = train.get('network_opt')
        if isinstance(network_opt, list):
            for index, value in enumerate(network_opt):
                self.check_loss(value, f'train.network_opt[{index}]', extra={'name': 'str'})
        scheduler = train.get('scheduler')
        if isinstance(scheduler, dict):
            classes = scheduler_classes()
            kind = scheduler.get('type')
            if kind not in classes:
                raise OptionError(f"train.scheduler.type: unknown scheduler {kind!r}; use one of "
                                  f"{', '.join(classes)}.")
            self.check_constructor(scheduler, classes[kind], 'train.scheduler', skip=('self', 'optimizer'))

    def check_metrics(self, metrics):
        from basicsr.utils.registry import METRIC_REGISTRY
        if metrics is None:
            return
        if not isinstance(metrics, dict):
            raise OptionError(f'val.metrics: expected a mapping of metric names to options, got {metrics!r}.')
        for name, metric_opt in metrics.items():
            where = f'val.metrics.{name}'
            if not isinstance(metric_opt, dict):
                raise OptionError(f'{where}: expected a mapping such as {{type: calculate_psnr, crop_border: 2}}.')
            function = self._registered(METRIC_REGISTRY, metric_opt.get('type'), where)
            # basicsr's metric functions take **kwargs only to swallow 'better' (basicsr/metrics/__init__.py)
            self.check_constructor(metric_opt, function, where, extra={'better': 'higher|lower'},
                                   skip=('img', 'img2'), closed=True)

    def check_dataset(self, dataset_opt, phase):
        from basicsr.utils.registry import DATASET_REGISTRY
        where = f'datasets.{phase}'
        if not isinstance(dataset_opt, dict):
            raise OptionError(f'{where}: expected a mapping of dataset options, got {dataset_opt!r}.')
        cls = self._registered(DATASET_REGISTRY, dataset_opt.get('type'), where)
        known = dict(DATASET_COMMON_KEYS)
        declared = extra_option_keys(cls)
        basicsr_keys = DATASET_KEYS.get(cls.__name__) if cls.__module__.startswith('basicsr.') else None
        known.update(basicsr_keys or {})
        known.update(declared)
        # a plugin's dataset that declares nothing: its own keys cannot be known, only the common ones are checked
        open_ended = basicsr_keys is None and not declared
        required = self.required.get(where) or self.required.get('datasets.*', ())
        self.check_section(dataset_opt, known, where, required=required, open_ended=open_ended)


def check_schema(opt, is_train=None, warn=None, required=True):
    """Check the keys and value types of an options dict (raw YAML or parsed by basicsr).

    Args:
        opt (dict): The options.
        is_train (bool | None): Whether a training run reads them. Default: ``opt['is_train']``, else True.
        warn (callable | None): Called with one line per unknown key that ``allow_unknown_options`` allows.
            Default: print ``warning: ...`` to stderr.
        required (bool): Whether to require the keys of :data:`REQUIRED` (the launcher checks them in the
            options file before basicsr parses it; ``check_options`` also serves partial dicts). Default: True.

    Raises:
        OptionError: naming the first unknown, missing or mistyped key.
    """
    if is_train is None:
        is_train = opt.get('is_train', True) if isinstance(opt, dict) else True
    SchemaChecker(opt, is_train, warn, required).check()
