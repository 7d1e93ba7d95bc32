"""Options files: reading one, the project root, and relative paths resolved against that root."""
import os
import os.path as osp

import yaml

from acla_basicsr.errors import OptionError


def read_options_file(path):
    """An options YAML file as a dict; a one-line :class:`OptionError` for a missing, invalid or non-mapping file."""
    if os.path.isdir(path):
        raise OptionError(f'-opt: {path} is a folder; give the path of an options YAML file.')
    if not os.path.isfile(path):
        raise OptionError(f'-opt: {path} does not exist; give the path of an options YAML file.')
    try:
        with open(path) as f:
            opt = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise OptionError(f'-opt: {path} is not valid YAML ({str(error).splitlines()[0]}); fix the file.') from None
    if not isinstance(opt, dict):
        raise OptionError(f'-opt: {path} is not a YAML mapping of options; see options/train/ for examples.')
    return opt


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
