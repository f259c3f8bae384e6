"""ONNX export: ORT equals torch on the project's models; sparse initializers shrink the file, change nothing else."""

from __future__ import annotations

import pytest
import torch
from _sparse_models import example, sparse_model

from acdc.export import export_onnx, run_onnx
from acdc.export.onnx_export import to_sparse_initializers

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("single_thread")


# resnet50 (torchvision) is checked by bench/bench_infer.py: its export alone takes ~50 s on the loaded 2-core VM
@pytest.mark.parametrize("name", ["small_cnn", "mlp", "resnet20", "wrn", "mobilenet_v1", "transformer_lm"])
def test_ort_equals_torch_and_sparse_initializers(name, tmp_path):
    model = sparse_model(name, target="global")
    x = example(name)
    dense_path, sparse_path = tmp_path / "d.onnx", tmp_path / "s.onnx"
    export_onnx(model, x[:1], dense_path)
    rep = export_onnx(model, x[:1], sparse_path, sparse_initializers=True)
    with torch.no_grad():
        ref = model(x)
    out = run_onnx(dense_path, x)  # batch > 1 through the dynamic batch axis
    assert out.shape == ref.shape and (out - ref).abs().max() <= 1e-5
    assert torch.equal(run_onnx(sparse_path, x), out)  # bit-equal: ORT densifies at load
    proto = onnx.load(str(sparse_path))
    onnx.checker.check_model(proto)
    assert rep["sparse_initializers"] and len(proto.graph.sparse_initializer) == len(rep["sparse_initializers"])
    assert all(s.indices.data_type == onnx.TensorProto.INT64 for s in proto.graph.sparse_initializer)
    assert sparse_path.stat().st_size < dense_path.stat().st_size
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_lm_sequence_axis_is_dynamic(tmp_path):
    model = sparse_model("transformer_lm")
    export_onnx(model, example("transformer_lm")[:1], tmp_path / "lm.onnx")
    x = torch.randint(0, 50, (3, 9))
    with torch.no_grad():
        assert (run_onnx(tmp_path / "lm.onnx", x) - model(x)).abs().max() <= 1e-5


def test_sparse_file_size_at_90_percent(tmp_path):
    # int64 COO costs 12 B per non-zero: at 90% the weights shrink 4 / (0.1 * 12) = 3.33x
    from acdc import masks as M

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 512),
                                torch.nn.ReLU(), torch.nn.Linear(512, 10)).eval()
    with torch.no_grad():
        for lin in (model[0], model[2], model[4]):
            lin.weight.mul_(M.uniform_magnitude({"w": lin.weight}, 0.9)["w"])
    x = torch.randn(2, 64)
    export_onnx(model, x, tmp_path / "d.onnx")
    rep = export_onnx(model, x, tmp_path / "s.onnx", sparse_initializers=True)
    ratio = (tmp_path / "d.onnx").stat().st_size / (tmp_path / "s.onnx").stat().st_size
    assert ratio >= 3.3, ratio
    assert len(rep["sparse_initializers"]) == 3  # the biases stay plain initializers


def test_threshold_two_thirds():
    from onnx import helper, numpy_helper

    a = torch.zeros(3, 6)
    a[:, :2] = 1.0  # exactly 2/3 zeros: moved
    b = torch.zeros(3, 6)
    b[:, :3] = 1.0  # half zeros: kept
    graph = helper.make_graph([], "g", [], [], initializer=[numpy_helper.from_array(a.numpy(), "a"),
                                                            numpy_helper.from_array(b.numpy(), "b")])
    proto = helper.make_model(graph)
    assert to_sparse_initializers(proto) == ["a"]
    s = proto.graph.sparse_initializer[0]
    assert list(s.dims) == [3, 6] and numpy_helper.to_array(s.indices).tolist() == [0, 1, 6, 7, 12, 13]
