"""Train with basicsr's pipeline and this project's classes.

Usage: python acla_basicsr/train.py -opt options/train/X.yml [--launcher pytorch] [--auto_resume] [--debug]
Results go to experiments/<name>/ under the repository root.
"""
import os.path as osp
import sys

if __name__ == '__main__':
    # Python put this file's folder first on sys.path, where acla_basicsr/data, utils, ... would shadow
    # top-level modules; the repository root goes there instead, so this checkout's package is imported.
    sys.path[0] = osp.dirname(osp.dirname(osp.abspath(__file__)))
    from acla_basicsr.cli.launch import main
    main('train', sys.path[0])
