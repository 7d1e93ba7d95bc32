"""The ``network_g`` options of a state dict, read from its keys and tensor shapes.

Unregistered helper of :mod:`acla_basicsr.zoo.spandrel_support` (spandrel's loader, used by chaiNNer and
ComfyUI, gets a state dict and nothing else) and of :func:`acla_basicsr.zoo.published.load_zoo_model`.

Families: basicsr's ``EDSR``, ``ACLAEDSR``, ``ACLARCAN``, ``ENLCN`` and ``EARN``. What the shapes give:
channels in and out, ``num_feat``, ``num_block`` / ``num_group``, ``upscale``, the attention type and its
``num_keys``, ``nl_reduction``, RCAN's ``squeeze_factor``, ENLCN's ``attention_positions`` (the names of its
modules), ``num_embed_feat``, ``num_samples``, ``seed``, the embedding activation, EARN's ``reduction``,
``window_size``, ablation switches and ``rgb_mean`` (a buffer of EARN).

What no tensor holds: ACLA's ``insert_positions`` (modules are numbered 0, 1, ... whatever block they follow),
``res_scale``, ``img_range``, ``rgb_mean`` of the EDSR family, EARN's ``num_heads``, ``scale_logits`` and
``use_skip_connections``, ENLCN's ``amplification`` and ``attention_res_scale``. A file written by
``scripts/publish_model.py`` carries its full ``network_g`` in the state dict's ``_metadata`` (torch's own
per-state-dict metadata, which ``load_state_dict`` ignores, so the file stays a plain weights-only state dict
that basicsr loads strictly); it is used when present, after checking that it agrees with the shapes.
Without it these conventions of this project's configs apply (as spandrel does for its own
"undetectable" arguments): ``res_scale`` (and ENLCN's ``attention_res_scale``) 0.1 for 256 channels or more
(EDSR-large), else 1; ``img_range`` 255 (EARN: 1); the DIV2K ``rgb_mean``; ENLCN ``amplification`` 6; EARN
4 heads (or the nearest valid count), scaled logits, skips on; ACLA positions spread evenly and ending at the
last block or group (``[2, 4]`` for 2 modules in 4 blocks).
"""
import re

from acla_basicsr.errors import DetectionError

#: Key of the network options in a published state dict's ``_metadata`` (no module path has a colon).
METADATA_KEY = 'acla_basicsr:network_g'
DIV2K_MEAN = [0.4488, 0.4371, 0.4040]
# Options that decide tensor shapes or names: the metadata must agree with the detected values.
STRUCTURAL_KEYS = ('type', 'num_in_ch', 'num_out_ch', 'num_feat', 'num_block', 'num_group', 'upscale', 'attention',
               'num_keys', 'attention_positions', 'num_embed_feat', 'num_samples', 'window_size', 'reduction',
               'squeeze_factor', 'use_asca', 'use_local_attention', 'use_mask_branch')


def _count(state_dict, prefix):
    """Number of consecutive integer children ``prefix.0``, ``prefix.1``, ... among the keys."""
    pattern = re.compile(re.escape(prefix) + r'\.(\d+)\.')
    indices = {int(m.group(1)) for m in map(pattern.match, state_dict) if m}
    return len(indices)


def _upscale(state_dict, num_feat):
    """basicsr's ``Upsample``: log2(scale) convs to 4 C (entries 0, 2, ...), or one conv to 9 C for x3."""
    convs = _count(state_dict, 'upsample')
    if convs == 0:
        return 1
    first = state_dict['upsample.0.weight'].shape[0]
    if convs == 1 and first == 9 * num_feat:
        return 3
    if first != 4 * num_feat:
        raise DetectionError(f'upsample.0.weight has {first} output channels, neither 4 nor 9 x num_feat {num_feat}.')
    return 2**convs


def _default_res_scale(num_feat):
    return 0.1 if num_feat >= 256 else 1


def _even_positions(num_modules, num_positions):
    return [round(num_positions * (i + 1) / num_modules) for i in range(num_modules)]


def _cla_options(state_dict, num_feat, num_positions):
    """Attention type, modules and keys of ACLAEDSR / ACLARCAN from ``attention.<i>.*``."""
    num_modules = _count(state_dict, 'attention')
    if num_modules == 0:
        return {'attention': 'none', 'insert_positions': []}
    if 'attention.0.offset.weight' in state_dict:
        attention = 'acla' if 'attention.0.gate.weight' in state_dict else 'cla'
        num_keys = state_dict['attention.0.logit.weight'].shape[0]  # the first module has one key layer
        options = {'attention': attention, 'num_keys': num_keys}
    elif 'attention.0.query.weight' in state_dict:
        attention = 'clnl' if 'attention.0.key.0.weight' in state_dict else 'nl'
        options = {'attention': attention, 'nl_reduction': num_feat // state_dict['attention.0.query.weight'].shape[0]}
    else:
        raise DetectionError('attention.0 is neither a CLA/ACLA module (offset, logit) nor NL/CLNL (query, key).')
    options['insert_positions'] = _even_positions(num_modules, num_positions)
    return options


def _edsr_family(state_dict):
    num_in_ch, num_feat = state_dict['conv_first.weight'].shape[1], state_dict['conv_first.weight'].shape[0]
    options = {
        'num_in_ch': num_in_ch,
        'num_out_ch': state_dict['conv_last.weight'].shape[0],
        'num_feat': num_feat,
        'num_block': _count(state_dict, 'body'),
        'upscale': _upscale(state_dict, num_feat),
        'res_scale': _default_res_scale(num_feat),
        'img_range': 255.,
        'rgb_mean': list(DIV2K_MEAN),
    }
    if any(re.match(r'attention\.\d+\.conv_query\.', k) for k in state_dict):
        positions = sorted({int(k.split('.')[1]) for k in state_dict if k.startswith('attention.')})
        first = f'attention.{positions[0]}'
        options.update(
            type='ENLCN',
            attention_positions=positions,
            num_embed_feat=state_dict[f'{first}.conv_query.0.weight'].shape[0],
            num_samples=state_dict[f'{first}.attention.matrix'].shape[0],
            amplification=6,
            orthogonal=True,
            seed=int(state_dict[f'{first}.attention.seed']) - positions[0],
            attention_res_scale=_default_res_scale(num_feat),
            embedding_activation='prelu' if f'{first}.conv_query.1.weight' in state_dict else None)
        return options
    cla = _cla_options(state_dict, num_feat, options['num_block'])
    if cla['attention'] == 'none':
        if num_in_ch != 3 or options['num_out_ch'] != 3:  # basicsr's EDSR reshapes its mean to 3 channels
            cla.update(type='ACLAEDSR')
            return {**options, **cla}
        return {'type': 'EDSR', **options}
    return {'type': 'ACLAEDSR', **options, **cla}


def _rcan_family(state_dict):
    num_feat = state_dict['conv_first.weight'].shape[0]
    num_group = _count(state_dict, 'body')
    options = {
        'type': 'ACLARCAN',
        'num_in_ch': state_dict['conv_first.weight'].shape[1],
        'num_out_ch': state_dict['conv_last.weight'].shape[0],
        'num_feat': num_feat,
        'num_group': num_group,
        'num_block': _count(state_dict, 'body.0.residual_group'),
        'squeeze_factor': num_feat // state_dict['body.0.residual_group.0.rcab.3.attention.1.weight'].shape[0],
        'upscale': _upscale(state_dict, num_feat),
        'res_scale': 1,
        'img_range': 255.,
        'rgb_mean': list(DIV2K_MEAN),
    }
    return {**options, **_cla_options(state_dict, num_feat, num_group)}


def _earn(state_dict):
    num_feat = state_dict['conv_first.weight'].shape[0]
    heads = [h for h in (4, 2, 8, 1, 16) if num_feat % h == 0 and (num_feat // h) % 2 == 0]
    window = state_dict.get('body.0.mask.attention.rel_row')
    squeeze = state_dict.get('body.0.asca.se_mean.0.weight')
    return {
        'type': 'EARN',
        'num_in_ch': state_dict['conv_first.weight'].shape[1],
        'num_out_ch': state_dict['conv_last.weight'].shape[0],
        'num_feat': num_feat,
        'num_block': _count(state_dict, 'body'),
        'upscale': _upscale(state_dict, num_feat),
        'reduction': 16 if squeeze is None else num_feat // squeeze.shape[0],
        'window_size': 7 if window is None else window.shape[1],
        'num_heads': heads[0] if heads else 1,
        'use_asca': squeeze is not None,
        'use_local_attention': window is not None,
        'use_skip_connections': True,
        'use_mask_branch': 'body.0.mask.down.weight' in state_dict,
        'scale_logits': True,
        'img_range': 1.,
        'rgb_mean': [float(v) for v in state_dict['mean'].flatten()],
    }


def detect_family(state_dict):
    """The family of a state dict: 'EDSR' (basicsr's EDSR, ACLAEDSR, ENLCN), 'RCAN' (ACLARCAN), 'EARN' or None."""
    if not all(k in state_dict for k in ('conv_first.weight', 'conv_after_body.weight', 'conv_last.weight')):
        return None
    if 'body.0.conv1.weight' in state_dict:
        return 'EDSR'
    if 'body.0.residual_group.0.rcab.0.weight' in state_dict:
        return 'RCAN'
    if 'body.0.conv_first.weight' in state_dict and 'body.0.pre.conv1.weight' in state_dict and 'mean' in state_dict:
        return 'EARN'
    return None


def metadata_options(state_dict):
    """The ``network_g`` that ``scripts/publish_model.py`` stored in the state dict, or None."""
    metadata = getattr(state_dict, '_metadata', None) or {}
    options = (metadata.get(METADATA_KEY) or {}).get('network_g')
    return dict(options) if isinstance(options, dict) else None


def network_options(state_dict, use_metadata=True):
    """The ``network_g`` dict (with ``type``) that builds the network of ``state_dict``.

    Args:
        state_dict (dict): Parameter names to tensors (``module.`` prefixes already removed).
        use_metadata (bool): Take the options stored by ``scripts/publish_model.py`` when present (after
            checking them against the shapes); False: shapes and conventions only. Default: True.

    Returns:
        dict: e.g. ``{'type': 'EDSR', 'num_in_ch': 3, 'num_feat': 32, 'num_block': 4, 'upscale': 2, ...}``.

    Raises:
        DetectionError: Not a state dict of these families, or metadata that contradicts the tensors.
    """
    family = detect_family(state_dict)
    if family is None:
        raise DetectionError('not a state dict of EDSR, ACLAEDSR, ACLARCAN, ENLCN or EARN (no conv_first / body / '
                             'conv_after_body / conv_last layout of theirs).')
    try:
        detected = {'EDSR': _edsr_family, 'RCAN': _rcan_family, 'EARN': _earn}[family](state_dict)
    except KeyError as error:
        raise DetectionError(f'{family}-like state dict without {error}.') from None
    stored = metadata_options(state_dict) if use_metadata else None
    if stored is None:
        return detected
    for key in STRUCTURAL_KEYS:
        if key in detected and key in stored and _normal(stored[key]) != _normal(detected[key]):
            raise DetectionError(f'the stored network_g.{key} ({stored[key]!r}) contradicts the tensors '
                                 f'({detected[key]!r}).')
    return stored


def _normal(value):
    return list(value) if isinstance(value, tuple) else value
