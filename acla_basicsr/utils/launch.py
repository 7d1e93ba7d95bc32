"""Run basicsr's train or test pipeline with this project's fixes, checks and error messages."""
import os
import os.path as osp
import re
import sys

import yaml

from acla_basicsr import compat
from acla_basicsr.utils.divergence import DivergenceError
from acla_basicsr.utils.options import OptionError, check_options
from acla_basicsr.utils.options_schema import check_schema


def normalise_argv(argv):
    """Accept torch.distributed.launch's ``--local-rank`` beside basicsr's ``--local_rank``."""
    return [re.sub(r'^--local-rank', '--local_rank', arg) for arg in argv]


def read_options_file(path):
    """An options YAML file as a dict; a one-line :class:`OptionError` for a missing, invalid or non-mapping file."""
    if not os.path.isfile(path):
        raise OptionError(f'-opt: {path} does not exist; give the path of an options YAML file.')
    try:
        with open(path) as f:
            opt = yaml.safe_load(f)
    except yaml.YAMLError as error:
        raise OptionError(f'-opt: {path} is not valid YAML ({str(error).splitlines()[0]}); fix the file.') from None
    if not isinstance(opt, dict):
        raise OptionError(f'-opt: {path} is not a YAML mapping of options; see options/train/ for examples.')
    return opt


def _raw_options_from_argv(argv):
    """The ``-opt`` file as YAML read it (before basicsr's ``parse_options``), or None without ``-opt``."""
    if '-opt' not in argv or argv.index('-opt') + 1 >= len(argv):
        return None
    return read_options_file(argv[argv.index('-opt') + 1])


def _dist_params_from_argv(argv):
    """Read ``dist_params`` from the ``-opt`` file, for the pytorch launcher (see compat.init_dist)."""
    opt = _raw_options_from_argv(argv) or {}
    return dict(opt.get('dist_params') or {}) if isinstance(opt.get('dist_params'), dict) else {}


def resolve_relative_paths(opt, root_path):
    """Resolve relative data and weight paths against the repository root, as if run from there.

    basicsr reads them relative to the working directory; a path that does not exist there but
    does under ``root_path`` is made absolute, so that a run started elsewhere finds its data.
    """
    def resolve(value):
        if isinstance(value, str) and value and not osp.isabs(value) and not osp.exists(value) \
                and osp.exists(osp.join(root_path, value)):
            return osp.join(root_path, value)
        return value

    for dataset_opt in opt.get('datasets', {}).values():
        for key in list(dataset_opt):
            if key.startswith('dataroot') or key == 'meta_info_file':
                dataset_opt[key] = resolve(dataset_opt[key])
    for key in list(opt.get('path', {})):
        if key.startswith('pretrain_network') or key == 'resume_state':
            opt['path'][key] = resolve(opt['path'][key])


def _resumable_training(pipeline, run):
    """Replacements of ``train_pipeline``'s ``load_resume_state`` and ``EnlargedSampler`` for an exact resume.

    The state that the run resumes from is handed to the sampler, which skips the batches of the resumed
    epoch that were already used and restores the saved random states (:mod:`acla_basicsr.utils.resume`).
    """
    from acla_basicsr.utils.resume import ResumableSampler
    load_resume_state = pipeline.__globals__['load_resume_state']

    def load_and_remember(opt):
        run['resume_state'] = load_resume_state(opt)
        return run['resume_state']

    def make_sampler(dataset, num_replicas, rank, ratio=1):
        opt = run['opt']
        batch_size = opt['datasets']['train']['batch_size_per_gpu']
        if not opt['dist'] and opt['num_gpu'] > 1:  # basicsr's build_dataloader: one batch over every GPU
            batch_size *= opt['num_gpu']
        return ResumableSampler(dataset, num_replicas, rank, ratio, batch_size=batch_size,
                                resume_state=run.get('resume_state'))

    return {'load_resume_state': load_and_remember, 'EnlargedSampler': make_sampler}


def run_pipeline(pipeline, root_path):
    """Run ``basicsr.train.train_pipeline`` or ``basicsr.test.test_pipeline`` from ``root_path``.

    The options are checked right after basicsr parses them (:func:`check_options`); a wrong
    option ends the run with one line on stderr and exit status 2, before anything is written.
    A training run that diverges ends the same way (:class:`~acla_basicsr.utils.divergence.DivergenceError`),
    and a resumed training continues exactly as an uninterrupted one (:mod:`acla_basicsr.utils.resume`).
    """
    sys.argv = normalise_argv(sys.argv)
    parse_options = pipeline.__globals__['parse_options']
    run = {}

    def parse_and_check(*args, **kwargs):
        raw = _raw_options_from_argv(sys.argv[1:])
        if raw is not None:  # parse_options itself dies with a KeyError on a missing or misspelt section
            check_schema(raw, is_train=kwargs.get('is_train', args[1] if len(args) > 1 else True),
                         warn=lambda line: None)  # warned once, after parsing
        from basicsr.utils import set_random_seed
        opt, parsed = parse_options(*args, **kwargs)
        # basicsr seeds before it applies --force_yml, so 'manual_seed=S' there would reach only the
        # data loader workers; seeding again (nothing random happened in between) makes it seed the run
        set_random_seed(opt['manual_seed'] + opt['rank'])
        resolve_relative_paths(opt, root_path)
        check_options(opt)
        run['opt'] = opt
        return opt, parsed

    replacements = {'parse_options': parse_and_check}
    if 'EnlargedSampler' in pipeline.__globals__:  # the training pipeline
        replacements.update(_resumable_training(pipeline, run))
    originals = {name: pipeline.__globals__[name] for name in replacements}
    try:
        compat.DIST_PARAMS.clear()
        compat.DIST_PARAMS.update(_dist_params_from_argv(sys.argv[1:]))
        pipeline.__globals__.update(replacements)
        pipeline(root_path)
    except (OptionError, DivergenceError) as error:
        print(f'error: {error}', file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        pipeline.__globals__.update(originals)


def project_root():
    """Where ``experiments/``, ``results/`` and ``tb_logger/`` go, and relative data paths are resolved.

    The source checkout that holds this package (a folder with ``setup.py`` and ``options/``), as for
    ``python acla_basicsr/train.py`` and an editable install; the working directory for a package installed
    with ``pip install .`` (never site-packages).
    """
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    if osp.isfile(osp.join(root, 'setup.py')) and osp.isdir(osp.join(root, 'options')):
        return root
    return os.getcwd()


def console_train():
    """The console command ``acla-train``: ``acla_basicsr/train.py`` with :func:`project_root`."""
    main('train', project_root())


def console_test():
    """The console command ``acla-test``: ``acla_basicsr/test.py`` with :func:`project_root`."""
    main('test', project_root())


def main(kind, root_path):
    """Entry point of ``acla_basicsr/train.py`` (kind 'train') and ``acla_basicsr/test.py`` ('test')."""
    import acla_basicsr  # noqa: F401  (applies the compat fixes and registers the project's classes)
    if kind == 'train':
        from basicsr.train import train_pipeline as pipeline
    else:
        from basicsr.test import test_pipeline as pipeline
    run_pipeline(pipeline, root_path)
