#!/usr/bin/env python
"""The prepared GPU check: every CUDA path of the project in one call of at most nine minutes (docs/gpu.md).

Steps, in this order, each a subprocess under its own time limit (``timeout``: a hang in one step still
returns the others' figures; a failed step is recorded and the next one runs), all within ``--budget`` seconds:

1. ``install``: the wheels of ``.whl`` (``scripts/gpu_wheels.sh``: basicsr, lmdb) into a folder put on
   ``PYTHONPATH``, then ``pip install --no-deps -e .`` where the package is not installed yet;
2. ``env``: the GPU's name, memory and driver, torch, CUDA and cuDNN versions, the packages' versions;
3. ``data``: the small x2 LMDB that travels with the call (``--prepare`` makes it here from
   ``../shared/datasets/Set14``; where it is absent it is made from synthetic images);
4. ``tests``: ``tests/test_device.py`` (and the device-aware tests it names) with ``ACLA_TEST_DEVICE`` set to the device;
5. ``train_fp32``, ``train_bf16``: ``benchmarks/bench_train_step.py --groups full`` (EDSR-large, ACLA, ENLCN,
   EARN of ``options/train/*_SRx2.yml``) on patches of the LMDB, float32 and bfloat16 autocast: steps per
   second, peak memory, the ratio to EDSR-large;
6. ``torchrun``: ``acla_basicsr/train.py --launcher pytorch`` under ``torchrun --nproc_per_node=1`` (nccl on
   CUDA, gloo on the CPU) on the LMDB, killed (SIGKILL) once a training state is saved, then resumed with
   ``--auto_resume`` to its last iteration;
7. ``restore``: ``acla-restore`` (``restore_cli.main``, in one process for every network) on a random
   1000x1000 image with every full network of ``options/test`` (ACLA, ACLA-RCAN, ENLCN, EARN), tiled, with
   RANDOMLY INITIALISED weights (the time and memory do not depend on their values): time and peak memory;
8. ``bench_enlca``, ``bench_cla_sampling``, ``bench_search``: the ``--device cuda`` benchmarks of
   benchmarks/README.md, with short repeat counts.

Every figure goes into ``OUT/results.json`` (rewritten after each step) and every step's output into
``OUT/gpu_check.log``; at the end ``scripts/gpu_report.py`` writes ``OUT/gpu.md``. ``OUT`` is ``--out``, else the
environment variable ``OUT`` (the device tool's), else ``results/gpu_check``. Three files: the device tool
returns at most eight.

``--device cpu --quick`` runs every step on the CPU with tiny sizes (gloo instead of nccl, bfloat16 autocast on
the CPU), in about two minutes: ``tests/test_gpu_check.py`` runs it.

Usage:
    bash scripts/gpu_wheels.sh && python scripts/gpu_check.py --prepare    # here, once: wheels and LMDB
    bash scripts/gpu_check.sh --device cuda                                 # on the GPU machine
    bash scripts/gpu_check.sh --device cpu --quick [--out DIR]              # here
    python scripts/gpu_report.py OUT -o docs/gpu.md                         # the report
Exit status: 0 when every step passed, 1 when one failed or ran out of time, 2 on a bad argument.
"""
import argparse
import glob
import json
import os
import os.path as osp
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from gpu_report import cli_args, load_package_file  # noqa: E402  (acla_basicsr/cli/args.py, by its path)
DATA = osp.join(ROOT, 'datasets', 'gpu_check')
GT_LMDB, LQ_LMDB = 'Set14_HR_sub.lmdb', 'Set14_LR_bicubic_X2_sub.lmdb'
RESTORE_CONFIGS = ['options/test/ACLA_SRx2.yml', 'options/test/ACLA_RCAN_SRx2.yml', 'options/test/ENLCN_SRx2.yml',
                   'options/test/EARN_SRx2.yml']
LOG_TAIL = 3000  # characters of each step's output kept in results.json


fileio = load_package_file('fileio.py')  # the project's atomic writer

# Sizes: (GPU, --quick). Time limits in seconds: (GPU, --quick); --budget bounds them all together.
SIZES = {
    'train': (dict(batch=16, lr_size=48, warmup=2, repeat=10), dict(batch=1, lr_size=8, warmup=1, repeat=1)),
    'torchrun': (dict(config='options/train/ACLA_SRx2.yml', batch=16, gt_size=96, workers=4, total_iter=60,
                      checkpoint=5),
                 dict(config='options/train/demo_ACLA_SRx2.yml', batch=2, gt_size=32, workers=0, total_iter=30,
                      checkpoint=2)),
    'restore': (dict(size=1000, tile=256, tile_pad=16), dict(size=32, tile=16, tile_pad=4)),
    'bench_enlca': (['--sizes', '100', '150', '--repeats', '5'], ['--sizes', '24', '--repeats', '1']),
    'bench_cla_sampling': (['--repeat', '5', '--edsr-repeat', '3'],
                           ['--repeat', '1', '--edsr-repeat', '1', '--size', '16']),
    'bench_search': (['-opt', 'options/search/search_ACLA_EDSR_DN_sigma30.yml', '--positions', '2', '7', '9', '13',
                      '15', '--iters', '10', '--sampling-bound'],
                     ['--positions', '1', '2', '--iters', '1', '--batch', '1', '--sampling-bound']),
}
LIMITS = {'install': (90, 60), 'env': (45, 30), 'data': (60, 60), 'tests': (150, 90), 'train_fp32': (120, 60),
          'train_bf16': (100, 60), 'torchrun': (150, 90), 'restore': (150, 60), 'bench_enlca': (60, 30),
          'bench_cla_sampling': (90, 75), 'bench_search': (90, 40)}
STEPS = list(LIMITS)
TITLES = {'install': 'Installation from the carried wheels', 'env': 'Machine and versions',
          'data': 'The small LMDB', 'tests': 'Device tests (tests/test_device.py)',
          'train_fp32': 'Training steps, float32', 'train_bf16': 'Training steps, bfloat16 autocast',
          'torchrun': 'torchrun, killed and resumed', 'restore': 'Tiled restore of one large image',
          'bench_enlca': 'bench_enlca.py', 'bench_cla_sampling': 'bench_cla_sampling.py',
          'bench_search': 'bench_search.py'}


class Check:
    """The run: options, the environment of the subprocesses, the deadline, the results and the log."""

    def __init__(self, args):
        self.args = args
        self.cuda = args.device == 'cuda'
        self.quick = args.quick
        self.out = args.out
        os.makedirs(self.out, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix='gpu_check_')
        self.log_path = osp.join(self.out, 'gpu_check.log')
        open(self.log_path, 'w').close()
        self.deadline = time.time() + args.budget
        self.site = None
        self.results = {
            'command': ' '.join(['scripts/gpu_check.sh'] + [shlex.quote(a) for a in sys.argv[1:]]),
            'device': args.device, 'quick': self.quick, 'budget_s': args.budget,
            'started': time.strftime('%Y-%m-%d %H:%M:%S %Z'), 'env': {}, 'steps': []}

    # ----------------------------------------------------------------------------------- running
    def env(self, **extra):
        """The environment of every subprocess: this checkout (and the wheels' folder) first on the path."""
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        path = [ROOT] + ([self.site] if self.site else []) + [p for p in env.get('PYTHONPATH', '').split(':') if p]
        env['PYTHONPATH'] = ':'.join(path)
        if not self.cuda:
            env.update(OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
        env.update(extra)
        return env

    def remaining(self):
        return self.deadline - time.time()

    def log(self, text):
        with open(self.log_path, 'a') as f:
            f.write(text)
        print(text, end='', flush=True)

    def run(self, cmd, timeout, env=None, wait=True):
        """Run ``cmd`` (output appended to the log) in its own process group; return (rc, output, seconds).

        rc is None when the time limit killed it (SIGTERM to the group, SIGKILL 5 s later).
        """
        self.log(f'$ {" ".join(shlex.quote(str(c)) for c in cmd)}\n')
        start_offset = osp.getsize(self.log_path)
        start = time.time()
        with open(self.log_path, 'a') as log:
            process = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env or self.env(), stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
            if not wait:
                return process, start_offset
            rc = wait_or_kill(process, timeout)
        seconds = time.time() - start
        return rc, self.output_since(start_offset), seconds

    def output_since(self, offset):
        with open(self.log_path, errors='replace') as f:
            f.seek(offset)
            text = f.read()
        sys.stdout.write(text[-LOG_TAIL:] if len(text) > LOG_TAIL else text)
        return text

    def save(self):
        fileio.write_text(osp.join(self.out, 'results.json'), json.dumps(self.results, indent=1))

    def limit(self, name):
        return LIMITS[name][1 if self.quick else 0]

    def size(self, name):
        return SIZES[name][1 if self.quick else 0]

    def step(self, name, function):
        """Run one step under its limit and the budget; record status, seconds, output tail and figures."""
        record = {'name': name, 'title': TITLES[name], 'status': 'skipped', 'seconds': 0.0, 'commands': [],
                  'data': {}, 'tail': ''}
        self.results['steps'].append(record)
        limit = min(self.limit(name), self.remaining() - 10)  # 10 s kept for the report
        record['limit_s'] = round(limit)
        self.log(f'\n===== {name}: {TITLES[name]} (limit {limit:.0f} s) =====\n')
        if limit < 10:
            record['reason'] = f'the budget of {self.args.budget} s was spent before this step'
            self.log(f'skipped: {record["reason"]}\n')
            self.save()
            return
        start = time.time()
        record['status'] = 'running'
        self.save()
        try:
            status = function(record, start + limit)
        except Exception as error:  # the check goes on: a step's own bug is a failed step
            status = 'failed'
            record['reason'] = f'{type(error).__name__}: {error}'
            self.log(f'{record["reason"]}\n')
        record['status'] = status
        record['seconds'] = round(time.time() - start, 1)
        self.log(f'----- {name}: {status} in {record["seconds"]} s\n')
        self.save()

    def command(self, record, cmd, end, env=None):
        """Run one command of a step until the step's end time; return its status ('ok', 'failed', 'timeout')."""
        rc, output, seconds = self.run(cmd, max(1, end - time.time()), env)
        self.last_output = output
        status = 'ok' if rc == 0 else 'timeout' if rc is None else 'failed'
        record['commands'].append({'cmd': shown(cmd), 'rc': rc, 'seconds': round(seconds, 1), 'status': status})
        record['tail'] = (record['tail'] + output)[-LOG_TAIL:]
        record['tables'] = record.get('tables', []) + markdown_tables(output)
        if status != 'ok':
            what = ' '.join(str(c) for c in cmd[1:3]) if str(cmd[1]) in ('-m', '-c') else osp.basename(str(cmd[1]))
            record['reason'] = f'{what}: {"killed at its time limit" if rc is None else f"exit status {rc}"}'
        return status

    # ------------------------------------------------------------------------------------- steps
    def step_install(self, record, end):
        found = sorted(glob.glob(osp.join(self.args.wheels, '*.whl')))
        wheels = [w for w in found if installable(w)]
        record['data']['wheels'] = [osp.basename(w) for w in wheels]
        record['data']['wheels_bytes'] = sum(osp.getsize(w) for w in found)
        record['data']['not_for_this_python'] = [osp.basename(w) for w in found if w not in wheels]
        for wheel in record['data']['not_for_this_python']:
            self.log(f'{wheel}: not for this Python and platform, not installed\n')
        status = 'ok'
        if wheels:
            self.site = osp.join(self.tmp, 'site')
            status = self.command(record, [sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps',
                                           '--no-compile', '--no-cache-dir', '--upgrade', '--target', self.site]
                                  + wheels, end)
        else:
            self.log(f'no wheels in {self.args.wheels}: the installed basicsr and lmdb are used\n')
        # the package: installed once per machine (here it already is, elsewhere: never replace that install)
        where = subprocess.run([sys.executable, '-c', 'import importlib.util as u; s = u.find_spec("acla_basicsr");'
                                'print(s.origin if s else "")'], cwd=self.tmp, capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=self.site or '')).stdout.strip()
        if where:
            record['data']['package'] = f'already installed ({osp.dirname(osp.dirname(where))}); not reinstalled'
            self.log(f'acla_basicsr {record["data"]["package"]}; this checkout comes first on PYTHONPATH\n')
        elif status == 'ok':
            status = self.command(record, [sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps',
                                           '--no-build-isolation', '-e', '.'], end,
                                  self.env(PYTHONPATH=self.site or ''))
            record['data']['package'] = 'pip install --no-deps -e .: ' + status
        return status  # the env step imports every package and fails on a missing one

    def step_env(self, record, end):
        probe = osp.join(self.tmp, 'env.json')
        status = self.command(record, [sys.executable, osp.abspath(__file__), '--probe-env', probe], end)
        if osp.isfile(probe):
            with open(probe) as f:
                self.results['env'] = record['data'] = json.load(f)
            missing = [k for k, v in record['data']['packages'].items() if str(v).startswith('missing')]
            if missing:
                record['reason'] = f'missing packages: {", ".join(missing)}'
                return 'failed'
        return status

    def step_data(self, record, end):
        data = self.args.data
        gt, lq = osp.join(data, GT_LMDB), osp.join(data, LQ_LMDB)
        status = 'ok'
        if not (osp.isdir(gt) and osp.isdir(lq)):
            self.log(f'{data} has no {GT_LMDB} and {LQ_LMDB}: making them\n')
            status = self.command(record, [sys.executable, osp.abspath(__file__), '--prepare', '--data', data], end)
        record['data'].update(lmdb_summary(gt), lq=lmdb_summary(lq))
        return status

    def lmdbs(self):
        return [osp.join(self.args.data, GT_LMDB), osp.join(self.args.data, LQ_LMDB)]

    def step_tests(self, record, end):
        junit = osp.join(self.tmp, 'junit.xml')
        tests = ['tests/test_device.py', 'tests/test_cla_arch.py::test_fused_sampling_keeps_the_acla_gates_straight_through']
        status = self.command(record, [sys.executable, '-m', 'pytest', *tests, '-q', '-rfE',
                                       '-p', 'no:cacheprovider', f'--junitxml={junit}'], end,
                              self.env(ACLA_TEST_DEVICE=self.args.device))
        record['data'] = junit_summary(junit)
        return status

    def train(self, record, end, amp):
        size = self.size('train')
        rows = osp.join(self.tmp, f'train_{"bf16" if amp else "fp32"}.json')
        cmd = [sys.executable, 'benchmarks/bench_train_step.py', '--groups', 'full', '--device', self.args.device,
               '--batch', size['batch'], '--lr-size', size['lr_size'], '--warmup', size['warmup'],
               '--repeat', size['repeat'], '--data', *self.lmdbs(), '--random-vgg', '--json', rows]
        status = self.command(record, cmd + (['--amp'] if amp else []), end)
        if osp.isfile(rows):
            with open(rows) as f:
                record['data'] = json.load(f)
        return status

    def step_train_fp32(self, record, end):
        return self.train(record, end, amp=False)

    def step_train_bf16(self, record, end):
        return self.train(record, end, amp=True)

    def step_torchrun(self, record, end):
        import yaml
        size = self.size('torchrun')
        with open(osp.join(ROOT, size['config'])) as f:
            opt = yaml.safe_load(f)
        name = f'gpu_check_torchrun_{os.getpid()}'
        train = opt['datasets']['train']
        train.update(dataroot_gt=self.lmdbs()[0], dataroot_lq=self.lmdbs()[1], io_backend={'type': 'lmdb'},
                     filename_tmpl='{}', meta_info_file=None, gt_size=size['gt_size'],
                     batch_size_per_gpu=size['batch'], num_worker_per_gpu=size['workers'],
                     dataset_enlarge_ratio=10, prefetch_mode=None)
        opt['datasets'] = {'train': {k: v for k, v in train.items() if v is not None}}
        opt.pop('val', None)
        opt.update(name=name, num_gpu='auto' if self.cuda else 0)
        opt['train']['total_iter'] = size['total_iter']
        opt['logger'].update(print_freq=1, save_checkpoint_freq=size['checkpoint'], use_tb_logger=False,
                             wandb={'project': None, 'resume_id': None})
        backend = 'nccl' if self.cuda else 'gloo'
        opt['dist_params'] = {'backend': backend}
        opt['path'].update(pretrain_network_g=None, resume_state=None)
        config = osp.join(self.tmp, f'{name}.yml')
        with open(config, 'w') as f:
            yaml.safe_dump(opt, f, sort_keys=False)
        states = osp.join(ROOT, 'experiments', name, 'training_states')
        record['data'].update(config=size['config'], backend=backend, total_iter=size['total_iter'],
                              batch=size['batch'], gt_size=size['gt_size'])

        def launch(*extra):
            return [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=1',
                    f'--master_port={free_port()}', 'acla_basicsr/train.py', '-opt', config, '--launcher', 'pytorch',
                    *extra]

        try:
            # 1. train until a training state is saved, then kill the whole process group (a crash)
            cmd = launch()
            self.log('first run, SIGKILLed (with its workers) once a training state is saved:\n')
            process, offset = self.run(cmd, None, wait=False)
            first_end = time.time() + 0.6 * (end - time.time())
            saved = None
            while time.time() < first_end and process.poll() is None:
                saved = latest_state(states)
                if saved:
                    break
                time.sleep(0.05)
            rc = process.poll()
            kill_group(process, first=signal.SIGKILL)
            output = self.output_since(offset)
            record['tail'] = output[-LOG_TAIL:]
            record['commands'].append({'cmd': shown(cmd), 'rc': rc, 'status': 'SIGKILLed'})
            record['data'].update(first_run_iters=last_iter(output), killed_after_state=saved)
            if not saved or rc is not None:
                record['reason'] = ('the first run ended before it was killed (raise total_iter)' if rc is not None
                                    else 'the first run saved no training state in its time')
                return 'failed' if rc is not None else 'timeout'
            # 2. resume from the latest state and train to the last iteration
            status = self.command(record, launch('--auto_resume'), end)
            output = self.last_output
            resumed = re.search(r'Resuming training from epoch: \d+, iter: (\d+)', output)
            times = [float(t) for t in re.findall(r'time \(data\): ([\d.]+) \(', output)]
            record['data'].update(
                resumed_from=int(resumed.group(1)) if resumed else None, last_iter=last_iter(output),
                s_per_iter_median=statistics.median(times[1:]) if len(times) > 1 else None,
                final_weights=osp.isfile(osp.join(ROOT, 'experiments', name, 'models', 'net_g_latest.pth')))
            if status == 'ok' and not (resumed and record['data']['final_weights']
                                       and record['data']['last_iter'] == size['total_iter']):
                record['reason'] = ('the second run did not resume, did not reach total_iter or wrote no '
                                    'net_g_latest.pth')
                status = 'failed'
            return status
        finally:
            import shutil
            for folder in ('experiments', 'tb_logger'):
                shutil.rmtree(osp.join(ROOT, folder, name), ignore_errors=True)

    def step_restore(self, record, end):
        size = self.size('restore')
        rows = osp.join(self.tmp, 'restore.json')
        cmd = [sys.executable, osp.abspath(__file__), '--probe-restore', rows, '--device', self.args.device,
               '--size', size['size'], '--tile', size['tile'], '--tile-pad', size['tile_pad']]
        status = self.command(record, cmd + RESTORE_CONFIGS, end)
        if osp.isfile(rows):
            with open(rows) as f:
                record['data'] = json.load(f)
            if status == 'ok' and any(r.get('error') for r in record['data']['rows']):
                status = 'failed'
                record['reason'] = '; '.join(f"{r['config']}: {r['error']}" for r in record['data']['rows']
                                             if r.get('error'))
        return status

    def bench(self, name):
        def run(record, end):
            cmd = [sys.executable, f'benchmarks/{name}.py', '--device', self.args.device] + self.size(name)
            return self.command(record, cmd, end)
        return run

    def main(self):
        for name in self.args.steps:
            self.step(name, getattr(self, f'step_{name}', None) or self.bench(name))
        self.results['finished'] = time.strftime('%Y-%m-%d %H:%M:%S %Z')
        self.results['seconds'] = round(self.args.budget - self.remaining(), 1)
        self.save()
        report = subprocess.run([sys.executable, osp.join(ROOT, 'scripts', 'gpu_report.py'), self.out,
                                 '-o', osp.join(self.out, 'gpu.md')], capture_output=True, text=True)
        self.log(report.stdout + report.stderr)
        failed = [s['name'] for s in self.results['steps'] if s['status'] != 'ok']
        self.log(f'\n{len(self.results["steps"]) - len(failed)} of {len(self.results["steps"])} steps passed'
                 f'{" (not passed: " + ", ".join(failed) + ")" if failed else ""} in {self.results["seconds"]} s; '
                 f'results in {self.out}\n')
        import shutil
        shutil.rmtree(self.tmp, ignore_errors=True)
        return 1 if failed else 0


# ------------------------------------------------------------------------------------------ helpers
def shown(cmd):
    """A command as the report shows it: ``python``, paths relative to the checkout."""
    text = ' '.join(shlex.quote(str(c)) for c in cmd)
    return text.replace(sys.executable, 'python').replace(ROOT + '/', '')


def installable(wheel):
    """Whether pip can install the wheel file on this interpreter and platform (its tags are among this one's)."""
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:
        from pip._vendor.packaging.tags import sys_tags
        from pip._vendor.packaging.utils import parse_wheel_filename
    return bool(set(parse_wheel_filename(osp.basename(wheel))[3]) & set(sys_tags()))


def wait_or_kill(process, timeout):
    """Wait for ``process``; past ``timeout`` seconds (None: forever) end its group and return None."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        return None


def descendants(pid):
    """The ids of every process below ``pid`` (from /proc), children first."""
    children = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, queue = [], list(children.get(pid, []))
    while queue:
        child = queue.pop(0)
        found.append(child)
        queue.extend(children.get(child, []))
    return found


def kill_group(process, first=signal.SIGTERM):
    """``first`` to ``process`` (started with start_new_session), its group and every process below it (torchrun
    starts its workers in sessions of their own), then SIGKILL to whatever is left after 5 s."""
    below = descendants(process.pid)  # before the leader ends and they are handed to init
    for sig in (first, signal.SIGKILL):
        for pid in below:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        below = [pid for pid in below if osp.exists(f'/proc/{pid}')]
        if process.poll() is not None and not below:
            return


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def latest_state(folder):
    """The highest iteration with a complete ``<iter>.state`` in ``folder``, or None."""
    found = [int(m.group(1)) for m in (re.fullmatch(r'(\d+)\.state', v) for v in
                                       (os.listdir(folder) if osp.isdir(folder) else [])) if m]
    return max(found) if found else None


def last_iter(text):
    found = re.findall(r'iter:\s*([\d,]+)', text)
    return int(found[-1].replace(',', '')) if found else None


def markdown_tables(text):
    """The Markdown tables of a benchmark's output: runs of lines that start and end with '|'."""
    tables, current = [], []
    for line in text.splitlines() + ['']:
        if line.startswith('|') and line.rstrip().endswith('|'):
            current.append(line.rstrip())
        elif current:
            if len(current) >= 3:
                tables.append('\n'.join(current))
            current = []
    return tables


def junit_summary(path):
    """Counts and the failed tests' names of a pytest JUnit XML file ({} when it is absent)."""
    if not osp.isfile(path):
        return {}
    import xml.etree.ElementTree as ET
    cases = ET.parse(path).getroot().iter('testcase')
    summary = {'passed': 0, 'failed': 0, 'skipped': 0, 'failures': []}
    for case in cases:
        outcome = next((child.tag for child in case if child.tag in ('failure', 'error', 'skipped')), 'passed')
        key = {'failure': 'failed', 'error': 'failed', 'skipped': 'skipped'}.get(outcome, 'passed')
        summary[key] += 1
        if key == 'failed':
            message = next(child.get('message', '') for child in case if child.tag in ('failure', 'error'))
            summary['failures'].append(f"{case.get('name')}: {message.splitlines()[0] if message else outcome}"[:300])
    return summary


def lmdb_summary(path):
    meta = osp.join(path, 'meta_info.txt')
    if not osp.isfile(meta):
        return {'path': path, 'keys': 0}
    with open(meta) as f:
        keys = sum(1 for line in f if line.strip())
    size = sum(osp.getsize(osp.join(path, v)) for v in os.listdir(path))
    return {'path': osp.relpath(path, ROOT), 'keys': keys, 'bytes': size}


# --------------------------------------------------------------------------------- preparation (here)
def prepare(data, source):
    """Make ``data/{GT_LMDB,LQ_LMDB}``: 192x192 HR sub-images of ``source`` (Set14) and their x2 LR, as LMDBs.

    Without ``source``, 16 synthetic smooth images stand in. The sub-image PNGs stay in a temporary folder, so
    that only the two LMDBs (about 9 MB from Set14) travel with the call.
    """
    import shutil
    work = tempfile.mkdtemp(prefix='gpu_check_data_')
    try:
        if not osp.isdir(source):
            import cv2
            import numpy as np
            print(f'{source} is absent: 16 synthetic 384x384 images stand in', flush=True)
            source = osp.join(work, 'synthetic')
            os.makedirs(source)
            rng = np.random.default_rng(0)
            for i in range(16):
                img = cv2.resize(rng.random((25, 25, 3)).astype(np.float32), (384, 384), interpolation=cv2.INTER_CUBIC)
                cv2.imwrite(osp.join(source, f'img{i:02d}.png'), np.clip(img * 255, 0, 255).astype(np.uint8))
        cmd = [sys.executable, osp.join(ROOT, 'scripts', 'prepare_sr_lmdb.py'), '--input', source, '--output', work,
               '--name', 'Set14', '--scales', '2', '--crop-size', '192', '--step', '192', '--workers', '1']
        env = dict(os.environ, PYTHONPATH=':'.join([ROOT] + [p for p in os.environ.get('PYTHONPATH', '').split(':')
                                                             if p]))
        if subprocess.run(cmd, env=env).returncode != 0:
            raise SystemExit(f'error: scripts/prepare_sr_lmdb.py failed on {source}; see its message above.')
        os.makedirs(data, exist_ok=True)
        for name in (GT_LMDB, LQ_LMDB):
            shutil.rmtree(osp.join(data, name), ignore_errors=True)
            shutil.move(osp.join(work, name), osp.join(data, name))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = sum(osp.getsize(p) for p in glob.glob(osp.join(data, '*', '*')))
    print(f'{data}: {GT_LMDB} and {LQ_LMDB}, {total / 2**20:.1f} MiB', flush=True)


# ------------------------------------------------------------------------- probes (subprocesses)
def probe_env(path):
    """Write the machine's and the packages' versions to ``path`` (JSON)."""
    import platform
    info = {'python': platform.python_version(), 'platform': platform.platform(), 'cpus': os.cpu_count()}
    import torch
    info.update(torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(),
                    gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f'{props.major}.{props.minor}', multiprocessors=props.multi_processor_count)
        try:
            smi = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                                 capture_output=True, text=True, timeout=20)
            info['driver'] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout else None
        except (OSError, subprocess.TimeoutExpired):
            info['driver'] = None
    else:
        try:
            with open('/proc/cpuinfo') as f:
                info['cpu'] = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
        except (OSError, StopIteration):
            info['cpu'] = platform.processor()
    import acla_basicsr
    versions = {'acla_basicsr': acla_basicsr.__version__}
    for name in ('basicsr', 'torchvision', 'numpy', 'cv2', 'skimage', 'lmdb', 'yaml'):
        try:
            versions[name] = getattr(__import__(name), '__version__', '?')
        except ImportError as error:
            versions[name] = f'missing ({error})'
    info['packages'] = versions
    print(json.dumps(info, indent=1))
    with open(path, 'w') as f:
        json.dump(info, f, indent=1)


def probe_restore(path, configs, device_name, size, tile, tile_pad):
    """``acla-restore`` (``restore_cli.main``) on a random ``size`` x ``size`` image with every config's network
    (random weights, saved to a checkpoint first), then the warm ``restore`` call alone, timed; rows to ``path``."""
    import resource
    import shutil

    import cv2
    import numpy as np
    import torch
    import yaml

    import acla_basicsr  # noqa: F401  (before basicsr)
    from acla_basicsr import load_network, restore
    from acla_basicsr.cli.restore import main as restore_main
    from basicsr.archs import build_network
    device = torch.device(device_name)
    cuda = device.type == 'cuda'
    work = tempfile.mkdtemp(prefix='gpu_check_restore_')
    image = (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)
    cv2.imwrite(osp.join(work, 'input.png'), image)
    info = {'device': device.type, 'size': size, 'tile': tile, 'tile_pad': tile_pad, 'weights': 'random', 'rows': []}

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    try:
        for config in configs:
            row = {'config': config}
            info['rows'].append(row)
            try:
                with open(osp.join(ROOT, config)) as f:
                    network_opt = dict(yaml.safe_load(f)['network_g'])
                torch.manual_seed(0)
                net = build_network(network_opt)
                row['network'] = network_opt['type']
                row['parameters_m'] = sum(p.numel() for p in net.parameters()) / 1e6
                checkpoint = osp.join(work, 'random.pth')
                torch.save({'params': net.state_dict()}, checkpoint)
                del net
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                start = time.perf_counter()
                rc = restore_main(['-opt', osp.join(ROOT, config), '--model', checkpoint, '-i',
                                   osp.join(work, 'input.png'), '-o', osp.join(work, 'out'), '--tile', str(tile),
                                   '--tile-pad', str(tile_pad), '--device', device_name])
                sync()
                row['cli_s'] = time.perf_counter() - start
                row['cli_rc'] = rc
                if rc != 0:
                    raise RuntimeError(f'acla-restore exited with status {rc}')
                row['output'] = list(cv2.imread(osp.join(work, 'out', 'input.png')).shape)
                row['cli_peak_mib'] = (torch.cuda.max_memory_allocated(device) / 2**20 if cuda else
                                       resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
                net = load_network(osp.join(ROOT, config), checkpoint, device=device)
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                sync()
                start = time.perf_counter()
                restore(net, image, tile=tile, tile_pad=tile_pad)
                sync()
                row['restore_s'] = time.perf_counter() - start
                if cuda:
                    row['restore_peak_growth_mib'] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
                    row['weights_mib'] = base / 2**20
                del net
            except Exception as error:  # the next network still runs
                row['error'] = f'{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}'[:300]
            print(json.dumps(row), flush=True)
            with open(path, 'w') as f:
                json.dump(info, f, indent=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any('error' in r for r in info['rows']) else 0


# --------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = cli_args.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda', help="'cuda' (default) or 'cpu'")
    parser.add_argument('--quick', action='store_true', help='tiny sizes and short limits (a CPU rehearsal)')
    parser.add_argument('--out', type=cli_args.output_folder, default=None, help='results folder (default: $OUT, else results/gpu_check)')
    parser.add_argument('--budget', type=cli_args.positive_float, default=None,
                        help='seconds for all steps together (default 500: the call is at most nine minutes; '
                             '--quick: 300)')
    parser.add_argument('--steps', nargs='+', default=STEPS, help=f'a subset of: {" ".join(STEPS)}')
    parser.add_argument('--data', default=DATA, help='folder of the small LMDB (default datasets/gpu_check)')
    parser.add_argument('--wheels', default=osp.join(ROOT, '.whl'), help='folder of the carried wheels')
    parser.add_argument('--prepare', action='store_true',
                        help='here, before the call: make the small LMDB in --data from --source, then exit')
    parser.add_argument('--source', default=osp.join(osp.dirname(ROOT), 'shared', 'datasets', 'Set14'),
                        help='HR images of --prepare (default ../shared/datasets/Set14)')
    parser.add_argument('--probe-env', help=argparse.SUPPRESS)
    parser.add_argument('--probe-restore', help=argparse.SUPPRESS)
    parser.add_argument('--size', type=cli_args.positive_int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument('--tile', type=cli_args.non_negative_int, default=256, help=argparse.SUPPRESS)
    parser.add_argument('--tile-pad', type=cli_args.non_negative_int, default=16, help=argparse.SUPPRESS)
    parser.add_argument('configs', nargs='*', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device not in ('cpu', 'cuda'):
        parser.error(f"--device: {args.device!r} is not 'cuda' or 'cpu'; give one of them")
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        parser.error(f'--steps: {" ".join(unknown)} unknown; choose among {" ".join(STEPS)}')
    if args.budget is None:
        args.budget = 300. if args.quick else 500.
    if args.budget < 30:
        parser.error(f'--budget: {args.budget:g} s is too short; give at least 30')
    args.out = osp.abspath(args.out or os.environ.get('OUT') or osp.join(ROOT, 'results', 'gpu_check'))
    args.data, args.wheels = osp.abspath(args.data), osp.abspath(args.wheels)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.probe_env:
        return probe_env(args.probe_env)
    if args.probe_restore:
        return probe_restore(args.probe_restore, args.configs, args.device, args.size, args.tile, args.tile_pad)
    if args.prepare:
        return prepare(args.data, args.source)
    return Check(args).main()


if __name__ == '__main__':
    sys.exit(main())
