"""CPU-sparse path: equals dense on every registry model, per-layer fallback, inference_mode, save/load."""

from __future__ import annotations

import pytest
import torch
from _sparse_models import SMALL, example, sparse_model
from safetensors import safe_open

from acdc.deploy import SparseConv1x1, SparseLinear, load_cpu_sparse, save_cpu_sparse, sparse_layers, to_cpu_sparse
from acdc.deploy.cpu_sparse import block_candidates
from acdc.train.checkpoint import CheckpointError

pytestmark = pytest.mark.usefixtures("single_thread")


def _csr_wins(dense, *csr):
    return (1.0,) + (0.5,) * len(csr)


def _dense_wins(dense, *csr):
    return (0.5,) + (1.0,) * len(csr)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_equals_dense_on_every_registry_model(name):
    model = sparse_model(name)
    x = example(name)
    fast = to_cpu_sparse(model, x, timer=_csr_wins)  # force CSR wherever a layer qualifies
    converted = sparse_layers(fast)
    expected = {p["layer"] for p in fast.cpu_sparse_plan if p["chosen"] == "csr"}
    assert converted and set(converted) == expected
    with torch.inference_mode():
        ref, out = model(x), fast(x)
    assert out.shape == ref.shape and (out - ref).abs().max() <= 1e-5
    assert all(isinstance(m, torch.nn.Module) for m in model.modules() if isinstance(m, SparseLinear)) is True
    assert not sparse_layers(model)  # the input model is not modified


def test_conv1x1_stride_and_batch():
    conv = torch.nn.Conv2d(32, 48, 1, stride=2, bias=True).eval()
    with torch.no_grad():
        conv.weight.mul_((torch.rand_like(conv.weight) < 0.1).float())
    sp = SparseConv1x1.from_conv(conv)
    for n in (1, 3):
        x = torch.randn(n, 32, 9, 9)
        with torch.inference_mode():
            assert (sp(x) - conv(x)).abs().max() <= 1e-5
    assert not SparseConv1x1.supports(torch.nn.Conv2d(8, 8, 1, padding=1))
    assert not SparseConv1x1.supports(torch.nn.Conv2d(8, 8, 3))


def test_fallback_by_injected_timings():
    model = sparse_model("mlp")
    fast = to_cpu_sparse(model, example("mlp"), timer=_dense_wins)
    assert not sparse_layers(fast) and all(p["chosen"] == "dense" for p in fast.cpu_sparse_plan)


def test_fallback_by_real_timings():
    # the real timer, on margins far beyond machine noise (the decision logic itself is pinned by the scripted
    # timer below): 10% zeros at batch 512 on 1024x1024 (dense GEMM ~4x faster than the best CSR form, measured
    # at load 3.5), 1% density at batch 1 on 2048x2048 (CSR mv ~9x faster than dense)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.ReLU()).eval()
    with torch.no_grad():
        model[0].weight.mul_((torch.rand(1024, 1024) < 0.9).float())
    fast = to_cpu_sparse(model, torch.randn(512, 1024), min_sparsity=0.05, repeats=5)
    assert fast.cpu_sparse_plan[0]["chosen"] == "dense", fast.cpu_sparse_plan
    big = torch.nn.Sequential(torch.nn.Linear(2048, 2048)).eval()
    with torch.no_grad():
        big[0].weight.mul_((torch.rand(2048, 2048) < 0.01).float())
    fast = to_cpu_sparse(big, torch.randn(1, 2048), repeats=5)
    assert fast.cpu_sparse_plan[0]["chosen"] == "csr", fast.cpu_sparse_plan


def _scripted_timer(per_layer):
    """A deterministic timer: the n-th timed layer gets the n-th tuple (dense, csr whole, csr blocks...)."""
    calls = iter(per_layer)

    def timer(dense, *csr):
        times = next(calls)
        assert len(times) == 1 + len(csr)
        return times
    return timer


def test_decision_picks_fastest_form_with_deterministic_timer(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256),
                                torch.nn.ReLU(), torch.nn.Linear(256, 8)).eval()
    with torch.no_grad():
        for m in model[::2]:
            m.weight.mul_((torch.rand_like(m.weight) < 0.1).float())
    x = torch.randn(200, 1024)
    assert block_candidates(1024, 200) == [64, 128] and block_candidates(512, 200) == [128]
    assert block_candidates(256, 200) == [] and block_candidates(4096, 64) == [16, 32]
    # layer 0: block 128 fastest; layer 2: dense faster than every CSR form; layer 4 (256 in): whole CSR wins,
    # a tie between dense and CSR goes to CSR
    timer = _scripted_timer([(3.0, 2.0, 1.5, 1.0), (1.0, 1.1, 1.2), (2.0, 2.0)])
    fast = to_cpu_sparse(model, x, timer=timer)
    plan = {p["layer"]: p for p in fast.cpu_sparse_plan}
    assert (plan["0"]["chosen"], plan["0"]["block"]) == ("csr", 128)
    assert plan["0"]["csr_ms_by_block"] == {"0": 2000.0, "64": 1500.0, "128": 1000.0}
    assert plan["2"]["chosen"] == "dense" and (plan["4"]["chosen"], plan["4"]["block"]) == ("csr", 0)
    layers = sparse_layers(fast)
    assert set(layers) == {"0", "4"} and layers["0"].block == 128 and layers["4"].block == 0
    with torch.inference_mode():
        assert (fast(x) - model(x)).abs().max() <= 1e-5
    save_cpu_sparse(tmp_path / "m.safetensors", fast)
    loaded = load_cpu_sparse(tmp_path / "m.safetensors", model)
    assert sparse_layers(loaded)["0"].block == 128
    with pytest.raises(ValueError, match="timer returned 2 times for 4 forms of 0"):
        to_cpu_sparse(model, x, timer=lambda d, *s: (1.0, 0.5))


@pytest.mark.parametrize("block", [8, 16, 48])
def test_column_blocked_product_equals_dense(block):
    # blocks that divide the columns, that do not (last block short), and wider than a conv's per-image columns
    torch.manual_seed(block)
    lin = torch.nn.Linear(96, 40).eval()
    conv = torch.nn.Conv2d(24, 32, 1, stride=2).eval()
    with torch.no_grad():
        lin.weight.mul_((torch.rand_like(lin.weight) < 0.2).float())
        conv.weight.mul_((torch.rand_like(conv.weight) < 0.2).float())
    base = SparseLinear.from_linear(lin)
    sl, sc = base.with_block(block), SparseConv1x1.from_conv(conv).with_block(block)
    assert sl.values is base.values and (base.block, sl.block) == (0, block)  # a twin on the same CSR buffers
    x, xc = torch.randn(3, 21, 96), torch.randn(3, 24, 11, 7)
    with torch.inference_mode():
        assert (sl(x) - lin(x)).abs().max() <= 1e-5 and (sc(xc) - conv(xc)).abs().max() <= 1e-5


def test_non_sparse_model_refused():
    model = sparse_model("mlp", sparsity=0.3)
    with pytest.raises(ValueError, match=r"no Linear or 1x1 Conv layer has >= 50% zeros \(sparsest: .*needs a sparse"):
        to_cpu_sparse(model, example("mlp"))


def test_save_load_without_pickle(tmp_path):
    model = sparse_model("transformer_lm", target="global")
    x = example("transformer_lm")
    fast = to_cpu_sparse(model, x, timer=_csr_wins)
    path = tmp_path / "lm.safetensors"
    save_cpu_sparse(path, fast)
    with safe_open(str(path), "pt") as f:  # a plain safetensors file: CSR parts as tensors, plan as JSON
        keys = set(f.keys())
        assert f.metadata()["format"] == "acdc-cpu-sparse"
    assert {"head.crow_indices", "head.col_indices", "head.values"} <= keys
    with safe_open(str(path), "pt") as f:
        assert f.get_tensor("head.crow_indices").dtype == torch.int32
    fresh = sparse_model("transformer_lm", seed=4)
    loaded = load_cpu_sparse(path, fresh)
    assert set(sparse_layers(loaded)) == set(sparse_layers(fast))
    with torch.inference_mode():
        assert torch.equal(loaded(x), fast(x))
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_cpu_sparse(path, sparse_model("mlp"))
