"""The GPU check's CPU rehearsal: ``scripts/gpu_check.sh --device cpu --quick`` runs every step and reports it."""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, osp.join(ROOT, 'scripts'))
import gpu_check  # noqa: E402
import gpu_report  # noqa: E402


@pytest.mark.slow
def test_quick_cpu_run_reports_every_step(tmp_path):
    """Every step passes on the CPU with tiny sizes, within the budget, and the report has a section for each."""
    out = tmp_path / 'out'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop('OUT', None)
    # its own small LMDB (not datasets/gpu_check: other tests may snapshot datasets/), and a budget with room for the
    # other pytest-xdist worker's load (each step keeps its --quick limit)
    run = subprocess.run(['bash', osp.join(ROOT, 'scripts', 'gpu_check.sh'), '--device', 'cpu', '--quick', '--out',
                          str(out), '--data', str(tmp_path / 'data'), '--budget', '600'], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=720)
    assert sorted(os.listdir(out)) == ['gpu.md', 'gpu_check.log', 'results.json']  # the device tool returns 8 at most
    results = json.loads((out / 'results.json').read_text())
    statuses = {s['name']: (s['status'], s.get('reason')) for s in results['steps']}
    assert run.returncode == 0, (statuses, run.stdout[-3000:])
    assert [s['name'] for s in results['steps']] == gpu_check.STEPS
    report = (out / 'gpu.md').read_text()
    assert report.startswith('# GPU check report') and '**CPU run, not GPU figures.**' in report
    assert 'scripts/gpu_check.sh --device cpu --quick' in report
    for title in gpu_check.TITLES.values():
        assert f'## {title}' in report
    steps = {s['name']: s for s in results['steps']}
    assert steps['tests']['data']['failed'] == 0 and steps['tests']['data']['passed'] > 40
    for name in ('train_fp32', 'train_bf16'):
        rows = steps[name]['data']['rows']
        assert [r['network'].split()[0] for r in rows] == ['EDSR-large', 'EDSR-large', 'ENLCN', 'EARN']
        assert steps[name]['data']['precision'] == ('bfloat16' if name == 'train_bf16' else 'float32')
    torchrun = steps['torchrun']['data']
    assert torchrun['backend'] == 'gloo' and torchrun['resumed_from'] == torchrun['killed_after_state']
    assert torchrun['last_iter'] == torchrun['total_iter']
    restored = steps['restore']['data']['rows']
    assert len(restored) == 4 and not any('error' in r for r in restored)
    for name in ('bench_enlca', 'bench_cla_sampling', 'bench_search'):
        assert steps[name]['tables'], name
    assert not glob.glob(osp.join(ROOT, 'experiments', 'gpu_check_torchrun_*'))  # the step removes its run


@pytest.mark.slow
def test_a_hung_step_is_killed_and_the_next_runs(tmp_path, monkeypatch):
    """A step past its limit is killed with everything it started, recorded as a timeout, and the check goes on."""
    args = gpu_check.parse_args(['--device', 'cpu', '--quick', '--out', str(tmp_path), '--steps', 'env'])
    check = gpu_check.Check(args)
    check.step('bench_enlca', lambda record, end: check.command(
        record, [sys.executable, '-c', 'import subprocess, sys, time; subprocess.Popen([sys.executable, "-c", '
                 '"import time; time.sleep(60)"], start_new_session=True); print("started", flush=True); '
                 'time.sleep(60)'], min(end, __import__('time').time() + 5)))
    check.step('bench_search', lambda record, end: check.command(record, [sys.executable, '-c', 'print(1)'], end))
    steps = json.loads((tmp_path / 'results.json').read_text())['steps']
    assert [(s['name'], s['status']) for s in steps] == [('bench_enlca', 'timeout'), ('bench_search', 'ok')]
    assert 'killed at its time limit' in steps[0]['reason'] and 'started' in steps[0]['tail']
    assert '| bench_enlca.py | timeout |' in gpu_report.render(json.loads((tmp_path / 'results.json').read_text()))


@pytest.mark.parametrize('argv, message', [
    (['--device', 'gpu'], "--device: 'gpu' is not 'cuda' or 'cpu'"),
    (['--steps', 'tests', 'nope'], '--steps: nope unknown'),
    (['--budget', '5'], '--budget: 5 s is too short'),
])
def test_bad_arguments_exit_2_with_one_line(argv, message):
    run = subprocess.run([sys.executable, osp.join(ROOT, 'scripts', 'gpu_check.py'), *argv], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2 and message in run.stderr.strip().splitlines()[-1]


def test_report_of_a_missing_folder_exits_2(tmp_path):
    run = subprocess.run([sys.executable, osp.join(ROOT, 'scripts', 'gpu_report.py'), str(tmp_path / 'none')],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stderr.startswith('error: ') and len(run.stderr.strip().splitlines()) == 1
