"""FLOPs counting: exact hand-computed values."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from acdc.measure.flops import (
    expand_timeline,
    flops_for_masks,
    inference_flops,
    rigl_epoch_flops,
    schedule_training_flops,
    topkast_epoch_flops,
    training_flops,
)
from acdc.models.transformer import TransformerLM
from acdc.schedule import Schedule


def test_linear_flops_and_half_zero():
    lin = nn.Linear(10, 5)
    assert inference_flops(lin, (10,)) == 100.0
    with torch.no_grad():
        lin.weight.view(-1)[:25] = 0
    assert inference_flops(lin, (10,)) == 50.0


def test_conv_flops_and_half_zero():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert inference_flops(conv, (3, 8, 8)) == 2 * 8 * 3 * 9 * 64 == 27648
    with torch.no_grad():
        conv.weight[:4] = 0  # half the filters
    assert inference_flops(conv, (3, 8, 8)) == 27648 / 2


def test_conv_stride_and_batch_example():
    conv = nn.Conv2d(3, 8, 3, stride=2)  # 8x8 -> 3x3 output
    x = torch.zeros(4, 3, 8, 8)  # a batch of 4: result is per sample
    assert inference_flops(conv, x) == 2 * 8 * 3 * 9 * 9


def test_grouped_and_depthwise_conv():
    grouped = nn.Conv2d(8, 16, 3, padding=1, groups=4)  # weight (16, 2, 3, 3)
    assert inference_flops(grouped, (8, 5, 5)) == 2 * 16 * 2 * 9 * 25
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)  # weight (8, 1, 3, 3)
    assert inference_flops(dw, (8, 5, 5)) == 2 * 8 * 9 * 25


def test_conv1d_conv3d():
    c1 = nn.Conv1d(2, 4, 3)  # L 10 -> 8
    assert inference_flops(c1, (2, 10)) == 2 * 4 * 2 * 3 * 8
    c3 = nn.Conv3d(1, 2, 2)  # 3^3 -> 2^3
    assert inference_flops(c3, (1, 3, 3, 3)) == 2 * 2 * 8 * 8


def test_masks_are_virtual_and_per_layer():
    model = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 2))
    masks = {"0.weight": torch.zeros(5, 10, dtype=torch.bool), "2.weight": torch.ones(2, 5, dtype=torch.bool)}
    masks["0.weight"][0, :4] = True  # keep 4 of 50
    before = model[0].weight.detach().clone()
    total, per = flops_for_masks(model, masks, (10,), per_layer=True)
    assert per == {"0": 8.0, "2": 20.0}
    assert total == 28.0
    assert torch.equal(model[0].weight, before)
    assert inference_flops(model, (10,)) == 120.0


def test_linear_over_tokens_and_other_ops():
    lin = nn.Linear(4, 3)
    assert inference_flops(lin, (7, 4)) == 2 * 12 * 7  # 7 positions
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1))
    model.train()
    # conv 2*2*16=64; bias 32; BN 2*32=64; ReLU 32; maxpool 4 per output (2*2*2=8 outputs) = 32; adaptive 8
    total, per = inference_flops(model, (1, 4, 4), include_other=True, per_layer=True)
    assert per == {"0": 64.0, "0.bias": 32.0, "1": 64.0, "2": 32.0, "3": 32.0, "4": 8.0}
    assert total == 232.0
    assert inference_flops(model, (1, 4, 4)) == 64.0
    assert model.training and model[1].training  # mode restored


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 11, d: int = 8, layers: int = 2, context: int = 16) -> None:
        super().__init__()
        self.n_layers, self.n_heads, self.d_model, self.context = layers, 2, d, context
        self.emb = nn.Embedding(vocab, d)
        self.proj = nn.Linear(d, d, bias=False)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.proj(self.emb(idx)))


def test_transformer_attention_term():
    lm = TinyLM()
    t = 5
    linear = 2 * 8 * 8 * t + 2 * 8 * 11 * t
    attention = 2 * (4 * t * t * 8)  # 2 layers x (QK^T + AV)
    total, per = inference_flops(lm, torch.zeros(3, t, dtype=torch.long), per_layer=True)
    assert per["attention"] == attention
    assert total == linear + attention
    assert inference_flops(lm, (t,), dtype=torch.long) == linear + attention


def test_project_transformer_lm():
    lm = TransformerLM(vocab_size=13, n_layers=2, n_heads=2, d_model=8, context=6)
    t, d, v = 6, 8, 13
    per_layer_linear = 2 * t * (3 * d * d + d * d + 4 * d * d + 4 * d * d)
    expected = 2 * per_layer_linear + 2 * t * d * v + 2 * 4 * t * t * d
    assert inference_flops(lm, torch.zeros(1, t, dtype=torch.long)) == expected
    # tied head: a mask under the embedding's name applies to the head as well
    masks = {"tok_emb.weight": torch.zeros(v, d, dtype=torch.bool)}
    assert flops_for_masks(lm, masks, torch.zeros(1, t, dtype=torch.long)) == expected - 2 * t * d * v


def test_training_all_dense_is_three_times_inference():
    res = training_flops([("dense", 100.0)] * 4, 100.0, samples_per_epoch=10)
    assert res["total"] == 3 * 100 * 10 * 4
    assert res["relative_to_dense"] == 1.0
    assert res["cumulative_relative"] == [0.25, 0.5, 0.75, 1.0]


def test_training_half_sparse_tenth():
    res = training_flops([("dense", 1.0)] * 5 + [("sparse", 0.1)] * 5, 1.0, samples_per_epoch=3)
    assert res["relative_to_dense"] == pytest.approx(0.55, abs=1e-12)
    assert res["per_epoch"][-1] == pytest.approx(3 * 0.1 * 3)


def test_training_fractional_and_dense_weight_grads():
    res = training_flops([("dense", 0.8, 0.5), ("sparse", 0.2, 1.5)], 1.0, samples_per_epoch=1)
    assert res["total"] == pytest.approx(3 * 0.8 * 0.5 + 3 * 0.2 * 1.5)
    assert res["epochs"] == 2.0
    res2 = training_flops([("dense", 0.8)], 1.0, 1, dense_weight_grads=1.0)
    assert res2["total"] == pytest.approx(2 * 0.8 + 1.0)
    with pytest.raises(ValueError):
        training_flops([("medium", 1.0)], 1.0, 1)


def test_rigl_topkast():
    assert rigl_epoch_flops(1.0, 10.0, 0) == 2.0 + 10.0
    assert rigl_epoch_flops(1.0, 10.0, 99) == pytest.approx((3 * 99 + 2 + 10) / 100)
    assert topkast_epoch_flops(1.0, 2.0) == 4.0


def test_schedule_training_flops_linear():
    lin = nn.Linear(10, 10, bias=False)  # dense 200 FLOPs
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[0] = True  # 10% kept
    timeline = [("dense", 0.0, 2.0), ("sparse", 2.0, 3.5), ("dense", 3.5, 4.0), ("sparse", 4.0, 6.0)]
    assert [(k, round(x, 3)) for k, _, x in expand_timeline(timeline)] == [
        ("dense", 1.0), ("dense", 1.0), ("sparse", 1.0), ("sparse", 0.5), ("dense", 0.5),
        ("sparse", 1.0), ("sparse", 1.0),
    ]
    res = schedule_training_flops(lin, (10,), timeline, {"weight": mask}, samples_per_epoch=2)
    assert res["f_dense"] == 200.0 and res["f_sparse"] == 20.0
    assert res["relative_to_dense"] == pytest.approx((2.5 + 0.1 * 3.5) / 6)
    assert len(res["per_epoch"]) == 7
    # dense phases with a few zeros: 50% kept in both dense phases
    half = torch.zeros(10, 10, dtype=torch.bool)
    half[:5] = True
    res2 = schedule_training_flops(lin, (10,), timeline, {"weight": mask}, dense_density_masks={"weight": half})
    assert res2["relative_to_dense"] == pytest.approx((2.5 * 0.5 + 0.1 * 3.5) / 6)


def test_schedule_object():
    lin = nn.Linear(10, 10, bias=False)
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[0] = True
    res = schedule_training_flops(lin, (10,), Schedule.paper_imagenet(), {"weight": mask})
    assert res["dense_epochs"] == 50 and res["sparse_epochs"] == 50
    assert res["relative_to_dense"] == pytest.approx(0.55)
