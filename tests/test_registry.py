"""Every class of the project is registered in basicsr's registries, once, without name clashes."""
import importlib
import pkgutil
import subprocess
import sys

from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY

import acla_basicsr
import pytest
from conftest import ROOT

FOLDERS = {'archs': ('_arch', ARCH_REGISTRY), 'models': ('_model', MODEL_REGISTRY),
           'losses': ('_loss', LOSS_REGISTRY), 'data': ('_dataset', DATASET_REGISTRY)}


def project_registered(registry):
    return {name: obj for name, obj in registry if getattr(obj, '__module__', '').startswith('acla_basicsr.')}


def test_each_registered_file_holds_exactly_one_registered_class():
    for folder, (suffix, registry) in FOLDERS.items():
        package = importlib.import_module(f'acla_basicsr.{folder}')
        registered = project_registered(registry)
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f'acla_basicsr.{folder}.{info.name}')
            mine = [name for name, obj in registered.items() if obj.__module__ == module.__name__]
            if info.name.endswith(suffix):
                assert len(mine) == 1, f'{module.__name__} registers {mine}; one registered class per file'
            else:
                assert not mine, f'{module.__name__} is a helper module but registers {mine}'


def test_no_name_clashes_with_basicsr():
    for _, (_, registry) in FOLDERS.items():
        ours = project_registered(registry)
        basicsr_names = {name.replace('_basicsr', '') for name, obj in registry if obj.__module__.startswith('basicsr.')}
        assert not set(ours) & basicsr_names
        assert all(name == obj.__name__ for name, obj in ours.items())  # registered under its own name
    assert 'RestorationModel' in MODEL_REGISTRY


def run_python(code):
    return subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_import_order_and_reimport():
    names = sorted(project_registered(MODEL_REGISTRY)) + sorted(project_registered(ARCH_REGISTRY))
    check = (f'from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY\n'
             f'assert all(n in MODEL_REGISTRY or n in ARCH_REGISTRY for n in {names!r})\n'
             'from basicsr.train import train_pipeline\n')
    # basicsr imported first (its own import fails with current torchvision until the alias exists)
    first = ('try:\n    import basicsr\nexcept ImportError:\n    pass\n'
             'import acla_basicsr, basicsr\n' + check)
    # basicsr imported first by a program that set the alias itself, then ours, twice
    aliased = ('import sys, torchvision.transforms.functional as F\n'
               "sys.modules['torchvision.transforms.functional_tensor'] = F\n"
               'import basicsr, acla_basicsr, importlib\nimport acla_basicsr\n'
               + check)
    for code in (first, aliased):
        result = run_python(code)
        assert result.returncode == 0, result.stderr[-2000:]
