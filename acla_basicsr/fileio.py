"""The one way this project writes a result file: atomically, durably, with the permissions of ``open``.

Checkpoints, training states, restored images, exported YAML and CSV, model-zoo files and prepared data
all go through :func:`atomic_write`: the content is written to a hidden temporary name in the target's
folder, flushed to disk (``fsync``), given the mode that a plain ``open`` would give under the current
umask (``0o666 & ~umask``: 0644 under the usual umask 022; ``tempfile.mkstemp`` alone gives 0600, which
hides a lab's checkpoints from colleagues), and renamed over the target. A reader, or a run killed at any
moment, sees the old file or the new one, never a half-written one; a failed write (a full disk, an
encoder that refuses) leaves the old file and no temporary behind.

A leaf module: it imports nothing of the project.
"""
import os
import os.path as osp
import tempfile


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """Write ``path`` by calling ``write(tmp_path)`` on a temporary name in its folder, then renaming it.

    Args:
        path (str): The target file; its folder is created if missing.
        write (Callable[[str], Any]): Writes the whole content to the path it is given (``torch.save``,
            ``safetensors.torch.save_file``, an ONNX export, ...).
    """
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path), suffix='.tmp', dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
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


def write_bytes(path, data):
    """Write ``data`` (bytes) to ``path`` atomically."""
    def write(tmp):
        with open(tmp, 'wb') as f:
            f.write(data)

    atomic_write(path, write)


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode('utf-8'))


def torch_save(obj, path):
    """``torch.save(obj, path)``, atomically (checkpoints and training states)."""
    import torch
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


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
