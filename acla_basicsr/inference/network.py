"""Building a network from its options and loading trained weights into it (``acla_basicsr.load_network``)."""
import json
import os
import os.path as osp
from collections import OrderedDict

import torch

from acla_basicsr.config.files import project_root, read_options_file
from acla_basicsr.option_spec import registered_class
from acla_basicsr.errors import DetectionError, OptionError
from .checkpoints import resolve_checkpoint, stored_description
from .detect import STRUCTURAL_KEYS, METADATA_KEY, detect_family, metadata_options, network_options


def read_options(options):
    """The options dict of ``options``: a YAML path, a full options dict, or a ``network_g`` dict.

    Returns:
        dict: Options with at least ``network_g``.
    """
    if isinstance(options, (str, os.PathLike)):
        where = os.fspath(options)
        opt = read_options_file(where)
    else:
        opt, where = options, 'options'
    if not isinstance(opt, dict):
        raise OptionError(f'-opt: {where} is not a mapping of options; give a train or test options file.')
    if 'network_g' not in opt and 'type' in opt:
        opt = {'network_g': opt}
    if not isinstance(opt.get('network_g'), dict) or 'type' not in opt['network_g']:
        raise OptionError(f'network_g: missing in {where}; give options with a network_g: {{type: ..., ...}} '
                          'section (any train or test file of options/).')
    return opt


def build_network(options):
    """Build the network ``network_g`` of ``options`` (see :func:`read_options`) with random weights."""
    from basicsr.utils.registry import ARCH_REGISTRY
    arch = dict(read_options(options)['network_g'])
    cls = registered_class(ARCH_REGISTRY, arch.pop('type'), 'network_g.type')
    try:
        return cls(**arch)
    except (TypeError, ValueError) as error:
        raise OptionError(f'network_g: {error}') from None


def load_state_dict(checkpoint, param_key=None, return_key=False, option='--model'):
    """The parameters stored in ``checkpoint``: ``param_key``, else ``params_ema``, else ``params``.

    A file that holds a plain state dict (no such key) is used as it is; a ``module.`` prefix (DDP) is
    removed; the state dict's ``_metadata`` (where checkpoints keep their ``network_g``:
    :mod:`.checkpoints`) is kept. Loaded onto the CPU with ``weights_only=True``. A ``.safetensors`` file
    (published beside every zoo ``.pth``) gets the ``network_g``, scale, task and colour of its header in its
    ``_metadata``, and its ``param_key`` is the one the header names.

    Args:
        checkpoint (str): The .pth file.
        param_key (str | None): Key of the parameters; None: params_ema, else params, else the whole file.
            Default: None.
        return_key (bool): Also return the key used (None for a plain state dict). Default: False.
        option (str): The option or argument that named the file, for the messages. Default: '--model'.

    Returns:
        dict | tuple[dict, str | None]: The parameters (and the key).
    """
    if not osp.isfile(checkpoint):
        raise OptionError(f'{option}: {checkpoint} does not exist; give a .pth file written by training '
                          '(experiments/<name>/models/net_g_*.pth).')
    if str(checkpoint).endswith('.safetensors'):
        return _safetensors_state_dict(checkpoint, return_key, option)
    try:
        state = torch.load(checkpoint, map_location='cpu', weights_only=True)
    except Exception as error:  # truncated, not a torch file, or foreign objects
        raise OptionError(f'{option}: cannot read {checkpoint} ({str(error).splitlines()[0]}); '
                          'give a .pth file written by training.') from None
    if not isinstance(state, dict):
        raise OptionError(f'{option}: {checkpoint} holds no state dict; give a .pth file written by training.')
    key = param_key
    if param_key is not None:
        if param_key not in state:
            raise OptionError(f"--param-key: '{param_key}' is not in {checkpoint} (keys: "
                              f"{', '.join(sorted(map(str, state))[:6])}); use params or params_ema.")
    elif 'params_ema' in state or 'params' in state:
        key = 'params_ema' if 'params_ema' in state else 'params'
    state = state[key] if key else state
    params = OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in state.items())
    if getattr(state, '_metadata', None) is not None:
        params._metadata = state._metadata
    return (params, key) if return_key else params


#: What a checkpoint may say about itself (:mod:`.checkpoints`), as stored in a ``.safetensors`` header.
DESCRIPTION_KEYS = ('network_g', 'scale', 'task', 'colour')


def _safetensors_state_dict(path, return_key, option):
    try:
        from safetensors import safe_open
        with safe_open(path, framework='pt') as f:
            header = f.metadata() or {}
            state = OrderedDict((k, f.get_tensor(k)) for k in f.keys())
    except ImportError:
        raise OptionError(f'{option}: {path} is a .safetensors file; pip install safetensors, or give the .pth.') \
            from None
    except Exception as error:  # a damaged header or a foreign file
        raise OptionError(f'{option}: cannot read {path} ({str(error).splitlines()[0]}); give the .pth.') from None
    if 'network_g' in header:
        state._metadata = {METADATA_KEY: {k: json.loads(header[k]) for k in DESCRIPTION_KEYS if k in header}}
    key = header.get('param_key', 'params')
    return (state, key) if return_key else state


def _resolve(path):
    """A relative path as given, else relative to the source checkout (as train.py resolves data paths)."""
    if path and not osp.isabs(path) and not osp.exists(path) and osp.exists(osp.join(project_root(), path)):
        return osp.join(project_root(), path)
    return path


def architecture(options):
    """A short name of the network of a ``network_g`` dict: ``ACLAEDSR (x2, num_feat 32, num_block 4)``."""
    shown = [f"x{options['upscale']}"] if 'upscale' in options else []
    shown += [f'{k} {options[k]}' for k in ('num_feat', 'num_block', 'num_group') if k in options]
    return f"{options.get('type', '?')} ({', '.join(shown)})" if shown else str(options.get('type', '?'))


def checkpoint_network(state_dict):
    """The ``network_g`` of a state dict: what it says about itself, else detected from its tensors, else None."""
    stored = metadata_options(state_dict)
    if stored is not None:
        return stored
    try:
        return network_options(state_dict, use_metadata=False)
    except DetectionError:
        return None


def mismatch_message(state_dict, network_g, checkpoint, option='--model'):
    """One line naming the architecture of a checkpoint and that of ``network_g`` when they differ, else None.

    Both are named by :func:`architecture`: the checkpoint's from its stored ``network_g`` or detected from
    its tensors (:func:`~acla_basicsr.inference.detect.network_options`); when both are of one type, the
    structural options that differ are named.
    """
    theirs = checkpoint_network(state_dict)
    ours = dict(network_g)
    fix = ('drop -opt (the file says which network it holds)' if metadata_options(state_dict) is not None
           else 'give the checkpoint of this network, or the options it was trained with')
    if theirs is None:
        return None
    held = (f"{option}: {checkpoint} holds the weights of {architecture(theirs)}, not of network_g's "
            f'{architecture(ours)}')
    if theirs.get('type') != ours.get('type'):
        return f'{held}; {fix}.'
    differ = [k for k in STRUCTURAL_KEYS if k in theirs and k in ours and _plain(theirs[k]) != _plain(ours[k])]
    if not differ:
        return None
    return f"{held} ({', '.join(f'{k} {theirs[k]} against {ours[k]}' for k in differ)}); {fix}."


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def fit_weights(net, network_g, state, checkpoint, strict=True, option='--model'):
    """Load the state dict ``state`` (of the file ``checkpoint``) into ``net``, built from ``network_g``.

    A checkpoint of another network gets one line naming both architectures (:func:`mismatch_message`), not a
    list of missing keys; a checkpoint that fits no parameter (``strict=False``) gets one line too.
    """
    network_type = network_g['type']
    try:
        result = net.load_state_dict(state, strict=bool(strict))
    except RuntimeError as error:
        message = mismatch_message(state, network_g, checkpoint, option)
        if message:
            raise OptionError(message) from None
        theirs, ours = detect_family(state), detect_family(net.state_dict())
        if theirs != ours:  # another network altogether: name both families, not dozens of keys
            held = f'a {theirs}-family network' if theirs else 'a network of no family this project knows'
            raise OptionError(f'{option}: {checkpoint} holds the weights of {held}, not of network_g ({network_type}, '
                              f'{ours or "unknown"} family); give the checkpoint of this network, or the options it '
                              'was trained with.') from None
        first = [line.strip() for line in str(error).splitlines() if line.strip()][1:2]
        detail = first[0] if first else str(error)
        raise OptionError(f'{option}: {checkpoint} does not fit network_g ({network_type}): '
                          f"{detail[:200] + ('...' if len(detail) > 200 else '')}; give the checkpoint of this "
                          'network, or the options it was trained with.') from None
    if not strict and len(result.missing_keys) == len(net.state_dict()):
        raise OptionError(f'{option}: no parameter of {checkpoint} fits network_g ({network_type}); give the '
                          'checkpoint of this network, or the options the checkpoint was trained with.')


def load_weights(net, network_type, checkpoint, param_key=None, strict=True, option='--model'):
    """Load the parameters of ``checkpoint`` into ``net``; one line naming ``option`` when they do not fit.

    Args:
        net (nn.Module): The built network.
        network_type (str | dict): Its registered type, or its whole ``network_g`` (then a checkpoint of another
            network is named by its architecture and options, not only its family).
        checkpoint (str): The .pth file.
        param_key (str | None): See :func:`load_state_dict`. Default: None.
        strict (bool): Require every parameter to match. Default: True.
        option (str): The option or argument that named the file, for the messages. Default: '--model'.
    """
    state = load_state_dict(os.fspath(checkpoint), param_key, option=option)
    network_g = dict(network_type) if isinstance(network_type, dict) else {'type': network_type}
    fit_weights(net, network_g, state, checkpoint, strict, option)


def _is_checkpoint_source(options):
    """Whether the first argument of :func:`load_network` names a checkpoint (path, URL, zoo name), not options."""
    if not isinstance(options, (str, os.PathLike)):
        return False
    return not os.fspath(options).lower().endswith(('.yml', '.yaml'))


def load_network(options=None, checkpoint=None, param_key=None, strict=None, device=None, model_dir=None,
                 check_hash=True):
    """Build a network and load trained weights into it: from a checkpoint alone, or with its options.

    Example::

        from acla_basicsr import load_network, restore
        net = load_network('experiments/ACLA_SRx2/models/net_g_latest.pth')  # the file says which network
        net = load_network('demo_ACLA_SRx2')                                  # a network of model_zoo/ by name
        net = load_network('options/test/ACLA_SRx2.yml', 'net_g_latest.pth')  # the options decide
        sr = restore(net, rgb_uint8, tile=256)

    Args:
        options (str | dict | None): A train or test options YAML path, its dict, or a ``network_g`` dict
            (``{'type': 'EARN', 'upscale': 2, ...}``); or, with ``checkpoint`` None, the checkpoint itself (a
            path, URL or zoo name, as ``checkpoint``). None: the ``network_g`` stored in the checkpoint
            (:mod:`.checkpoints`). Default: None.
        checkpoint (str | None): A ``.pth`` (or ``.safetensors``) file, a URL of a ``<name>-<sha8>.pth``
            (downloaded once, hash checked) or the name of a network of ``model_zoo/`` (``demo_ACLA_SRx2``);
            None: ``path.pretrain_network_g`` of the options. Default: None.
        param_key (str | None): Key of the parameters in the checkpoint; None: ``params_ema`` if the file has
            it, else ``params`` (else the file is a plain state dict). Default: None.
        strict (bool | None): Require every parameter to match; None: ``path.strict_load_g`` of the options,
            else True. Default: None.
        device (str | torch.device | None): Where to put the network; None: CUDA if available, else the CPU.
            Default: None.
        model_dir (str | None): Download folder of URLs; None: torch hub's ``checkpoints``. Default: None.
        check_hash (bool): Check URLs and zoo names against their ``-<sha8>`` suffix. Default: True.

    Returns:
        nn.Module: The network in ``eval()`` mode on ``device``.

    Raises:
        OptionError (a ValueError): a missing or unreadable file, an unknown network or zoo name, weights that
        do not fit, a checkpoint that does not say which network it holds given without options.
    """
    if checkpoint is None and _is_checkpoint_source(options):
        options, checkpoint = None, options
    opt = read_options(options) if options is not None else None
    path_opt = (opt or {}).get('path') or {}
    if checkpoint is None:
        checkpoint = path_opt.get('pretrain_network_g')
        if not checkpoint:
            what = 'path.pretrain_network_g is empty' if opt is not None else 'no options either'
            raise OptionError(f'--model: no checkpoint given and {what}; give the .pth file of the trained '
                              'network (or a zoo name).')
        checkpoint = _resolve(checkpoint)
    path = resolve_checkpoint(checkpoint, '--model', model_dir, check_hash)
    state = load_state_dict(path, param_key)
    if opt is None:
        stored = stored_description(state)
        if stored is None:
            raise OptionError(f'--model: {checkpoint} does not say which network it holds (written before '
                              'checkpoints carried their network_g, or not by acla_basicsr); give -opt with the '
                              'options file it was trained with (e.g. options/test/ACLA_SRx2.yml).')
        opt = {'network_g': stored['network_g']}
    net = build_network(opt)
    strict = path_opt.get('strict_load_g', True) if strict is None else strict
    fit_weights(net, opt['network_g'], state, checkpoint, strict)
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    return net.to(device).eval()


def input_channels(net):
    """Channels the network reads: ``in_channels`` of its first convolution."""
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            return module.in_channels
    raise ValueError(f'{type(net).__name__} has no Conv2d; cannot tell how many input channels it reads.')


def build_detected(state_dict, use_metadata=True):
    """``(network, network_g)``: the network of :func:`network_options`, if its parameter names are exactly the keys.

    Raises:
        DetectionError: Not one of the families, or a network whose parameter names differ from the keys
            (then it is another architecture with a similar layout).
    """
    options = network_options(state_dict, use_metadata)
    try:
        net = build_network(dict(options))
    except (ValueError, TypeError) as error:
        raise DetectionError(f'{options["type"]} cannot be built from the detected options: {error}') from None
    names = set(net.state_dict())
    if names != set(state_dict):
        extra, missing = sorted(set(state_dict) - names)[:2], sorted(names - set(state_dict))[:2]
        raise DetectionError(f'{options["type"]}-like, but the keys differ (unexpected {extra}, missing {missing}).')
    return net, options
