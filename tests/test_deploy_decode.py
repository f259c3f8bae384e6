"""KV-cached decoding equals the full forward, on the dense and the CPU-sparse Transformer LM."""

from __future__ import annotations

import pytest
import torch
from _sparse_models import sparse_model

from acdc.deploy import to_cpu_sparse
from acdc.deploy.decode import generate, lm_step

pytestmark = pytest.mark.usefixtures("single_thread")


def test_cached_steps_equal_full_forward():
    model = sparse_model("transformer_lm")
    seq = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    fast = to_cpu_sparse(model, seq[:, :1], timer=lambda d, s: (1.0, 0.5))
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
