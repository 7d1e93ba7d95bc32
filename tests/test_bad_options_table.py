"""Every option the schema knows, with a wrong value of each kind, generated from the declarations themselves.

For each known key of each section (basicsr's and this project's, the models' ``extra_option_keys`` included):
a value of the wrong type, a number below or above its range, a word that is not one of its literals; and each
required key removed. Every case must end with one ``OptionError`` whose line starts with the dotted name of
the option, as the launcher prints it (``error: <line>``, exit status 2) before anything is written;
``tests/test_bad_input.py`` runs a sample of them through ``train.py``.
"""
import copy

import pytest
from basicsr.utils.registry import MODEL_REGISTRY

from acla_basicsr.config.schema import DATASET_COMMON_KEYS, KNOWN_KEYS, REQUIRED, RUNTIME_KEYS, check_schema, \
    extra_option_keys, signature_schema
from acla_basicsr.errors import OptionError
from acla_basicsr.option_spec import as_option
from conftest import tiny_sr_options

WRONG_TYPE = {'int': 'eight', 'float': 'fast', 'bool': 'maybe', 'str': 12345, 'list': 7, 'dict': 7}


def base_options():
    opt = tiny_sr_options('table', '/data/HR', '/data/LR')  # the schema reads no file
    opt['network_g'] = {'type': 'ACLAEDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 2,
                        'upscale': 2, 'attention': 'acla', 'insert_positions': [2], 'num_keys': 2}
    opt['train'].update(gate_temperature={'start': 1.0, 'end': 0.5}, macs_penalty={'lambda': 0.2},
                        divergence={'skip_steps': 1})
    opt['val'].update(tile={'tile_size': 32, 'tile_pad': 4}, self_ensemble=False)
    return opt


def known_sections():
    """(dotted prefix, {key: spec}) of every section the schema checks for the base options."""
    model = MODEL_REGISTRY.get('RestorationModel')
    for name in ('', 'train', 'val', 'logger', 'path', 'dist_params'):
        known = dict(KNOWN_KEYS[name], **extra_option_keys(model, name))
        if name == 'path':
            known = {k.replace('_*', '_g'): v for k, v in known.items()}
        yield name, known
    yield 'datasets.train', DATASET_COMMON_KEYS
    # sections whose keys come from the constructor of their registered type
    from basicsr.losses.basic_loss import L1Loss
    from basicsr.models.lr_scheduler import MultiStepRestartLR
    from torch.optim import Adam

    from acla_basicsr.archs.acla_edsr_arch import ACLAEDSR
    for prefix, target, skip in (('network_g', ACLAEDSR, ('self', )), ('train.optim_g', Adam, ('self', 'params')),
                                 ('train.scheduler', MultiStepRestartLR, ('self', 'optimizer')),
                                 ('train.pixel_opt', L1Loss, ('self', ))):
        yield prefix, {k: v for k, v in signature_schema(target, skip)[0].items() if k != 'type'}


def leaves(prefix, section):
    for key, spec in section.items():
        dotted = f'{prefix}.{key}' if prefix else key
        if isinstance(spec, dict):
            yield dotted, as_option('dict')
            yield from leaves(dotted, spec)
        elif '*' not in key and key not in RUNTIME_KEYS:
            yield dotted, as_option(spec)


def wrong_values(option):
    """(what, value) pairs that ``option`` must refuse."""
    if option.literals and not option.kinds:
        yield 'not one of its words', 'no_such_word'
    for kind in sorted(option.kinds):
        wrong = WRONG_TYPE.get(kind)
        if wrong is not None and not any(k != kind and _fits(wrong, k) for k in option.kinds):
            yield f'not {kind}', wrong
    if 'int' in option.kinds and 'float' not in option.kinds:
        yield 'not a whole number', 2.5
    if option.low is not None:
        yield 'below its range', option.low - 1
    if option.high is not None:
        yield 'above its range', option.high + 1


def _fits(value, kind):
    return as_option(kind).kinds and not _raises(as_option(kind), value)


def _raises(option, value):
    try:
        option.check(value, 'x')
    except OptionError:
        return True
    return False


def set_key(opt, dotted, value):
    *parents, last = dotted.split('.')
    for key in parents:
        opt = opt.setdefault(key, {})
    opt[last] = value


def cases():
    out = []
    for prefix, section in known_sections():
        for dotted, option in leaves(prefix, section):
            if option.kinds == {'any'}:
                continue
            for what, value in wrong_values(option):
                out.append((dotted, what, value))
    return out


CASES = cases()


def test_the_table_covers_every_section():
    keys = {dotted for dotted, _, _ in CASES}
    assert len(CASES) > 150 and {'train.total_iter', 'train.macs_penalty.lambda', 'val.tile.tile_size',
                                 'datasets.train.batch_size_per_gpu', 'logger.print_freq', 'num_gpu',
                                 'network_g.num_keys', 'train.optim_g.lr', 'train.scheduler.gamma'} <= keys


@pytest.mark.parametrize('dotted,what,value', CASES, ids=[f'{d}-{w}' for d, w, _ in CASES])
def test_a_wrong_value_is_one_line_naming_the_option(dotted, what, value):
    opt = base_options()
    check_schema(copy.deepcopy(opt), is_train=True)  # the base passes
    set_key(opt, dotted, value)
    with pytest.raises(OptionError) as error:
        check_schema(opt, is_train=True)
    line = str(error.value)
    assert '\n' not in line and line.startswith(f'{dotted}:'), line
    if what in ('below its range', 'above its range'):
        assert 'out of range; give' in line, line  # the range is said


REQUIRED_CASES = [(section, key) for section, keys in REQUIRED['train'].items() if section != 'datasets.*'
                  for key in keys]


@pytest.mark.parametrize('section,key', REQUIRED_CASES, ids=[f'{s}.{k}' for s, k in REQUIRED_CASES])
def test_a_missing_required_option_is_named(section, key):
    opt = base_options()
    parent = opt
    for part in filter(None, section.split('.')):
        parent = parent[part]
    del parent[key]
    with pytest.raises(OptionError) as error:
        check_schema(opt, is_train=True)
    dotted = f'{section}.{key}' if section else key
    assert str(error.value) in (f"{section or 'options'}: missing required option '{key}'.",
                                f'{dotted}: missing; set it to one of the registered names.'), str(error.value)


def test_a_checkpoint_of_another_network_names_both_families(tmp_path):
    """``path.pretrain_network_g`` of another architecture: one line naming both, not dozens of missing keys."""
    import torch
    from basicsr.archs.rrdbnet_arch import RRDBNet
    from basicsr.archs.edsr_arch import EDSR
    from acla_basicsr.models.restoration_model import RestorationModel
    other, same = tmp_path / 'rrdb.pth', tmp_path / 'edsr.pth'
    torch.save({'params': RRDBNet(3, 3, num_feat=8, num_block=1, num_grow_ch=4).state_dict()}, other)
    torch.save({'params': EDSR(3, 3, num_feat=8, num_block=2, upscale=2).state_dict()}, same)
    opt = base_options()
    opt['path']['pretrain_network_g'] = str(other)
    with pytest.raises(OptionError) as error:
        RestorationModel.check_pretrained(opt)
    assert str(error.value) == (f'path.pretrain_network_g: {other} holds the weights of a network of no family this '
                                'project knows, not of network_g (ACLAEDSR, EDSR family); give the checkpoint of '
                                'this network, or the options it was trained with.')
    opt['path'].update(pretrain_network_g=str(same), strict_load_g=False)  # the backbone of ACLAEDSR: it fits
    RestorationModel.check_pretrained(opt)
    opt['path']['strict_load_g'] = True  # the attention's weights are missing: both architectures are named
    with pytest.raises(OptionError, match=r"holds the weights of EDSR \(x2, num_feat 8, num_block 2\), not of "
                                          r"network_g's ACLAEDSR \(x2, num_feat 8, num_block 2\)"):
        RestorationModel.check_pretrained(opt)
