"""Restore or super-resolve your own images; the same arguments as the console command ``acla-restore``.

python scripts/inference.py -opt options/test/demo_EDSR_SRx2.yml -i photos/ -o results/photos [--tile 256]
See ``python scripts/inference.py --help`` and docs/inference.md.
"""
import os.path as osp
import sys

if __name__ == '__main__':
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # this checkout's package
    from acla_basicsr.cli.restore import console_main
    console_main()
