"""Published networks: weights-only files named by their hash, and loading them by path or URL.

As BasicSR's model zoo: a published file holds the parameters only, ``{'params': state_dict}`` (or
``{'params_ema': ...}``), and is named ``<name>-<sha256[:8]>.pth``, the suffix being the first 8 hex digits
of the file's own sha256, so that a download can be checked against its name (as torch.hub's
``check_hash``). A ``.safetensors`` copy of the same tensors sits beside it (the ``network_g`` options and
the parameter key in its string metadata), and the model card ``<name>-<sha8>.md``
(:mod:`acla_basicsr.zoo.card`). :func:`write_hub_folder` gathers them into a folder to upload to the Hugging
Face Hub.

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
import shutil

import torch

from acla_basicsr import fileio
from acla_basicsr.errors import OptionError
from acla_basicsr.inference.checkpoints import (ZOO_NAME, check_hash_suffix, described_state_dict,  # noqa: F401
                                                file_sha256, resolve_checkpoint, zoo_parts)
from acla_basicsr.inference.detect import network_options
from acla_basicsr.inference.network import load_network, load_state_dict


def write_published(state_dict, network_g, out_dir, name, param_key='params', info=None):
    """Write ``<out_dir>/<name>-<sha8>.pth`` and ``.safetensors``; each through a temporary name.

    The ``.pth`` is ``{param_key: state_dict}`` (weights only); ``torch.save`` output is deterministic, so
    publishing the same weights twice gives the same name. ``network_g`` and ``info`` (scale, task, colour:
    :func:`~acla_basicsr.inference.checkpoints.training_description`) go into the state dict's ``_metadata``
    (:func:`~acla_basicsr.inference.checkpoints.described_state_dict`) and the ``.safetensors`` header.

    Returns:
        tuple[str, str, str]: Paths of the ``.pth`` and the ``.safetensors``, and the ``.pth``'s sha256.
    """
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    info = {k: v for k, v in (info or {}).items() if v is not None}
    params = described_state_dict(state_dict, network_g, **info)
    buffer = io.BytesIO()  # torch.save names the archive's root after the file: a buffer keeps it fixed
    torch.save({param_key: params}, buffer)
    data = buffer.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    pth = osp.join(out_dir, f'{name}-{sha[:8]}.pth')

    fileio.write_bytes(pth, data)
    metadata = {'network_g': json.dumps(network_g), 'param_key': param_key, 'sha256_pth': sha,
                **{k: json.dumps(v) for k, v in info.items()}}
    safetensors = osp.join(out_dir, f'{name}-{sha[:8]}.safetensors')
    fileio.atomic_write(safetensors, lambda tmp: save_file(dict(params), tmp, metadata=metadata))
    return pth, safetensors, sha


#: The front matter keys that a Hub folder's ``config.json`` repeats.
HUB_CONFIG_KEYS = ('model_name', 'architecture', 'network_g', 'scale', 'task', 'param_key', 'files', 'sha256')


def check_hub_card(card):
    """The front matter of a published card and the paths of its two weights files, checked for a Hub folder.

    Returns:
        tuple[dict, list[str]]: The front matter; the ``.pth`` and ``.safetensors`` beside the card.

    Raises:
        OptionError: The card cannot be read or lacks a :data:`HUB_CONFIG_KEYS` key, a weights file it names is
            missing, or the ``.pth`` is not the card's (another sha256).
    """
    import yaml
    from acla_basicsr.zoo.card import read_front_matter
    try:
        front = read_front_matter(card)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as error:
        raise OptionError(f'{card}: cannot be read as a model card ({" ".join(str(error).split())}).') from None
    missing = [k for k in HUB_CONFIG_KEYS if k not in (front or {})]
    if missing:
        raise OptionError(f'{card}: the front matter has no {", ".join(missing)}; not a card of publish_model.py.')
    weights = [osp.join(osp.dirname(osp.abspath(card)), front['files'][k]) for k in ('pth', 'safetensors')]
    for path in weights:
        if not osp.isfile(path):
            raise OptionError(f'{path}: not found beside its card {card}; the Hub folder needs both weights files.')
    if file_sha256(weights[0]) != front['sha256']:
        raise OptionError(f"{weights[0]}: its sha256 is not the card's ({front['sha256'][:8]}...); publish again.")
    return front, weights


def write_hub_folder(card, folder):
    """Write a folder to upload to the Hugging Face Hub as a model repository, from a published card.

    ``folder/README.md`` is the card (its front matter is the Hub's metadata, ``model-index`` included),
    beside the ``.pth`` and ``.safetensors`` that it names (copied from the card's folder under their
    ``<name>-<sha8>`` names, so that every loading line of the card works there) and ``config.json``: the
    card's :data:`HUB_CONFIG_KEYS` (``network_g``, scale, task, parameter key, files, sha256). Files already in
    ``folder`` (a clone of the Hub repository, its ``.git``) are kept. Each file is written through a
    temporary name and a rename, the card last, after :func:`check_hub_card`.

    Args:
        card (str): A card written by ``scripts/publish_model.py`` (``<name>-<sha8>.md``).
        folder (str): The folder to write; created if missing.

    Returns:
        list[str]: The paths written.

    Raises:
        OptionError: See :func:`check_hub_card`.
    """
    front, weights = check_hub_card(card)
    with open(card, encoding='utf-8') as f:
        text = f.read()
    written = []
    for path in weights:
        target = osp.join(folder, osp.basename(path))
        fileio.atomic_write(target, lambda tmp, src=path: shutil.copyfile(src, tmp), size=osp.getsize(path))
        written.append(target)
    config = {k: front[k] for k in HUB_CONFIG_KEYS}
    fileio.write_text(osp.join(folder, 'config.json'), json.dumps(config, indent=2) + '\n')
    fileio.write_text(osp.join(folder, 'README.md'), text)
    return written + [osp.join(folder, 'config.json'), osp.join(folder, 'README.md')]


def read_state_dict(path, param_key=None):
    """``(state_dict, param_key)`` of a published ``.pth`` or ``.safetensors`` (CPU tensors, with their
    ``_metadata``): :func:`~acla_basicsr.inference.network.load_state_dict`."""
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
    path = resolve_checkpoint(url_or_path, 'load_zoo_model', model_dir, check_hash, progress)
    if check_hash and path == os.fspath(url_or_path):  # a local file: resolve_checkpoint checks downloads only
        check_hash_suffix(path)
    state, param_key = read_state_dict(path)
    if network_g is None:
        try:
            network_g = network_options(state)
        except ValueError as error:
            raise OptionError(f'{path}: {error}') from None
    return load_network(network_g, path, param_key=param_key, strict=True, device=device)

