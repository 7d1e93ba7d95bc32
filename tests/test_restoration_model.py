"""RestorationModel: named loss terms, losses on the network, training stats, and the validation baseline."""
import torch
from torch import nn

from basicsr.metrics import calculate_psnr
from basicsr.models import build_model
from basicsr.utils import tensor2img
from basicsr.utils.registry import LOSS_REGISTRY
from torch.utils.data import DataLoader

from acla_basicsr.models.restoration_model import bicubic_reference
from conftest import tiny_sr_options


class _TermsLoss(nn.Module):
    """Returns two named terms, like EARN's multi-loss."""

    def __init__(self, loss_weight=1.0):
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, pred, target):
        return {'l_a': (pred - target).abs().mean(), 'l_b': self.loss_weight * (pred - target).pow(2).mean()}


class _WeightNormLoss(nn.Module):
    """A loss on the network's parameters, silent before ``start_iter``, like a warmed-up contrastive loss."""

    def __init__(self, loss_weight=1.0, start_iter=2):
        super().__init__()
        self.loss_weight, self.start_iter = loss_weight, start_iter

    def forward(self, net, current_iter):
        if current_iter < self.start_iter:
            return None
        return self.loss_weight * sum(p.pow(2).sum() for p in net.parameters())


for _cls in (_TermsLoss, _WeightNormLoss):
    if _cls.__name__ not in LOSS_REGISTRY:
        LOSS_REGISTRY.register(_cls)


def build(tmp_path, sr_folders, **train):
    opt = tiny_sr_options('unit', *sr_folders, **train)
    opt.update(is_train=True, dist=False, rank=0, world_size=1, auto_resume=False)
    opt['path'].update(experiments_root=str(tmp_path), models=str(tmp_path), training_states=str(tmp_path),
                       log=str(tmp_path), visualization=str(tmp_path))
    for phase, dataset_opt in opt['datasets'].items():
        dataset_opt.update(phase=phase, scale=opt['scale'])
    return opt, build_model(opt)


def test_named_terms_network_losses_and_stats(tmp_path, sr_folders):
    opt, model = build(tmp_path, sr_folders, pixel_opt={'type': '_TermsLoss', 'loss_weight': 0.5},
                       network_opt=[{'type': '_WeightNormLoss', 'loss_weight': 1e-6, 'start_iter': 2,
                                     'name': 'l_wnorm'}])
    model.get_bare_model(model.net_g).training_stats = lambda: {'active_keys': 3.5}
    batch = {'lq': torch.rand(2, 3, 8, 8), 'gt': torch.rand(2, 3, 16, 16)}
    model.feed_data(batch)
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_a', 'l_b', 'active_keys'}  # network loss silent during its warm-up
    model.optimize_parameters(2)
    assert set(model.log_dict) == {'l_a', 'l_b', 'l_wnorm', 'active_keys'}
    terms = model.compute_losses(2)
    expected = (model.output - model.gt).abs().mean() + 0.5 * (model.output - model.gt).pow(2).mean()
    torch.testing.assert_close(terms['l_a'] + terms['l_b'], expected)


def test_validation_logs_bicubic_baseline(tmp_path, sr_folders):
    import logging
    from basicsr.data import build_dataset
    opt, model = build(tmp_path, sr_folders)
    loader = DataLoader(build_dataset(opt['datasets']['val']), batch_size=1)
    reference = model._reference_metrics(loader)
    psnrs = []
    for data in loader:
        ref = tensor2img([bicubic_reference(data['lq'], 2)])
        psnrs.append(calculate_psnr(ref, tensor2img([data['gt']]), crop_border=2, test_y_channel=True))
    assert abs(reference['psnr'] - sum(psnrs) / len(psnrs)) < 1e-9
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger('basicsr').addHandler(handler)
    logging.getLogger('basicsr').setLevel(logging.INFO)
    try:
        model.validation(loader, 1, None)
    finally:
        logging.getLogger('basicsr').removeHandler(handler)
    line = [r.getMessage() for r in records if 'against bicubic' in r.getMessage()]
    assert line and f"vs bicubic {reference['psnr']:.4f}" in line[0]
