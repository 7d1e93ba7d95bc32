"""ACLAKeySparsityLoss: the expected fraction of open ACLA keys, and it closes keys when trained."""
import pytest
import torch

from acla_basicsr.archs.acla_edsr_arch import ACLAEDSR
from acla_basicsr.archs.cla_modules import AdaptiveCrossLayerAttention
from acla_basicsr.losses.acla_key_sparsity_loss import ACLAKeySparsityLoss


def tiny(attention='acla'):
    torch.manual_seed(0)
    return ACLAEDSR(num_feat=8, num_block=2, upscale=2, attention=attention, insert_positions=[1, 2], num_keys=4)


def test_value_is_the_mean_closing_cost():
    net = tiny().train()
    x = torch.rand(2, 3, 12, 12)
    net(x)
    modules = [m for m in net.modules() if isinstance(m, AdaptiveCrossLayerAttention)]
    assert len(modules) == 2
    loss = ACLAKeySparsityLoss(loss_weight=0.5, reduction='sum')(net, current_iter=1)
    expected = sum(m.open_cost for m in modules) * 0.5
    torch.testing.assert_close(loss, expected)
    # at initialisation every gate logit is the bias, 2: the cost is -log P(closed) = -log(1 - sigmoid(2))
    torch.testing.assert_close(modules[0].open_cost, -torch.log1p(-torch.sigmoid(torch.tensor(2.0))))


def test_training_the_penalty_closes_keys():
    net = tiny().train()
    loss_fn = ACLAKeySparsityLoss(loss_weight=1.0)
    gates = [p for n, p in net.named_parameters() if '.gate.' in n]
    optimizer = torch.optim.Adam(gates, lr=0.2)
    x = torch.rand(2, 3, 12, 12)

    def open_keys():
        net.eval()
        net(x)
        net.train()
        return sum(m.last_active_keys.sum().item() for m in net.modules() if isinstance(m, AdaptiveCrossLayerAttention))

    before = open_keys()
    assert before == 4 + 8  # every key open at initialisation (module 1: 1 key layer, module 2: 2)
    for it in range(1, 61):
        optimizer.zero_grad()
        net(x)
        loss_fn(net, it).backward()
        optimizer.step()
    assert open_keys() < 0.2 * before


def test_warmup_and_bad_options():
    net = tiny().train()
    net(torch.rand(1, 3, 8, 8))
    assert ACLAKeySparsityLoss(warmup_iter=5)(net, current_iter=5) is None
    assert ACLAKeySparsityLoss(warmup_iter=5)(net, current_iter=6) is not None
    with pytest.raises(ValueError, match='reduction: none is not supported'):
        ACLAKeySparsityLoss(reduction='none')
    with pytest.raises(ValueError, match='needs a network with ACLA modules'):
        ACLAKeySparsityLoss()(tiny('cla'), current_iter=1)
