"""The one way this project writes a result file: atomically, durably, with the permissions of ``open``.

Checkpoints, training states, restored images, exported YAML and CSV, model-zoo files and prepared data
all go through :func:`atomic_write`: the content is written to a hidden temporary name in the target's
folder, flushed to disk (``fsync``), given the mode that a plain ``open`` would give under the current
umask (``0o666 & ~umask``: 0644 under the usual umask 022; ``tempfile.mkstemp`` alone gives 0600, which
hides a lab's checkpoints from colleagues), and renamed over the target. A reader, or a run killed at any
moment, sees the old file or the new one, never a half-written one; a failed write (a full disk, an
encoder that refuses) leaves the old file and no temporary behind.

A write that fails raises :class:`~acla_basicsr.errors.WriteError`, one line that names the file, the space it
needed (where known) and the space left on its disk.

A leaf module: it imports nothing of the project but its exceptions.
"""
import contextlib
import os
import os.path as osp
import shutil
import tempfile

from acla_basicsr.errors import WriteError


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mib(size):
    return f'{size / 2**20:.1f} MiB'


def atomic_write(path, write, size=None):
    """Write ``path`` by calling ``write(tmp_path)`` on a temporary name in its folder, then renaming it.

    Args:
        path (str): The target file; its folder is created if missing.
        write (Callable[[str], Any]): Writes the whole content to the path it is given (``torch.save``,
            ``safetensors.torch.save_file``, an ONNX export, ...).
        size (int | None): About how many bytes the file takes, for the message of a failed write. Default: None.

    Raises:
        WriteError: the file cannot be written (the old file, if any, is left as it was).
    """
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path), suffix='.tmp', dir=folder)
        os.close(fd)
        write(tmp)
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as error:
        try:
            free = f'{_mib(shutil.disk_usage(folder).free)} free on its disk'
        except OSError:
            free = 'its folder cannot be read'
        needed = f'about {_mib(size)} needed, ' if size else ''
        raise WriteError(f'{path}: cannot write it ({error.strerror or error}); {needed}{free}; free some space or '
                         'write elsewhere (the previous file, if any, is intact).') from error
    finally:
        if tmp is not None and osp.exists(tmp):
            os.remove(tmp)
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def staged_folder(path):
    """A whole folder written atomically (prepared data sets: LMDBs and their meta_info): the block fills the
    hidden temporary folder it is given, which then replaces ``path``; a failed block leaves ``path`` as it was."""
    path = osp.abspath(os.fspath(path))
    os.makedirs(osp.dirname(path), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{osp.basename(path)}-', dir=osp.dirname(path))
    try:
        yield tmp
        if osp.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            shutil.rmtree(tmp)


def write_bytes(path, data):
    """Write ``data`` (bytes) to ``path`` atomically."""
    def write(tmp):
        with open(tmp, 'wb') as f:
            f.write(data)

    atomic_write(path, write)


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode('utf-8'))


def _tensor_bytes(obj):
    import torch
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def torch_save(obj, path):
    """``torch.save(obj, path)``, atomically (checkpoints and training states)."""
    import torch
    atomic_write(path, lambda tmp: torch.save(obj, tmp), size=_tensor_bytes(obj))


def write_image(path, img, params=()):
    """Encode ``img`` (OpenCV's BGR order, uint8 or uint16) by the extension of ``path`` and write it atomically.

    Args:
        path (str): The target; its extension chooses the format (``.png``, ``.jpg``, ``.webp``, ...).
        img (ndarray): (H, W) or (H, W, C) image as ``cv2.imwrite`` takes it.
        params (Sequence[int]): ``cv2.imencode`` parameters, e.g. ``[cv2.IMWRITE_PNG_COMPRESSION, 3]``.

    Raises:
        OSError: the image cannot be encoded in that format.
    """
    import cv2
    ok, buf = cv2.imencode(osp.splitext(path)[1] or '.png', img, list(params))
    if not ok:
        raise OSError(f'{path}: cannot encode the image in this format; use .png.')
    write_bytes(path, buf.tobytes())
