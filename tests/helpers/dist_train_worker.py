"""Run the training pipeline under torchrun and save every rank's final weights (test helper).

Usage: torchrun --nproc_per_node=2 tests/helpers/dist_train_worker.py OUT_DIR -opt X.yml --launcher pytorch
"""
import os
import os.path as osp
import sys

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import acla_basicsr  # noqa: E402,F401
import basicsr.train  # noqa: E402
from acla_basicsr.cli.launch import run_pipeline  # noqa: E402

out_dir = sys.argv.pop(1)
built = []
build_model = basicsr.train.build_model


def build_and_keep(opt):
    built.append(build_model(opt))
    return built[-1]


basicsr.train.build_model = build_and_keep
run_pipeline(basicsr.train.train_pipeline, ROOT)
model = built[0]
rank = int(os.environ['RANK'])
state = model.get_bare_model(model.net_g).state_dict()
torch.save({k: v.detach().cpu() for k, v in state.items()}, osp.join(out_dir, f'rank{rank}.pth'))
