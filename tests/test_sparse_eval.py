"""ACLA's sparse evaluation (issue 21): only open keys are aggregated, only key layers with an open key are projected
and get offsets; the same function as the dense path, and the MACs that the cost model says (flop counter)."""
import acla_basicsr  # noqa: F401  (before basicsr: makes it importable, registers the archs)
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from test_cla_arch import randomise, tiny_edsr, tiny_rcan
from acla_basicsr.archs.acla_super_edsr_arch import ACLASuperEDSR
from acla_basicsr.archs.cla_modules import AdaptiveCrossLayerAttention, CrossLayerAttention, sample_keys

pytestmark = pytest.mark.usefixtures('one_thread')


def both_paths(module_or_net, *args):
    """Evaluation output of the sparse path and of the same modules forced dense."""
    modules = [m for m in module_or_net.modules() if isinstance(m, CrossLayerAttention)]
    with torch.no_grad():
        sparse = module_or_net.eval()(*args)
        for m in modules:
            m.sparse_eval = False
        dense = module_or_net(*args)
        for m in modules:
            del m.sparse_eval
    return sparse, dense


def gated_module(num_layers=3, num_keys=4):
    torch.manual_seed(0)
    module = randomise(AdaptiveCrossLayerAttention(8, num_layers, num_keys=num_keys), std=1.0)
    with torch.no_grad():
        module.offset.bias.mul_(2.5)  # keys at various distances, some outside the map
    return module


def set_gates(module, case):
    """Gate logits g = s * x[:, 0] + bias: the open set varies with the pixel and the batch item (s = 1)."""
    with torch.no_grad():
        module.gate.weight.zero_()
        module.gate.weight[:, 0] = 1.0 if case in ('mixed', 'pixel closed') else 0.0
        bias = {'mixed': torch.randn(module.gate.bias.shape), 'pixel closed': torch.full_like(module.gate.bias, 0.5),
                'all closed': torch.full_like(module.gate.bias, -1.0),
                'all open': torch.full_like(module.gate.bias, 1.0)}[case]
        module.gate.bias.copy_(bias)


@pytest.mark.parametrize('case', ['mixed', 'pixel closed', 'all closed', 'all open'])
def test_sparse_module_equals_dense(case):
    module = gated_module()
    set_gates(module, case)
    x, keys = torch.randn(3, 8, 7, 9), [torch.randn(3, 8, 7, 9) for _ in range(3)]
    if case == 'pixel closed':
        x[:, 0] = x[:, 0].abs()
        x[1, 0, 2, 3] = -100.0  # every gate of that pixel closed, the others open
    sparse, dense = both_paths(module, x, keys)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
    gates = (module.gate(x) > 0).view(3, 3, 4, 7, 9)
    if case == 'mixed':  # the batch items have different open sets
        assert not torch.equal(gates[0], gates[1]) and 0 < gates.float().mean() < 1
    if case == 'pixel closed':
        assert not gates[1, :, :, 2, 3].any() and gates.sum() == gates.numel() - 12
        torch.testing.assert_close(sparse[1, :, 2, 3], x[1, :, 2, 3], rtol=0, atol=0)  # identity at that pixel
    if case == 'all closed':
        assert torch.equal(sparse, x)
        assert module.measured_projected_layers() == [0.0, 0.0, 0.0]


def test_sparse_and_dense_evaluation_record_the_same_open_keys():
    """The sparse path reads the gates from its one product of the heads: the open keys it records per key layer
    (last pass, and accumulated over passes) are those the dense path records from the gate conv."""
    module = gated_module()
    set_gates(module, 'mixed')
    x, keys = torch.randn(3, 8, 7, 9), [torch.randn(3, 8, 7, 9) for _ in range(3)]
    recorded = []
    for sparse in (True, False):
        module.eval().sparse_eval = sparse
        module.reset_key_stats()
        with torch.no_grad():
            module(x, keys)
            last = module.last_active_keys.clone()
            module(x[:1], [k[:1] for k in keys])
        recorded.append((last, module.measured_active_keys()))
    del module.sparse_eval
    (sparse_last, sparse_measured), (dense_last, dense_measured) = recorded
    torch.testing.assert_close(sparse_last, dense_last, rtol=1e-6, atol=1e-6)
    assert sparse_measured == pytest.approx(dense_measured, abs=1e-6)
    assert 0 < min(sparse_measured) and max(sparse_measured) < module.num_keys


def test_sparse_module_far_keys_read_zeros_as_dense():
    """Keys just outside the map, a few pixels beyond its border, and 1e9 pixels away (past int32) read zero
    padding, as in the dense sampler; the integer corners are bounded before their conversion."""
    module = gated_module()
    set_gates(module, 'mixed')
    with torch.no_grad():
        far = torch.tensor([-1e9, 1e9, -0.5, 6.3, -9.7, 8.0, 3.5, -3.5])  # 4 (dy, dx) pairs per key layer
        module.offset.bias.view(3, 4, 2).copy_(far.view(4, 2))
    x, keys = torch.randn(2, 8, 5, 6), [torch.randn(2, 8, 5, 6) for _ in range(3)]
    sparse, dense = both_paths(module, x, keys)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)


def test_sparse_chunks_and_unprojected_layers():
    """Chunks of query pixels (a tiny memory budget: one pixel a chunk, some chunks without an open key) give the
    same output; a key layer whose keys are all closed over the batch is not projected."""
    module = gated_module()
    set_gates(module, 'mixed')
    with torch.no_grad():
        module.gate.bias.view(3, 4)[1] = -200.0  # key layer 1 closed everywhere
    x, keys = torch.randn(2, 8, 6, 5), [torch.randn(2, 8, 6, 5) for _ in range(3)]
    x[1, 0, 2, 1:3] = -100.0  # two pixels with every key closed
    _, dense = both_paths(module, x, keys)
    module.reset_key_stats()
    module.max_memory_mb = 1e-3  # a few keys per chunk
    with torch.no_grad():
        sparse = module.eval()(x, keys)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
    assert module.measured_projected_layers() == [1.0, 0.0, 1.0]


def test_value_projection_keeps_the_values_and_gradients_of_per_layer_convs():
    """One batched matmul for all key layers' value projections, with the parameters value.{l}: the training
    output and every gradient equal the per-layer 1x1 convs that it replaced."""
    torch.manual_seed(0)
    module = randomise(CrossLayerAttention(8, 3, num_keys=4), std=1.0).train()
    x = torch.randn(2, 8, 6, 7, requires_grad=True)
    keys = [torch.randn(2, 8, 6, 7, requires_grad=True) for _ in range(3)]
    out = module(x, keys)
    grads = torch.autograd.grad(out.square().sum(), [x, *keys, *module.parameters()])
    values = torch.stack([proj(layer) for proj, layer in zip(module.value, keys)], 1)
    offsets = module.offset(x).view(2, 3, 4, 2, 6, 7)
    reference = x + module.proj(sample_keys(values, offsets, module.key_weights(x)))
    expected = torch.autograd.grad(reference.square().sum(), [x, *keys, *module.parameters()])
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def random_gates(net, seed=0, spread=3.0):
    """Random gate biases (some keys and some whole key layers closed), as a trained network may have them."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in net.attention:
            module.gate.weight.mul_(0.1)
            module.gate.bias.copy_(torch.randn(module.gate.bias.shape) * spread)
            module.gate.bias.view(module.num_key_layers, -1)[-1] = -50.0  # the newest key layer closed
    return net


@pytest.mark.parametrize('build', [tiny_edsr, tiny_rcan], ids=['edsr', 'rcan'])
def test_sparse_networks_equal_dense(build):
    net = random_gates(randomise(build(attention='acla'), std=1.0))
    sparse, dense = both_paths(net, torch.rand(2, 3, 9, 8))
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)


def test_sparse_supernet_skips_closed_candidates_and_key_layers():
    torch.manual_seed(0)
    net = ACLASuperEDSR(num_feat=8, num_block=5, num_keys=3, upscale=2)
    with torch.no_grad():
        for module in net.attention:
            for name, p in module.named_parameters():
                p.add_(torch.randn_like(p) * (0.01 if 'offset' in name else 1.0))
        net.arch_logits.copy_(torch.tensor([3.0, -3.0, 3.0, -3.0, 3.0]))  # candidates 2 and 4 closed
    net.reset_key_stats()
    sparse, dense = both_paths(net, torch.rand(2, 3, 7, 6))
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
    # candidate 5's key layers: head, 1, 2, 3, 4; those of the closed candidates 2 and 4 were not projected
    projected = net.attention[4].measured_projected_layers()
    assert projected[2] == 0.0 and projected[4] == 0.0 and projected[0] == 1.0


def test_effective_macs_are_the_flop_counter_on_the_sparse_path_plus_the_aggregation():
    net = random_gates(randomise(tiny_edsr(attention='acla', num_keys=4), std=1.0), spread=1.0).eval()
    size, c = (9, 7), 8
    net.reset_key_stats()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.rand(1, 3, *size))
    open_keys = sum(sum(layers) for layers in net.measured_active_keys().values())
    aggregation = 4 * c * open_keys * size[0] * size[1]
    assert net.effective_macs(*size) == pytest.approx(counter.get_total_flops() / 2 + aggregation, rel=1e-9)
    # some keys and whole key layers were closed: the sparse count is below the dense one
    assert any(0.0 in m.measured_projected_layers() for m in net.attention)
    dense = net.backbone_macs(*size) + net.attention_macs(*size)
    assert counter.get_total_flops() / 2 < dense


def test_grid_sample_keeps_the_dense_path_for_the_onnx_export(monkeypatch):
    module = gated_module()
    set_gates(module, 'mixed')
    x, keys = torch.randn(1, 8, 5, 6), [torch.randn(1, 8, 5, 6) for _ in range(3)]
    with torch.no_grad():
        sparse = module.eval()(x, keys)
        module.sampling_method = 'grid_sample'
        monkeypatch.setattr(module, '_sparse_update', None)  # would fail if called
        torch.testing.assert_close(module(x, keys), sparse, rtol=1e-5, atol=1e-5)


def test_sparse_path_is_differentiable_in_evaluation_mode():
    """An evaluated module with gradients enabled (attribution, a validation without no_grad) keeps the sparse path
    and gets the dense path's gradients."""
    module = gated_module()
    set_gates(module, 'mixed')
    x = torch.randn(2, 8, 5, 6, requires_grad=True)
    keys = [torch.randn(2, 8, 5, 6, requires_grad=True) for _ in range(3)]
    grads = []
    for sparse in (True, False):
        module.eval().sparse_eval = sparse
        out = module(x, keys)
        grads.append(torch.autograd.grad(out.square().sum(), [x, *keys, module.offset.weight, module.logit.weight]))
    del module.sparse_eval
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def load_bench():
    """benchmarks/bench_acla_sparsity.py as a module."""
    import importlib.util
    import os.path as osp
    from conftest import ROOT
    spec = importlib.util.spec_from_file_location('bench_acla_sparsity',
                                                  osp.join(ROOT, 'benchmarks', 'bench_acla_sparsity.py'))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_decides_below_on_paired_rounds_with_a_sign_test():
    """"ACLA below CLA" is met when ACLA is faster round by round and a one-sided sign test has p < 0.05: not by a
    lower median alone (a drift of the machine between rounds moves both calls of a round together)."""
    bench = load_bench()
    # faster in every one of 10 rounds, while the machine drifts by 2x: met, p = 0.5**10
    drift = [1.0, 2.0] * 5
    times = {'acla': [0.98 * d for d in drift], 'cla': drift}
    line = bench.below(times, 'acla', 'cla', 'ACLA below CLA')
    assert line.startswith('ACLA below CLA: met (0.980x paired, faster in 10 of 10 rounds, sign test p = 0.00098)')
    # faster in 5 of 10 rounds, by as much as it is slower in the others: a tie, not met
    times = {'acla': [1.01, 0.99] * 5, 'cla': [1.0] * 10}
    ratio, faster, p_value = bench.paired(times, 'acla', 'cla')
    assert ratio == 1.0 and faster == 5 and p_value > 0.5
    assert bench.below(times, 'acla', 'cla', 'x').startswith('x: NOT met')
    # equal times are not faster
    assert bench.paired({'a': [1.0] * 6, 'b': [1.0] * 6}, 'a', 'b')[1] == 0


@pytest.mark.slow
def test_bench_acla_sparsity_runs_and_prints_its_tables(capsys):
    """benchmarks/bench_acla_sparsity.py at a tiny size: part 1 checks the sparse module against the dense one at
    every fraction (it asserts equality itself), part 2 builds EDSR-large with CLA and ACLA, and every table and
    target line is printed with positive ratios (a benchmark that no test runs rots: this one called a removed
    method)."""
    import re
    bench = load_bench()
    bench.main(['--size', '8', '--repeat', '1', '--edsr-repeat', '1', '--attention-repeat', '1'])
    out = capsys.readouterr().out
    for fraction in ('100 %', '50 %', '25 %', '10 %'):
        assert f'| {fraction} |' in out
    assert 'targets at 25 %: aggregation <= 0.5x dense:' in out
    for row in ('| EDSR-large |', '| EDSR-large + CLA K=16 |', '| EDSR-large + ACLA K=16 (sparse) |',
                '| ACLA K=16 (sparse) |'):
        assert row in out, row
    assert 'ACLA modules below CLA K=16 modules:' in out
    # the ACLA-below-CLA targets are decided on paired rounds with a sign test
    assert out.count('sign test p = ') == 4
    ratios = [float(r) for r in re.findall(r'\((\d+\.\d+)x', out)]
    assert len(ratios) >= 4 and all(r > 0 for r in ratios)
