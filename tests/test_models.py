"""Model zoo: published parameter counts, output shapes, registry errors, LM weight tying."""

from __future__ import annotations

import pytest
import torch

from acdc.models import CifarResNet, available, build


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())  # tied weights are counted once


@pytest.mark.parametrize(
    ("name", "num_classes", "millions", "ndigits"),
    [
        ("resnet20", 10, 0.27, 2),
        ("resnet32", 10, 0.46, 2),
        ("resnet44", 10, 0.66, 2),
        ("resnet56", 10, 0.85, 2),
        ("wrn28_10", 100, 36.5, 1),
        ("resnet50", 1000, 25.56, 2),
        ("mobilenet_v1", 1000, 4.2, 1),
    ],
)
def test_published_param_counts(name: str, num_classes: int, millions: float, ndigits: int) -> None:
    if name == "resnet50":
        pytest.importorskip("torchvision")
    m = build(name, num_classes)
    assert round(n_params(m) / 1e6, ndigits) == millions


def test_generic_wrn_matches_alias() -> None:
    assert n_params(build("wrn", 100, depth=28, width=10)) == n_params(build("wrn28_10", 100))
    assert n_params(build("wrn", 10, depth=16, width=2)) < n_params(build("wrn", 10, depth=16, width=4))


@pytest.mark.parametrize(
    ("name", "kwargs", "shape"),
    [
        ("small_cnn", {}, (2, 1, 28, 28)),
        ("small_cnn", {}, (2, 1, 8, 8)),
        ("small_cnn", {"in_channels": 3}, (2, 3, 32, 32)),
        ("mlp", {}, (2, 1, 28, 28)),
        ("mlp", {"in_features": 64, "hidden": (32,)}, (2, 1, 8, 8)),
        ("resnet20", {}, (2, 3, 32, 32)),
        ("resnet32", {}, (2, 3, 32, 32)),
        ("resnet44", {}, (2, 3, 32, 32)),
        ("resnet56", {}, (2, 3, 32, 32)),
        ("wrn", {"depth": 10, "width": 1}, (2, 3, 32, 32)),
        ("mobilenet_v1", {"width_mult": 0.25}, (2, 3, 64, 64)),
    ],
)
def test_forward_shapes(name: str, kwargs: dict, shape: tuple[int, ...]) -> None:
    m = build(name, 7, **kwargs)
    m.train()
    out = m(torch.randn(*shape))
    assert out.shape == (shape[0], 7)
    out.sum().backward()


@pytest.mark.parametrize(
    ("name", "shape", "nc"),
    [("wrn28_10", (1, 3, 32, 32), 100), ("mobilenet_v1", (1, 3, 224, 224), 1000),
     ("resnet50", (1, 3, 64, 64), 1000)],
)
def test_big_model_forward(name: str, shape: tuple[int, ...], nc: int) -> None:
    if name == "resnet50":
        pytest.importorskip("torchvision")
    m = build(name, nc).eval()
    with torch.no_grad():
        assert m(torch.randn(*shape)).shape == (1, nc)


def test_torchvision_prefix() -> None:
    pytest.importorskip("torchvision")
    m = build("torchvision:resnet18", 5).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    with pytest.raises(ValueError, match="unknown torchvision"):
        build("torchvision:not_a_model", 5)


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'") as e:
        build("nope", 10)
    for name in ("small_cnn", "resnet20", "transformer_lm"):
        assert name in str(e.value)
    assert "small_cnn" in available()


def test_bad_num_classes_is_refused() -> None:
    for name in ("resnet20", "transformer_lm", "torchvision:resnet18"):
        with pytest.raises(ValueError, match="num_classes must be a positive int"):
            build(name, 0)


def test_bad_kwargs_are_reported() -> None:
    with pytest.raises(TypeError, match="small_cnn"):
        build("small_cnn", 10, not_an_arg=1)
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(21)


def test_transformer_lm_shapes_and_tying() -> None:
    m = build("transformer_lm", 50, n_layers=2, n_heads=4, d_model=32, context=16)
    assert (m.n_layers, m.n_heads, m.d_model, m.context) == (2, 4, 32, 16)
    assert m.head.weight is m.tok_emb.weight
    assert m.head.bias is None
    x = torch.randint(0, 50, (3, 16))
    logits = m(x)
    assert logits.shape == (3, 16, 50)
    logits.sum().backward()
    # tied parameter appears once in parameters()
    assert sum(p is m.tok_emb.weight for p in m.parameters()) == 1
    # vocab_size overrides num_classes; shorter sequences work
    m2 = build("transformer_lm", 10, vocab_size=20, d_model=16, n_heads=2, context=8)
    assert m2(torch.randint(0, 20, (1, 5))).shape == (1, 5, 20)
    with pytest.raises(ValueError, match="context"):
        m2(torch.randint(0, 20, (1, 9)))


def test_transformer_lm_is_causal() -> None:
    torch.manual_seed(0)
    m = build("transformer_lm", 30, d_model=32, n_heads=4, context=12).eval()
    x = torch.randint(0, 30, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % 30  # change only future tokens
    with torch.no_grad():
        a, b = m(x), m(y)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_transformer_linears_are_prunable() -> None:
    m = build("transformer_lm", 40, n_layers=1, d_model=32, n_heads=4, context=8)
    linear_names = {n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)}
    expected = {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.0", "blocks.0.mlp.2", "head"}
    assert expected <= linear_names
