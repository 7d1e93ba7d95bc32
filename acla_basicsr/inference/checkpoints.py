"""Checkpoints that describe themselves, and where a checkpoint comes from: a path, a URL or a zoo name.

What a checkpoint says about itself: the ``network_g`` options that build its network (and the scale, task
and colour of the options it was trained with) are stored in the state dict's ``_metadata`` under
:data:`~acla_basicsr.inference.detect.METADATA_KEY`, one format for every ``net_g_*.pth`` written by training
(``RestorationModel.save_network``: ``params`` and ``params_ema``, the search's supernets included) and every
published zoo file (:mod:`acla_basicsr.zoo.published`)::

    state_dict._metadata['acla_basicsr:network_g'] = {'network_g': {'type': 'ACLAEDSR', ...},
                                                      'scale': 2, 'task': 'super-resolution x2 (...)', 'colour': 'rgb'}

torch keeps ``_metadata`` through ``torch.save`` and ``torch.load`` (``weights_only`` too), and
``load_state_dict`` reads only the entries named after module paths (no module path has a colon), so the file
stays a plain state dict that basicsr 1.4.2's ``load_network`` loads strictly; with it,
:func:`~acla_basicsr.inference.network.load_network` and ``acla-restore`` need no options file.

Where a checkpoint comes from (:func:`resolve_checkpoint`): a local file; a URL, downloaded once with basicsr's
``load_file_from_url`` and checked against the ``-<sha256[:8]>`` suffix of its name (a bad download is
deleted); or the name of a network of ``model_zoo/`` (``demo_ACLA_SRx2`` for
``model_zoo/demo_ACLA_SRx2-e016b1c8.pth``), its hash checked too.
"""
import glob
import hashlib
import json
import os
import os.path as osp
import re
from collections import OrderedDict
from urllib.parse import urlparse

from acla_basicsr.config.files import project_root
from acla_basicsr.errors import OptionError
from .detect import METADATA_KEY

#: ``<name>-<8 hex digits>.pth``: the zoo's file names.
ZOO_NAME = re.compile(r'^(?P<name>.+)-(?P<sha8>[0-9a-f]{8})\.(?:pth|safetensors|md)$')
CHECKPOINT_EXTENSIONS = ('.pth', '.pt', '.ckpt', '.safetensors')


# ------------------------------------------------------------------------------------ metadata


def described_state_dict(state_dict, network_g, **info):
    """A plain CPU state dict with ``network_g`` (and ``info``: scale, task, colour) in its ``_metadata``.

    The state dict's own ``_metadata`` (torch's module versions) is kept; entries of ``info`` that are None
    are left out. Values are stored as plain types (JSON round trip), which ``torch.load(weights_only=True)``
    accepts.
    """
    params = OrderedDict((k, v.detach().cpu().contiguous()) for k, v in state_dict.items())
    metadata = OrderedDict(getattr(state_dict, '_metadata', None) or {})
    entry = {'network_g': network_g, **{k: v for k, v in info.items() if v is not None}}
    metadata[METADATA_KEY] = json.loads(json.dumps(entry))
    params._metadata = metadata
    return params


def stored_description(state_dict):
    """What a state dict says about itself (``{'network_g': ..., 'scale': ..., ...}``), or None."""
    entry = (getattr(state_dict, '_metadata', None) or {}).get(METADATA_KEY)
    return dict(entry) if isinstance(entry, dict) and isinstance(entry.get('network_g'), dict) else None


def task_of(options):
    """A short task description from training options: scale or the training degradation."""
    scale = options.get('scale', 1)
    train = ((options.get('datasets') or {}).get('train') or {})
    degradation = train.get('degradation') or {}
    kind = degradation.get('type')
    if scale and scale > 1:
        return f'super-resolution x{scale} (MATLAB bicubic downscaling)'
    if kind == 'gaussian_noise':
        return f"colour denoising, Gaussian noise sigma {degradation.get('sigma')}"
    if kind == 'jpeg':
        return f"JPEG artifact reduction, quality {degradation.get('quality')} ({train.get('color', 'rgb')} images)"
    if kind == 'mosaic':
        return f"demosaicing, {degradation.get('pattern', 'RGGB')} Bayer mosaic"
    return 'image restoration'


def training_description(options):
    """``{'scale', 'task', 'colour'}`` of training options, stored beside their ``network_g``.

    ``colour`` is the training set's ``color`` (rgb, y, gray) where it says, else ``gray`` for a network of one
    input channel and ``rgb`` for three.
    """
    network_g = options.get('network_g') or {}
    train = ((options.get('datasets') or {}).get('train') or {})
    colour = train.get('color') or {1: 'gray', 3: 'rgb'}.get(network_g.get('num_in_ch', 3))
    return {'scale': options.get('scale', network_g.get('upscale')), 'task': task_of(options), 'colour': colour}


# ------------------------------------------------------------------------------------ hashes and names


def file_sha256(path, chunk=2**20):
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


def zoo_parts(path):
    """``(name, sha8)`` of a zoo file name ``<name>-<sha8>.pth``, or None when the name has no hash suffix."""
    match = ZOO_NAME.match(osp.basename(urlparse(str(path)).path))
    return (match.group('name'), match.group('sha8')) if match else None


def check_hash_suffix(path):
    """Raise :class:`OptionError` unless the file's sha256 starts with the ``-<sha8>`` suffix of its name.

    The suffix is the ``.pth``'s hash; a ``.safetensors`` beside it carries that hash in its metadata
    (``sha256_pth``), which is checked instead (the model card lists the ``.safetensors``'s own sha256).

    Returns:
        str: The full sha256 of the ``.pth``.
    """
    parts = zoo_parts(path)
    if parts is None:
        raise OptionError(f'{path}: the name has no -<sha256[:8]> suffix (<name>-<8 hex digits>.pth) to check.')
    if str(path).endswith('.safetensors'):
        from safetensors import safe_open
        with safe_open(path, framework='pt') as f:
            sha = (f.metadata() or {}).get('sha256_pth', '')
    else:
        sha = file_sha256(path)
    if not sha.startswith(parts[1]):
        raise OptionError(f'{path}: sha256 {sha[:8]}... does not match the -{parts[1]} of its name; the file is '
                          'damaged or not the published one (download it again).')
    return sha


def zoo_folders():
    """The folders searched for zoo names: ``model_zoo/`` of the working directory and of the checkout."""
    folders = [osp.abspath('model_zoo'), osp.join(project_root(), 'model_zoo')]
    return [v for i, v in enumerate(folders) if osp.isdir(v) and v not in folders[:i]]


def zoo_models():
    """``{name: path}`` of every ``<name>-<sha8>.pth`` in :func:`zoo_folders` (the first folder wins)."""
    found = {}
    for folder in zoo_folders():
        for path in sorted(glob.glob(osp.join(folder, '*.pth'))):
            parts = zoo_parts(path)
            if parts:
                found.setdefault(parts[0], path)
    return found


def is_zoo_name(text):
    """Whether ``text`` reads as a zoo name (no folder, no URL, no checkpoint extension) rather than a path."""
    text = str(text)
    return bool(text) and '/' not in text and os.sep not in text and ':' not in text \
        and not text.lower().endswith(CHECKPOINT_EXTENSIONS + ('.yml', '.yaml'))


def find_zoo_model(name, option='-n'):
    """The path of the zoo network ``name``, its hash checked; one line listing the known names if unknown."""
    models = zoo_models()
    if name not in models:
        where = ' or '.join(zoo_folders()) or 'model_zoo/ (no such folder here)'
        known = ', '.join(sorted(models)) or 'none'
        raise OptionError(f'{option}: no network named {name!r} in {where}; known names: {known}.')
    check_hash_suffix(models[name])
    return models[name]


def resolve_checkpoint(source, option='--model', model_dir=None, check_hash=True, progress=True):
    """The local path of a checkpoint given as a path, a URL or a zoo name.

    Args:
        source (str): A file; a URL (``https://``, ``file://``, ...) of a ``<name>-<sha8>.pth``; or the name of
            a network of ``model_zoo/`` (``demo_ACLA_SRx2``).
        option (str): The option that named it, for the messages. Default: '--model'.
        model_dir (str | None): Download folder of URLs; None: torch hub's ``checkpoints`` folder. Default: None.
        check_hash (bool): Check a downloaded or named zoo file against its ``-<sha8>`` suffix. Default: True.
        progress (bool): Show the download progress. Default: True.

    Returns:
        str: A path to a local file.

    Raises:
        OptionError: A missing file, an unknown name, a URL without a hash suffix, a hash mismatch.
    """
    text = os.fspath(source)
    scheme = urlparse(text).scheme
    if len(scheme) > 1:  # not a Windows drive letter
        from basicsr.utils.download_util import load_file_from_url
        if check_hash and zoo_parts(text) is None:
            raise OptionError(f'{option}: {text}: the name has no -<sha256[:8]> suffix to check; give a zoo URL.')
        target = osp.join(model_dir, osp.basename(urlparse(text).path)) if model_dir else None
        existed = bool(target) and osp.exists(target)
        try:
            path = load_file_from_url(text, model_dir=model_dir, progress=progress)
        except Exception as error:  # urllib's URLError, HTTPError, OSError, ValueError ...
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise OptionError(f'{option}: cannot download {text} ({reason}); check the URL, or download the file '
                              'and give its path.') from None
        if check_hash:
            try:
                check_hash_suffix(path)
            except OptionError:
                if not existed:
                    os.remove(path)
                raise
        return path
    if osp.isfile(text):
        return text
    if is_zoo_name(text) and not osp.exists(text):
        models = zoo_models()
        return models[text] if text in models and not check_hash else find_zoo_model(text, option)
    what = 'is a folder' if osp.isdir(text) else 'does not exist'
    raise OptionError(f'{option}: {text} {what}; give a .pth file written by training '
                      '(experiments/<name>/models/net_g_*.pth), a zoo name or a URL.')
