#!/usr/bin/env python
"""Turn the results of ``scripts/gpu_check.py`` (``OUT/results.json``) into a Markdown report (docs/gpu.md).

The report starts with the command that produced it, then the machine and versions, one section per step
(status, time, its figures as tables) and, for a failed step, the end of its output. A CPU run (``--device cpu``)
is labelled as such at the top: its figures are a rehearsal of the format, not GPU measurements.

Usage: python scripts/gpu_report.py [OUT or OUT/results.json] [-o docs/gpu.md]
    (default input: $OUT, else results/gpu_check; default output: stdout)
When the output file exists and holds the line ``<!-- report: scripts/gpu_report.py writes below -->``,
everything above that line is kept (docs/gpu.md's own introduction) and the report replaces what follows,
its headings one level down.
"""
import importlib.util
import json
import os
import os.path as osp
import re
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
MARKER = '<!-- report: scripts/gpu_report.py writes below -->'


def load_package_file(path):
    """A module of the package loaded from its file ``acla_basicsr/<path>``, without importing the package:
    that would import basicsr, which gpu_check.py installs in its first step (gpu_check.py uses it too)."""
    spec = importlib.util.spec_from_file_location('acla_' + path[:-3].replace('/', '_'),
                                                  osp.join(ROOT, 'acla_basicsr', path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli_args = load_package_file('cli/args.py')  # the command line's one-line errors


def fmt(value, digits=3):
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:.{digits}f}'
    return str(value)


def table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(fmt(v) for v in row) + ' |' for row in rows]
    return '\n'.join(lines)


def section_env(results):
    env = results.get('env') or {}
    if not env:
        return 'No environment was recorded (the env step did not run or failed).'
    if env.get('cuda_available'):
        device = (f"{env.get('gpu')} ({env.get('gpu_memory_gib')} GiB, compute capability {env.get('capability')}, "
                  f"{env.get('multiprocessors')} multiprocessors), {env.get('gpu_count')} visible")
    else:
        device = f"CPU only: {env.get('cpu', '?')}, {env.get('cpus')} cores (no CUDA device visible)"
    rows = [('device', device), ('driver', env.get('driver', '-')), ('torch', env.get('torch')),
            ('CUDA (torch built with)', env.get('cuda')), ('cuDNN', env.get('cudnn')),
            ('Python', env.get('python')), ('platform', env.get('platform'))]
    rows += [(f'package {name}', version) for name, version in (env.get('packages') or {}).items()]
    return table(['', ''], rows)


def section_train(step):
    data = step.get('data') or {}
    rows = data.get('rows') or []
    if not rows:
        return ''
    unit = 'wall' if data.get('device') == 'cuda' else 'CPU time of the process'
    head = (f"{data.get('precision')}, batch {data.get('batch')}, LR {data.get('lr_size')}x{data.get('lr_size')} "
            f"(x2), patches of the small LMDB, median of {data.get('repeat')} steps after {data.get('warmup')} "
            f"warm-up, round-robin; time: {unit}; peak memory: weights + Adam state + the step's growth of "
            "torch.cuda.max_memory_allocated (CUDA only)\n\n")
    return head + table(['network', 'parameters (M)', 's / step', 'steps / s', 'peak memory (MiB)',
                         f"vs {rows[0].get('backbone')}"],
                        [(r['network'], r['parameters_m'], r['s_per_step'], fmt(r['steps_per_s'], 2),
                          fmt(r['peak_mib'], 0), f"{r['vs_backbone']:.2f}x") for r in rows])


def section_precision(steps):
    """float32 against bfloat16 autocast, per network, when both training steps have rows."""
    fp32, bf16 = (({r['network']: r for r in (steps.get(name, {}).get('data') or {}).get('rows') or []})
                  for name in ('train_fp32', 'train_bf16'))
    common = [n for n in fp32 if n in bf16]
    if not common:
        return ''
    return '\n\n### float32 against bfloat16 autocast\n\n' + table(
        ['network', 's / step, float32', 's / step, bfloat16', 'bfloat16 speed-up', 'peak MiB, float32',
         'peak MiB, bfloat16'],
        [(n, fp32[n]['s_per_step'], bf16[n]['s_per_step'], f"{fp32[n]['s_per_step'] / bf16[n]['s_per_step']:.2f}x",
          fmt(fp32[n]['peak_mib'], 0), fmt(bf16[n]['peak_mib'], 0)) for n in common])


def section_tests(step):
    data = step.get('data') or {}
    if not data:
        return ''
    text = table(['passed', 'failed', 'skipped or xfailed'], [(data['passed'], data['failed'], data['skipped'])])
    if data.get('failures'):
        text += '\n\nFailed:\n\n' + '\n'.join(f'- `{v}`' for v in data['failures'])
    return text


def section_torchrun(step):
    d = step.get('data') or {}
    if not d:
        return ''
    rows = [('options', d.get('config')), ('backend', d.get('backend')),
            ('batch, HR patch', f"{d.get('batch')}, {d.get('gt_size')}x{d.get('gt_size')}"),
            ('first run: last logged iteration', d.get('first_run_iters')),
            ('first run: SIGKILLed after the training state of iteration', d.get('killed_after_state')),
            ('second run (--auto_resume): resumed from iteration', d.get('resumed_from')),
            ('second run: last logged iteration (of total_iter)', f"{fmt(d.get('last_iter'))} ({d.get('total_iter')})"),
            ('second run: median s / iteration (basicsr log, data loading included)', d.get('s_per_iter_median')),
            ('net_g_latest.pth written', d.get('final_weights'))]
    return table(['', ''], rows)


def section_restore(step):
    d = step.get('data') or {}
    rows = d.get('rows') or []
    if not rows:
        return ''
    cuda = d.get('device') == 'cuda'
    head = (f"{d['size']}x{d['size']} random RGB input, tiles of {d['tile']} + {d['tile_pad']} px, float32, "
            "**randomly initialised weights** (no trained checkpoint travels; time and memory do not depend on the "
            "values). `acla-restore` time: the command's `main` in a process that has imported the package (builds "
            "the network, loads the checkpoint, reads, restores, writes the PNG); restore time: the warm "
            "`restore()` call alone." + (" Peak memory: torch.cuda.max_memory_allocated; restore's growth is "
                                        "above the weights." if cuda else " Peak memory: the process's peak "
                                        "resident set (ru_maxrss).") + '\n\n')
    out = []
    for r in rows:
        out.append((r['config'], r.get('network'), r.get('parameters_m'),
                    'x'.join(str(v) for v in r['output'][:2]) if r.get('output') else '-',
                    r.get('cli_s'), fmt(r.get('cli_peak_mib'), 0), r.get('restore_s'),
                    fmt(r.get('restore_peak_growth_mib'), 0), r.get('error', '')))
    return head + table(['options', 'network', 'parameters (M)', 'output', 'acla-restore (s)',
                         'peak memory (MiB)', 'restore (s)', 'restore peak growth (MiB)', 'error'], out)


def section_install(step):
    d = step.get('data') or {}
    rows = [('wheels', ', '.join(d.get('wheels') or []) or 'none'),
            ('wheels size (bytes)', d.get('wheels_bytes')), ('acla_basicsr', d.get('package'))]
    return table(['', ''], rows)


def section_data(step):
    d = step.get('data') or {}
    if 'keys' not in d:
        return ''
    return table(['LMDB', 'keys', 'bytes'], [(d.get('path'), d.get('keys'), d.get('bytes')),
                                              (d['lq'].get('path'), d['lq'].get('keys'), d['lq'].get('bytes'))])


SECTIONS = {'install': section_install, 'data': section_data, 'tests': section_tests, 'train_fp32': section_train,
            'train_bf16': section_train, 'torchrun': section_torchrun, 'restore': section_restore}


def render(results):
    steps = {s['name']: s for s in results['steps']}
    cpu = results.get('device') != 'cuda' or not (results.get('env') or {}).get('cuda_available')
    lines = ['# GPU check report', '']
    if cpu:
        run = '`--device cpu --quick` (tiny sizes)' if results.get('quick') else '`--device cpu`'
        lines += [f'> **CPU run, not GPU figures.** This report comes from {run}: a rehearsal of every step and of '
                  'the format; its times and ratios say nothing about a GPU.', '']
    lines += ['Command:', '', f"    {results['command']}", '',
              f"Started {results.get('started')}, finished {results.get('finished', '(did not finish)')}, "
              f"{fmt(results.get('seconds'), 0)} s of a {fmt(results.get('budget_s'), 0)} s budget.", '']
    ok = sum(s['status'] == 'ok' for s in results['steps'])
    lines += ['## Summary', '', table(['step', 'status', 'seconds', 'limit (s)', 'note'],
                                      [(s['title'], s['status'], fmt(s['seconds'], 1), s.get('limit_s'),
                                        s.get('reason', '')) for s in results['steps']]), '',
              f"{ok} of {len(results['steps'])} steps passed.", '', '## Machine and versions', '',
              section_env(results), '']
    for step in results['steps']:
        if step['name'] == 'env':
            continue
        lines += [f"## {step['title']}", '', f"Status: **{step['status']}** in {step['seconds']} s"
                  f"{' (' + step['reason'] + ')' if step.get('reason') else ''}.", '']
        for command in step.get('commands') or []:
            lines += [f"    {command['cmd']}"]
        if step.get('commands'):
            lines.append('')
        body = SECTIONS.get(step['name'], lambda s: '')(step)
        if not body and step['name'].startswith('bench_'):
            body = '\n\n'.join(step.get('tables') or [])
        if body:
            lines += [body, '']
        if step['name'] == 'train_bf16':
            extra = section_precision(steps)
            if extra:
                lines += [extra.strip(), '']
        if step['status'] not in ('ok', 'skipped') and step.get('tail'):
            tail = '\n'.join(step['tail'].splitlines()[-25:])
            lines += ['End of its output:', '', '```', tail, '```', '']
    return '\n'.join(lines).rstrip() + '\n'


def main(argv=None):
    parser = cli_args.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('results', nargs='?', default=None,
                        help='OUT folder of gpu_check.py or its results.json (default: $OUT, else results/gpu_check)')
    parser.add_argument('-o', '--output', type=cli_args.output_file, help='write the Markdown here (default: stdout)')
    args = parser.parse_args(argv)
    path = args.results or os.environ.get('OUT') or osp.join(ROOT, 'results', 'gpu_check')
    if osp.isdir(path):
        path = osp.join(path, 'results.json')
    if not osp.isfile(path):
        print(f'error: {path} does not exist; run scripts/gpu_check.sh first (or give its OUT folder).',
              file=sys.stderr)
        return 2
    try:
        with open(path) as f:
            results = json.load(f)
        text = render(results)
    except (ValueError, KeyError) as error:
        print(f'error: {path} is not a results.json of scripts/gpu_check.py ({type(error).__name__}: {error}).',
              file=sys.stderr)
        return 2
    if args.output and osp.isfile(args.output):
        with open(args.output) as f:
            kept = f.read()
        if MARKER in kept:  # the document's introduction stays; the report's headings go one level down
            text = kept.split(MARKER)[0] + MARKER + '\n\n' + re.sub(r'(?m)^(#+) ', r'#\1 ', text)
    if args.output:
        sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
        from acla_basicsr.fileio import write_text
        write_text(args.output, text)
        print(f'wrote {args.output}')
    else:
        sys.stdout.write(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
