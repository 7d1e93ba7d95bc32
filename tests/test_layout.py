"""The package's structure: import layers without circles, basicsr left as it was, one atomic writer, plots."""
import ast
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PACKAGE = osp.join(ROOT, 'acla_basicsr')

# low to high: a module may import from its own layer (without circles) and from the layers below
LAYERS = {
    'errors': 0, 'fileio': 0, 'option_spec': 0, 'version': 0,
    'compat': 1, 'archs': 1, 'data': 1,
    'losses': 2,
    'config': 3,
    'inference': 4,
    'models': 5,
    'zoo': 6,
    'cli': 7, 'spandrel_support': 7,
    'train': 8, 'test': 8, '__init__': 8,
}


def module_names():
    names = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith('.py'):
                rel = osp.relpath(osp.join(folder, name), ROOT)[:-3].replace(os.sep, '.')
                names[rel[:-len('.__init__')] if rel.endswith('.__init__') else rel] = osp.join(folder, name)
    return names


def project_imports(module, path, known):
    """Modules of the package that ``module`` imports anywhere in its file (module level or inside functions)."""
    package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')
                base = '.'.join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f'{base}.{alias.name}' if f'{base}.{alias.name}' in known else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != module)
    return found


def layer(module):
    parts = module.split('.')
    return LAYERS['__init__' if len(parts) == 1 else parts[1]]


def test_imports_run_down_the_layers_and_form_no_circle():
    modules = module_names()
    graph = {m: project_imports(m, p, modules) for m, p in modules.items()}
    upward = [(m, t) for m, targets in graph.items() for t in targets if layer(t) > layer(m)]
    assert not upward, f'imports that run up the layers: {upward}'
    # no circle: depth-first search with colours
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for target in graph[node]:
            if state.get(target) == 'open':
                raise AssertionError(f"import circle: {' -> '.join(stack[stack.index(target):] + [target])}")
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 'done'

    for node in graph:
        if node not in state:
            visit(node)
    assert 'acla_basicsr.utils' not in modules  # the old catch-all folder is gone


@pytest.mark.slow
def test_importing_the_package_changes_nothing_in_basicsr():
    """Every attribute of every basicsr module is the same object before and after ``import acla_basicsr``
    (only the registries fill up); a run through the launcher puts back what it replaced."""
    code = r'''
import sys, types, torchvision.transforms.functional as F
sys.modules['torchvision.transforms.functional_tensor'] = F
import basicsr, basicsr.train, basicsr.test, basicsr.models.base_model, basicsr.models.sr_model
def snapshot():
    out = {}
    for name, module in list(sys.modules.items()):
        if name.startswith('basicsr') and isinstance(module, types.ModuleType):
            out[name] = {k: id(v) for k, v in vars(module).items()}
            for k, v in vars(module).items():
                if isinstance(v, type) and v.__module__ == name:
                    out[f'{name}.{k}'] = {a: id(b) for a, b in vars(v).items()}
    return out
before = snapshot()
import acla_basicsr
from acla_basicsr.cli.launch import run_pipeline
sys.argv = ['train.py', '-opt', 'missing.yml']
try:
    run_pipeline(basicsr.train.train_pipeline, '.')
except SystemExit as exit:
    assert exit.code == 2
after = snapshot()
changed = [(m, k) for m, attrs in before.items() for k, v in attrs.items() if after[m].get(k) != v]
print(changed)
assert not changed, changed
'''
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_results_are_written_with_the_umasks_mode(tmp_path, umask_022):
    """A checkpoint (through RestorationModel.save_network), a restored PNG and an exported YAML are 0644."""
    from basicsr.models import build_model
    from acla_basicsr.inference import write_image
    from acla_basicsr.models.search_export import write_yaml
    models = tmp_path / 'models'
    models.mkdir()
    opt = {'name': 'mode', 'model_type': 'RestorationModel', 'scale': 2, 'num_gpu': 0, 'is_train': False,
           'dist': False, 'rank': 0, 'world_size': 1,
           'network_g': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 4, 'num_block': 1,
                         'upscale': 2},
           'path': {'models': str(models), 'pretrain_network_g': None}, 'val': {}}
    model = build_model(opt)
    model.save_network(model.net_g, 'net_g', 7)
    write_image(str(tmp_path / 'out.png'), np.zeros((4, 4, 3), np.uint8))
    write_yaml(str(tmp_path / 'out.yml'), {'a': 1})
    for path in (models / 'net_g_7.pth', tmp_path / 'out.png', tmp_path / 'out.yml'):
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o644), path
    assert torch.load(models / 'net_g_7.pth', weights_only=True)['params'].keys() == model.net_g.state_dict().keys()
    assert sorted(os.listdir(tmp_path)) == ['models', 'out.png', 'out.yml']  # no temporary left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    from acla_basicsr import fileio
    from acla_basicsr.errors import WriteError
    target = tmp_path / 'state.pth'
    fileio.write_text(target, 'old')

    def fail(tmp):
        with open(tmp, 'w') as f:
            f.write('half')
        raise OSError(28, 'No space left on device')

    with pytest.raises(WriteError, match=r'state\.pth: cannot write it \(No space left on device\); .* free on its disk'):
        fileio.atomic_write(target, fail)
    assert target.read_text() == 'old' and os.listdir(tmp_path) == ['state.pth']


def test_gate_history_round_trips_and_the_heat_map_shows_it(tmp_path):
    from matplotlib import colormaps
    from acla_basicsr.models.search_plot import read_history, update_history, write_heatmap
    path = tmp_path / 'gate_history.csv'
    update_history(path, 2, [1, 3], [0.0, 1.0])
    update_history(path, 6, [1, 3], [0.25, 0.75])
    iterations, probs = update_history(path, 4, [1, 3], [0.0, 1.0])  # resumed at 4: the row of 6 goes
    assert iterations == [2, 4] and read_history(path, [1, 3]) == ([2, 4], [[0.0, 1.0], [0.0, 1.0]])
    assert read_history(path, [1, 2]) == ([], [])  # another set of positions
    image = write_heatmap(str(tmp_path / 'heat.png'), iterations, [1, 3], probs)
    pixels = image.reshape(-1, 3).astype(int)
    # position 1 is closed (P = 0, viridis' first colour), position 3 open (P = 1, its last): both fill cells
    for value in (0.0, 1.0):
        colour = (np.array(colormaps['viridis'](value)[:3]) * 255).round().astype(int)
        assert (np.abs(pixels - colour).max(axis=1) <= 2).sum() > 400, value
    assert osp.getsize(tmp_path / 'heat.png') > 0


def test_the_package_imports_without_unix_only_modules():
    """Windows has no ``resource`` (nor ``fcntl``, ``pwd``, ``grp``): importing the package, its inference and
    zoo parts, and asking for the peak memory must not need them (ComfyUI and chaiNNer users load from there)."""
    code = ('import sys\n'
            "for name in ('resource', 'fcntl', 'pwd', 'grp', 'termios'):\n"
            '    sys.modules[name] = None  # import raises ImportError, as on Windows\n'
            'import acla_basicsr, acla_basicsr.inference, acla_basicsr.zoo.published, acla_basicsr.cli.restore\n'
            'from acla_basicsr.zoo.spandrel_support import register\nregister()\n'
            'from acla_basicsr.inference import peak_memory_mib\n'
            "assert 'rss' not in peak_memory_mib('cpu')\n")
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_staged_folder_replaces_the_old_one_only_when_complete(tmp_path):
    from acla_basicsr import fileio
    target = tmp_path / 'data'
    with fileio.staged_folder(target) as tmp:
        open(osp.join(tmp, 'a.txt'), 'w').write('new')
    with pytest.raises(RuntimeError):
        with fileio.staged_folder(target) as tmp:
            open(osp.join(tmp, 'a.txt'), 'w').write('half')
            raise RuntimeError('interrupted')
    assert (target / 'a.txt').read_text() == 'new' and os.listdir(tmp_path) == ['data']
