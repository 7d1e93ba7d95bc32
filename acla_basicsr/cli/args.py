"""The command lines' one place for errors: a malformed argument ends with one line and exit status 2.

Every entry point (``train.py`` and ``test.py`` through :mod:`.launch`, ``acla-restore``, the scripts and the
benchmarks) builds its parser with :class:`ArgumentParser`. An unknown flag, a missing argument or value, a
value of the wrong type, a number out of range, a wrong choice or two flags that exclude each other end with
``error: <argument>: <what is wrong>; <the fix> (see <prog> -h)`` on stderr and exit status 2, instead of
argparse's usage block; the checks made after parsing end the same way through :func:`fail`. Both happen
before anything is created.

The ``type=`` functions here (:func:`int_range`, :func:`float_range`, :func:`existing_file`, ...) say what is
expected: ``--threads: expected a whole number >= 1, got 'abc'``.

Standard library only: a script that runs before basicsr is installed (``scripts/gpu_check.py``) loads this
file by its path instead of importing the package.
"""
import argparse
import difflib
import math
import os.path as osp
import re
import sys


def fail(message):
    """Print ``error: <message>`` as one line on stderr and exit with status 2."""
    print('error: ' + ' '.join(str(message).split()), file=sys.stderr, flush=True)
    sys.exit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line (:func:`fail`) that names the argument and the fix."""

    def error(self, message):
        fail(f'{self.explain(message)} (see {self.prog} -h)')

    def explain(self, message):
        """argparse's message, reworded to name the argument first and to say the fix."""
        message = re.sub(r'^argument ([^:]+): ', r'\1: ', message)
        if message.startswith('the following arguments are required: '):
            names = message.split(': ', 1)[1]
            return f"{names}: missing; {'they are' if ', ' in names else 'it is'} required"
        match = re.match(r'(unrecognized arguments?): (.*)', message)
        if match:
            words = match.group(2).split()
            flags = [s for action in self._actions for s in action.option_strings]
            unknown = next((w for w in words if w.startswith('-')), words[0])
            close = difflib.get_close_matches(unknown.split('=')[0], flags, n=1)
            hint = f'did you mean {close[0]}?' if close else 'remove it' if len(words) == 1 else 'remove them'
            return f"{match.group(2)}: {'unknown argument' if len(words) == 1 else 'unknown arguments'}; {hint}"
        return re.sub(r': expected (one|at least one|\d+) arguments?$',
                      lambda m: f": expected {'a' if m.group(1) == 'one' else m.group(1)} "
                                f"{'values' if m.group(1)[-1].isdigit() else 'value'} after it", message)


def int_range(low=None, high=None):
    """A ``type=`` for whole numbers from ``low`` to ``high`` (either may be None: no bound)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f'expected a whole number {_bounds(low, high)}, got {text!r}')
        return value
    parse.__name__ = 'whole number'
    return parse


def float_range(low=None, high=None, above=None):
    """A ``type=`` for finite numbers from ``low`` to ``high``, or greater than ``above`` (None: no bound)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high) \
                or (above is not None and value <= above):
            bounds = f'> {above}' + (f' and <= {high}' if high is not None else '') if above is not None \
                else _bounds(low, high)
            raise argparse.ArgumentTypeError(f'expected a number {bounds}, got {text!r}')
        return value
    parse.__name__ = 'number'
    return parse


def _bounds(low, high):
    if low is not None and high is not None:
        return f'from {low} to {high}'
    if low is not None:
        return f'>= {low}'
    return f'<= {high}' if high is not None else '(any)'


positive_int = int_range(1)
non_negative_int = int_range(0)
positive_float = float_range(above=0)
non_negative_float = float_range(0)


def tile_size(text):
    """A ``type=`` for ``--tile``: ``auto`` or a whole number >= 0 (0: no tiles)."""
    if text == 'auto':
        return text
    try:
        return non_negative_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number >= 0, got {text!r}") from None


def memory_size(text):
    """A ``type=`` for an amount of memory: MiB as a number, or with a unit (``512M``, ``1.5G``, ``2GiB``);
    returns bytes."""
    match = re.fullmatch(r'\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*', text, re.IGNORECASE)
    value = float(match.group(1)) * 1024**'KMGT'.index(match.group(2).upper() or 'M') * 1024 if match else 0
    if not value > 0:
        raise argparse.ArgumentTypeError(f'expected an amount of memory > 0 such as 4G, 512M or 2048 (MiB), '
                                         f'got {text!r}')
    return value


def torch_device(text):
    """A ``type=`` for a torch device usable here: cpu, cuda, cuda:N (imports torch when it is called)."""
    import torch
    if re.fullmatch(r'cuda(:\d+)?', text):
        count, index = torch.cuda.device_count(), int(text.partition(':')[2] or 0)
        if index >= count:
            others = f' or cuda:0 to cuda:{count - 1}' if count > 1 else ' or cuda' if count else ''
            raise argparse.ArgumentTypeError(f'{text!r}: torch sees {count} CUDA device(s) here; give cpu{others}')
        return text
    try:
        torch.empty(0, device=torch.device(text))
    except Exception:  # noqa: B902  (torch raises RuntimeError, NotImplementedError, ... for a device it lacks)
        raise argparse.ArgumentTypeError(f'{text!r} is not a device usable here; give cpu or cuda[:N]') from None
    return text


def _existing(path, folder):
    kind, other = ('folder', 'file') if folder else ('file', 'folder')
    if not osp.exists(path):
        raise argparse.ArgumentTypeError(f'{path} does not exist; give an existing {kind}')
    if osp.isdir(path) != folder:
        raise argparse.ArgumentTypeError(f'{path} is a {other}; give a {kind}')
    return path


def existing_file(path):
    """A ``type=`` for a file that must exist (not a folder)."""
    return _existing(path, folder=False)


def existing_folder(path):
    """A ``type=`` for a folder that must exist."""
    return _existing(path, folder=True)


def output_file(path):
    """A ``type=`` for a file to write: not a folder, and its folder is not a file."""
    if osp.isdir(path):
        raise argparse.ArgumentTypeError(f'{path} is a folder; give the path of a file to write')
    parent = osp.dirname(osp.abspath(path))
    while not osp.exists(parent):
        parent = osp.dirname(parent)
    if not osp.isdir(parent):
        raise argparse.ArgumentTypeError(f'{parent} is a file, not a folder; give another path')
    return path


def output_folder(path):
    """A ``type=`` for a folder to write into: not an existing file."""
    if osp.exists(path) and not osp.isdir(path):
        raise argparse.ArgumentTypeError(f'{path} is a file; give a folder')
    return path
