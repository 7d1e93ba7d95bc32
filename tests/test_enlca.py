"""Numerical tests of ENLCA (random-feature attention, Eq. 3-7), ENLCN and the contrastive loss (Eq. 8-10)."""
import glob
import math
import os.path as osp

import pytest
import torch
import yaml

import acla_basicsr  # noqa: F401  (registers the project's classes)
from acla_basicsr.archs.enlca_modules import (ENLA, ENLCA, NonLocalAttention, draw_random_matrix,
                                              efficient_attention, random_features, softmax_attention)
from acla_basicsr.archs.enlcn_arch import ENLCN
from acla_basicsr.losses.enlca_contrastive_loss import ENLCAContrastiveLoss
from basicsr.losses import build_loss
from basicsr.utils.registry import ARCH_REGISTRY

from conftest import parsed_checked_options

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))


def tiny_enlcn(**kwargs):
    args = dict(num_feat=16, num_block=4, upscale=2, res_scale=1, attention_positions=[0, 2, 4], num_embed_feat=8,
                num_samples=16, redraw_every=3)
    args.update(kwargs)
    return ENLCN(**args)


def kernel_estimates(q, k, matrices):
    """phi(q).phi(k) (Eq. 4, exact phi) for each of R random matrices (R, m, c) -> (R,)."""
    phi_q = random_features(q.expand(matrices.shape[0], 1, -1), matrices)
    phi_k = random_features(k.expand(matrices.shape[0], 1, -1), matrices)
    return (phi_q * phi_k).sum(dim=(-2, -1))


def pair_with_sum_norm(c, norm_z, generator):
    """Unit-free q, k in R^c with |q + k| = norm_z and q.k fixed by the construction."""
    direction = torch.randn(c, generator=generator, dtype=torch.float64)
    direction = direction / direction.norm()
    other = torch.randn(c, generator=generator, dtype=torch.float64)
    other = other - (other @ direction) * direction
    other = other / other.norm()
    q = 0.5 * norm_z * direction + 0.3 * other
    k = 0.5 * norm_z * direction - 0.3 * other
    return q, k


# ---------------------------------------------------------------------------- Eq. 4 and Eq. 7
@pytest.mark.parametrize('orthogonal', [False, True])
def test_random_features_are_unbiased(orthogonal):
    """Averaged over many random matrices, phi(q).phi(k) approaches exp(q.k) (Eq. 4)."""
    g = torch.Generator().manual_seed(0)
    c, m, repeats = 8, 16, 3000
    q, k = pair_with_sum_norm(c, 1.0, g)
    matrices = torch.stack([draw_random_matrix(m, c, g, orthogonal, torch.float64) for _ in range(repeats)])
    estimates = kernel_estimates(q, k, matrices)
    exact = torch.exp(q @ k)
    standard_error = estimates.std() / math.sqrt(repeats)
    assert abs(estimates.mean() - exact) < 4 * standard_error
    assert abs(estimates.mean() / exact - 1) < 0.02


def test_variance_follows_eq7():
    """Var(phi(q).phi(k)) = K^2 (exp(|q + k|^2) - 1) / m for i.i.d. samples (Eq. 7).

    It grows with |q + k| and falls as 1/m.
    """
    g = torch.Generator().manual_seed(1)
    c, repeats = 8, 4000
    variances = {}
    for norm_z in (0.5, 1.0):
        q, k = pair_with_sum_norm(c, norm_z, g)
        for m in (8, 32):
            matrices = draw_random_matrix(repeats * m, c, g, orthogonal=False, dtype=torch.float64).view(repeats, m, c)
            estimates = kernel_estimates(q, k, matrices)
            predicted = torch.exp(q @ k)**2 * (math.exp(norm_z**2) - 1) / m
            variances[norm_z, m] = estimates.var().item()
            assert variances[norm_z, m] / predicted.item() == pytest.approx(1, abs=0.12)
    for m in (8, 32):
        assert variances[1.0, m] > 2 * variances[0.5, m]
    for norm_z in (0.5, 1.0):
        assert variances[norm_z, 8] / variances[norm_z, 32] == pytest.approx(4, rel=0.15)


def test_orthogonal_matrix_rows():
    """Rows of one block are orthogonal; every row keeps the norm distribution of N(0, I_c)."""
    g = torch.Generator().manual_seed(2)
    matrix = draw_random_matrix(24, 8, g, orthogonal=True, dtype=torch.float64)
    block = matrix[:8]
    gram = block @ block.t()
    assert torch.allclose(gram - torch.diag(torch.diagonal(gram)), torch.zeros(8, 8, dtype=gram.dtype), atol=1e-10)
    norms = torch.stack([draw_random_matrix(128, 8, g, True, torch.float64) for _ in range(50)]).norm(dim=-1)
    assert norms.pow(2).mean().item() == pytest.approx(8, rel=0.05)  # E|f|^2 = c for f ~ N(0, I_c)


# ---------------------------------------------------------------------------- attention vs Eq. 1
def _qkv(generator, b=2, n=64, c=8, c_out=5, amplification=1.0):
    q = torch.nn.functional.normalize(torch.randn(b, n, c, generator=generator, dtype=torch.float64), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(b, n, c, generator=generator, dtype=torch.float64), dim=-1)
    v = torch.randn(b, n, c_out, generator=generator, dtype=torch.float64)
    s = math.sqrt(amplification)
    return q * s, k * s, v


def _attention_error(q, k, v, m, orthogonal, repeats, generator):
    exact = softmax_attention(q, k, v)
    errors = []
    for _ in range(repeats):
        matrix = draw_random_matrix(m, q.shape[-1], generator, orthogonal, torch.float64)
        errors.append((efficient_attention(q, k, v, matrix) - exact).pow(2).mean())
    # root-mean-square error in units of the values' scale
    return torch.stack(errors).mean().sqrt().item() / v.pow(2).mean().sqrt().item()


def test_stabilised_attention_equals_unstabilised_formula():
    """The max-shifts of the features cancel: Eq. 5-6 with the exact phi give the same output."""
    g = torch.Generator().manual_seed(3)
    q, k, v = _qkv(g, amplification=6.0)
    matrix = draw_random_matrix(32, 8, g, True, torch.float64)
    phi_q, phi_k = random_features(q, matrix), random_features(k, matrix)
    direct = (phi_q @ (phi_k.transpose(1, 2) @ v)) / (phi_q @ phi_k.sum(1).unsqueeze(-1))
    assert torch.allclose(efficient_attention(q, k, v, matrix), direct, rtol=1e-10, atol=1e-12)
    # large norms overflow the exact phi but not the stabilised module
    big = efficient_attention(q * 10, k * 10, v, matrix)
    assert torch.isfinite(big).all()


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.bfloat16])
def test_no_grad_attention_equals_the_autograd_path(dtype):
    """The inference path of efficient_attention (one buffer, padded product, in-place D^-1) computes the same
    output as the path autograd differentiates, for batches, c_out != c and half-precision inputs."""
    g = torch.Generator().manual_seed(5)
    q, k = (torch.nn.functional.normalize(torch.randn(3, 50, 8, generator=g, dtype=torch.float64), dim=-1) * 2.5
            for _ in range(2))
    v = torch.randn(3, 50, 13, generator=g, dtype=torch.float64)
    matrix = draw_random_matrix(32, 8, g, True, torch.float64)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    with torch.no_grad():
        fast = efficient_attention(q, k, v, matrix)
    with torch.enable_grad():
        reference = efficient_attention(q, k, v.clone().requires_grad_(), matrix).detach()
    assert fast.shape == reference.shape == (3, 50, 13) and fast.dtype == reference.dtype == dtype
    assert torch.equal(fast, reference)
    # large norms stay finite on this path too
    with torch.no_grad():
        assert torch.isfinite(efficient_attention(q * 10, k * 10, v, matrix)).all()


def test_no_grad_attention_with_fewer_queries_than_keys():
    """Queries and keys of different lengths (the inference path's buffer holds phi(K)) take the general path."""
    g = torch.Generator().manual_seed(6)
    q, k, v = torch.randn(2, 7, 4, generator=g), torch.randn(2, 9, 4, generator=g), torch.randn(2, 9, 3, generator=g)
    matrix = draw_random_matrix(16, 4, g, True, torch.float32)
    with torch.no_grad():
        fast = efficient_attention(q, k, v, matrix)
    reference = efficient_attention(q, k, v.clone().requires_grad_(), matrix).detach()
    assert fast.shape == (2, 7, 3)
    assert torch.equal(fast, reference)


def test_onnx_exported_attention_runs_at_another_size(tmp_path):
    """The ONNX exporter traces the shape-agnostic path, not the inference path's buffers sized at export."""
    ort = pytest.importorskip('onnxruntime')
    pytest.importorskip('onnxscript')
    g = torch.Generator().manual_seed(6)

    class Core(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer('matrix', draw_random_matrix(16, 8, g))

        def forward(self, q, k, v):
            return efficient_attention(q, k, v, self.matrix)

    core = Core().eval()
    q, k, v = (torch.randn(2, 30, 8, generator=g) for _ in range(3))
    path = str(tmp_path / 'core.onnx')
    shapes = {name: {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC} for name in ('q', 'k', 'v')}
    with torch.no_grad():
        torch.onnx.export(core, (q, k, v), path, input_names=['q', 'k', 'v'], output_names=['out'],
                          dynamic_shapes=shapes, opset_version=18, dynamo=True, external_data=False, verbose=False)
        q2, k2, v2 = (torch.randn(3, 45, 8, generator=g) for _ in range(3))
        expected = core(q2, k2, v2)
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    out = session.run(None, {'q': q2.numpy(), 'k': k2.numpy(), 'v': v2.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), expected, atol=1e-5, rtol=1e-4)


def test_efficient_attention_approaches_softmax_as_m_grows():
    """Without amplification (k = 1), ENLA's output approaches exact softmax attention as m grows."""
    g = torch.Generator().manual_seed(4)
    q, k, v = _qkv(g)
    errors = [_attention_error(q, k, v, m, True, 10, g) for m in (8, 64, 512)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05
    assert errors[0] / errors[2] > 3  # about sqrt(512 / 8) = 8 for an error ~ 1 / sqrt(m)


def test_orthogonal_samples_lower_the_error():
    """Orthogonal random samples give a lower attention error than i.i.d. ones at equal m."""
    g = torch.Generator().manual_seed(5)
    q, k, v = _qkv(g, c=16)
    iid = _attention_error(q, k, v, 16, False, 100, g)
    orthogonal = _attention_error(q, k, v, 16, True, 100, g)
    assert orthogonal < 0.95 * iid


def _relative_error(amplification, m, draws, generator, c=64, n=1024):
    q = torch.nn.functional.normalize(torch.randn(1, n, c, generator=generator, dtype=torch.float64), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(1, n, c, generator=generator, dtype=torch.float64), dim=-1)
    v = torch.randn(1, n, c, generator=generator, dtype=torch.float64)
    s = math.sqrt(amplification)
    exact = softmax_attention(q * s, k * s, v)
    errors = [(efficient_attention(q * s, k * s, v, draw_random_matrix(m, c, generator, True, torch.float64))
               - exact).norm() / exact.norm() for _ in range(draws)]
    return torch.stack(errors).mean().item()


def test_enla_at_paper_amplification_is_far_from_exact_attention():
    """k = 6, m = 128 (the paper's setting): relative error about 3 (k = 1: about 0.16); docs/enlca.md.

    A property of the method (Eq. 7: the variance grows like exp(|q + k|^2) <= exp(4k)), stated in
    the docs so that nobody reads ENLCA as a close approximation of NonLocalAttention at k = 6.
    """
    g = torch.Generator().manual_seed(0)
    k1 = _relative_error(1., 128, 3, g)
    k6 = _relative_error(6., 128, 3, g)
    k6_large_m = _relative_error(6., 2048, 3, g)
    assert 0.1 < k1 < 0.25
    assert k6 > 2.5 and k6 > 10 * k1
    assert 1.5 < k6_large_m < k6  # falls with m, slowly


def test_enlca_module_approaches_exact_module():
    """ENLCA and NonLocalAttention share parameters; with k = 1 their outputs converge as m grows."""
    torch.manual_seed(0)
    exact = NonLocalAttention(num_feat=8, num_embed_feat=4, amplification=1.0, implementation='naive').eval()
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        reference = exact(x) - x
        errors = []
        for m in (4, 64, 4096):
            module = ENLCA(num_feat=8, num_embed_feat=4, num_samples=m, amplification=1.0, seed=7).eval()
            missing, unexpected = module.load_state_dict(exact.state_dict(), strict=False)
            assert not unexpected and all(key.startswith('attention.') for key in missing)
            errors.append(((module(x) - x - reference).norm() / reference.norm()).item())
        sdpa = NonLocalAttention(num_feat=8, num_embed_feat=4, amplification=1.0).eval()
        sdpa.load_state_dict(exact.state_dict())
        assert torch.allclose(sdpa(x), exact(x), atol=1e-5)
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05


# ---------------------------------------------------------------------------- redraws, eval, checkpoints
def test_redraw_schedule_and_seeds():
    """F is redrawn every redraw_every training passes, identically for two modules with one seed."""
    a, b = ENLA(8, 16, redraw_every=3, seed=5), ENLA(8, 16, redraw_every=3, seed=5)
    other = ENLA(8, 16, redraw_every=3, seed=6)
    assert torch.equal(a.matrix, b.matrix) and not torch.equal(a.matrix, other.matrix)
    q = torch.randn(1, 10, 8)
    seen = [a.matrix.clone()]
    for step in range(7):
        a(q, q, q)
        b(q, q, q)
        seen.append(a.matrix.clone())
        assert torch.equal(a.matrix, b.matrix)
    # passes 1-3 use draw 0, passes 4-6 draw 1, pass 7 draw 2
    assert [int(torch.equal(s, seen[0])) for s in seen] == [1, 1, 1, 1, 0, 0, 0, 0]
    assert not torch.equal(seen[4], seen[7]) and int(a.num_draws) == 2
    a.eval()
    before = a.matrix.clone()
    for _ in range(5):
        a(q, q, q)
    assert torch.equal(a.matrix, before) and int(a.forward_count) == 1
    fixed = ENLA(8, 16, redraw_every=0)
    start = fixed.matrix.clone()
    for _ in range(5):
        fixed(q, q, q)
    assert torch.equal(fixed.matrix, start)


def test_redraw_schedule_follows_a_loaded_count():
    """The schedule counts passes on the host; loading a state resets that copy from the buffer."""
    a = ENLA(8, 16, redraw_every=3, seed=5)
    q = torch.randn(1, 10, 8)
    a(q, q, q)
    a(q, q, q)
    b = ENLA(8, 16, redraw_every=3, seed=5)
    b(q, q, q)  # b's host count is now 1
    b.load_state_dict(a.state_dict())  # a has made 2 passes
    start = b.matrix.clone()
    b(q, q, q)
    assert torch.equal(b.matrix, start) and int(b.forward_count) == 3
    b(q, q, q)  # the 4th pass draws
    assert not torch.equal(b.matrix, start) and int(b.num_draws) == 1 and int(b.forward_count) == 1


def test_enlcn_public_code_defaults():
    """Attention outputs scaled by 0.1 before the residual add; plain 1x1 embeddings; PReLU as an option."""
    torch.manual_seed(0)
    net = ENLCN(num_feat=8, num_block=2, upscale=2, attention_positions=[0, 2], num_embed_feat=4, num_samples=8)
    for module in net.attention.values():
        assert module.res_scale == 0.1
        assert not any(isinstance(m, torch.nn.PReLU) for m in module.modules())
    module = net.attention['0'].eval()
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        b, c, h, w = x.shape
        attended = module.attend(*module.embed(x)).transpose(1, 2).reshape(b, c, h, w)
        torch.testing.assert_close(module(x), x + 0.1 * attended)
    prelu = ENLCN(num_feat=8, num_block=2, upscale=2, attention_positions=[0, 2], num_embed_feat=4, num_samples=8,
                  attention_res_scale=1., embedding_activation='prelu')
    assert all(m.res_scale == 1. for m in prelu.attention.values())
    assert sum(isinstance(m, torch.nn.PReLU) for m in prelu.modules()) == 3 * 2
    # the convolutions keep their names: a plain network's weights load into the PReLU one
    missing, unexpected = prelu.load_state_dict(net.state_dict(), strict=False)
    assert not unexpected and missing and all(key.endswith('.1.weight') for key in missing)
    with pytest.raises(ValueError, match='^embedding_activation'):
        ENLCN(num_feat=8, num_block=2, embedding_activation='relu')


def test_eval_is_deterministic_and_checkpoint_reproduces(tmp_path):
    torch.manual_seed(0)
    net = tiny_enlcn()
    x = torch.rand(1, 3, 12, 12)
    for _ in range(4):  # past one redraw
        net(x)
    net.eval()
    with torch.no_grad():
        out = net(x)
        assert torch.equal(out, net(x))
    path = tmp_path / 'net.pth'
    torch.save(net.state_dict(), path)
    torch.manual_seed(123)
    loaded = tiny_enlcn()
    loaded.load_state_dict(torch.load(path))
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), out)
    # a resumed run continues the same sequence of random matrices
    net.train()
    loaded.train()
    for _ in range(3):
        net(x)
        loaded(x)
    for key, value in net.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


# ---------------------------------------------------------------------------- network
@pytest.mark.parametrize('scale', [2, 3, 4])
def test_enlcn_shapes_and_modules(scale):
    net = tiny_enlcn(upscale=scale)
    assert list(net.attention.keys()) == ['0', '2', '4']
    assert [m.attention.seed.item() for m in net.attention.values()] == [0, 2, 4]
    y = net(torch.rand(2, 3, 10, 9))
    assert y.shape == (2, 3, 10 * scale, 9 * scale)


def test_enlcn_keeps_edsr_parameter_names():
    edsr = ARCH_REGISTRY.get('EDSR')(3, 3, num_feat=16, num_block=4, upscale=2)
    net = tiny_enlcn()
    missing, unexpected = net.load_state_dict(edsr.state_dict(), strict=False)
    assert not unexpected and all(key.startswith('attention.') for key in missing)


def test_enlcn_default_positions():
    assert tiny_enlcn(num_block=16, attention_positions=None).attention_positions == [0, 8, 16]


@pytest.mark.parametrize('kwargs, key', [
    (dict(attention_positions=[0, 5]), 'attention_positions'),
    (dict(attention_positions=[2, 2]), 'attention_positions'),
    (dict(upscale=5), 'upscale'),
    (dict(num_samples=0), 'num_samples'),
    (dict(amplification=-1), 'amplification'),
    (dict(redraw_every=-2), 'redraw_every'),
])
def test_enlcn_rejects_bad_arguments(kwargs, key):
    with pytest.raises(ValueError, match=f'^{key}:') as info:
        tiny_enlcn(**kwargs)
    assert '\n' not in str(info.value)


# ---------------------------------------------------------------------------- contrastive loss
def reference_contrastive_loss(q, k, amplification, n1=0.02, n2=0.08, margin=1.0):
    """Eq. 8-10 with Python loops, sorted rows and explicit means (slow; small inputs only)."""
    b, n, _ = q.shape
    count = max(1, round(n1 * n))
    start = max(round(n2 * n), count + 1)  # 1-indexed rank of the first irrelevant key
    total = 0.0
    for i_b in range(b):
        for i in range(n):
            row = sorted((amplification * float(q[i_b, i] @ k[i_b, j]) / float(q[i_b, i].norm() * k[i_b, j].norm())
                          for j in range(n)), reverse=True)
            relevant = sum(math.exp(t) for t in row[:count]) / count
            irrelevant = sum(math.exp(t) for t in row[start - 1:start - 1 + count]) / count
            total += max(0.0, margin - math.log(relevant / irrelevant))
    return total / (b * n)


def _stored_module(q, k, amplification=6.0):
    module = ENLCA(num_feat=4, num_embed_feat=q.shape[-1], num_samples=4, amplification=amplification)
    module.stored_embeddings = (torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1))
    return module


def test_contrastive_loss_equals_reference():
    g = torch.Generator().manual_seed(6)
    q = torch.randn(2, 120, 6, generator=g, dtype=torch.float64)
    k = torch.randn(2, 120, 6, generator=g, dtype=torch.float64)
    loss = ENLCAContrastiveLoss(loss_weight=1.0, num_queries=None, warmup_iter=0)
    value = loss(_stored_module(q, k))
    assert value.item() == pytest.approx(reference_contrastive_loss(q, k, 6.0), rel=1e-9)
    assert value.item() > 0
    weighted = ENLCAContrastiveLoss(loss_weight=1e-3, num_queries=None, reduction='sum', warmup_iter=0)
    assert weighted(_stored_module(q, k)).item() == pytest.approx(1e-3 * 240 * value.item(), rel=1e-9)


def test_contrastive_loss_row_sampling_is_unbiased():
    g = torch.Generator().manual_seed(7)
    q = torch.randn(1, 100, 6, generator=g, dtype=torch.float64)
    k = torch.randn(1, 100, 6, generator=g, dtype=torch.float64)
    rows = ENLCAContrastiveLoss(loss_weight=1.0, num_queries=None, warmup_iter=0, reduction='none')(
        _stored_module(q, k))
    sampled_loss = ENLCAContrastiveLoss(loss_weight=1.0, num_queries=10, warmup_iter=0, reduction='none')
    torch.manual_seed(0)
    samples = torch.cat([sampled_loss(_stored_module(q, k)) for _ in range(400)])
    # each sampled term is one of the full rows' terms, and their mean estimates the full mean
    assert torch.isclose(samples.unsqueeze(1), rows.unsqueeze(0)).any(dim=1).all()
    assert abs(samples.mean() - rows.mean()) < 4 * rows.std() / math.sqrt(samples.numel())


def test_contrastive_loss_zero_beyond_margin():
    """Relevant keys (cos 1) beat irrelevant ones (cos -1) by far more than the margin: no loss."""
    n, c = 100, 4
    e = torch.eye(c, dtype=torch.float64)[0]
    q = e.expand(1, n, c).clone()
    k = torch.cat([e.expand(5, c), -e.expand(n - 5, c)]).unsqueeze(0)  # 5 relevant keys per query
    loss = ENLCAContrastiveLoss(loss_weight=1.0, num_queries=None, warmup_iter=0)
    assert loss(_stored_module(q, k)).item() == 0
    assert reference_contrastive_loss(q, k, 6.0) == 0
    # with a small amplification the gap 2k = 0.4 is below the margin, and the loss is 1 - 0.4
    assert loss(_stored_module(q, k, amplification=0.2)).item() == pytest.approx(0.6)


def test_contrastive_loss_trains_embeddings():
    """Training only the query/key embeddings with the loss lowers it on a toy problem."""
    torch.manual_seed(0)
    module = ENLCA(num_feat=8, num_embed_feat=4, num_samples=8)
    x = torch.randn(2, 8, 10, 10)
    loss = ENLCAContrastiveLoss(loss_weight=1.0, warmup_iter=0, num_queries=50)
    params = list(module.conv_query.parameters()) + list(module.conv_key.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    frozen = [p.clone() for p in module.conv_value.parameters()]
    values = []
    module.store_embeddings = True
    for _ in range(60):
        module(x)
        value = loss(module)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        values.append(value.item())
    assert sum(values[-5:]) / 5 < 0.5 * sum(values[:5]) / 5
    assert all(torch.equal(a, b) for a, b in zip(frozen, module.conv_value.parameters()))


def test_contrastive_loss_warmup_and_storage():
    """During the warm-up: no term, nothing stored; the modules store from the iteration after it."""
    net = tiny_enlcn()
    loss = build_loss(dict(type='ENLCAContrastiveLoss', warmup_iter=2, num_queries=8))
    x = torch.rand(1, 3, 12, 12)
    results = []
    for it in range(1, 5):
        net(x)
        stored = [m.stored_embeddings is not None for m in net.attention.values()]
        results.append((all(stored), loss(net, it) is not None))
    assert results == [(False, False), (False, False), (True, True), (True, True)]
    net.eval()
    net(x)
    assert all(m.stored_embeddings is None for m in net.attention.values())


def test_contrastive_loss_averages_modules_by_default():
    """Eq. 12 names one L_cl: the module terms are averaged (public code); module_reduction: sum adds them."""
    torch.manual_seed(0)
    net = tiny_enlcn()
    x = torch.rand(2, 3, 12, 12)
    terms = {}
    for mode in ('mean', 'sum'):
        loss = ENLCAContrastiveLoss(loss_weight=1.0, num_queries=None, warmup_iter=0, module_reduction=mode)
        loss(net, 0)  # asks the modules to store their embeddings
        net(x)
        terms[mode] = loss(net, 1)
    modules = list(net.attention.values())
    assert len(modules) > 1
    torch.testing.assert_close(terms['sum'], terms['mean'] * len(modules))
    with pytest.raises(ValueError, match='^module_reduction'):
        ENLCAContrastiveLoss(module_reduction='max')


def test_contrastive_loss_arguments():
    with pytest.raises(ValueError, match='reduction'):
        ENLCAContrastiveLoss(reduction='max')
    with pytest.raises(ValueError, match='^n1, n2'):
        ENLCAContrastiveLoss(n1=0.5, n2=0.8)
    with pytest.raises(ValueError, match='no ENLCA module'):
        ENLCAContrastiveLoss()(torch.nn.Conv2d(1, 1, 1), 1)
    with pytest.raises(ValueError, match='too small'):
        ENLCAContrastiveLoss().ranks(1)


# ---------------------------------------------------------------------------- configs
CONFIGS = sorted(glob.glob(osp.join(ROOT, 'options', '*', '*ENLCN*.yml')))


@pytest.mark.parametrize('path', CONFIGS, ids=[osp.relpath(p, ROOT) for p in CONFIGS])
def test_configs_build(path):
    with open(path) as f:
        opt = yaml.safe_load(f)
    arch = dict(opt['network_g'])
    net = ARCH_REGISTRY.get(arch.pop('type'))(**arch)
    assert isinstance(net, ENLCN)
    assert arch['upscale'] == opt['scale']
    for loss_opt in opt.get('train', {}).get('network_opt') or []:
        loss_opt = {k: v for k, v in loss_opt.items() if k != 'name'}
        assert isinstance(build_loss(loss_opt), ENLCAContrastiveLoss)


def test_demo_config_passes_check_options():
    opt = parsed_checked_options('options/train/demo_ENLCN_SRx2.yml')
    assert opt['network_g']['type'] in ARCH_REGISTRY and opt['model_type'] == 'RestorationModel'
