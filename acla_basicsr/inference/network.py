"""Building a network from its options and loading trained weights into it (``acla_basicsr.load_network``)."""
import os
import os.path as osp
from collections import OrderedDict

import torch

from acla_basicsr.config.files import project_root, read_options_file
from acla_basicsr.option_spec import registered_class
from acla_basicsr.errors import DetectionError, OptionError
from .detect import detect_family, network_options


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
    removed; the state dict's ``_metadata`` (where published files keep their ``network_g``) is kept. Loaded
    onto the CPU with ``weights_only=True``.

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


def _resolve(path):
    """A relative path as given, else relative to the source checkout (as train.py resolves data paths)."""
    if path and not osp.isabs(path) and not osp.exists(path) and osp.exists(osp.join(project_root(), path)):
        return osp.join(project_root(), path)
    return path


def load_weights(net, network_type, checkpoint, param_key=None, strict=True, option='--model'):
    """Load the parameters of ``checkpoint`` into ``net``; one line naming ``option`` when they do not fit.

    Args:
        net (nn.Module): The built network.
        network_type (str): Its registered type, for the message.
        checkpoint (str): The .pth file.
        param_key (str | None): See :func:`load_state_dict`. Default: None.
        strict (bool): Require every parameter to match. Default: True.
        option (str): The option or argument that named the file, for the messages. Default: '--model'.
    """
    state = load_state_dict(os.fspath(checkpoint), param_key, option=option)
    try:
        result = net.load_state_dict(state, strict=bool(strict))
    except RuntimeError as error:
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


def load_network(options, checkpoint=None, param_key=None, strict=None, device=None):
    """Build ``network_g`` of an options file or dict and load trained weights into it.

    Example::

        from acla_basicsr import load_network, restore
        net = load_network('options/test/ACLA_SRx2.yml', 'net_g_latest.pth')
        sr = restore(net, rgb_uint8, tile=256)

    Args:
        options (str | dict): A train or test options YAML path, its dict, or a ``network_g`` dict
            (``{'type': 'EARN', 'upscale': 2, ...}``).
        checkpoint (str | None): A ``.pth`` written by training; None: ``path.pretrain_network_g`` of the
            options. Default: None.
        param_key (str | None): Key of the parameters in the checkpoint; None: ``params_ema`` if the file has
            it, else ``params`` (else the file is a plain state dict). Default: None.
        strict (bool | None): Require every parameter to match; None: ``path.strict_load_g`` of the options,
            else True. Default: None.
        device (str | torch.device | None): Where to put the network; None: CUDA if available, else the CPU.
            Default: None.

    Returns:
        nn.Module: The network in ``eval()`` mode on ``device``.

    Raises:
        OptionError (a ValueError): a missing or unreadable file, an unknown network, weights that do not fit.
    """
    opt = read_options(options)
    path_opt = opt.get('path') or {}
    if checkpoint is None:
        checkpoint = path_opt.get('pretrain_network_g')
        if not checkpoint:
            raise OptionError('--model: no checkpoint given and path.pretrain_network_g is empty; give the .pth '
                              'file of the trained network.')
        checkpoint = _resolve(checkpoint)
    net = build_network(opt)
    strict = path_opt.get('strict_load_g', True) if strict is None else strict
    load_weights(net, opt['network_g']['type'], checkpoint, param_key, strict)
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
