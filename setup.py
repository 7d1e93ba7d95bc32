#!/usr/bin/env python
"""Install acla_basicsr: ``pip install -r requirements.txt && pip install .`` (or ``-e .`` to develop).

Console commands: ``acla-train``, ``acla-test`` (basicsr's pipelines with this project's classes) and
``acla-restore`` (inference on your own images). Installed with ``pip install .``, they write
``experiments/``, ``results/`` and ``tb_logger/`` under the working directory.
"""
import os.path as osp

from setuptools import find_packages, setup


def get_version():
    namespace = {}
    with open(osp.join(osp.dirname(__file__), 'acla_basicsr', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


setup(
    name='acla_basicsr',
    version=get_version(),
    description='ACLA, ENLCA and EARN image restoration networks as a BasicSR plugin',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    keywords='computer vision, super resolution, image restoration, attention, basicsr',
    packages=find_packages(include=('acla_basicsr', 'acla_basicsr.*')),
    python_requires='>=3.9',
    install_requires=[
        'basicsr==1.4.2',  # the last release; acla_basicsr.compat adapts it to current torch
        'torch>=2.1',
        'torchvision>=0.16',
        'numpy>=1.24',
        'opencv-python>=4.5',
        'scikit-image>=0.20',
        'lmdb>=1.0',
        'pyyaml>=5.4',
        'tqdm>=4.60',
        'psutil>=5.8',  # acla-restore --tile auto: the available RAM
        'scipy>=1.15',  # scipy.stats.poisson_binom: the search's most probable count (basicsr needs scipy too)
        'matplotlib>=3.7',  # the search's gate heat map (Agg backend)
    ],
    extras_require={
        # model zoo: .safetensors copies, ONNX export and check, spandrel loading (docs/model_zoo.md); onnxscript is
        # torch's dynamo exporter's translation (0.7.2: the first whose optimizer folds EARN's graph, measured)
        'zoo': ['safetensors>=0.4', 'onnx>=1.15', 'onnxscript>=0.7.2', 'onnxruntime>=1.17', 'spandrel>=0.4'],
        'test': ['pytest>=7', 'pytest-xdist>=3.2', 'safetensors>=0.4', 'onnx>=1.15', 'onnxscript>=0.7.2',
                 'onnxruntime>=1.17', 'spandrel>=0.4'],
    },
    entry_points={
        'console_scripts': [
            'acla-train = acla_basicsr.cli.launch:console_train',
            'acla-test = acla_basicsr.cli.launch:console_test',
            'acla-restore = acla_basicsr.cli.restore:console_main',
        ],
    },
    license='Apache License 2.0',
    license_files=['LICENSE'],
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Image Processing',
    ],
    zip_safe=False,
)
