"""Hugging Face ``Trainer`` + ``acdc.integrations.hf.ACDCCallback`` on a tiny Llama built from a config (no download).

Gradient accumulation 2, gradient clipping on (the Trainer's default max_grad_norm=1.0), AdamW with weight decay.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

pytest.importorskip("transformers", reason="extra `hf` (transformers) not installed")
pytest.importorskip("accelerate", reason="extra `hf` (accelerate) not installed")
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from acdc.integrations.hf import ACDCCallback  # noqa: E402
from acdc.methods import available, build_method  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

N, SEQ, BATCH, ACCUM, EPOCHS = 16, 8, 2, 2, 4
STEPS_PER_EPOCH = N // (BATCH * ACCUM)  # 4 optimizer steps per epoch
SCHEDULE = {"phases": [["dense", 0, 1], ["sparse", 1, 2], ["dense", 2, 3], ["sparse", 3, 4]]}


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=SEQ)
    return LlamaForCausalLM(cfg)


def dataset() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 32, (N, SEQ), generator=g)
    return [{"input_ids": x, "labels": x} for x in ids]


def optimizer_for(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)


def trainer(model, out, callbacks, *, epochs=EPOCHS, save_steps=0, optimizer=None) -> Trainer:
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=BATCH, gradient_accumulation_steps=ACCUM,
        num_train_epochs=epochs, max_grad_norm=1.0, train_sampling_strategy="sequential", seed=0, use_cpu=True,
        report_to=[], disable_tqdm=True, logging_strategy="no",
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, save_only_model=False)
    opt = optimizer or optimizer_for(model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    t = Trainer(model=model, args=args, train_dataset=dataset(), callbacks=callbacks, optimizers=(opt, sched))
    t.model_accepts_loss_kwargs = False  # loss = mean / accumulation steps, as in the plain loop below
    return t


class SparseProbe(TrainerCallback):
    """After every optimizer step in a sparse phase: pruned weights and their Adam moments are exactly 0."""

    def __init__(self, cb: ACDCCallback) -> None:
        self.cb, self.checked = cb, 0

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        m = self.cb.method
        if m.masks is None:
            return
        for n, p in m.masked.params.items():
            off = ~m.masks[n]
            assert torch.count_nonzero(p.detach()[off]) == 0, n
            st = m.optimizer.state[p]
            assert torch.count_nonzero(st["exp_avg"][off]) == 0 and torch.count_nonzero(st["exp_avg_sq"][off]) == 0
        self.checked += 1


def plain_loop(model: nn.Module) -> object:
    """The same training in a plain PyTorch loop: same init, data order, loss scaling, clipping, optimizer."""
    opt = optimizer_for(model)
    method = build_method("acdc", model, opt, steps_per_epoch=STEPS_PER_EPOCH, epochs=EPOCHS, sparsity=0.8,
                          options={"schedule": SCHEDULE})
    data = dataset()
    model.train()
    for _ in range(EPOCHS):
        for i in range(0, N, BATCH * ACCUM):
            for j in range(i, i + BATCH * ACCUM, BATCH):
                x = torch.stack([d["input_ids"] for d in data[j:j + BATCH]])
                (model(input_ids=x, labels=x).loss / ACCUM).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            method.step()
    return method


def test_hf_trainer_matches_plain_loop_bitwise_and_keeps_pruned_entries_zero(tmp_path):
    model = tiny_llama()
    ref_model = copy.deepcopy(model)
    cb = ACDCCallback(method="acdc", sparsity=0.8, schedule=SCHEDULE)
    probe = SparseProbe(cb)
    trainer(model, tmp_path / "hf", [cb, probe]).train()
    assert cb.method.steps == EPOCHS * STEPS_PER_EPOCH  # one method step per optimizer step (accumulation 2)
    assert probe.checked == 2 * STEPS_PER_EPOCH + 1  # after steps 4-7 and 12-16 (compressions at 4 and 12)
    assert cb.method.phase == "sparse" and cb.method.compressions == 2
    ref = plain_loop(ref_model)
    for n in ref.masks:
        assert torch.equal(ref.masks[n], cb.method.masks[n]), n
    sd, ref_sd = model.state_dict(), ref_model.state_dict()
    for k in sd:
        assert torch.equal(sd[k], ref_sd[k]), k


@pytest.mark.parametrize("method, opts", [("acdc", {"schedule": SCHEDULE}), ("rigl", {"update_every": 2})])
def test_resumed_run_is_bitwise_equal_to_uninterrupted(tmp_path, method, opts):
    full = tiny_llama()
    cb_full = ACDCCallback(method=method, sparsity=0.8, **opts)
    trainer(full, tmp_path / "full", [cb_full], save_steps=6).train()
    ckpt = tmp_path / "full" / "checkpoint-6"  # mid-phase: step 6 is inside AC/DC's sparse epoch 1
    saved = json.loads((ckpt / "trainer_state.json").read_text())["stateful_callbacks"]["ACDCCallback"]
    assert saved["attributes"]["acdc_state"]["method"]["steps"] == 6
    resumed = tiny_llama(seed=123)  # different init: everything must come from the checkpoint
    cb = ACDCCallback(method=method, sparsity=0.8, **opts)
    trainer(resumed, tmp_path / "resumed", [cb]).train(resume_from_checkpoint=str(ckpt))
    assert cb.method.steps == cb_full.method.steps == EPOCHS * STEPS_PER_EPOCH
    assert [h["event"] for h in cb.method.history] == [h["event"] for h in cb_full.method.history]
    for n in cb_full.method.masks:
        assert torch.equal(cb_full.method.masks[n], cb.method.masks[n]), n
    a, b = full.state_dict(), resumed.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if method != "acdc":
        return
    # a checkpoint made with another schedule is refused at train begin, in one line
    other = ACDCCallback(method="acdc", sparsity=0.8, schedule={"phases": [["dense", 0, 2], ["sparse", 2, 4]]})
    with pytest.raises(ValueError, match="another method configuration") as e:
        trainer(tiny_llama(), tmp_path / "other", [other]).train(resume_from_checkpoint=str(ckpt))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("method", sorted(set(available()) - {"acdc"}))
def test_every_method_runs_through_the_callback(tmp_path, method):
    opts = {"threshold_decay": 1e-4} if method == "str" else {}
    if method in ("gmp",):
        opts.update(start_epoch=0, end_epoch=1)
    sparsity = 0.0 if method == "dense" else 0.7
    model = tiny_llama()
    cb = ACDCCallback(method=method, sparsity=sparsity, **opts)
    trainer(model, tmp_path / method, [cb], epochs=2).train()
    m = cb.method
    assert m.name == method and m.steps == 2 * STEPS_PER_EPOCH
    if method != "dense":
        # STR learns its sparsity (no exact target); every other method reaches 70%
        assert m.masks is not None and m.sparsity() >= (0.05 if method == "str" else 0.7 - 1e-3)
        for n, p in m.masked.params.items():
            assert torch.count_nonzero(p.detach()[~m.masks[n]]) == 0, n


class NoPrunable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(32, 4)

    def forward(self, input_ids, labels=None):
        return {"loss": self.emb(input_ids).pow(2).mean()}


@pytest.mark.parametrize("case, match", [
    ("optimizer", "not in the optimizer"),
    ("no_prunable", "no prunable parameters"),
    ("no_state", "has no ACDCCallback state"),
])
def test_bad_input_is_a_one_line_error_at_train_begin(tmp_path, case, match):
    model = tiny_llama()
    cb = ACDCCallback(method="acdc", sparsity=0.8, schedule=SCHEDULE)
    if case == "optimizer":  # the optimizer holds only the norms, not the prunable Linear weights
        opt = torch.optim.SGD([p for n, p in model.named_parameters() if "norm" in n], lr=0.1)
        t = trainer(model, tmp_path / case, [cb], optimizer=opt)
        run = t.train
    elif case == "no_prunable":
        t = trainer(NoPrunable(), tmp_path / case, [cb])
        run = t.train
    else:  # a checkpoint written without the callback
        trainer(tiny_llama(), tmp_path / "plain", [], epochs=1, save_steps=2).train()
        t = trainer(model, tmp_path / case, [cb])

        def run():
            t.train(resume_from_checkpoint=str(tmp_path / "plain" / "checkpoint-2"))
    with pytest.raises(ValueError, match=match) as e:
        run()
    assert str(e.value).startswith("ACDCCallback:") and "\n" not in str(e.value)
