"""The project's exceptions: each message is one line that names the option or file and says the fix.

A leaf module (it imports nothing of the project), so every layer may raise them. The entry points
(:mod:`acla_basicsr.cli`) print ``error: <message>`` on stderr and exit with status 2 for each of them.
"""


class OptionError(ValueError):
    """A wrong option, argument or input file."""


class DivergenceError(RuntimeError):
    """The training diverged: what, where, the last good state and the fix."""


class DetectionError(ValueError):
    """A state dict that is none of the project's network families."""


class LogError(ValueError):
    """A test log that the model card cannot read."""


class PrepareError(RuntimeError):
    """A file that data preparation cannot use."""


class WriteError(OSError):
    """A result file that cannot be written (a full disk, no permission): which file, the space, the fix."""


class DataError(RuntimeError):
    """An image that a run cannot read or decode mid-run: the dataset option, the image, its file, the fix.

    Raised in a data loader worker process, it reaches the main process through torch's re-raise
    (``torch._utils.ExceptionWrapper``), which builds the same type from one string: the worker's traceback
    ending in ``DataError: <message>``. ``str()`` gives back the one-line message in both cases.
    """

    def __str__(self):
        text = super().__str__()
        marker = f'{type(self).__name__}: '
        lines = text.rstrip().splitlines()
        if len(lines) > 1 and marker in lines[-1]:  # re-raised from a worker process
            return lines[-1].split(marker, 1)[1]
        return text
