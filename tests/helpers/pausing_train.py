"""Training runs that stop at a chosen moment and wait there, for a test to SIGKILL them.

Usage: python tests/helpers/pausing_train.py MARKER PAUSE:CONFIG[:resume] [PAUSE:CONFIG[:resume] ...]

Each argument is one run of ``acla_basicsr/train.py -opt CONFIG`` (with ``--auto_resume`` when it ends in
``:resume``), in a child process forked from this one after torch, basicsr and acla_basicsr are imported
(a fresh interpreter per run would spend most of the test importing them). The runs follow one another.

PAUSE is ``none``, ``iter=N`` (after the optimizer step of iteration N, before its checkpoint) or
``save=NAME`` (while the checkpoint file NAME, e.g. ``4.state`` or ``net_g_6.pth``, is being written: its
temporary file holds half of the bytes). At the pause the child writes its process id to ``MARKER.<run
index>`` and sleeps; the test kills it. For every run this process prints ``run <index>: exit <code>`` or
``run <index>: signal <number>``.
"""
import os
import os.path as osp
import sys
import time
import traceback

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir))
sys.path.insert(0, ROOT)


def pause(marker):
    with open(marker + '.tmp', 'w') as f:
        f.write(str(os.getpid()))
    os.replace(marker + '.tmp', marker)
    time.sleep(120)
    raise SystemExit('pausing_train: not killed while paused')


def install_pause(marker, spec):
    import torch

    from acla_basicsr.models.restoration_model import RestorationModel
    kind, _, value = spec.partition('=')
    if kind == 'iter':
        step = RestorationModel.backward_and_step

        def backward_and_step(self, loss_dict, optimizers, current_iter, *args, **kwargs):
            taken = step(self, loss_dict, optimizers, current_iter, *args, **kwargs)
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
    elif kind != 'none':
        raise SystemExit(f'pausing_train: unknown pause {spec!r}')


def child(marker, spec, config, resume):
    from acla_basicsr.cli.launch import main as launch
    code = 0
    try:
        install_pause(marker, spec)
        sys.argv = ['train.py', '-opt', config] + (['--auto_resume'] if resume else [])
        launch('train', ROOT)
    except SystemExit as error:
        code = error.code if isinstance(error.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main():
    marker, runs = sys.argv[1], sys.argv[2:]
    import acla_basicsr  # noqa: F401  (imported once, before the children are forked)
    import acla_basicsr.cli.launch  # noqa: F401
    for index, run in enumerate(runs):
        spec, config, *flags = run.split(':')
        pid = os.fork()
        if pid == 0:
            child(f'{marker}.{index}', spec, config, flags == ['resume'])
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            print(f'run {index}: signal {os.WTERMSIG(status)}', flush=True)
        else:
            print(f'run {index}: exit {os.WEXITSTATUS(status)}', flush=True)


if __name__ == '__main__':
    main()
