"""KV-cached decoding equals the full forward, on the dense and the CPU-sparse Transformer LM."""

from __future__ import annotations

import pytest
import torch
from _sparse_models import sparse_model

from acdc.deploy import sparse_layers, to_cpu_sparse
from acdc.deploy.decode import KVDecoder, generate, lm_step

pytestmark = pytest.mark.usefixtures("single_thread")


def test_cached_steps_equal_full_forward():
    model = sparse_model("transformer_lm")
    seq = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    fast = to_cpu_sparse(model, seq[:, :1], timer=lambda d, *s: (1.0,) + (0.5,) * len(s))
    with torch.inference_mode():
        full = model(seq)
        for m in (model, fast):
            logits, past = lm_step(m, seq[:, :5])  # prefill, then one token at a time
            steps = [logits]
            for i in range(5, 16):
                logits, past = lm_step(m, seq[:, i:i + 1], past)
                steps.append(logits)
            assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5
        with pytest.raises(ValueError, match="exceeds the model context 16"):
            lm_step(model, seq[:, :1], past)
    out = generate(model, seq[:, :4], 6)
    assert out.shape == (2, 10) and torch.equal(out[:, :4], seq[:, :4])
    with torch.inference_mode():  # greedy: each generated token is the argmax of the full forward
        assert torch.equal(model(out[:, :-1])[:, 3:].argmax(-1), out[:, 4:])


def _full_logits_by_steps(decoder, seq, prefill):
    steps = [decoder.step(seq[:, :prefill])]
    for i in range(prefill, seq.shape[1]):
        steps.append(decoder.step(seq[:, i:i + 1]))
    return torch.cat(steps, 1)


@pytest.mark.parametrize("batch", [1, 2])
def test_kv_decoder_equals_full_forward(batch):
    # batch 1 takes the single-row path (addmv on the layers' tensors), batch 2 the module path; both on the dense
    # and on the CPU-sparse model (CSR qkv/proj/MLP and a CSR head without bias)
    model = sparse_model("transformer_lm")
    seq = torch.randint(0, 50, (batch, 16), generator=torch.Generator().manual_seed(batch))
    fast = to_cpu_sparse(model, seq[:, :1], timer=lambda d, *s: (1.0,) + (0.5,) * len(s))
    assert sparse_layers(fast)
    with torch.inference_mode():
        full = model(seq)
    for m in (model, fast):
        decoder = KVDecoder(m)
        assert decoder._plan is not None  # the row path applies to both
        assert (_full_logits_by_steps(decoder, seq, 3) - full).abs().max() <= 1e-5
        with pytest.raises(ValueError, match="exceeds the model context 16"):
            decoder.step(seq[:, :1])
        decoder.reset()  # a new sequence reuses the buffers
        assert (_full_logits_by_steps(decoder, seq[:, 5:], 1) - model(seq[:, 5:]).detach()).abs().max() <= 1e-5


def test_kv_decoder_row_path_equals_module_path():
    # same model, same tokens: the single-row fast path and the generic path give the same logits (1e-6)
    model = sparse_model("transformer_lm", seed=3)
    seq = torch.randint(0, 50, (1, 10), generator=torch.Generator().manual_seed(0))
    row, generic = KVDecoder(model), KVDecoder(model)
    generic._plan = None
    assert (_full_logits_by_steps(row, seq, 1) - _full_logits_by_steps(generic, seq, 1)).abs().max() <= 1e-6


def test_kv_decoder_refuses_bad_use():
    model = sparse_model("transformer_lm")
    with pytest.raises(ValueError, match="eval mode"):
        KVDecoder(model.train())
    model.eval()
    decoder = KVDecoder(model)
    decoder.step(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="batch of 1 sequences, but the cache holds 2"):
        decoder.step(torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(TypeError, match="needs an acdc TransformerLM"):
        KVDecoder(torch.nn.Linear(2, 2))
