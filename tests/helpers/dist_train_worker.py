"""Run the training pipeline under torchrun and save every rank's final weights (test helper).

Usage: torchrun --nproc_per_node=2 tests/helpers/dist_train_worker.py OUT_DIR -opt X.yml --launcher pytorch

With ``KILL_RANK1_AT=N`` in the environment, rank 1 of the first attempt (``TORCHELASTIC_RESTART_COUNT`` 0)
SIGKILLs itself right after the optimizer step of iteration N, as a lost machine would, and first writes its
process id to ``OUT_DIR/killed_at_N``. After that step, not before it: the step's gradient all-reduce needs
rank 0 inside iteration N, so rank 0 has written the training state of every earlier checkpoint in full.
"""
import os
import os.path as osp
import signal
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


def killed_after(step, iteration):
    """``step`` (a model's ``optimize_parameters``) that SIGKILLs this process after iteration ``iteration``."""

    def step_then_die(current_iter):
        result = step(current_iter)
        if current_iter == iteration:
            with open(osp.join(out_dir, f'killed_at_{iteration}'), 'w') as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    return step_then_die


def build_and_keep(opt):
    built.append(build_model(opt))
    kill_at = int(os.environ.get('KILL_RANK1_AT', 0))
    if kill_at and os.environ.get('RANK') == '1' and os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') == '0':
        built[-1].optimize_parameters = killed_after(built[-1].optimize_parameters, kill_at)
    return built[-1]


basicsr.train.build_model = build_and_keep
run_pipeline(basicsr.train.train_pipeline, ROOT)
model = built[0]
rank = int(os.environ['RANK'])
state = model.get_bare_model(model.net_g).state_dict()
torch.save({k: v.detach().cpu() for k, v in state.items()}, osp.join(out_dir, f'rank{rank}.pth'))
