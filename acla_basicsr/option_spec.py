"""The one way to declare an option and check it: :class:`Option`, sections of them, :func:`read_section`.

Every option that this project reads is declared once, as an :class:`Option` (type, default, range, meaning)
in a *section*, a dict ``{key: Option | section}``. The same declaration serves three readers:

- the options schema (:mod:`acla_basicsr.config.schema`), which walks a whole options file before basicsr
  parses it and rejects unknown keys (with the nearest known name), missing required keys, wrong types and
  values out of range, each with one line;
- the model, dataset or loss that reads the section: :func:`read_section` returns it checked, with the
  defaults filled in (a model declares its sections in ``extra_option_keys``);
- the options reference, docs/options.md, generated from the declarations
  (``python -m acla_basicsr.config.reference``; a test keeps it current).

A type is a string: ``int``, ``float`` (any number), ``bool``, ``str``, ``list``, ``dict``, ``any``,
alternatives joined by ``|``, other words as literal values (``int|auto``, ``exp|linear``). A plain string
stands for ``Option(that type)``. ``~`` (None) is accepted for every option that is not required.

A leaf module: it imports nothing of the project but its exceptions, so that networks, datasets, losses
and models can declare their options with it.
"""
import difflib
import math
import re

from acla_basicsr.errors import OptionError

KIND_WORDS = {'int': 'an integer', 'float': 'a number', 'bool': 'true or false', 'str': 'a string',
              'list': 'a list', 'dict': 'a mapping', 'any': 'anything'}


def _matches(value, kind):
    if kind == 'any':
        return True
    if kind == 'bool':
        return isinstance(value, bool)
    if kind == 'int':
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if kind == 'float':
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == 'str':
        return isinstance(value, str)
    if kind == 'list':
        return isinstance(value, (list, tuple))
    return isinstance(value, dict)


def _join_or(parts):
    return ' or '.join(parts) if len(parts) < 3 else ', '.join(parts[:-1]) + ' or ' + parts[-1]


class Option:
    """One option: its type, default, range and meaning.

    Args:
        kind (str): The type spec (module docstring). Default: 'any'.
        default: The value used when the option is absent or ``~``. Default: None.
        doc (str): What the option means, one sentence (for docs/options.md). Default: ''.
        low (float | None): Smallest value a number may take. Default: None.
        high (float | None): Largest value a number may take. Default: None.
        low_open (bool): ``low`` itself is excluded (``> low``). Default: False.
        high_open (bool): ``high`` itself is excluded (``< high``). Default: False.
        required (bool): The option must be given (not absent, not ``~``). Default: False.
    """

    def __init__(self, kind='any', default=None, doc='', *, low=None, high=None, low_open=False, high_open=False,
                 required=False):
        words = [w.strip() for w in kind.split('|')]
        self.kind = kind
        self.kinds = {w for w in words if w in KIND_WORDS}
        self.literals = [w for w in words if w not in KIND_WORDS]
        self.default, self.doc, self.required = default, doc, required
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def __repr__(self):
        return f'Option({self.kind!r}, default={self.default!r})'

    def expected(self):
        """What the option takes, in words: ``an integer >= 1``, ``'exp' or 'linear'``."""
        parts = [KIND_WORDS[k] for k in sorted(self.kinds)] + [repr(v) for v in self.literals]
        return _join_or(parts) + self.range_text()

    def range_text(self):
        """The range of a number, `` >= 0``, `` > 0 and < 1``, or ''."""
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return (' ' + ' and '.join(bounds)) if bounds else ''

    def check(self, value, where):
        """``value`` if it fits (an integral float as int where ints are asked); OptionError naming ``where``."""
        if value is None:
            if self.required:
                raise OptionError(f'{where}: missing; give {self.expected()}'
                                  + (f' ({self.doc[0].lower()}{self.doc[1:].rstrip(".")})' if self.doc else '') + '.')
            return None
        if isinstance(value, str) and value in self.literals:
            return value
        if not any(_matches(value, k) for k in self.kinds):
            hint = ''
            if self.kinds & {'int', 'float'} and isinstance(value, str) and re.fullmatch(
                    r'[-+]?\d*\.?\d+[eE][-+]?\d+', value):
                hint = (f'; YAML reads {value} as a string, write !!float {value} or a number with a dot '
                        f'({float(value)!r})')
            elif self.kinds & {'int', 'float'} and isinstance(value, str) and re.fullmatch(r'[-+]\d*\.?\d+', value):
                hint = (f"; that is the string {value!r}: basicsr's --force_yml reads signed numbers as strings, "
                        f'write !!float{value} there')
            raise OptionError(f'{where}: expected {self.expected()}, got {value!r}{hint}.')
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if number and (self.low is not None or self.high is not None):
            too_low = self.low is not None and (value < self.low or (self.low_open and value == self.low))
            too_high = self.high is not None and (value > self.high or (self.high_open and value == self.high))
            if too_low or too_high or (isinstance(value, float) and math.isnan(value)):
                raise OptionError(f'{where}: {value!r} is out of range; give {self.expected()}.')
        if number and 'int' in self.kinds and 'float' not in self.kinds and isinstance(value, float):
            return int(value)
        return value


def as_option(spec):
    """An :class:`Option` for a string spec or an Option; a section (dict) stays a section."""
    return Option(spec) if isinstance(spec, str) else spec


def check_value(value, spec, where):
    """Check ``value`` against ``spec`` (a string or an :class:`Option`); return it (see :meth:`Option.check`)."""
    return as_option(spec).check(value, where)


def unknown_option(where, key, known):
    """The OptionError for an unknown ``key`` in section ``where``, naming the nearest of ``known``."""
    names = [str(k) for k in known if '*' not in str(k)]
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else (
        'known: ' + ', '.join(sorted(names)) + '.' if len(names) <= 12 else
        'see the options files in options/ (or allow it with allow_unknown_options).')
    return OptionError(f"{where or 'options'}: unknown option '{key}'; {hint}")


def read_section(values, section, where):
    """Check one section of options against its declaration; return it with the defaults filled in.

    Args:
        values (dict | None): The section as the options file gives it; None: absent (every default).
        section (dict): ``{key: Option | str | section}``.
        where (str): The dotted name of the section, for the messages (``train.search``).

    Returns:
        dict: Every declared key, checked, with its default where absent (a nested section: None if absent).

    Raises:
        OptionError: an unknown key (with the nearest known one), a missing required key, a wrong type, a
            number out of range.
    """
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise OptionError(f"{where}: expected a mapping with keys {', '.join(section)}, got {values!r}.")
    for key in values:
        if key not in section:
            raise unknown_option(where, key, section)
    result = {}
    for key, spec in section.items():
        value = values.get(key)
        if isinstance(spec, dict):
            result[key] = None if value is None else read_section(value, spec, f'{where}.{key}')
            continue
        option = as_option(spec)
        value = option.check(value, f'{where}.{key}')
        result[key] = option.default if value is None else value
    return result


def registered_class(registry, name, where):
    """The class (or function) registered as ``name``; an OptionError naming ``where`` and the nearest name.

    Args:
        registry (basicsr.utils.registry.Registry): e.g. ``ARCH_REGISTRY``.
        name (str): The ``type`` of the options.
        where (str): The dotted name of the ``type`` option (``network_g.type``).
    """
    if name is None:
        raise OptionError(f'{where}: missing; set it to one of the registered names.')
    if not isinstance(name, str):
        raise OptionError(f'{where}: expected a string (a registered name), got {name!r}.')
    if name not in registry:
        known = sorted(k for k in registry.keys() if not k.endswith('_basicsr'))
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"registered: {', '.join(known)}."
        raise OptionError(f"{where}: unknown {registry._name} type '{name}'; {hint}")
    return registry.get(name)
