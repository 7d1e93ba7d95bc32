"""Published networks: weights-only files named by their hash, and loading them by path or URL.

As BasicSR's model zoo: a published file holds the parameters only, ``{'params': state_dict}`` (or
``{'params_ema': ...}``), and is named ``<name>-<sha256[:8]>.pth``, the suffix being the first 8 hex digits
of the file's own sha256, so that a download can be checked against its name (as torch.hub's
``check_hash``). A ``.safetensors`` copy of the same tensors sits beside it (the ``network_g`` options and
the parameter key in its string metadata), and the model card ``<name>-<sha8>.md``
(:mod:`acla_basicsr.zoo.card`).

The ``network_g`` options are also stored in the state dict's ``_metadata`` under
:data:`~acla_basicsr.inference.detect.METADATA_KEY`: torch keeps that attribute through ``torch.save`` and
``torch.load`` (``weights_only`` too) and ``load_state_dict`` ignores keys that are not module paths, so the
file loads strictly into the network with basicsr's ``load_network`` and needs no options file with
:func:`load_zoo_model` or spandrel.
"""
import hashlib
import io
import json
import os
import os.path as osp
import re
from collections import OrderedDict
from urllib.parse import urlparse

import torch

from acla_basicsr import fileio
from acla_basicsr.inference.detect import METADATA_KEY, network_options
from acla_basicsr.errors import OptionError

#: ``<name>-<8 hex digits>.pth``: the zoo's file names.
ZOO_NAME = re.compile(r'^(?P<name>.+)-(?P<sha8>[0-9a-f]{8})\.(?:pth|safetensors|md)$')


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


def published_state_dict(state_dict, network_g):
    """A plain CPU state dict with ``network_g`` in its ``_metadata`` (see the module docstring)."""
    params = OrderedDict((k, v.detach().cpu().contiguous()) for k, v in state_dict.items())
    metadata = OrderedDict(getattr(state_dict, '_metadata', None) or {})
    metadata[METADATA_KEY] = {'network_g': json.loads(json.dumps(network_g))}  # plain types only
    params._metadata = metadata
    return params


def write_published(state_dict, network_g, out_dir, name, param_key='params'):
    """Write ``<out_dir>/<name>-<sha8>.pth`` and ``.safetensors``; each through a temporary name.

    The ``.pth`` is ``{param_key: state_dict}`` (weights only); ``torch.save`` output is deterministic, so
    publishing the same weights twice gives the same name.

    Returns:
        tuple[str, str, str]: Paths of the ``.pth`` and the ``.safetensors``, and the ``.pth``'s sha256.
    """
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    params = published_state_dict(state_dict, network_g)
    buffer = io.BytesIO()  # torch.save names the archive's root after the file: a buffer keeps it fixed
    torch.save({param_key: params}, buffer)
    data = buffer.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    pth = osp.join(out_dir, f'{name}-{sha[:8]}.pth')

    fileio.write_bytes(pth, data)
    metadata = {'network_g': json.dumps(network_g), 'param_key': param_key, 'sha256_pth': sha}
    safetensors = osp.join(out_dir, f'{name}-{sha[:8]}.safetensors')
    fileio.atomic_write(safetensors, lambda tmp: save_file(dict(params), tmp, metadata=metadata))
    return pth, safetensors, sha


def read_state_dict(path, param_key=None):
    """``(state_dict, param_key)`` of a published ``.pth`` or ``.safetensors`` (CPU tensors).

    For ``.safetensors`` the ``network_g`` of its metadata is put into the state dict's ``_metadata``.
    """
    if str(path).endswith('.safetensors'):
        from safetensors import safe_open
        with safe_open(path, framework='pt') as f:
            metadata = f.metadata() or {}
            state = OrderedDict((k, f.get_tensor(k)) for k in f.keys())
        if 'network_g' in metadata:
            state._metadata = {METADATA_KEY: {'network_g': json.loads(metadata['network_g'])}}
        return state, metadata.get('param_key', 'params')
    from acla_basicsr.inference import load_state_dict
    return load_state_dict(path, param_key, return_key=True)


def load_zoo_model(url_or_path, network_g=None, model_dir=None, check_hash=True, device='cpu', progress=True):
    """Load a published network from a path or URL, checking the file against its ``-<sha8>`` name.

    URLs (``https://``, ``file://``, ...) are downloaded once with basicsr's ``load_file_from_url`` into
    ``model_dir`` (default: torch hub's ``checkpoints`` folder); a download whose sha256 does not match its
    name is deleted and reported.

    Example::

        from acla_basicsr.zoo.published import load_zoo_model
        net = load_zoo_model('https://github.com/<owner>/<repo>/releases/download/v0.1/ACLA_SRx2-1a2b3c4d.pth')

    Args:
        url_or_path (str): A URL or a local ``<name>-<sha8>.pth`` / ``.safetensors``.
        network_g (dict | str | None): The network options (a ``network_g`` dict, an options file or dict);
            None: those stored in the file, else detected from its tensors
            (:func:`~acla_basicsr.inference.detect.network_options`). Default: None.
        model_dir (str | None): Download folder. Default: None.
        check_hash (bool): Check the sha256 against the name's suffix. Default: True.
        device (str | torch.device): Where to put the network. Default: 'cpu'.
        progress (bool): Show the download progress. Default: True.

    Returns:
        nn.Module: The network in ``eval()`` mode.

    Raises:
        OptionError: A name without a hash suffix, a hash mismatch, weights that do not fit.
    """
    from acla_basicsr.inference import build_network, load_network
    scheme = urlparse(str(url_or_path)).scheme
    path = str(url_or_path)
    if len(scheme) > 1:  # not a Windows drive letter
        from basicsr.utils.download_util import load_file_from_url
        if check_hash and zoo_parts(path) is None:
            raise OptionError(f'{url_or_path}: the name has no -<sha256[:8]> suffix to check; give a zoo URL.')
        existed = osp.exists(osp.join(model_dir, osp.basename(urlparse(path).path))) if model_dir else False
        path = load_file_from_url(path, model_dir=model_dir, progress=progress)
        if check_hash:
            try:
                check_hash_suffix(path)
            except OptionError:
                if not existed:
                    os.remove(path)
                raise
    elif check_hash:
        check_hash_suffix(path)
    state, param_key = read_state_dict(path)
    if network_g is None:
        try:
            network_g = network_options(state)
        except ValueError as error:
            raise OptionError(f'{path}: {error}') from None
    if str(path).endswith('.safetensors'):  # load_network reads .pth files
        net = build_network(network_g)
        net.load_state_dict(state, strict=True)
        return net.to(device).eval()
    return load_network(network_g, path, param_key=param_key, strict=True, device=device)

