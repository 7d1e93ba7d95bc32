"""Run basicsr's train or test pipeline with this project's fixes, checks and error messages."""
import os
import os.path as osp
import re
import sys

import yaml

from acla_basicsr import compat
from acla_basicsr.utils.options import OptionError, check_options


def normalise_argv(argv):
    """Accept torch.distributed.launch's ``--local-rank`` beside basicsr's ``--local_rank``."""
    return [re.sub(r'^--local-rank', '--local_rank', arg) for arg in argv]


def _dist_params_from_argv(argv):
    """Read ``dist_params`` from the ``-opt`` file, for the pytorch launcher (see compat.init_dist)."""
    if '-opt' not in argv or argv.index('-opt') + 1 >= len(argv):
        return {}
    path = argv[argv.index('-opt') + 1]
    if not os.path.isfile(path):
        raise OptionError(f'-opt: {path} does not exist; give the path of an options YAML file.')
    try:
        with open(path) as f:
            opt = yaml.safe_load(f)
    except yaml.YAMLError as error:
        raise OptionError(f'-opt: {path} is not valid YAML ({str(error).splitlines()[0]}); fix the file.') from None
    if not isinstance(opt, dict):
        raise OptionError(f'-opt: {path} is not a YAML mapping of options; see options/train/ for examples.')
    return dict(opt.get('dist_params') or {})


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


def run_pipeline(pipeline, root_path):
    """Run ``basicsr.train.train_pipeline`` or ``basicsr.test.test_pipeline`` from ``root_path``.

    The options are checked right after basicsr parses them (:func:`check_options`); a wrong
    option ends the run with one line on stderr and exit status 2, before anything is written.
    """
    sys.argv = normalise_argv(sys.argv)
    parse_options = pipeline.__globals__['parse_options']

    def parse_and_check(*args, **kwargs):
        from basicsr.utils import set_random_seed
        opt, parsed = parse_options(*args, **kwargs)
        # basicsr seeds before it applies --force_yml, so 'manual_seed=S' there would reach only the
        # data loader workers; seeding again (nothing random happened in between) makes it seed the run
        set_random_seed(opt['manual_seed'] + opt['rank'])
        resolve_relative_paths(opt, root_path)
        check_options(opt)
        return opt, parsed

    try:
        compat.DIST_PARAMS.clear()
        compat.DIST_PARAMS.update(_dist_params_from_argv(sys.argv[1:]))
        pipeline.__globals__['parse_options'] = parse_and_check
        pipeline(root_path)
    except OptionError as error:
        print(f'error: {error}', file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        pipeline.__globals__['parse_options'] = parse_options


def main(kind, root_path):
    """Entry point of ``acla_basicsr/train.py`` (kind 'train') and ``acla_basicsr/test.py`` ('test')."""
    import acla_basicsr  # noqa: F401  (applies the compat fixes and registers the project's classes)
    if kind == 'train':
        from basicsr.train import train_pipeline as pipeline
    else:
        from basicsr.test import test_pipeline as pipeline
    run_pipeline(pipeline, root_path)
