import os.path as osp
from collections import OrderedDict

import torch
from torch import nn as nn
from torch.nn import functional as F

from basicsr.archs.vgg_arch import NAMES
from basicsr.utils.registry import LOSS_REGISTRY
from acla_basicsr.errors import OptionError

_reduction_modes = ['none', 'mean', 'sum']
VGG19_FILENAME = 'vgg19-dcbb9e9d.pth'  # torchvision's ImageNet VGG19 (IMAGENET1K_V1)


def gaussian_window(window_size=11, sigma=1.5):
    """The 2-D Gaussian window of SSIM, normalised to sum 1 (as cv2.getGaussianKernel builds it)."""
    coords = torch.arange(window_size, dtype=torch.float64) - (window_size - 1) / 2
    g = torch.exp(-coords**2 / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim_map(img, img2, window, data_range=1.):
    """Differentiable SSIM map of two (N, C, H, W) batches, per channel, 'valid' windows.

    The same computation as basicsr's ``calculate_ssim`` metric (Wang et al. 2004: Gaussian
    window, ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, no padding), in PyTorch.

    Args:
        img (Tensor): Images, shape (N, C, H, W), values in [0, data_range].
        img2 (Tensor): Images of the same shape.
        window (Tensor): (k, k) window summing to 1.
        data_range (float): The dynamic range L. Default: 1.

    Returns:
        Tensor: SSIM map of shape (N, C, H - k + 1, W - k + 1).
    """
    c1 = (0.01 * data_range)**2
    c2 = (0.03 * data_range)**2
    channels = img.shape[1]
    kernel = window.to(img)[None, None].expand(channels, 1, -1, -1)

    def filt(v):
        return F.conv2d(v, kernel, groups=channels)

    mu1, mu2 = filt(img), filt(img2)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = filt(img * img) - mu1_sq
    sigma2_sq = filt(img2 * img2) - mu2_sq
    sigma12 = filt(img * img2) - mu1_mu2
    return ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))


def find_vgg19_weights(vgg_weights_path=None):
    """Return the path of the VGG19 weights, or raise :class:`OptionError` saying where to put them.

    Args:
        vgg_weights_path (str | None): An explicit file; None looks in torch's hub cache,
            ``torch.hub.get_dir()/checkpoints/vgg19-dcbb9e9d.pth``.
    """
    if vgg_weights_path is not None:
        if not osp.isfile(vgg_weights_path):
            raise OptionError(f'vgg_weights_path: {vgg_weights_path} does not exist; put torchvision\'s '
                              f'{VGG19_FILENAME} there, or set perceptual_weight: 0 to train without the '
                              'perceptual term.')
        return vgg_weights_path
    hub_file = osp.join(torch.hub.get_dir(), 'checkpoints', VGG19_FILENAME)
    if not osp.isfile(hub_file):
        raise OptionError(f'vgg_weights_path: ~ and the VGG19 weights {hub_file} are missing (no download is '
                          f'attempted); copy torchvision\'s {VGG19_FILENAME} there or give its path as '
                          'vgg_weights_path, or set perceptual_weight: 0.')
    return hub_file


class VGG19Features(nn.Module):
    """Frozen VGG19 feature extractor that loads its weights from a local file and never downloads.

    basicsr's ``VGGFeatureExtractor`` downloads the weights when its file is missing, which hangs
    on a machine without internet; this builds the layers of torchvision's ``vgg19().features``
    up to the deepest one requested (``torchvision.models.vgg.make_layers``) and loads them from
    the ``features.*`` entries of the state dict at ``weights_path`` (the classifier is unused).
    Layer names are basicsr's (``conv5_4``, ``relu2_2``, ...). Inputs in [0, 1] are normalised
    with the ImageNet mean and std.

    Args:
        layer_names (list[str]): Layers whose outputs are returned.
        weights_path (str): A state dict of torchvision's ``vgg19``.
    """

    def __init__(self, layer_names, weights_path):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers
        names = NAMES['vgg19']
        unknown = [v for v in layer_names if v not in names]
        if unknown or not layer_names:
            raise ValueError(f'vgg_layer_weights: unknown VGG19 layer(s) {unknown}; use names such as relu2_2, '
                             'conv5_4 (basicsr.archs.vgg_arch.NAMES).')
        last = max(names.index(v) for v in layer_names)
        self.names = names[:last + 1]
        self.layer_names = set(layer_names)
        self.features = make_layers(cfgs['E'])[:last + 1]  # vgg19().features, without the classifier
        try:
            state_dict = torch.load(weights_path, map_location='cpu', weights_only=True)
            state_dict = {k[len('features.'):]: v for k, v in state_dict.items() if k.startswith('features.')}
            needed = self.features.state_dict().keys()
            self.features.load_state_dict({k: v for k, v in state_dict.items() if k in needed})
        except Exception as error:  # a wrong or truncated file
            raise OptionError(f'vgg_weights_path: {weights_path} is not a state dict of torchvision\'s vgg19 '
                              f'({str(error).splitlines()[0][:120]}); replace it with {VGG19_FILENAME}.') from None
        for layer in self.features:
            if isinstance(layer, nn.ReLU):
                layer.inplace = False  # an in-place ReLU would overwrite a returned conv output
        self.features.eval()
        for param in self.parameters():
            param.requires_grad = False
        self.register_buffer('mean', torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x):
        x = (x - self.mean) / self.std
        out = {}
        for name, layer in zip(self.names, self.features):
            x = layer(x)
            if name in self.layer_names:
                out[name] = x
        return out


@LOSS_REGISTRY.register()
class EARNLoss(nn.Module):
    """EARN's multi-loss: ``alpha * L1 + beta * (1 - SSIM) + theta * perceptual`` (EARN, Eq. 6-7).

    Returns a dict of the weighted terms, ``{'l_l1', 'l_ssim', 'l_percep'}``, so that
    ``RestorationModel`` logs each term on its own and optimises their sum; use it as
    ``train.pixel_opt``. A term whose weight is 0 is neither computed nor returned.

    - L1: mean absolute error.
    - SSIM (Eq. 7): ``1 - SSIM`` per image, SSIM computed as basicsr's ``calculate_ssim``
      metric does (11x11 Gaussian window, sigma 1.5, valid windows, per RGB channel and
      averaged), but differentiable; images must be at least ``ssim_window`` pixels a side.
    - Perceptual (Johnson et al. 2016, the paper's reference [18]): distance between frozen
      VGG19 features of prediction and target, summed over ``vgg_layer_weights``. The paper
      names no layer; the default is Johnson's super-resolution choice, ``relu2_2`` with the
      mean squared error. Weights come from ``vgg_weights_path`` or, when it is ~, from
      torch's hub cache (``torch.hub.get_dir()/checkpoints/vgg19-dcbb9e9d.pth``); when the
      file is absent the constructor raises a one-line error naming it, never downloads.

    Reductions act over the batch: 'mean' (Eq. 7's ``1/N sum_p``) and 'sum' over the per-image
    losses (each image's term is its mean over pixels, channels, or features); 'none' returns
    one value per image, shape (N,), for each term.

    Args:
        l1_weight (float): alpha of Eq. 6. Default: 1.5.
        ssim_weight (float): beta of Eq. 6. Default: 0.6.
        perceptual_weight (float): theta of Eq. 6; 0 disables the perceptual term (no VGG19
            needed). Default: 0.4.
        vgg_layer_weights (dict[str, float]): VGG19 layers (basicsr names) and their weights.
            Default: {'relu2_2': 1.0}.
        perceptual_criterion (str): 'l2' (mean squared error) or 'l1'. Default: 'l2'.
        vgg_weights_path (str | None): Local file of torchvision's VGG19 state dict; None
            looks in torch's hub cache. Default: None.
        ssim_window (int): Side of the SSIM Gaussian window. Default: 11.
        ssim_sigma (float): Standard deviation of the SSIM window. Default: 1.5.
        loss_weight (float): Multiplies every term. Default: 1.0.
        reduction (str): 'none' | 'mean' | 'sum'. Default: 'mean'.
    """

    def __init__(self,
                 l1_weight=1.5,
                 ssim_weight=0.6,
                 perceptual_weight=0.4,
                 vgg_layer_weights=None,
                 perceptual_criterion='l2',
                 vgg_weights_path=None,
                 ssim_window=11,
                 ssim_sigma=1.5,
                 loss_weight=1.0,
                 reduction='mean'):
        super().__init__()
        if reduction not in _reduction_modes:
            raise ValueError(f'Unsupported reduction mode: {reduction}. Supported ones are: {_reduction_modes}')
        if perceptual_criterion not in ('l1', 'l2'):
            raise ValueError(f"perceptual_criterion: '{perceptual_criterion}' is not supported; use 'l1' or 'l2'.")
        for key, value in (('l1_weight', l1_weight), ('ssim_weight', ssim_weight),
                           ('perceptual_weight', perceptual_weight)):
            if value < 0:
                raise ValueError(f'{key}: {value} is negative; use a weight >= 0 (0 disables the term).')
        self.l1_weight = l1_weight
        self.ssim_weight = ssim_weight
        self.perceptual_weight = perceptual_weight
        self.perceptual_criterion = perceptual_criterion
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.ssim_window = ssim_window
        self.register_buffer('window', gaussian_window(ssim_window, ssim_sigma).float(), persistent=False)
        self.vgg_layer_weights = dict(vgg_layer_weights or {'relu2_2': 1.0})
        self.vgg = None
        if perceptual_weight > 0:
            self.vgg = VGG19Features(list(self.vgg_layer_weights), find_vgg19_weights(vgg_weights_path))

    @staticmethod
    def check_options(loss_opt):
        """Check the YAML options of this loss without building it (VGG19 file present when needed).

        Args:
            loss_opt (dict): The loss options, e.g. ``opt['train']['pixel_opt']``.

        Raises:
            OptionError: naming the first wrong option and the fix.
        """
        loss_opt = dict(loss_opt)
        reduction = loss_opt.get('reduction', 'mean')
        if reduction not in _reduction_modes:
            raise OptionError(f'reduction: {reduction} is not supported; use one of {", ".join(_reduction_modes)}.')
        if loss_opt.get('perceptual_weight', 0.4) > 0:
            find_vgg19_weights(loss_opt.get('vgg_weights_path'))

    def _reduce(self, per_image):
        if self.reduction == 'mean':
            return per_image.mean()
        if self.reduction == 'sum':
            return per_image.sum()
        return per_image

    def l1(self, pred, target):
        """Mean absolute error of each image, shape (N,)."""
        return (pred - target).abs().flatten(1).mean(1)

    def ssim(self, pred, target):
        """SSIM of each image (mean over channels and valid windows), shape (N,) (Eq. 7)."""
        if min(pred.shape[-2:]) < self.ssim_window:
            raise ValueError(f'ssim_window: images of {pred.shape[-1]}x{pred.shape[-2]} are smaller than the '
                             f'{self.ssim_window}-pixel SSIM window; use larger patches (gt_size) or a smaller window.')
        return ssim_map(pred, target, self.window).flatten(1).mean(1)

    def perceptual(self, pred, target):
        """Weighted VGG19 feature distance of each image, shape (N,)."""
        pred_features = self.vgg(pred)
        with torch.no_grad():
            target_features = self.vgg(target.detach())
        total = 0
        for name, weight in self.vgg_layer_weights.items():
            diff = pred_features[name] - target_features[name]
            diff = diff.abs() if self.perceptual_criterion == 'l1' else diff * diff
            total = total + weight * diff.flatten(1).mean(1)
        return total

    def forward(self, pred, target, **kwargs):
        """
        Args:
            pred (Tensor): of shape (N, C, H, W), in [0, 1]. Predicted images.
            target (Tensor): of shape (N, C, H, W), in [0, 1]. Ground-truth images.

        Returns:
            OrderedDict[str, Tensor]: the weighted terms 'l_l1', 'l_ssim', 'l_percep' (those
            with a positive weight).
        """
        terms = OrderedDict()
        if self.l1_weight > 0:
            terms['l_l1'] = self.l1_weight * self.l1(pred, target)
        if self.ssim_weight > 0:
            terms['l_ssim'] = self.ssim_weight * (1 - self.ssim(pred, target))
        if self.vgg is not None:
            terms['l_percep'] = self.perceptual_weight * self.perceptual(pred, target)
        return OrderedDict((k, self.loss_weight * self._reduce(v)) for k, v in terms.items())
