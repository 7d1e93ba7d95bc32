import os
import random
import zlib
from os import path as osp

import cv2
import numpy as np
from torch.utils import data as data

from basicsr.data.data_util import paths_from_lmdb
from basicsr.data.transforms import augment
from basicsr.utils import FileClient, bgr2ycbcr, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY

from acla_basicsr.data.degradations import BAYER_PATTERNS, add_gaussian_noise, jpeg_compress, mosaic
from acla_basicsr.errors import OptionError
from acla_basicsr.option_spec import Option, read_section

IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
# Options of each degradation type (``degradation: {type: ..., ...}``), with their defaults.
DEGRADATIONS = {
    'gaussian_noise': {'sigma': Option('float', 25, 'Noise level on the 0..255 scale.', low=0)},
    'jpeg': {'quality': Option('int', 20, 'JPEG quality (the paper: 10, 20, 30, 40).', low=1, high=100)},
    'mosaic': {'pattern': Option('|'.join(BAYER_PATTERNS), 'RGGB', 'Bayer pattern.'),
               'channels': Option('int', 1, '1: the sensor plane; 3: one colour per pixel, the others zero.',
                                  low=1, high=3)},
}
COLORS = ('rgb', 'y', 'gray')


def image_seed(name):
    """A seed derived from an image name, stable across runs, processes and machines.

    ``zlib.crc32`` rather than Python's ``hash``, which is salted per process.
    """
    return zlib.crc32(name.encode('utf-8'))


@DATASET_REGISTRY.register()
class DegradedImageDataset(data.Dataset):
    """Ground-truth images degraded on the fly: denoising, JPEG artifact reduction, demosaicing.

    The restoration tasks of the ACLA paper (Sec. 4.3, 4.4, A.2; SPEC section 6) need only
    ground-truth images: the degraded input (LQ) is made from each GT image when it is loaded, by
    :mod:`acla_basicsr.data.degradations`. Training draws a fresh random degradation every time an
    image is loaded (after the random crop, flip and rotation); validation and test degrade each
    image with a generator seeded by its name (:func:`image_seed`), so every run sees the same
    noisy images (PSNR is reproducible run to run) while different images get different noise.

    Ground-truth sources, as in basicsr's datasets: a folder of images (``io_backend: {type:
    disk}``, optionally restricted to the names in ``meta_info_file``) or a basicsr LMDB
    (``io_backend: {type: lmdb}``, with its ``meta_info.txt``, e.g. made by
    ``scripts/prepare_sr_lmdb.py``).

    Colour (``color``):

    - 'rgb': colour images; gray source images are repeated to three channels. Denoising and
      demosaicing in the paper are on colour images, with PSNR on RGB.
    - 'y': the Y channel of YCbCr (ITU-R BT.601, 16..235, as MATLAB's ``rgb2ycbcr`` and basicsr's
      ``bgr2ycbcr``), rounded to 8 bits, and a gray source image (e.g. Classic5) as it is: the
      convention of JPEG artifact reduction in the paper (after RNAN and DnCNN): the Y channel is
      JPEG-compressed as a gray image and PSNR is measured on it.
    - 'gray': OpenCV's luma (``COLOR_BGR2GRAY``), rounded to 8 bits; gray images as they are.

    Returns ``{'lq', 'gt', 'lq_path', 'gt_path'}`` like basicsr's datasets, tensors CHW in RGB
    order and [0, 1]; both paths are the GT's, the LQ being made from it. The LQ has the GT's
    shape, except for ``mosaic`` with ``channels: 1``, where it is (1, H, W).

    Args:
        opt (dict): Config of the dataset. It contains the following keys:
            dataroot_gt (str): Folder or LMDB of ground-truth images.
            io_backend (dict): ``{type: disk}`` or ``{type: lmdb}``.
            meta_info_file (str, optional): Folder mode only: use the images listed there
                (first column), as basicsr's ``meta_info_file``.
            degradation (dict): ``{type: gaussian_noise, sigma: 25}`` (sigma on the 0..255 scale;
                the paper: 10, 30, 50, 70), ``{type: jpeg, quality: 20}`` (OpenCV's encoder; the
                paper used MATLAB's; quality 10, 20, 30, 40) or ``{type: mosaic, pattern: RGGB,
                channels: 1}`` (see :func:`acla_basicsr.data.degradations.mosaic`; the paper's
                networks see the 3-channel layout, ``channels: 3``).
            color (str): 'rgb', 'y' or 'gray', see above. Default: 'rgb'.
            gt_size (int): Training only: size of the random square crop.
            use_hflip (bool): Training only: random horizontal flips. Default: True.
            use_rot (bool): Training only: random 90-degree rotations. Default: True.
            scale (int): Added by basicsr; must be 1.
            phase (str): 'train' or 'val' (added by basicsr).
    """

    # its options beyond basicsr's common dataset keys (acla_basicsr/config/schema.py)
    extra_option_keys = {
        'degradation': Option('dict', None, 'The degradation: {type: gaussian_noise|jpeg|mosaic, ...} (below).',
                              required=True),
        'color': Option('|'.join(COLORS), 'rgb', 'Colour of the images the network sees.'),
        'gt_size': Option('int', None, 'Training only: side of the random crops.', low=1),
        'use_hflip': Option('bool', True, 'Training only: random horizontal flips.'),
        'use_rot': Option('bool', True, 'Training only: random 90-degree rotations.')}

    def __init__(self, opt):
        super(DegradedImageDataset, self).__init__()
        self.check_options(opt)
        self.opt = opt
        self.file_client = None
        self.io_backend_opt = dict(opt['io_backend'])
        self.gt_folder = opt['dataroot_gt']
        self.degradation = self.degradation_options(opt)
        self.color = opt.get('color', 'rgb')
        if self.io_backend_opt['type'] == 'lmdb':
            self.io_backend_opt['db_paths'] = [self.gt_folder]
            self.io_backend_opt['client_keys'] = ['gt']
            self.paths = paths_from_lmdb(self.gt_folder)
        else:
            self.paths = [osp.join(self.gt_folder, name) for name in self.list_images(opt)]

    # ------------------------------------------------------------------ options
    @staticmethod
    def list_images(opt):
        """Names of the GT images of a folder-mode dataset (``meta_info_file`` or the folder's images)."""
        folder = opt['dataroot_gt']
        if opt.get('meta_info_file'):
            with open(opt['meta_info_file']) as f:
                return [line.split()[0] for line in f if line.strip()]
        return sorted(v for v in os.listdir(folder) if v.lower().endswith(IMG_EXTENSIONS))

    @staticmethod
    def image_sizes(opt):
        """(height, width) of every GT image, from an LMDB's meta_info.txt or each file's header (no decoding),
        so that the option checks compare ``gt_size`` and the batch size with the data."""
        from PIL import Image

        from acla_basicsr.data.prepare_util import read_meta_info
        if opt['io_backend']['type'] == 'lmdb':
            return [shape[:2] for _, shape in read_meta_info(opt['dataroot_gt'])]
        sizes = []
        for name in DegradedImageDataset.list_images(opt):
            path = osp.join(opt['dataroot_gt'], name)
            try:
                with Image.open(path) as img:
                    sizes.append(img.size[::-1])
            except Exception:
                raise OptionError(f"datasets.{opt.get('phase', '?')}: cannot read {path}; replace or remove the "
                                  'file.') from None
        return sizes

    @staticmethod
    def degradation_options(opt):
        """The ``degradation`` option with the defaults of its type filled in."""
        degradation = dict(opt['degradation'])
        where = f"datasets.{opt.get('phase', opt.get('name', '?'))}.degradation"
        kind = degradation.pop('type', None)
        if kind not in DEGRADATIONS:
            raise OptionError(f'{where}.type: unknown degradation {kind!r}; use one of {", ".join(DEGRADATIONS)}.')
        return {'type': kind, **read_section(degradation, DEGRADATIONS[kind], f'{where}')}

    @staticmethod
    def check_options(opt):
        """Raise :class:`acla_basicsr.utils.OptionError` (one line) for the first wrong option."""
        where = f"datasets.{opt.get('phase', opt.get('name', '?'))}"
        gt = opt.get('dataroot_gt')
        if not gt:
            raise OptionError(f'{where}.dataroot_gt: missing; give the folder or LMDB of ground-truth images.')
        if opt.get('scale', 1) != 1:
            raise OptionError(f"scale: {opt['scale']} with DegradedImageDataset; its degradations keep the "
                              'image size, use scale: 1.')
        DegradedImageDataset.check_degradation_options(opt)
        backend = (opt.get('io_backend') or {}).get('type')
        if backend == 'lmdb':
            if not gt.endswith('.lmdb') or not osp.isfile(osp.join(gt, 'data.mdb')):
                raise OptionError(f'{where}.dataroot_gt: {gt} is not a basicsr LMDB (a folder named *.lmdb with '
                                  'data.mdb); make one with scripts/prepare_sr_lmdb.py or use io_backend: disk.')
            if not osp.isfile(osp.join(gt, 'meta_info.txt')):
                raise OptionError(f'{where}.dataroot_gt: {gt} has no meta_info.txt (basicsr lists an LMDB\'s keys '
                                  'there); rebuild the LMDB with scripts/prepare_sr_lmdb.py.')
        elif backend == 'disk':
            if not osp.isdir(gt):
                raise OptionError(f'{where}.dataroot_gt: {gt} is not a folder; give a folder of images or an LMDB '
                                  'with io_backend: lmdb.')
            meta = opt.get('meta_info_file')
            if meta and not osp.isfile(meta):
                raise OptionError(f'{where}.meta_info_file: {meta} does not exist; give a list of image names or ~.')
            if not DegradedImageDataset.list_images(opt):
                raise OptionError(f'{where}.dataroot_gt: {gt} holds no images ({", ".join(IMG_EXTENSIONS)}); '
                                  'point it at a folder of ground-truth images.')
        else:
            raise OptionError(f"{where}.io_backend.type: {backend!r}; use disk (a folder) or lmdb.")

    @staticmethod
    def check_degradation_options(opt):
        """The checks of :meth:`check_options` that need no data: degradation, color, gt_size."""
        where = f"datasets.{opt.get('phase', opt.get('name', '?'))}"
        degradation = opt.get('degradation')
        if not isinstance(degradation, dict):
            raise OptionError(f'{where}.degradation: {degradation!r}; give {{type: gaussian_noise|jpeg|mosaic, ...}}.')
        degradation = DegradedImageDataset.degradation_options(opt)
        if degradation['type'] == 'mosaic' and degradation['channels'] == 2:
            raise OptionError(f'{where}.degradation.channels: 2 is out of range; give 1 (the sensor plane) or 3 (one '
                              'colour per pixel, the others zero).')
        color = Option('|'.join(COLORS)).check(opt.get('color', 'rgb'), f'{where}.color')
        if degradation['type'] == 'mosaic' and color != 'rgb':
            raise OptionError(f'{where}.color: {color} with a mosaic; a Bayer mosaic needs colour images, use rgb.')
        if opt.get('phase') == 'train':
            Option('int', low=1, required=True, doc='The side of the random crops, e.g. 48').check(
                opt.get('gt_size'), f'{where}.gt_size')

    # ------------------------------------------------------------------ loading
    def read_gt(self, path):
        """Read a GT image as float32 (H, W, C) in [0, 1], BGR, in the ``color`` of the options."""
        img_bytes = self.file_client.get(path, 'gt')
        img = cv2.imdecode(np.frombuffer(img_bytes, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None or img.dtype not in (np.uint8, np.uint16):
            raise OptionError(f'{path}: cannot decode it as an 8- or 16-bit image; replace or remove the file.')
        img = img.astype(np.float32) / np.iinfo(img.dtype).max
        if img.ndim == 2:
            img = img[..., None]
        elif img.shape[2] == 4:
            img = img[..., :3]  # drop alpha
        if img.shape[2] == 3 and (img[..., 0] == img[..., 1]).all() and (img[..., 0] == img[..., 2]).all():
            img = img[..., :1]  # a gray image stored with three equal channels
        if self.color == 'rgb':
            return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img
        if img.shape[2] == 3:
            img = (bgr2ycbcr(img, y_only=True) if self.color == 'y' else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
            img = np.round(img[..., None] * 255.) / 255.  # 8-bit, as MATLAB's uint8 rgb2ycbcr / rgb2gray
        return img.astype(np.float32)

    def degrade(self, img, rng):
        """Apply the configured degradation to a GT image (see :mod:`acla_basicsr.data.degradations`)."""
        opt = self.degradation
        if opt['type'] == 'gaussian_noise':
            return add_gaussian_noise(img, opt['sigma'], rng)
        if opt['type'] == 'jpeg':
            return jpeg_compress(img, opt['quality'])
        return mosaic(img, opt['pattern'], opt['channels'])

    def random_crop(self, img, path):
        gt_size = self.opt['gt_size']
        h, w = img.shape[:2]
        if h < gt_size or w < gt_size:
            raise OptionError(f'{path}: {w}x{h} is smaller than gt_size {gt_size}; remove the image or lower gt_size.')
        top, left = random.randint(0, h - gt_size), random.randint(0, w - gt_size)
        return img[top:top + gt_size, left:left + gt_size]

    def __getitem__(self, index):
        if self.file_client is None:
            self.file_client = FileClient(self.io_backend_opt.pop('type'), **self.io_backend_opt)
        gt_path = self.paths[index]
        img_gt = self.read_gt(gt_path)
        if self.opt['phase'] == 'train':
            img_gt = self.random_crop(img_gt, gt_path)
            img_gt = augment(img_gt, self.opt.get('use_hflip', True), self.opt.get('use_rot', True))
            # fresh noise for every sample, from numpy's global state (seeded per worker by basicsr)
            rng = np.random.default_rng(np.random.randint(0, 2**31))
        else:
            rng = np.random.default_rng(image_seed(osp.splitext(osp.basename(gt_path))[0]))
        img_gt = np.ascontiguousarray(img_gt)
        img_lq = self.degrade(img_gt, rng)
        img_gt, img_lq = img2tensor([img_gt, img_lq], bgr2rgb=True, float32=True)
        return {'lq': img_lq, 'gt': img_gt, 'lq_path': gt_path, 'gt_path': gt_path}

    def __len__(self):
        return len(self.paths)
