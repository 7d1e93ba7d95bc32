#!/usr/bin/env python
"""Install acla_basicsr: ``pip install -r requirements.txt && pip install -e .``"""
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
    ],
    extras_require={'test': ['pytest>=7']},
    license='Apache License 2.0',
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Image Processing',
    ],
    zip_safe=False,
)
