"""The options schema: unknown, missing and mistyped keys end with one line; every shipped options file passes."""
import copy
import glob
import os.path as osp

import pytest
import yaml

from acla_basicsr.models.acla_search_model import ACLASearchModel
from acla_basicsr.errors import OptionError
from acla_basicsr.config.schema import check_schema, extra_option_keys, kinds_from_text, signature_schema
from conftest import ROOT, run_entry, tiny_sr_options, write_options

SHIPPED = sorted(glob.glob(osp.join(ROOT, 'options', '*', '*.yml')))


@pytest.fixture
def opt():
    return tiny_sr_options('schema', '/data/HR', '/data/LR')


def set_key(opt, dotted, value):
    *parents, last = dotted.split('.')
    for key in parents:
        opt = opt[key]
    opt[last] = value


def del_key(opt, dotted):
    *parents, last = dotted.split('.')
    for key in parents:
        opt = opt[key]
    del opt[last]


@pytest.mark.parametrize('config', SHIPPED, ids=[osp.relpath(v, ROOT) for v in SHIPPED])
def test_every_shipped_options_file_passes(config):
    with open(config) as f:
        opt = yaml.safe_load(f)
    warnings = []
    check_schema(opt, is_train=f'{osp.sep}test{osp.sep}' not in config, warn=warnings.append)
    assert warnings == []


WRONG = [
    # (dotted key, value, expected message)
    ('network_g.num_feat', 'eight', "network_g.num_feat: expected an integer, got 'eight'."),
    ('network_g.res_scale', 'small', "network_g.res_scale: expected a number, got 'small'."),
    ('train.optim_g.lr', '1e-4', "train.optim_g.lr: expected a number, got '1e-4'; YAML reads 1e-4 as a string, "
                                 'write !!float 1e-4 or a number with a dot (0.0001).'),
    ('train.total_iter', 'many', "train.total_iter: expected an integer, got 'many'."),
    ('datasets.train.use_hflip', 'yes please', "datasets.train.use_hflip: expected true or false, got 'yes please'."),
    ('datasets.train.io_backend.type', 'ftp', "datasets.train.io_backend.type: expected 'disk', 'lmdb' or "
                                              "'memcached', got 'ftp'."),
    ('logger.print_freq', [1], 'logger.print_freq: expected an integer, got [1].'),
    ('num_gpu', 'two', "num_gpu: expected an integer or 'auto', got 'two'."),
    ('val.metrics.psnr.test_y_channel', 'y', "val.metrics.psnr.test_y_channel: expected true or false, got 'y'."),
    ('train', 'fast', "train: expected a mapping, got 'fast'."),
]


@pytest.mark.parametrize('key,value,expected', WRONG, ids=[v[0] for v in WRONG])
def test_wrong_type_names_the_key_and_the_type(opt, key, value, expected):
    set_key(opt, key, value)
    with pytest.raises(OptionError) as error:
        check_schema(opt)
    assert str(error.value) == expected


UNKNOWN = [
    # (section, misspelt key, message)
    ('', 'netwrok_g', "options: unknown option 'netwrok_g'; did you mean 'network_g'?"),
    ('network_g', 'num_feats', "network_g: unknown option 'num_feats'; did you mean 'num_feat'?"),
    ('train', 'total_iters', "train: unknown option 'total_iters'; did you mean 'total_iter'?"),
    ('train.pixel_opt', 'weight', "train.pixel_opt: unknown option 'weight'; did you mean 'loss_weight'?"),
    ('train.optim_g', 'beta', "train.optim_g: unknown option 'beta'; did you mean 'betas'?"),
    ('train.scheduler', 'milestone', "train.scheduler: unknown option 'milestone'; did you mean 'milestones'?"),
    ('datasets.train', 'gt_sise', "datasets.train: unknown option 'gt_sise'; did you mean 'gt_size'?"),
    ('val', 'val_frq', "val: unknown option 'val_frq'; did you mean 'val_freq'?"),
    ('val.metrics.psnr', 'crop_boder', "val.metrics.psnr: unknown option 'crop_boder'; did you mean 'crop_border'?"),
    ('logger', 'use_tb', "logger: unknown option 'use_tb'; did you mean 'use_tb_logger'?"),
    ('path', 'pretrained_network_g', "path: unknown option 'pretrained_network_g'; did you mean 'pretrain_network_g'?"),
    ('train.divergence', 'skip_step', "train.divergence: unknown option 'skip_step'; did you mean 'skip_steps'?"),
    ('train.gate_temperature', 'strat', "train.gate_temperature: unknown option 'strat'; did you mean 'start'?"),
]


@pytest.mark.parametrize('section,key,expected', UNKNOWN, ids=[v[1] for v in UNKNOWN])
def test_unknown_key_suggests_the_nearest(opt, section, key, expected):
    opt['train'].update(divergence={'skip_steps': 1}, gate_temperature={'start': 1.0, 'end': 0.1})
    parent = opt
    for part in [v for v in section.split('.') if v]:
        parent = parent[part]
    real = {'netwrok_g': 'network_g'}.get(key)  # a misspelt section: the real one is then missing
    parent[key] = parent.pop(real) if real else 1
    with pytest.raises(OptionError) as error:
        check_schema(opt)
    assert str(error.value) == expected


@pytest.mark.parametrize('key,is_train,expected', [
    ('train.total_iter', True, "train: missing required option 'total_iter'."),
    ('train', True, "options: missing required option 'train'."),
    ('logger.save_checkpoint_freq', True, "logger: missing required option 'save_checkpoint_freq'."),
    ('datasets.train.batch_size_per_gpu', True, "datasets.train: missing required option 'batch_size_per_gpu'."),
    ('network_g.num_in_ch', True, "network_g: missing required option 'num_in_ch'."),
    ('path', False, "options: missing required option 'path'."),
    ('val.save_img', False, "val: missing required option 'save_img'."),
])
def test_missing_required_key_is_named(opt, key, is_train, expected):
    del_key(opt, key)
    with pytest.raises(OptionError) as error:
        check_schema(opt, is_train=is_train)
    assert str(error.value) == expected


def test_training_dataset_phases(opt):
    opt['datasets']['tain'] = opt['datasets'].pop('train')
    with pytest.raises(OptionError, match=r"^datasets: unknown phase 'tain' in a training config; did you mean "
                                          r"'train'\?$"):
        check_schema(opt)
    opt['datasets']['train'] = opt['datasets'].pop('tain')
    opt['datasets']['val_2'] = dict(opt['datasets']['val'])
    check_schema(opt)


def test_test_configs_need_no_train_section(opt):
    for key in ('train', 'logger'):
        del opt[key]
    check_schema(opt, is_train=False)  # a test run reads neither
    with pytest.raises(OptionError, match=r"^options: missing required option '(train|logger)'\.$"):
        check_schema(opt, is_train=True)


def test_allow_unknown_options_switch(opt):
    opt['train']['my_plugin_weight'] = 0.5
    opt['datasets']['train']['my_crop'] = 'center'
    with pytest.raises(OptionError, match="train: unknown option 'my_plugin_weight'"):
        check_schema(opt)
    for allow in (True, ['train.my_plugin_weight', 'datasets.*.my_crop'], ['train', 'datasets.train']):
        warnings = []
        check_schema(dict(copy.deepcopy(opt), allow_unknown_options=allow), warn=warnings.append)
        assert warnings == ['train.my_plugin_weight: unknown option, allowed by allow_unknown_options.',
                            'datasets.train.my_crop: unknown option, allowed by allow_unknown_options.']
    with pytest.raises(OptionError, match="datasets.train: unknown option 'my_crop'"):
        check_schema(dict(opt, allow_unknown_options=['train.my_plugin_weight']), warn=lambda line: None)
    with pytest.raises(OptionError, match='allow_unknown_options: expected true or false or a list'):
        check_schema(dict(opt, allow_unknown_options='yes'))


def test_models_and_datasets_declare_their_own_keys(opt):
    train_keys = extra_option_keys(ACLASearchModel, 'train')
    assert {'network_opt', 'divergence', 'search', 'optim_arch'} <= set(train_keys)  # inherited + its own
    assert 'reference' in extra_option_keys(ACLASearchModel, 'val')
    opt['train']['search'] = {'lambda': 0.1}
    with pytest.raises(OptionError, match="train: unknown option 'search'"):  # RestorationModel reads no search
        check_schema(opt)
    opt['model_type'] = 'ACLASearchModel'
    opt['network_g'] = {'type': 'ACLASuperEDSR', 'num_feat': 8, 'num_block': 2}
    check_schema(opt)
    opt['datasets']['train'].update(type='DegradedImageDataset', degradation={'type': 'jpeg', 'quality': 10},
                                    color='gray')
    del opt['datasets']['train']['dataroot_lq']
    check_schema(opt)
    opt['datasets']['train']['color'] = 'grey'
    with pytest.raises(OptionError, match="datasets.train.color: expected 'rgb', 'y' or 'gray', got 'grey'"):
        check_schema(opt)


def test_constructor_types_come_from_annotations_docstrings_and_defaults():
    class Net:
        def __init__(self, num_feat=64, scale=1, ratio=0.5, names=('a', ), flag=True, mode='x', weights=None,
                     count: int = 3, **kwargs):
            """Args:
                weights (dict | None): per-layer weights.
                scale (float): a float whose default is written as an int.
            """

    keys, open_ended, required = signature_schema(Net)
    assert keys == {'num_feat': 'float', 'scale': 'float', 'ratio': 'float', 'names': 'list', 'flag': 'bool',
                    'mode': 'str', 'weights': 'dict', 'count': 'int'}
    assert open_ended and required == ()
    assert kinds_from_text('tuple[float] | None') == 'list'
    assert kinds_from_text('int | None') == 'int'
    assert kinds_from_text('float | torch.Tensor') == 'float'
    assert kinds_from_text('nn.Module') == 'any'


@pytest.mark.slow
def test_misspelt_section_ends_the_run_before_anything_is_written(tmp_path, experiment_name):
    opt = tiny_sr_options(experiment_name, str(tmp_path), str(tmp_path))
    opt['netwrok_g'] = opt.pop('network_g')
    result = run_entry('train', write_options(opt, tmp_path / 'o.yml'))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == "error: options: unknown option 'netwrok_g'; did you mean " \
                                                      "'network_g'?"
    assert 'Traceback' not in result.stderr
    assert not osp.exists(osp.join(ROOT, 'experiments', experiment_name))


def test_options_reference_is_generated_from_the_declarations():
    """docs/options.md is what ``python -m acla_basicsr.config.reference`` prints: it cannot go stale."""
    from acla_basicsr.config.reference import options_reference
    text = options_reference()
    assert '`train.search.lambda` | a number >= 0 | required |' in text
    with open(osp.join(ROOT, 'docs', 'options.md')) as f:
        assert f.read() == text, 'docs/options.md is stale: python -m acla_basicsr.config.reference > docs/options.md'
