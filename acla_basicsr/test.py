"""Test with basicsr's pipeline and this project's classes.

Usage: python acla_basicsr/test.py -opt options/test/X.yml [--launcher pytorch] [--debug]
Results go to results/<name>/ under the repository root.
"""
import os.path as osp
import sys

ROOT = osp.abspath(osp.join(__file__, osp.pardir, osp.pardir))
# Python puts this file's folder first on sys.path, where acla_basicsr/data, utils, ... would
# shadow top-level modules of those names; put the repository root there instead, which also
# makes this checkout's package the one imported.
if sys.path and osp.abspath(sys.path[0]) == osp.dirname(osp.abspath(__file__)):
    sys.path[0] = ROOT
elif ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import acla_basicsr  # noqa: E402,F401  (registers the project's classes, applies compat fixes)
from acla_basicsr.utils.launch import run_pipeline  # noqa: E402
from basicsr.test import test_pipeline  # noqa: E402

if __name__ == '__main__':
    run_pipeline(test_pipeline, ROOT)
