"""CPU-sparse path: equals dense on every registry model, per-layer fallback, inference_mode, save/load."""

from __future__ import annotations

import pytest
import torch
from _sparse_models import SMALL, example, sparse_model
from safetensors import safe_open

from acdc.deploy import SparseConv1x1, SparseLinear, load_cpu_sparse, save_cpu_sparse, sparse_layers, to_cpu_sparse
from acdc.train.checkpoint import CheckpointError

pytestmark = pytest.mark.usefixtures("single_thread")


def _csr_wins(dense, sparse):
    return 1.0, 0.5


def _dense_wins(dense, sparse):
    return 0.5, 1.0


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
    # 50% zeros at batch 256: CSR is several times slower than the dense GEMM; 99% at batch 1: many times faster
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU()).eval()
    with torch.no_grad():
        model[0].weight.mul_((torch.rand(512, 512) < 0.5).float())
    fast = to_cpu_sparse(model, torch.randn(256, 512), repeats=5)
    assert fast.cpu_sparse_plan[0]["chosen"] == "dense", fast.cpu_sparse_plan
    big = torch.nn.Sequential(torch.nn.Linear(2048, 2048)).eval()
    with torch.no_grad():
        big[0].weight.mul_((torch.rand(2048, 2048) < 0.01).float())
    fast = to_cpu_sparse(big, torch.randn(1, 2048), repeats=5)
    assert fast.cpu_sparse_plan[0]["chosen"] == "csr", fast.cpu_sparse_plan


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
