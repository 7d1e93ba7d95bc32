"""Model cards of published networks: metrics read from basicsr test logs, Markdown with YAML front matter.

Unregistered helper of ``scripts/publish_model.py``. A card is a Hugging Face-style model card: YAML front
matter between ``---`` lines (license, library, tags, and this project's keys: architecture and its
arguments, scale, task, training data, iterations, options file, sha256, metrics; last the Hub's
``model-index`` of the same metrics, :func:`model_index`), then Markdown: what the network is, the metrics
table, and the commands that trained, tested and published it. :func:`read_card` takes a card apart again, so
that a card is re-rendered from itself (``publish_model.py --refresh-card``).

Test logs are those that ``acla_basicsr/test.py`` writes to ``results/<name>/test_<name>_<time>.log``:
basicsr prints the options (``dict2str``: ``key: value``, nested sections as ``key:[`` ... ``]``), then for
every test set ``Validation <set>`` followed by one ``# <metric>: <value>`` line per metric, and
``RestorationModel`` adds ``Validation <set> against <baseline>: psnr: X vs <baseline> Y (+Z); ...``.
"""
import re

import yaml

from acla_basicsr.errors import LogError
from acla_basicsr.inference.checkpoints import task_of  # noqa: F401  (the card's task; also stored in checkpoints)

_TIME = r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO: '
_VALIDATION = re.compile(_TIME + r'Validation (?P<set>.+?)\s*$')
_METRIC = re.compile(r'^\s*# (?P<metric>\w+): (?P<value>-?[\d.]+|nan|inf)')
_AGAINST = re.compile(_TIME + r'Validation (?P<set>.+?) against (?P<ref>\S+): (?P<rest>.*)$')
_AGAINST_METRIC = re.compile(r'(?P<metric>\w+): (?P<value>-?[\d.]+) vs \S+ (?P<ref>-?[\d.]+)')
_LOADING = re.compile(_TIME + r'Loading (?P<arch>\S+) model from (?P<path>.+), with param key: \[(?P<key>[^\]]*)\]')


def _parse_dump(lines):
    """The options dict of basicsr's ``dict2str`` dump (the lines after its ``INFO:`` line)."""
    root, stack = {}, []
    current = root
    for line in lines:
        text = line.strip()
        if not text:
            continue
        if re.match(_TIME, line):
            break
        if text == ']':
            if not stack:
                break
            current = stack.pop()
        elif text.endswith(':['):
            child = {}
            current[text[:-2]] = child
            stack.append(current)
            current = child
        elif ': ' in text or text.endswith(':'):
            key, _, value = text.partition(':')
            try:
                current[key] = yaml.safe_load(value.strip()) if value.strip() else None
            except yaml.YAMLError:
                current[key] = value.strip()
        else:
            break
    return root


def parse_test_log(path):
    """The options and per-set metrics of one basicsr test log.

    Returns:
        dict: ``{'options': dict, 'checkpoint': str | None, 'sets': [{'name', 'metrics': {metric: value},
        'baseline': name | None, 'baseline_metrics': {metric: value}}]}``, sets in log order.

    Raises:
        LogError: The file cannot be read, or holds no options dump or no ``Validation`` block.
    """
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise LogError(f'{path}: cannot be read ({error.__class__.__name__}: {error}).') from None
    options, checkpoint, sets = None, None, {}
    for index, line in enumerate(lines):
        if options is None and re.match(_TIME + r'$', line) and index + 1 < len(lines) \
                and re.match(r'^  \w+:', lines[index + 1]):
            dump = _parse_dump(lines[index + 1:])
            options = dump if 'network_g' in dump else None
        loading = _LOADING.match(line)
        if loading:
            checkpoint = loading.group('path')
        against = _AGAINST.match(line)
        if against:
            entry = sets.setdefault(against.group('set'), {'name': against.group('set'), 'metrics': {}})
            entry['baseline'] = against.group('ref')
            entry['baseline_metrics'] = {m.group('metric'): float(m.group('ref'))
                                         for m in _AGAINST_METRIC.finditer(against.group('rest'))}
            continue
        validation = _VALIDATION.match(line)
        if validation:
            entry = sets.setdefault(validation.group('set'), {'name': validation.group('set'), 'metrics': {}})
            for follow in lines[index + 1:]:
                metric = _METRIC.match(follow)
                if not metric:
                    break
                entry['metrics'][metric.group('metric')] = float(metric.group('value'))
    if options is None:
        raise LogError(f'{path}: no options dump; give a log written by acla_basicsr/test.py '
                       '(results/<name>/test_<name>_<time>.log).')
    sets = [s for s in sets.values() if s['metrics']]
    if not sets:
        raise LogError(f'{path}: no "Validation <set>" metrics; the test did not finish or had no val.metrics.')
    for entry in sets:
        entry.setdefault('baseline', None)
        entry.setdefault('baseline_metrics', {})
    return {'options': options, 'checkpoint': checkpoint, 'sets': sets}


def metric_settings(options):
    """``{metric: (crop_border, test_y_channel)}`` of the ``val.metrics`` of a test's options."""
    metrics = ((options.get('val') or {}).get('metrics') or {})
    return {name: (opt.get('crop_border', 0), bool(opt.get('test_y_channel', False)))
            for name, opt in metrics.items() if isinstance(opt, dict)}


def metric_rows(logs):
    """Flat metric records of parsed test logs, one per (test set, log), for the front matter and the table."""
    rows = []
    for log in logs:
        settings = metric_settings(log['options'])
        for entry in log['sets']:
            row = {'dataset': entry['name'], 'test_options': log.get('options_file')}
            for metric, value in entry['metrics'].items():
                crop, y_channel = settings.get(metric, (None, None))
                row[metric] = round(value, 4)
                row[f'{metric}_crop_border'] = crop
                row[f'{metric}_y_channel'] = y_channel
            if entry['baseline']:
                row['baseline'] = entry['baseline']
                row.update({f'baseline_{m}': round(v, 4) for m, v in entry['baseline_metrics'].items()})
            rows.append(row)
    return rows


def model_index(name, task, rows):
    """The Hub's ``model-index`` (evaluation results) of a card: the network's own metrics of each test set.

    One result per test set of :func:`metric_rows` (task ``image-to-image``, named by the card's task; dataset
    name and type: the test set's name, since the benchmark sets have no Hub id), one metric per measured
    metric (``type``: psnr, ssim, ...; ``name`` such as ``PSNR-Y``; ``args``: basicsr's ``crop_border`` and
    ``test_y_channel``). The baseline's figures stay in the card's ``metrics`` and table only. See
    https://huggingface.co/docs/hub/model-cards#evaluation-results.

    Args:
        name (str): The card's ``model_name``.
        task (str): The card's ``task`` (:func:`task_of`).
        rows (list[dict]): :func:`metric_rows` (a card's ``metrics``).

    Returns:
        list[dict]: ``[{'name': name, 'results': [...]}]``, plain YAML types.
    """
    results = []
    for row in rows:
        metrics = []
        for metric in (k for k in row if f'{k}_crop_border' in row):
            y_channel = row.get(f'{metric}_y_channel')
            args = {'crop_border': row[f'{metric}_crop_border'], 'test_y_channel': y_channel}
            metrics.append({'type': metric, 'value': row[metric],
                            'name': metric.upper() + {True: '-Y', False: ' (RGB)'}.get(y_channel, ''),
                            'args': {k: v for k, v in args.items() if v is not None}})
        results.append({'task': {'type': 'image-to-image', 'name': task},
                        'dataset': {'name': row['dataset'], 'type': row['dataset']}, 'metrics': metrics})
    return [{'name': name, 'results': results}]


def _table(rows):
    if not rows:
        return '(no test log was given when this card was written)\n'
    lines = ['| test set | PSNR (dB) | SSIM | measured on | crop border | baseline | baseline PSNR / SSIM |',
             '|---|---|---|---|---|---|---|']
    for row in rows:
        channel = 'Y' if row.get('psnr_y_channel') else 'RGB'
        base = row.get('baseline') or '-'
        base_values = (f"{row['baseline_psnr']:.4f} / {row.get('baseline_ssim', float('nan')):.4f}"
                       if 'baseline_psnr' in row else '-')
        lines.append(f"| {row['dataset']} | {row.get('psnr', float('nan')):.4f} | {row.get('ssim', float('nan')):.4f} "
                     f"| {channel} | {row.get('psnr_crop_border')} | {base} | {base_values} |")
    return '\n'.join(lines) + '\n'


_NO_TEST = '# (no test log given)'
_TRAINED, _TESTED, _PUBLISHED = ('# trained with', '# tested with (writes the logs these metrics come from)',
                                 '# published with')


def render_card(front, description, commands, rows):
    """The Markdown text of a model card.

    Args:
        front (dict): Front matter (plain YAML types); its ``model-index`` is (re)built from ``rows``
            (:func:`model_index`) and put last.
        description (str): Paragraphs after the title.
        commands (dict): ``{'train': str, 'test': [str], 'publish': str}``.
        rows (list[dict]): :func:`metric_rows`.
    """
    front = {k: v for k, v in front.items() if k != 'model-index'}
    front['model-index'] = model_index(front['model_name'], front['task'], rows)
    header = yaml.safe_dump(front, sort_keys=False, default_flow_style=None, width=110, allow_unicode=True)
    name = front['model_name']
    files = front['files']
    tests = '\n'.join(commands.get('test') or [_NO_TEST])
    return f"""---
{header}---

# {name}

{description}

## Metrics

{_table(rows)}
Baseline: the metrics of the input the network starts from (MATLAB bicubic upsampling for SR, the noisy or
JPEG input, OpenCV bilinear demosaicing), measured in the same run.

## Commands

```bash
{_TRAINED}
{commands['train']}
{_TESTED}
{tests}
{_PUBLISHED}
{commands['publish']}
```

## Loading

```python
from acla_basicsr.zoo.published import load_zoo_model
net = load_zoo_model('{files['pth']}')  # a path or a URL; checks the sha256, eval() mode

import spandrel  # the loader of chaiNNer and ComfyUI
from acla_basicsr.zoo.spandrel_support import register
register()
model = spandrel.ModelLoader().load_from_file('{files['pth']}')
```

or with basicsr: `network_g` of the front matter, `path.pretrain_network_g: {files['pth']}`,
`param_key_g: {front['param_key']}`, `strict_load_g: true`.
"""


def _front_matter(path, text):
    if not text.startswith('---\n') or '\n---\n' not in text[4:]:
        raise ValueError(f'{path}: no YAML front matter (--- ... ---) at the top; give a model card '
                         '(<name>-<sha8>.md).')
    return yaml.safe_load(text[4:text.index('\n---\n', 4)])


def read_front_matter(path):
    """The YAML front matter of a model card, as a dict."""
    with open(path, encoding='utf-8') as f:
        return _front_matter(path, f.read())


def _between(text, start, end):
    """The text between the first ``start`` and the next ``end`` after it, or None."""
    begin = text.find(start)
    stop = text.find(end, begin + len(start)) if begin >= 0 else -1
    return text[begin + len(start):stop] if stop >= 0 else None


def read_card(path):
    """The parts of a card written by :func:`render_card`: ``(front, description, commands)``.

    ``render_card(front, description, commands, front['metrics'])`` gives the card back (with its
    ``model-index`` rebuilt from its ``metrics``); a card that it would not give back (edited by hand, or of
    another layout) is refused, so that re-rendering never drops a line.

    Raises:
        ValueError: One line naming the card: no front matter, a key missing, or a text that is not this layout.
    """
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f'{path}: cannot be read ({error.__class__.__name__}: {error}).') from None
    try:
        front = _front_matter(path, text)
    except yaml.YAMLError as error:
        raise ValueError(f'{path}: the front matter is not YAML ({" ".join(str(error).split())}).') from None
    missing = [k for k in ('model_name', 'task', 'files', 'param_key', 'metrics') if k not in (front or {})]
    if missing:
        raise ValueError(f'{path}: the front matter has no {", ".join(missing)}; not a card of publish_model.py.')
    description = _between(text, f"\n# {front['model_name']}\n\n", '\n\n## Metrics\n')
    block = _between(text, f'```bash\n{_TRAINED}\n', '\n```\n')
    parts = block and re.fullmatch(f'(.*)\n{re.escape(_TESTED)}\n(.*)\n{re.escape(_PUBLISHED)}\n(.*)', block, re.S)
    if description is not None and parts:
        tests = parts.group(2).split('\n')
        commands = {'train': parts.group(1), 'test': [] if tests == [_NO_TEST] else tests, 'publish': parts.group(3)}
        front_text = text[:text.index('\n---\n', 4) + 5]
        rendered = render_card(front, description, commands, front['metrics'])
        if rendered[rendered.index('\n---\n', 4) + 5:] == text[len(front_text):]:
            return front, description, commands
    raise ValueError(f'{path}: its text is not the layout that publish_model.py writes (edited by hand?); '
                     'publish the network again, or edit the card by hand.')
