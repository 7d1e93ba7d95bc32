"""The options reference, docs/options.md, generated from the declarations (:mod:`acla_basicsr.option_spec`).

``python -m acla_basicsr.config.reference > docs/options.md`` writes it; ``tests/test_options_schema.py``
fails when the file and the declarations differ, so the page cannot go stale. Only the options this project
adds to basicsr's are listed (basicsr's own are in its ``options/`` examples).
"""
from basicsr.utils.registry import DATASET_REGISTRY, MODEL_REGISTRY

from acla_basicsr.option_spec import Option, as_option

#: (registry, registered name, what it is) of every class whose ``extra_option_keys`` are listed.
DECLARING = ((MODEL_REGISTRY, 'RestorationModel', 'model of every network of this project'),
             (MODEL_REGISTRY, 'ACLASearchModel', 'insert-position search, a RestorationModel'),
             (DATASET_REGISTRY, 'DegradedImageDataset', 'denoising, JPEG and mosaic data'))


def _cell(text):
    return str(text).replace('|', '\\|')


def _rows(section, prefix):
    for key, spec in section.items():
        name = f'{prefix}.{key}' if prefix else key
        if isinstance(spec, dict):
            yield from _rows(spec, name)
            continue
        option = as_option(spec)
        default = 'required' if option.required else ('~' if option.default is None else repr(option.default))
        yield f'| `{name}` | {_cell(option.expected())} | {_cell(default)} | {_cell(option.doc)} |'


def options_reference():
    """The Markdown of docs/options.md."""
    from acla_basicsr.data.degraded_image_dataset import DEGRADATIONS
    lines = ['# Options this project adds to basicsr\'s', '',
             'Generated from the declarations in the code (`python -m acla_basicsr.config.reference > docs/options.md`);',
             'the options schema checks every options file against them before anything is written (one line, exit',
             'status 2, for an unknown key, a missing required one, a wrong type or a number out of range).', '']
    from acla_basicsr.config.schema import DATASET_COMMON_KEYS
    lines += ['## Every dataset (any `type`)', '', '| option | takes | default | meaning |', '|---|---|---|---|']
    lines += list(_rows({k: v for k, v in DATASET_COMMON_KEYS.items() if isinstance(v, Option)}, 'datasets.<phase>'))
    lines.append('')
    for registry, name, what in DECLARING:
        cls = registry.get(name)
        lines += [f'## `{name}` ({what})', '', '| option | takes | default | meaning |', '|---|---|---|---|']
        declared = cls.__dict__.get('extra_option_keys') or {}
        if registry is MODEL_REGISTRY:
            for section, keys in declared.items():
                lines += list(_rows(keys, section))
        else:
            lines += list(_rows(declared, 'datasets.<phase>'))
            for kind, keys in DEGRADATIONS.items():
                lines += list(_rows(keys, f'datasets.<phase>.degradation ({kind})'))
        lines.append('')
    return '\n'.join(lines)


if __name__ == '__main__':
    print(options_reference(), end='')
