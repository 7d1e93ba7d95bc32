"""Every malformed command line of every entry point: exit status 2, one line naming the argument, nothing created.

One table per entry point (``train.py``, ``test.py``, ``acla-restore``, the scripts and the benchmarks): each
row is a command line and the argument that its one ``error:`` line must name. The entry points' ``main(argv)``
run in this process (fast), with the working directory in a temporary folder; a few rows run as real
processes (marked slow, but train.py's). After each row neither the temporary folder nor the repository's
experiments/, results/, tb_logger/, datasets/ and model_zoo/ has a new entry.
"""
import importlib.util
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

from conftest import OTHER_TESTS_RUN, ROOT

TRAIN_YML = osp.join(ROOT, 'options', 'train', 'demo_EDSR_SRx2.yml')
TEST_YML = osp.join(ROOT, 'options', 'test', 'demo_EDSR_SRx2.yml')
SEARCH_YML = osp.join(ROOT, 'options', 'search', 'demo_search_SRx2.yml')
LAUNCHER_ENV = ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT', 'SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST')
WATCHED = ('experiments', 'results', 'tb_logger', 'datasets', 'model_zoo')

# {yml}: a valid options file of the entry point; {dir}: an existing folder; {file}: an existing file (not
# options); {missing}: a path that does not exist; {out}: a folder or file that does not exist yet; {bad}:
# a file that is not YAML
Y = '-opt {yml}'
CASES = {
    'train': [
        ('', '-opt'), ('-opt', '-opt'), ('-opt {missing}', '-opt'), ('-opt {dir}', '-opt'), ('-opt {bad}', '-opt'),
        (f'{Y} --bogus', '--bogus'), (f'{Y} --auto-resume', '--auto_resume'), (f'{Y} extra', 'extra'),
        (f'{Y} --launcher mpi', '--launcher'), (f'{Y} --launcher pytorch', '--launcher pytorch'),
        (f'{Y} --launcher slurm', '--launcher slurm'), (f'{Y} --local_rank x', '--local_rank'),
        (f'{Y} --local_rank -1', '--local_rank'), (f'{Y} --force_yml', '--force_yml'),
        (f'{Y} --force_yml train', '--force_yml train'), (f'{Y} --force_yml =3', '--force_yml =3'),
        (f'{Y} --force_yml train:total_iter==3', '--force_yml train:total_iter==3'),
        (f'{Y} --force_yml train:nosuchkey=1', '--force_yml train:nosuchkey=1'),
        (f'{Y} --force_yml nosection:key=1', '--force_yml nosection:key=1'),
        (f'{Y} --force_yml train:total_iter=abc', '--force_yml train:total_iter=abc'),
        (f'{Y} --force_yml train:scheduler:milestones=[1,', '--force_yml train:scheduler:milestones=[1,'),
        (f'{Y} --force_yml manual_seed=1 train:optim_g:nokey=1', '--force_yml train:optim_g:nokey=1'),
    ],
    'test': [
        ('', '-opt'), ('-opt {missing}', '-opt'), ('-opt {dir}', '-opt'), (f'{Y} --resume', '--resume'),
        (f'{Y} --launcher none x', 'x'), (f'{Y} --launcher pytorch', '--launcher pytorch'),
        (f'{Y} --force_yml val:nokey=1', '--force_yml val:nokey=1'), (f'{Y} --force_yml name', '--force_yml name'),
    ],
    'restore': [
        ('', '-i'), (f'{Y} -i {{dir}}', '-o'), (f'{Y} -o {{out}}', '-i'), ('-i {file} -o {out}', '--model'),
        ('-n nowhere_SRx2 -i {file} -o {out}', '-n'), ('--model nowhere_SRx2 -i {file} -o {out}', '--model'),
        ('--model {missing} -i {file} -o {out}', '--model'),
        ('-n demo_EDSR_SRx2 --model {file} -i {dir} -o {out}', '-n'),
        *[(f'{Y} -i {{dir}} -o {{out}} {args}', flag) for args, flag in [
            ('--tile -3', '--tile'), ('--tile abc', '--tile'), ('--tile', '--tile'), ('--tile 1.5', '--tile'),
            ('--tile-pad -1', '--tile-pad'), ('--device gpu', '--device'), ('--device cuda:7', '--device'),
            ('--ensemble', '--self-ensemble'), ('--bogus 3', '--bogus'), ('--outscale 0', '--outscale'),
            ('--outscale -2', '--outscale'), ('--outscale x', '--outscale'), ('--ext gif', '--ext'),
            ('--alpha-upsampler realesrgan', '--alpha-upsampler'), ('--tile automatic', '--tile'),
            ('--max-memory 0', '--max-memory'), ('--max-memory lots', '--max-memory'), ('--max-memory -1G', '--max-memory'),
            ('--max-memory', '--max-memory')]],
        ('-opt {missing} -i {dir} -o {out}', '-opt'), ('-opt {dir} -i {dir} -o {out}', '-opt'),
        (f'{Y} -i {{missing}} -o {{out}}', '-i'), (f'{Y} -i {{bad}} -o {{file}}', '-o'),
    ],
    'scripts/compare': [
        ('', '-opt'), (Y, '--iters'), (f'{Y} --iters 0', '--iters'), (f'{Y} --iters ten', '--iters'),
        ('-opt {missing} --iters 2', '-opt'), ('-opt {dir} --iters 2', '-opt'),
        *[(f'{Y} --iters 2 {args}', flag) for args, flag in [
            ('--seeds -1', '--seeds'), ('--seeds', '--seeds'), ('--channel rgbx', '--channel'),
            ('--threads -2', '--threads'), ('--baseline {file}', '--baseline'), ('--out {dir}', '--out'),
            ('--force_yml train:nokey=1', '--force_yml train:nokey=1'), ('--force_yml train', '--force_yml train'),
            ('--itres 3', '--iters')]],
    ],
    'scripts/complexity': [
        ('--size 0', '--size'), ('--tolerance-params x', '--tolerance-params'), ('--tolerance-macs -1',
                                                                              '--tolerance-macs'),
        (Y, '-opt'), ('--checkpoint {file}', '--checkpoint'), (f'{Y} --checkpoint {{missing}}', '--checkpoint'),
        ('--param-key ema', '--param-key'), ('--bogus', '--bogus'),
    ],
    'scripts/export_onnx': [
        ('', '-opt'), (Y, '--out'), (f'{Y} --out {{out}}.pt', '--out'), (f'{Y} --out {{dir}}', '--out'),
        *[(f'{Y} --out {{out}}.onnx {args}', flag) for args, flag in [
            ('--opset 99', '--opset'), ('--size 64', '--size'), ('--size 0 64', '--size'),
            ('--check-size 8 -8', '--check-size'), ('--tolerance -1', '--tolerance'),
            ('--tolerance nan', '--tolerance'), ('--model {missing}', '--model'), ('--param-key ema', '--param-key')]],
    ],
    'scripts/export_search': [
        ('', '-opt'), (Y, '--checkpoint'), (f'{Y} --checkpoint {{missing}}', '--checkpoint'),
        (f'{Y} --checkpoint {{file}} --iter -5', '--iter'), ('-opt {dir} --checkpoint {file}', '-opt'),
        (f'{Y} --checkpoint {{file}} --out {{file}}', '--out'),
    ],
    'scripts/publish_model': [
        ('', '-opt'), (f'{Y} --model {{file}}', '--out'), (f'{Y} --model {{missing}} --out {{out}}', '--model'),
        ('-opt {missing} --model {file} --out {out}', '-opt'), (f'{Y} --model {{file}} --out {{file}}', '--out'),
        *[(f'{Y} --model {{file}} --out {{out}} {args}', flag) for args, flag in [
            ('--iterations 0', '--iterations'), ('--param-key ema', '--param-key'), ('--metrics {missing}', '--metrics'),
            ('--train-log {dir}', '--train-log'), ('--name a/b', '--name'),
            ('--hub-folder {file}', '--hub-folder'), ('--hub-folder {out}', '--hub-folder')]],
        ('--refresh-card', '--refresh-card'), ('--refresh-card {missing}', '--refresh-card'),
        ('--refresh-card {file}', '--refresh-card'), ('--refresh-card {file} --out {out}', '--out'),
        ('--refresh-card {file} {file} --hub-folder {out}', '--hub-folder'),
    ],
    'scripts/measure_tasks': [
        ('--iters 0', '--iters'), ('--num-eval 30', '--num-eval'), ('--threads two', '--threads'), ('--x', '--x'),
    ],
    'scripts/measure_tiles': [
        ('--tiles 64', '--tiles'), ('--tiles 0:16', '--tiles'), ('--tiles 64:-1', '--tiles'),
        ('--opt options/test/nope.yml', '--opt'), ('--set NoSuchSet', '--set'),
    ],
    'scripts/prepare_benchmark': [
        ('--input {missing}', '--input'), ('--input {file}', '--input'),
        *[('--input {dir} --output {out} ' + args, flag) for args, flag in [
            ('--mod 10 --scales 3', '--mod'), ('--scales 0', '--scales'), ('--mod x', '--mod'),
            ('--tasks sr nope', '--tasks'), ('--sets Nope', '--sets')]],
        ('--input {dir} --output {file}', '--output'),
    ],
    'scripts/prepare_compare_data': [
        ('--root {out} --crop 0', '--crop'), ('--root {out} --step -1', '--step'), ('--root {out} --limit x', '--limit'),
        ('--root {out} --scales', '--scales'), ('--root {file}', '--root'),
    ],
    'scripts/prepare_example_data': [('--root {file}', '--root'), ('--root {out} --forse', '--force')],
    'scripts/prepare_sr_lmdb': [
        ('--input {missing} --output {out}', '--input'),
        *[('--input {dir} --output {out} ' + args, flag) for args, flag in [
            ('--crop-size 100 --scales 3', '--crop-size'), ('--workers 0', '--workers'),
            ('--thresh-size -1', '--thresh-size'), ('--step 1e3', '--step'), ('--name', '--name')]],
        ('--input {dir} --output {file}', '--output'),
    ],
    'scripts/gpu_check': [
        ('--device gpu', '--device'), ('--budget abc', '--budget'), ('--budget 5', '--budget'),
        ('--steps nope', '--steps'), ('--tile -1', '--tile'), ('--out {file}', '--out'), ('--quik', '--quick'),
    ],
    'scripts/gpu_report': [('-o {dir}', '--output'), ('{dir} {file}', '{file}'), ('--bogus', '--bogus')],
    'benchmarks/bench_cla_sampling': [
        ('--repeat 0', '--repeat'), ('--device gpu', '--device'), ('--memory-probe nope', '--memory-probe'),
    ],
    'benchmarks/search_module_gains': [('', '-opt'), ('-opt {missing} --checkpoint {missing}', '-opt'),
                                       (f'-opt {SEARCH_YML} --checkpoint {{missing}}', '--checkpoint'),
                                       (f'-opt {TRAIN_YML} --checkpoint {TRAIN_YML}', '-opt')],
    'benchmarks/bench_acla_sparsity': [('--threads 0', '--threads'), ('--open 1.5', '--open'), ('--size x', '--size'),
                                       ('--attention-repeat 0', '--attention-repeat')],
    'benchmarks/bench_divergence_guard': [('--repeats -1', '--repeats'), ('--threads 0', '--threads')],
    'benchmarks/bench_earn': [('--scale 5', '--scale'), ('--size 0', '--size'), ('--memory-size big', '--memory-size')],
    'benchmarks/bench_enlca': [('--sizes', '--sizes'), ('--channels 0', '--channels'), ('--device tpu', '--device')],
    'benchmarks/bench_inference_memory': [
        ('', '--config'), ('--config options/test/ACLA_SRx2.yml', '--size'), ('--config nope.yml --size 8', '--config'),
        ('--table --max-gib 0', '--max-gib'), ('--table --sizes 64', '--sizes'),
        ('--auto-table demo_ACLA_SRx2 --budgets 0', '--budgets'), ('--auto-table nowhere_x', '--auto-table'),
        ('--config options/test/ACLA_SRx2.yml --size 8 --tile x', '--tile'),
        ('--config options/test/ACLA_SRx2.yml --size 8 --max-memory 0', '--max-memory'),
    ],
    'benchmarks/bench_search': [
        ('--iters 0', '--iters'), ('-opt {missing}', '-opt'), ('--device cuda:9', '--device'), ('--batch 0', '--batch'),
    ],
    'benchmarks/bench_train_step': [
        ('--batch 0', '--batch'), ('--groups nope', '--groups'), ('--data {dir}', '--data'),
        ('--amp-dtype fp8', '--amp-dtype'), ('--json {dir}', '--json'), ('--warmup -1', '--warmup'),
    ],
}
ROWS = [(entry, line, flag) for entry, rows in CASES.items() for line, flag in rows]


@pytest.fixture
def paths(tmp_path, monkeypatch):
    """The placeholders' paths; the working directory is ``tmp_path/cwd``, no launcher environment."""
    for name in LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / 'dir').mkdir()
    (tmp_path / 'file.txt').write_text('not an options file\n')
    (tmp_path / 'bad.yml').write_text('name: [unclosed\n')
    (tmp_path / 'cwd').mkdir()
    monkeypatch.chdir(tmp_path / 'cwd')
    return {'dir': str(tmp_path / 'dir'), 'file': str(tmp_path / 'file.txt'), 'bad': str(tmp_path / 'bad.yml'),
            'missing': str(tmp_path / 'missing.yml'), 'out': str(tmp_path / 'out')}


def snapshot(tmp_path):
    """Every path under ``tmp_path``, and the entries of the repository's output folders but the runs of other tests
    (``OTHER_TESTS_RUN``: under pytest-xdist they come and go beside this test; no command line here names one)."""
    found = {osp.join(folder, name) for folder, dirs, files in os.walk(tmp_path) for name in dirs + files}
    for folder in WATCHED:
        if osp.isdir(osp.join(ROOT, folder)):
            found.add(osp.join(ROOT, folder))
            found.update(osp.join(ROOT, folder, name) for name in os.listdir(osp.join(ROOT, folder))
                         if not OTHER_TESTS_RUN.match(name))
    return found


def test_other_tests_runs_are_told_apart(experiment_name):
    """The names the snapshot ignores are those of other tests' runs (the experiment_name fixture, compare.py's and
    the GPU check's runs), and none of the experiment names the command lines here could create."""
    import yaml
    assert OTHER_TESTS_RUN.match(experiment_name)
    assert OTHER_TESTS_RUN.match('cmp_tiny_edsr_1_s0_0a1b2c') and OTHER_TESTS_RUN.match('gpu_check_torchrun_4242')
    for yml in (TRAIN_YML, TEST_YML):
        with open(yml) as f:
            assert not OTHER_TESTS_RUN.match(yaml.safe_load(f)['name'])


def command_line(entry, line, paths):
    return [word.format(yml=TEST_YML if entry == 'test' else TRAIN_YML, **paths) for word in line.split()]


def load_main(entry):
    """``main`` of an entry point: the launcher's and acla-restore's, or a script's or benchmark's."""
    if entry in ('train', 'test'):
        from acla_basicsr.cli.launch import main
        return lambda argv: main(entry, osp.dirname(os.getcwd()), argv)
    if entry == 'restore':
        from acla_basicsr.cli.restore import main
        return main
    folder, name = entry.split('/')
    sys.path.insert(0, osp.join(ROOT, folder))  # bench_train_step imports bench_search
    try:
        spec = importlib.util.spec_from_file_location(f'cli_args_{name}', osp.join(ROOT, folder, f'{name}.py'))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(osp.join(ROOT, folder))
    return module.main


def assert_one_line(code, err, flag, before, after):
    lines = [v for v in err.splitlines() if v.strip()]
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith('error: '), err[-2000:]
    assert re.search(rf'(^|[\s/,]){re.escape(flag)}($|[\s:=?,/])', lines[0]), (flag, lines[0])
    assert 'Traceback' not in err and 'usage:' not in err
    assert after == before, f'created: {sorted(after - before)}'


@pytest.mark.parametrize('entry,line,flag', ROWS, ids=[f'{e}:{line or "(none)"}' for e, line, _ in ROWS])
def test_malformed_command_line_gives_one_line(entry, line, flag, paths, tmp_path, capsys):
    main = load_main(entry)
    argv = command_line(entry, line, paths)
    capsys.readouterr()
    before = snapshot(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    assert_one_line(code, capsys.readouterr().err, flag.format(**paths), before, snapshot(tmp_path))


def test_every_entry_point_with_arguments_is_in_the_table():
    """A script or benchmark that parses arguments and has no row here fails this test."""
    parsing = {f'{folder}/{name[:-3]}' for folder in ('scripts', 'benchmarks')
               for name in os.listdir(osp.join(ROOT, folder))
               if name.endswith('.py') and 'parse_args(' in open(osp.join(ROOT, folder, name)).read()}
    assert parsing <= set(CASES), sorted(parsing - set(CASES))
    assert len(ROWS) >= 150, len(ROWS)


SUBPROCESS = [
    ('acla_basicsr/train.py', '-opt {dir}', '-opt'),
    ('acla_basicsr/test.py', '-opt {yml} --force_yml name', '--force_yml name'),
    ('scripts/inference.py', '-opt {yml} -i {dir} -o {out} --tile -3', '--tile'),
    ('scripts/gpu_check.py', '--budget abc', '--budget'),
    ('scripts/prepare_sr_lmdb.py', '--input {dir} --output {out} --workers 0', '--workers'),
    ('benchmarks/bench_earn.py', '--scale 5', '--scale'),
]


@pytest.mark.parametrize('script,line,flag', [
    pytest.param(*row, marks=[] if row[0] == 'acla_basicsr/train.py' else [pytest.mark.slow]) for row in SUBPROCESS],
    ids=[row[0] for row in SUBPROCESS])
def test_malformed_command_line_of_a_process(script, line, flag, paths, tmp_path):
    """The same as real processes (each starts torch: slow but for train.py): train.py and test.py, the
    restore script, gpu_check.py (which loads the helpers by their path), a script and a benchmark."""
    argv = command_line('test' if 'test.py' in script else 'train', line, paths)
    before = snapshot(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
    run = subprocess.run([sys.executable, osp.join(ROOT, script), *argv], capture_output=True, text=True,
                         timeout=300, cwd=paths['dir'], env=dict(env, OMP_NUM_THREADS='1', PYTHONPATH=ROOT))
    assert_one_line(run.returncode, run.stderr, flag, before, snapshot(tmp_path))
