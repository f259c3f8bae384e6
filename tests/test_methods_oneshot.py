"""One-shot pruning equals the mask functions exactly and stays fixed while fine-tuning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acdc.masks import global_magnitude, uniform_magnitude
from acdc.methods import build_method

pytestmark = pytest.mark.usefixtures("single_thread")


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.parametrize("target", ["global", "uniform"])
def test_oneshot_is_exact_and_fixed(target: str) -> None:
    model = make_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("weight")}
    want = (global_magnitude if target == "global" else uniform_magnitude)(before, 0.7)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    m = build_method("oneshot", model, opt, steps_per_epoch=5, epochs=2, sparsity=0.7,
                     options={"target": target})
    assert all(torch.equal(m.masks[n], want[n]) for n in want)
    for n, p in model.named_parameters():
        if n in want:
            assert torch.equal(p.detach(), before[n] * want[n])
    for _ in range(10):
        opt.zero_grad()
        model(torch.randn(8, 10)).pow(2).mean().backward()
        opt.step()
        m.step()
    assert all(torch.equal(m.masks[n], want[n]) for n in want)
    assert all(not bool(p.detach()[~want[n]].any()) for n, p in model.named_parameters() if n in want)


def test_from_checkpoint_prunes_the_trained_model(tmp_path) -> None:
    from safetensors.torch import save_file

    trained = make_model()
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(3).add_(0.5)
    path = tmp_path / "final.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(path))
    weights = {n: p.detach().clone() for n, p in trained.named_parameters() if n.endswith("weight")}
    want = global_magnitude(weights, 0.7)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))  # a fresh random init
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m = build_method("oneshot", model, opt, steps_per_epoch=5, epochs=2, sparsity=0.7,
                     options={"from_checkpoint": str(path)})
    assert all(torch.equal(m.masks[n], want[n]) for n in want)
    for n, p in model.named_parameters():
        expect = weights[n] * want[n] if n in want else trained.get_parameter(n).detach()
        assert torch.equal(p.detach(), expect), n


def test_from_checkpoint_errors_name_the_file_and_fix(tmp_path) -> None:
    from safetensors.torch import save_file

    def build(path):
        model = make_model()
        return build_method("oneshot", model, torch.optim.SGD(model.parameters(), lr=0.1), steps_per_epoch=5,
                            epochs=2, sparsity=0.7, options={"from_checkpoint": str(path)})

    with pytest.raises(ValueError, match=r"from_checkpoint file not found: .*missing\.safetensors"):
        build(tmp_path / "missing.safetensors")
    other = tmp_path / "other.safetensors"
    save_file({"0.weight": torch.zeros(3, 3)}, str(other))
    with pytest.raises(ValueError, match=r"does not match the model: missing \['0.bias'"):
        build(other)
    pickled = tmp_path / "model.pt"
    torch.save(make_model().state_dict(), pickled)  # a pickle is refused, never unpickled
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        build(pickled)
