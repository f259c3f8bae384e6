"""Compressed sparse-bitmask checkpoint: fixed bytes, bitwise round trips, tied weights, N:M, bad files."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from _sparse_models import sparse_model
from safetensors import safe_open

from acdc import load_compressed, save_compressed
from acdc import masks as M
from acdc.export.compressed import _row_spans, _set_bits, compress_weight, decompress_weight, read_sparsity_config
from acdc.export.nm import NMPatternError
from acdc.targets import prunable_parameters
from acdc.train.checkpoint import CheckpointError, save_model

pytestmark = pytest.mark.usefixtures("single_thread")


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's raw bytes, for bitwise comparisons (torch.equal treats -0.0 == 0.0 and NaN != NaN)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def test_fixed_bytes_small_weight():
    # 3 x 10 weight: row 0 has values at columns 1 and 9, row 1 is empty, row 2 at columns 0 and 8.
    w = torch.zeros(3, 10)
    w[0, 1], w[0, 9], w[2, 0], w[2, 8] = 1.5, -2.0, 3.0, 4.0
    mask = w != 0
    mask[1, 3] = True  # a kept weight that is exactly zero
    parts = compress_weight("fc.weight", w, mask)
    assert sorted(parts) == ["fc.weight.bitmask", "fc.weight.compressed", "fc.weight.mask", "fc.weight.row_offsets",
                             "fc.weight.shape"]
    assert parts["fc.weight.shape"].dtype == torch.int64 and parts["fc.weight.shape"].tolist() == [3, 10]
    assert parts["fc.weight.compressed"].numpy().tobytes() == struct.pack("<4f", 1.5, -2.0, 3.0, 4.0)
    # little-endian bit order inside each byte, each row padded to ceil(10 / 8) = 2 bytes
    assert parts["fc.weight.bitmask"].dtype == torch.uint8
    assert parts["fc.weight.bitmask"].numpy().tobytes() == bytes([0x02, 0x02, 0x00, 0x00, 0x01, 0x01])
    assert parts["fc.weight.row_offsets"].numpy().tobytes() == struct.pack("<3q", 0, 2, 2)
    assert parts["fc.weight.mask"].numpy().tobytes() == bytes([0x02, 0x02, 0x08, 0x00, 0x01, 0x01])
    # no .mask when the true mask is the non-zero pattern
    assert "fc.weight.mask" not in compress_weight("fc.weight", w, w != 0)


def test_round_trip_bitwise_with_kept_zero(tmp_path):
    model = sparse_model("small_cnn")
    params = prunable_parameters(model)
    masks = {n: p != 0 for n, p in params.items()}
    with torch.no_grad():  # a kept weight that trained to exactly zero, in two layers
        params["features.0.weight"].view(-1)[int(masks["features.0.weight"].view(-1).nonzero()[0])] = 0.0
        params["classifier.3.weight"].view(-1)[int(masks["classifier.3.weight"].view(-1).nonzero()[3])] = 0.0
    path = tmp_path / "m.safetensors"
    cfg = save_compressed(path, model, masks)
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert {"features.0.weight.mask", "classifier.3.weight.mask"} <= keys
    assert "features.4.weight.mask" not in keys  # true mask == non-zero pattern there
    assert json.loads(meta["sparsity_config"]) == cfg == read_sparsity_config(path)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert cfg["global_sparsity"] == pytest.approx(1 - kept / total) and cfg["sparsity_structure"] == "unstructured"
    assert cfg["targets"] == list(params)

    fresh = sparse_model("small_cnn", seed=7)  # different weights and statistics everywhere
    got = load_compressed(path, fresh)
    ref_sd, new_sd = model.state_dict(), fresh.state_dict()
    assert list(ref_sd) == list(new_sd)
    for k in ref_sd:
        assert torch.equal(_bits(ref_sd[k]), _bits(new_sd[k])), k
    assert list(got) == list(masks)
    for n in masks:
        assert got[n].dtype == torch.bool and torch.equal(got[n], masks[n]), n


def test_negative_zero_comes_back_as_zero_and_nan_bitwise(tmp_path):
    lin = torch.nn.Linear(16, 4)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0, :4] = torch.tensor([-0.0, 1.0, float("nan"), -3.0])
    save_compressed(tmp_path / "l.st", lin)
    other = torch.nn.Linear(16, 4)
    load_compressed(tmp_path / "l.st", other)
    assert _bits(other.weight[0, 0:1]).tolist() == [0, 0, 0, 0]  # +0.0
    assert torch.equal(_bits(other.weight[0, 1:]), _bits(lin.weight[0, 1:]))  # NaN payload and -3.0 bitwise


def test_tied_weights_stored_once(tmp_path):
    model = sparse_model("transformer_lm", target="global")
    path = tmp_path / "lm.st"
    save_compressed(path, model)
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
    assert "tok_emb.weight.compressed" in keys and "head.weight" not in keys and "tok_emb.weight" not in keys
    fresh = sparse_model("transformer_lm", seed=3)
    load_compressed(path, fresh)
    assert fresh.head.weight is fresh.tok_emb.weight
    for k, v in model.state_dict().items():
        assert torch.equal(_bits(v), _bits(fresh.state_dict()[k])), k


def test_size_and_gzip(tmp_path):
    model = sparse_model("mlp", sparsity=0.9)
    save_model(tmp_path / "dense.st", model)
    save_compressed(tmp_path / "c.st", model)
    save_compressed(tmp_path / "c.st.gz", model, gzip=True)
    dense, comp, gz = ((tmp_path / n).stat().st_size for n in ("dense.st", "c.st", "c.st.gz"))
    # payload: 4 B per non-zero + one bit per weight (rows padded to bytes) + 8 B per row offset + dense rest
    weights = prunable_parameters(model)
    payload = sum(4 * int((p != 0).sum()) + p.shape[0] * (-(-p[0].numel() // 8) + 8) + 8 * p.dim()
                  for p in weights.values())
    payload += sum(4 * p.numel() for n, p in model.named_parameters() if n not in weights)
    header = 4096
    assert payload < comp < payload + header
    assert dense > 4 * sum(p.numel() for p in model.parameters()) > 5 * payload and gz < comp
    fresh = sparse_model("mlp", seed=5)
    load_compressed(tmp_path / "c.st.gz", fresh)
    for k, v in model.state_dict().items():
        assert torch.equal(_bits(v), _bits(fresh.state_dict()[k])), k


def test_wrong_architecture_leaves_model_untouched(tmp_path):
    save_compressed(tmp_path / "cnn.st", sparse_model("small_cnn"))
    other = sparse_model("mlp")
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match="does not match the model") as e:
        load_compressed(tmp_path / "cnn.st", other)
    assert "\n" not in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    wider = sparse_model("small_cnn")
    wider.classifier[3] = torch.nn.Linear(128, 11)
    with pytest.raises(CheckpointError, match="shape mismatch: classifier.3.weight"):
        load_compressed(tmp_path / "cnn.st", wider)


def _split_model(seed: int) -> torch.nn.Sequential:
    """Linear 150 -> 520 (78,000 weights: two row ranges at 2-4 threads, 147-col rows padded to 19 bytes), a small
    conv (one range), an empty-row layer; 3-95% densities, one in numpy's padded 3-10% band."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(147, 520), torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(520, 9))
    with torch.no_grad():
        for m, density in zip(model, (0.07, 0.5, 0.95)):
            m.weight.masked_fill_(torch.rand_like(m.weight) >= density, 0.0)  # +0.0: round trips bitwise
        model[2].weight[4].zero_()
    return model


@pytest.mark.parametrize("threads", [2, 3, 4])
def test_threaded_load_equals_one_thread_bitwise(tmp_path, threads):
    model = _split_model(0)
    masks = {n: p != 0 for n, p in prunable_parameters(model).items()}
    kept_zero = int(masks["0.weight"].view(-1).nonzero()[5])
    with torch.no_grad():  # a kept weight that trained to exactly zero, inside the split weight
        model[0].weight.view(-1)[kept_zero] = 0.0
    save_compressed(tmp_path / "s.st", model, masks)
    # the rows of 0.weight are shared by more than one range (chunk = max(total // (8 * threads), 65536) = 65536)
    assert len(_row_spans(520, 147, 65536)) == 2 and len(_row_spans(8, 27, 65536)) == 1
    one, many = _split_model(1), _split_model(2)
    m1 = load_compressed(tmp_path / "s.st", one, threads=1)
    mt = load_compressed(tmp_path / "s.st", many, threads=threads)
    for k, v in one.state_dict().items():
        assert torch.equal(_bits(v), _bits(many.state_dict()[k])), k
        assert torch.equal(_bits(v), _bits(model.state_dict()[k])), k
    assert list(m1) == list(mt) == list(masks)
    for n in masks:
        assert torch.equal(m1[n], mt[n]) and torch.equal(mt[n], masks[n]), n
    assert bool(mt["0.weight"].view(-1)[kept_zero]) and float(many[0].weight.detach().view(-1)[kept_zero]) == 0.0
    assert not mt["2.weight"][4].any()


def test_threaded_load_checks_before_writing(tmp_path):
    model = _split_model(0)
    save_compressed(tmp_path / "s.st", model)
    data = (tmp_path / "s.st").read_bytes()
    (tmp_path / "s.st").write_bytes(data[: int(len(data) * 0.9)])
    fresh = _split_model(3)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        load_compressed(tmp_path / "s.st", fresh, threads=2)
    assert "\n" not in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        load_compressed(tmp_path / "s.st", fresh, threads=0)


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_file(tmp_path, cut):
    path = tmp_path / "c.st"
    model = sparse_model("small_cnn")
    save_compressed(path, model)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    fresh = sparse_model("small_cnn", seed=2)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        load_compressed(path, fresh)
    assert "\n" not in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


@pytest.mark.parametrize("header", [b'[1, 2]', b'{"a": 3}', b'{"a": {"dtype": "F32", "shape": [4], '
                                    b'"data_offsets": [0, 99]}}', b'{"a": {"dtype": "Q9", "shape": [], '
                                    b'"data_offsets": [0, 0]}}', b'{not json'])
def test_corrupt_header_is_rejected(tmp_path, header):
    path = tmp_path / "c.st"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        load_compressed(path, sparse_model("mlp"))
    assert "\n" not in str(e.value)


def test_inconsistent_bitmask_is_rejected(tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "c.st"
    save_compressed(path, sparse_model("mlp"))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["net.1.weight.bitmask"][0, 0] ^= 0xFF  # flips 8 bits: counts no longer match the values
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="corrupt.*net.1.weight"):
        load_compressed(path, sparse_model("mlp"))


@pytest.mark.parametrize("density", [0.0, 0.01, 0.05, 0.0999, 0.1, 0.1001, 0.3, 1.0])
@pytest.mark.parametrize("cols", [64, 147])
def test_set_bit_indices_match_flatnonzero(density, cols):
    # around numpy's 10% switch between its two nonzero loops (the padding trick) and with rows padded to bytes
    gen = torch.Generator().manual_seed(int(density * 1e4) + cols)
    w = torch.randn(37, cols, generator=gen) * (torch.rand(37, cols, generator=gen) < density)
    parts = compress_weight("w", w)
    packed = parts["w.bitmask"].numpy()
    idx, mask = _set_bits(packed, 37, cols, parts["w.compressed"].numel())
    assert np.array_equal(idx, np.flatnonzero(w.numpy() != 0)) and np.array_equal(mask, w.numpy() != 0)
    out, m = decompress_weight("w", parts)
    assert torch.equal(_bits(out), _bits(w + 0.0)) and torch.equal(m, w != 0)


def test_bits_past_the_last_column_are_rejected():
    parts = compress_weight("w", torch.ones(2, 10))
    parts["w.bitmask"][1, 1] |= 0x80  # column 15 of a 10-column row: its count would still match a value
    parts["w.compressed"] = torch.ones(21)
    parts["w.row_offsets"] = torch.tensor([0, 10])
    with pytest.raises(ValueError, match="bits set past the 10 columns"):
        decompress_weight("w", parts)


def test_nm_pattern_validated_and_recorded(tmp_path):
    model = sparse_model("mlp", sparsity=0.0)
    with torch.no_grad():
        for p in prunable_parameters(model).values():
            if p.shape[1] % 4 == 0:
                p.mul_(M.n_m(p, 2, 4))
    cfg = save_compressed(tmp_path / "nm.st", model, structure="2:4")
    assert cfg["sparsity_structure"] == "2:4" and cfg["ignore"] == []
    assert read_sparsity_config(tmp_path / "nm.st")["sparsity_structure"] == "2:4"
    with torch.no_grad():
        model.net[3].weight[5, 8:12] = torch.tensor([1.0, 2.0, 3.0, 0.0])  # 3 non-zeros in one group of 4
    with pytest.raises(NMPatternError, match=r"net.3.weight: the 2:4 pattern is violated .* input channels 8-11"):
        save_compressed(tmp_path / "bad.st", model, structure="2:4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nm.st"]  # nothing partial written
