"""``acla_basicsr/train.py`` that can stop at a chosen moment and wait there, for a test to SIGKILL it.

Usage: python tests/helpers/pausing_train.py MARKER PAUSE -opt X.yml [--auto_resume]

PAUSE is ``none``, ``iter:N`` (after the optimizer step of iteration N, before its checkpoint) or
``save:NAME`` (while the checkpoint file NAME, e.g. ``4.state`` or ``net_g_6.pth``, is being written: its
temporary file holds half of the bytes). At the pause the script creates the file MARKER and sleeps.
With ``-opt`` given several times (and PAUSE ``none``) the runs follow one another in this process.
"""
import os
import os.path as osp
import sys
import time

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir))
sys.path.insert(0, ROOT)


def pause(marker):
    with open(marker, 'w') as f:
        f.write(str(os.getpid()))
    time.sleep(120)
    raise SystemExit('pausing_train: not killed while paused')


def install_pause(marker, spec):
    import torch

    from acla_basicsr.models.restoration_model import RestorationModel
    kind, _, value = spec.partition(':')
    if kind == 'iter':
        step = RestorationModel.backward_and_step

        def backward_and_step(self, loss_dict, optimizers, current_iter):
            taken = step(self, loss_dict, optimizers, current_iter)
            if current_iter == int(value):
                pause(marker)
            return taken

        RestorationModel.backward_and_step = backward_and_step
    elif kind == 'save':
        save = torch.save

        def half_written_save(obj, path, *args, **kwargs):
            save(obj, path, *args, **kwargs)
            if isinstance(path, str) and osp.basename(path).startswith(f'.{value}') and path.endswith('.tmp'):
                with open(path, 'r+b') as f:  # the temporary file of compat.atomic_torch_save, half written
                    f.truncate(osp.getsize(path) // 2)
                pause(marker)

        torch.save = half_written_save


def main():
    marker, spec, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    import acla_basicsr  # noqa: F401
    from acla_basicsr.utils.launch import main as launch
    if spec != 'none':
        install_pause(marker, spec)
    configs = [args[i + 1] for i, a in enumerate(args) if a == '-opt']
    flags = [a for i, a in enumerate(args) if a != '-opt' and (i == 0 or args[i - 1] != '-opt')]
    for config in configs:
        sys.argv = ['train.py', '-opt', config, *flags]
        launch('train', ROOT)


if __name__ == '__main__':
    main()
