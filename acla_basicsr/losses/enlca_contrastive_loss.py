import torch
from torch import nn as nn
from torch.nn import functional as F

from basicsr.utils.registry import LOSS_REGISTRY
from acla_basicsr.archs.enlca_modules import ENLCA

_reduction_modes = ['none', 'mean', 'sum']


@LOSS_REGISTRY.register()
class ENLCAContrastiveLoss(nn.Module):
    """Contrastive loss of ENLCA (Eq. 8-10), computed on every ENLCA module of a network.

    Paper: Efficient Non-Local Contrastive Attention for Image Super-Resolution (AAAI 2022).

    For each query pixel i of a feature map of N pixels, T_ij = k cos(Q_i, K_j) over all keys j
    (Eq. 8, k the module's amplification) is sorted in descending order (Eq. 9); the n1 N largest
    are the relevant keys, the n1 N from rank n2 N on the irrelevant ones (Fig. 4), and

        l_i = max(0, b - log(mean_relevant exp(T'_ij) / mean_irrelevant exp(T'_ij)))     (Eq. 10)

    Eq. 10 as printed adds b outside the log, a constant that changes no gradient; we read b as
    the margin it is named (no loss once the relevant keys beat the irrelevant ones by b in
    log-mean-exp). ``hinge=False`` gives the printed form instead. n1 N and n2 N are rounded,
    at least 1, and the irrelevant ranks start after the relevant ones.

    Memory: T is N x N per image (N = 2116 for the paper's 46 x 46 patches: 286 MB for a batch of
    16, per module, plus what autograd keeps). Only ``num_queries`` query rows per image, drawn
    uniformly without replacement at each call, are used: memory falls to B x num_queries x N,
    and with the 'mean' reduction the loss stays an unbiased estimate of Eq. 10 (its mean over
    rows), with a variance that grows as num_queries falls. ``num_queries: ~`` uses every row.

    Use it through ``train.network_opt`` of ``RestorationModel``: it is called as
    ``loss(net, current_iter)`` after the forward pass, finds every :class:`ENLCA` module of
    ``net`` (any network), asks them to keep their embeddings from the next training forward pass
    on, and reads what they kept. It returns None (no term) during the warm-up and at the first
    iteration after it (or after resuming), when no module has kept anything yet. Per module the
    'mean' reduction averages over images and query rows; the module terms are then averaged
    (``module_reduction: mean``, as the public code's trainer does before weighting: Eq. 12 names
    one L_cl, weighted by lambda_cl = ``loss_weight``), or summed (``module_reduction: sum``,
    this project's first version: five modules weigh five times as much).

    Args:
        loss_weight (float): lambda_cl of Eq. 12. Default: 1e-3.
        reduction (str): 'mean', 'sum', or 'none' (1-D tensor of the weighted per-row terms of all
            modules, for analysis). Default: 'mean'.
        n1 (float): Fraction of keys that are relevant, and of keys that are irrelevant. Default: 0.02.
        n2 (float): Rank, as a fraction of N, where the irrelevant keys start. Default: 0.08.
        margin (float): b of Eq. 10. Default: 1.
        warmup_iter (int): Iterations trained without this loss (the paper: 150 epochs of 1000
            iterations). Default: 150000.
        num_queries (int | None): Query rows per image (None: all N). Default: 1024.
        hinge (bool): max(0, b - log ratio) per row; False: -log ratio + b as printed. Default: True.
        module_reduction (str): 'mean' or 'sum' of the module terms ('mean' and 'sum' reductions
            only). Default: 'mean'.
    """

    def __init__(self,
                 loss_weight=1e-3,
                 reduction='mean',
                 n1=0.02,
                 n2=0.08,
                 margin=1.,
                 warmup_iter=150000,
                 num_queries=1024,
                 hinge=True,
                 module_reduction='mean'):
        super().__init__()
        if reduction not in _reduction_modes:
            raise ValueError(f'Unsupported reduction mode: {reduction}. Supported ones are: {_reduction_modes}')
        if not 0 < n1 < 1 or not 0 < n2 < 1 or n1 + n2 > 1:
            raise ValueError(f'n1, n2: {n1}, {n2} must be fractions in (0, 1) with n1 + n2 <= 1 (paper: 0.02, 0.08).')
        if not isinstance(warmup_iter, int) or warmup_iter < 0:
            raise ValueError(f'warmup_iter: {warmup_iter!r} must be an integer >= 0.')
        if num_queries is not None and (not isinstance(num_queries, int) or num_queries < 1):
            raise ValueError(f'num_queries: {num_queries!r} must be a positive integer or ~ (all rows).')
        if module_reduction not in ('mean', 'sum'):
            raise ValueError(f"module_reduction: unknown value {module_reduction!r}; use 'mean' (public code) or 'sum'.")
        self.module_reduction = module_reduction
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.n1 = n1
        self.n2 = n2
        self.margin = margin
        self.warmup_iter = warmup_iter
        self.num_queries = num_queries
        self.hinge = hinge

    def ranks(self, num_pixels):
        """(count, start): the relevant ranks are [0, count), the irrelevant [start, start + count)."""
        count = max(1, round(self.n1 * num_pixels))
        start = max(round(self.n2 * num_pixels), count + 1) - 1
        if start + count > num_pixels:
            raise ValueError(f'ENLCAContrastiveLoss: feature maps of {num_pixels} pixels are too small for n1={self.n1}, '
                             f'n2={self.n2}; use larger patches (gt_size) or smaller n1, n2.')
        return count, start

    def row_losses(self, q, k, amplification):
        """Per-row terms of Eq. 10 (before loss_weight) for unit-norm (B, N, c) queries and keys.

        Returns:
            Tensor: (B, S), S = min(num_queries, N) sampled query rows per image.
        """
        b, n, c = q.shape
        count, start = self.ranks(n)
        if self.num_queries is not None and self.num_queries < n:
            rows = torch.rand(b, n, device=q.device).argsort(dim=1)[:, :self.num_queries]
            q = q.gather(1, rows.unsqueeze(-1).expand(-1, -1, c))
        similarity = amplification * (q @ k.transpose(1, 2))  # T of Eq. 8, (B, S, N)
        top = similarity.topk(start + count, dim=-1).values  # Eq. 9, the ranks needed
        log_ratio = torch.logsumexp(top[..., :count], dim=-1) - torch.logsumexp(top[..., start:], dim=-1)
        loss = self.margin - log_ratio
        return F.relu(loss) if self.hinge else loss

    def forward(self, net, current_iter=None):
        """
        Args:
            net (nn.Module): The network (not DDP-wrapped) after its training forward pass.
            current_iter (int | None): Current iteration; None ignores the warm-up.

        Returns:
            Tensor | None: The weighted loss, or None when there is nothing to compute yet.
        """
        modules = [m for m in net.modules() if isinstance(m, ENLCA)]
        if not modules:
            raise ValueError(f'ENLCAContrastiveLoss: {type(net).__name__} has no ENLCA module; '
                             'remove the loss from train.network_opt or use a network with ENLCA (e.g. ENLCN).')
        active = current_iter is None or current_iter > self.warmup_iter
        for m in modules:
            m.store_embeddings = current_iter is None or current_iter + 1 > self.warmup_iter
        stored = [(m.stored_embeddings, m.amplification) for m in modules]
        for m in modules:
            m.stored_embeddings = None
        if not active or any(s is None for s, _ in stored):
            return None
        terms = [self.row_losses(q, k, amplification) for (q, k), amplification in stored]
        if self.reduction == 'none':
            loss = torch.cat([t.flatten() for t in terms])
        else:
            loss = sum(t.mean() if self.reduction == 'mean' else t.sum() for t in terms)
            if self.module_reduction == 'mean':
                loss = loss / len(terms)
        return self.loss_weight * loss
