"""Images that turn out undecodable mid-run: one line naming the image, or skipped and logged.

The data checks (:mod:`acla_basicsr.data.checks`) read every image's header and decode the first pairs before
the run writes anything; an image damaged or replaced after that (or one the checks did not decode) used to
end the run deep in basicsr's transforms (``'NoneType' object has no attribute 'astype'`` from
``imfrombytes``), with a traceback.

:class:`CheckedDataset` wraps a dataset built by basicsr's ``build_dataset`` (the launcher hands
:func:`checked_build_dataset` to basicsr's pipelines for one run, so configs keep naming
``PairedImageDataset``). When loading a sample fails, it reads and decodes each image of that sample again
through the dataset's own file client; if one of them cannot be read or decoded, the failure is that image:

- by default :class:`~acla_basicsr.errors.DataError` names the dataset option, the image's key, its file or
  LMDB and the fix; the launcher prints it as one line and exits with status 2 (checkpoints and states are
  written atomically, so the last ones are intact and nothing is half-written);
- with ``skip_bad_images: true`` (training sets only) a warning naming the image goes to the run's log and
  the next sample (index + 1, deterministic) is returned instead.

Any other failure is re-raised as it was. In data loader worker processes the error reaches the main
process through torch's re-raise, which keeps the exception's type (see ``DataError.__str__``).
"""
from os import path as osp

import cv2
import numpy as np
from torch.utils import data as data

from acla_basicsr.errors import DataError


def sample_sources(dataset, index):
    """The images that sample ``index`` of a basicsr-style dataset reads: a list of (client key, path or key).

    basicsr's paired datasets list ``{'lq_path': ..., 'gt_path': ...}`` per sample in ``paths``
    (``*_path`` items; file paths on disk, keys in an LMDB); single-image datasets such as
    :class:`~acla_basicsr.data.degraded_image_dataset.DegradedImageDataset` list one path (client key ``gt``).
    A dataset without ``paths`` has no known sources (an empty list).
    """
    paths = getattr(dataset, 'paths', None)
    if paths is None or not 0 <= index < len(paths):
        return []
    entry = paths[index]
    if isinstance(entry, dict):
        return [(name[:-len('_path')], path) for name, path in entry.items()
                if name.endswith('_path') and isinstance(path, str)]
    return [('gt', entry)] if isinstance(entry, str) else []


def image_problem(file_client, client_key, path):
    """Why the image cannot be used ('cannot read it (...)', 'cannot decode it'), or None when it decodes."""
    try:
        content = file_client.get(path, client_key)
        buffer = np.frombuffer(content, np.uint8)
    except Exception as error:  # a file removed, an LMDB key gone (None), no permission
        return f'cannot read it ({type(error).__name__}: {error})'
    if buffer.size == 0 or cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) is None:
        return 'cannot decode it'
    return None


class CheckedDataset(data.Dataset):
    """A dataset whose undecodable images end the run with one line, or are skipped and logged.

    Attributes other than its own are the wrapped dataset's (``opt``, ``paths``, ...), so basicsr's
    samplers, loaders and models see the dataset they built.

    Args:
        dataset (Dataset): The dataset built by basicsr's ``build_dataset``.
        where (str): Its options section, e.g. ``datasets.train``, named in messages.
        skip (bool): Skip undecodable images (log a warning, return the next sample) instead of raising.
            Default: False.
    """

    def __init__(self, dataset, where, skip=False):
        self.dataset = dataset
        self.where = where
        self.skip = skip

    def __getattr__(self, name):
        if name == 'dataset':  # not set yet (unpickling in a worker process): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self):
        return len(self.dataset)

    def describe(self, client_key, path):
        """``<key> (<file>)`` on disk, ``<key> (key of <LMDB>)`` in an LMDB."""
        io_backend = (getattr(self.dataset, 'opt', None) or {}).get('io_backend') or {}
        if io_backend.get('type') == 'lmdb':
            lmdb = (self.dataset.opt.get(f'dataroot_{client_key}') or '?')
            return f'{path} (key of the LMDB {lmdb})'
        return f'{osp.basename(path)} ({path})'

    def bad_image(self, index):
        """The one-line description of the first image of sample ``index`` that cannot be used, or None."""
        file_client = getattr(self.dataset, 'file_client', None)
        if file_client is None:
            return None
        for client_key, path in sample_sources(self.dataset, index):
            problem = image_problem(file_client, client_key, path)
            if problem:
                return f'image {self.describe(client_key, path)}: {problem}'
        return None

    def error_message(self, image):
        """The message of :class:`DataError` for ``image`` (see :meth:`bad_image`), with the fix."""
        if self.where.startswith('datasets.train'):
            fix = f'restore the file, or set {self.where}.skip_bad_images: true to skip such images with a warning'
        else:
            fix = 'restore or remove the file'
        return f'{self.where}: {image}, found while the run was loading it (it changed after the pre-run check); {fix}.'

    def __getitem__(self, index):
        size = len(self.dataset)
        for offset in range(size):
            current = (index + offset) % size
            try:
                return self.dataset[current]
            except Exception:
                image = self.bad_image(current)
                if image is None:  # not an image that cannot be read: the failure as it was
                    raise
            if not self.skip:
                raise DataError(self.error_message(image))
            from basicsr.utils import get_root_logger
            get_root_logger().warning(f'{self.where}: skipped {image} (skip_bad_images); sample {current} is '
                                      f'replaced by sample {(current + 1) % size}.')
        raise DataError(f'{self.where}: none of its {size} samples can be decoded; restore the images.')


def checked_build_dataset(build_dataset, datasets_opt):
    """basicsr's ``build_dataset`` whose datasets are :class:`CheckedDataset` (for one run, by the launcher).

    Args:
        build_dataset (callable): basicsr's ``build_dataset(dataset_opt)``.
        datasets_opt (callable): Returns the run's ``datasets`` options (a dict of sections), to name the
            section of each dataset (``datasets.val_2``) and read its ``skip_bad_images``.
    """
    def build(dataset_opt):
        sections = datasets_opt() or {}
        names = [name for name, section in sections.items() if section is dataset_opt]
        where = f"datasets.{names[0] if names else dataset_opt.get('phase', '?')}"
        skip = bool(dataset_opt.get('skip_bad_images')) and dataset_opt.get('phase') == 'train'
        return CheckedDataset(build_dataset(dataset_opt), where, skip=skip)

    return build
