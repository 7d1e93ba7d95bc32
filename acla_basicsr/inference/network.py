"""Building a network from its options and loading trained weights into it (``acla_basicsr.load_network``)."""
import os
import os.path as osp
from collections import OrderedDict

import torch

from acla_basicsr.config.files import project_root, read_options_file
from acla_basicsr.option_spec import registered_class
from acla_basicsr.errors import OptionError


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


def load_state_dict(checkpoint, param_key=None, return_key=False):
    """The parameters stored in ``checkpoint``: ``param_key``, else ``params_ema``, else ``params``.

    A file that holds a plain state dict (no such key) is used as it is; a ``module.`` prefix (DDP) is
    removed; the state dict's ``_metadata`` (where published files keep their ``network_g``) is kept. Loaded
    onto the CPU with ``weights_only=True``.

    Args:
        checkpoint (str): The .pth file.
        param_key (str | None): Key of the parameters; None: params_ema, else params, else the whole file.
            Default: None.
        return_key (bool): Also return the key used (None for a plain state dict). Default: False.

    Returns:
        dict | tuple[dict, str | None]: The parameters (and the key).
    """
    if not osp.isfile(checkpoint):
        raise OptionError(f'--model: {checkpoint} does not exist; give a .pth file written by training '
                          '(experiments/<name>/models/net_g_*.pth).')
    try:
        state = torch.load(checkpoint, map_location='cpu', weights_only=True)
    except Exception as error:  # truncated, not a torch file, or foreign objects
        raise OptionError(f'--model: cannot read {checkpoint} ({str(error).splitlines()[0]}); '
                          'give a .pth file written by training.') from None
    if not isinstance(state, dict):
        raise OptionError(f'--model: {checkpoint} holds no state dict; give a .pth file written by training.')
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
    state = load_state_dict(os.fspath(checkpoint), param_key)
    strict = path_opt.get('strict_load_g', True) if strict is None else strict
    try:
        result = net.load_state_dict(state, strict=bool(strict))
    except RuntimeError as error:
        first = [line.strip() for line in str(error).splitlines() if line.strip()][1:2]
        raise OptionError(f"--model: {checkpoint} does not fit network_g ({opt['network_g']['type']}): "
                          f"{first[0] if first else error}; give the options the checkpoint was trained with."
                          ) from None
    if not strict and len(result.missing_keys) == len(net.state_dict()):
        raise OptionError(f'--model: no parameter of {checkpoint} fits network_g; give the options the '
                          'checkpoint was trained with.')
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    return net.to(device).eval()


def input_channels(net):
    """Channels the network reads: ``in_channels`` of its first convolution."""
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            return module.in_channels
    raise ValueError(f'{type(net).__name__} has no Conv2d; cannot tell how many input channels it reads.')
