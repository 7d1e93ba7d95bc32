import torch
from torch import nn as nn

from acla_basicsr.archs.cla_modules import AdaptiveCrossLayerAttention
from basicsr.utils.registry import LOSS_REGISTRY

_reduction_modes = ['mean', 'sum']


@LOSS_REGISTRY.register()
class ACLAKeySparsityLoss(nn.Module):
    """Penalty on the expected number of open ACLA keys, so that each query keeps only the keys it needs.

    ACLA (ACLA paper, Sec. 3.2) gives every sampled key a binary gate z = [g + noise > 0] predicted from the
    query; the reconstruction loss alone has no reason to close a key. Under the logistic noise of the
    Gumbel-sigmoid relaxation a key is open with probability sigmoid(g); this loss adds
    ``loss_weight * -log P(closed) = loss_weight * softplus(g)``, averaged over keys, key layers and pixels of
    each ACLA module, then reduced over modules. Its gradient, sigmoid(g), is the probability that the key is
    open: it pushes hardest on keys that are confidently open and lets closed keys be, whereas a penalty on
    sigmoid(g) itself saturates and leaves confidently open keys open. It is a network loss of ``RestorationModel``
    (``train.network_opt``), called after the forward pass with the bare network::

        network_opt:
          - type: ACLAKeySparsityLoss
            loss_weight: !!float 1e-2

    Args:
        loss_weight (float): Weight of the penalty. Default: 1e-2.
        warmup_iter (int): Iterations trained without it. Default: 0.
        reduction (str): 'mean' or 'sum' over the ACLA modules. Default: 'mean'.
    """

    def __init__(self, loss_weight=1e-2, warmup_iter=0, reduction='mean'):
        super().__init__()
        if reduction not in _reduction_modes:
            raise ValueError(f'reduction: {reduction} is not supported; use one of {", ".join(_reduction_modes)}.')
        if float(loss_weight) < 0:
            raise ValueError(f'loss_weight: {loss_weight} must be >= 0.')
        self.loss_weight, self.warmup_iter, self.reduction = float(loss_weight), int(warmup_iter), reduction

    def forward(self, net, current_iter):
        """Return the penalty of the last training forward pass of ``net`` (None during the warm-up)."""
        modules = [m for m in net.modules() if isinstance(m, AdaptiveCrossLayerAttention)]
        if not modules:
            raise ValueError('train.network_opt: ACLAKeySparsityLoss needs a network with ACLA modules '
                             '(attention: acla); remove the loss or change the network.')
        if current_iter <= self.warmup_iter:
            return None
        costs = [m.open_cost for m in modules if m.open_cost is not None]
        if not costs:
            return None
        stacked = torch.stack(costs)
        return self.loss_weight * (stacked.mean() if self.reduction == 'mean' else stacked.sum())
