"""FSDP2 training (2 gloo ranks, ``fully_shard``) equals a 1-process run with the same global batch: masks
bit-identical at every epoch, weights within 1e-5; pruned weights, gradients and optimizer state are exactly zero on
every shard; DCP checkpoints resume mid-phase on 2 and 1 ranks (and 1 -> 2); unsupported recipes are refused."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from _dist import run_ranks
from test_distributed_train import _metrics, _raw, _Stop, resume_across_world_sizes

from acdc.distributed.shards import is_dtensor, local
from acdc.masks import keep_count
from acdc.train.checkpoint import CheckpointError, load_tensors
from acdc.train.distributed import mask_hash
from acdc.train.loop import Trainer
from acdc.train.recipe import RecipeError, parse_recipe
from acdc.train.sharded_checkpoint import load_sharded_masks


def _fsdp_raw(optimizer: str = "sgd", **over) -> dict:
    return _raw(optimizer, distributed={"strategy": "fsdp"}, **over)


def _probe_grads(trainer: Trainer, masks: dict) -> None:
    """One extra forward/backward through the (sharded) model: the gradients of pruned entries are exactly zero on
    every shard (FSDP2 runs the post-accumulate-grad hook on the reduce-scattered sharded gradient)."""
    x, y = next(iter(trainer.train_loader))
    torch.nn.functional.cross_entropy(trainer.train_model(x), y).backward()
    for n, p in trainer.method.masked.params.items():
        g = local(p.grad)
        assert g is not None and not bool(g[~local(masks[n])].any()), f"gradient of pruned entries of {n} not zero"
        assert bool(g[local(masks[n])].any()), f"{n}: kept entries have no gradient (the probe could not fail)"
    trainer.optimizer.zero_grad(set_to_none=True)


def _record(trainer: Trainer, epoch: int) -> dict:
    """Epoch hook (every rank): exact zeros of pruned weights, optimizer state and gradients on this rank's shards;
    the hash of the full masks (gathered here, in the test only) and this rank's local shapes."""
    m = trainer.method.masks
    full = None
    if m is not None:
        for n, p in trainer.method.masked.params.items():
            lm = local(m[n])
            assert lm.shape == local(p).shape and is_dtensor(m[n]) == is_dtensor(p)
            assert not bool(local(p).detach()[~lm].any()), f"pruned weights of {n} are not zero"
            for k, v in trainer.optimizer.state.get(p, {}).items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    assert not bool(local(v)[~lm].any()), f"optimizer state {k} of {n} is not zero at pruned entries"
        _probe_grads(trainer, m)
        full = {n: t.full_tensor() if is_dtensor(t) else t for n, t in m.items()}
    return {"mask_hash": mask_hash(full), "sharded": any(is_dtensor(p) for p in trainer.model.parameters())}


def _buffers_agree(trainer: Trainer, epoch: int) -> dict:
    """Epoch hook (every rank): after validation every rank holds the same buffers (BatchNorm running statistics),
    so every rank evaluates one model and a DCP checkpoint keeps the same copy whichever rank writes it."""
    import torch.distributed as dist

    for n, b in trainer.model.named_buffers():
        copies = [torch.empty_like(b) for _ in range(dist.get_world_size())]
        dist.all_gather(copies, b.contiguous())
        assert all(torch.equal(copies[0], c) for c in copies), f"buffer {n} differs across ranks at epoch {epoch}"
    return {}


def _train(rank: int, world: int, raw: dict, out: str, resume: bool = False, stop_after: int | None = None,
           check: str = "record") -> None:
    hooks = [_record if check == "record" else _buffers_agree]
    if stop_after is not None:
        def stop(trainer: Trainer, epoch: int) -> dict:
            if epoch == stop_after:  # "killed" after the previous epoch's checkpoint
                raise _Stop
            return {}
        hooks.append(stop)
    try:
        Trainer(parse_recipe(raw), out, resume=resume, epoch_hooks=hooks).run()
    except _Stop:
        pass


def _compare(a: Path, b: Path, atol: float = 1e-5) -> None:
    ma, mb = _metrics(a), _metrics(b)
    assert [r["epoch"] for r in ma] == [r["epoch"] for r in mb] == list(range(5))
    assert [r["mask_hash"] for r in ma] == [r["mask_hash"] for r in mb]  # bit-identical masks every epoch
    assert [r["phase"] for r in ma] == [r["phase"] for r in mb]
    assert [r.get("compressions") for r in ma] == [r.get("compressions") for r in mb]  # mask diffs, counts
    for x, y in zip(ma, mb):
        assert abs(x["train_loss"] - y["train_loss"]) < 1e-4
        assert x["sparsity"] == pytest.approx(y["sparsity"], abs=1e-9)
    for f in ("final.safetensors", "dense.safetensors"):
        if not (a / f).exists():  # GMP has no dense model
            assert not (b / f).exists()
            continue
        ta, _ = load_tensors(a / f)
        tb, _ = load_tensors(b / f)
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.allclose(ta[k], tb[k], rtol=0, atol=atol), (f, k, (ta[k] - tb[k]).abs().max())
            assert torch.equal(ta[k] == 0, tb[k] == 0), (f, k)


@pytest.mark.parametrize("optimizer,method", [("sgd", "acdc"), ("adamw", "acdc"), ("sgd", "gmp")])
def test_fsdp_two_ranks_equals_one_process(tmp_path, optimizer, method):
    # hidden 33: uneven shards (17 + 16 rows); the output layer's 10 rows split 5 + 5
    gmp = {"method": {"name": "gmp", "sparsity": 0.8, "start_epoch": 0, "end_epoch": 3, "update_every": 2}}
    raw = _fsdp_raw(optimizer, model={"name": "mlp", "in_features": 64, "hidden": [33, 32]},
                    grad_clip=0.2 if optimizer == "adamw" else 0.0,  # clips (norm ~0.4): DTensor grads
                    **(gmp if method == "gmp" else {}))
    Trainer(parse_recipe(raw), tmp_path / "one", epoch_hooks=[_record]).run()
    run_ranks(2, _train, raw, str(tmp_path / "two"))
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert not any(r["sharded"] for r in one) and all(r["sharded"] for r in two)
    assert len({r["mask_hash"] for r in one}) >= 2  # dense and sparse epochs differ: the comparison can fail
    assert [r["train_acc"] for r in one] == pytest.approx([r["train_acc"] for r in two], abs=1e-9)
    if method == "gmp":  # GMP's updates (|w| among the kept positions) happened inside the run
        assert sum(len(r.get("mask_updates", [])) for r in one) >= 3 and len({r["mask_hash"] for r in one}) >= 3
    _compare(tmp_path / "one", tmp_path / "two")
    meta = json.loads((tmp_path / "two" / "last" / "meta.json").read_text())
    assert meta["format"] == "dcp" and meta["world"] == 2
    assert {p.name for p in (tmp_path / "two" / "last" / "dcp").iterdir()} >= {".metadata", "__0_0.distcp",
                                                                                "__1_0.distcp"}


@pytest.mark.slow
def test_fsdp_resume_mid_phase_across_world_sizes(tmp_path):
    resume_across_world_sizes(tmp_path, _fsdp_raw("sgd"), _train, _compare)


def test_fsdp_batchnorm_statistics_are_rank0s_on_every_rank_and_survive_resume(tmp_path):
    # FSDP2 neither shards nor synchronises buffers: without the broadcast each rank's BatchNorm statistics follow
    # its own half-batches, the hook fails, and a resumed run restores whichever rank's copy DCP kept
    raw = _fsdp_raw("sgd", model={"name": "small_cnn", "width": 4, "hidden": 16})
    run_ranks(2, _train, raw, str(tmp_path / "full"), False, None, "buffers")
    d = tmp_path / "resumed"
    run_ranks(2, _train, raw, str(d), False, 2, "buffers")
    run_ranks(2, _train, raw, str(d), True, None, "buffers")
    full, resumed = _metrics(tmp_path / "full"), _metrics(d)
    assert [r["epoch"] for r in resumed] == list(range(5))
    for a, b in zip(full, resumed):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5) and a["phase"] == b["phase"]
    ta, _ = load_tensors(tmp_path / "full" / "final.safetensors")
    tb, _ = load_tensors(d / "final.safetensors")
    assert any("running_mean" in k for k in ta)
    for k in ta:
        assert torch.allclose(ta[k].double(), tb[k].double(), rtol=0, atol=1e-5), (k, (ta[k] - tb[k]).abs().max())


def test_fsdp_recipe_rejects_unsupported_before_training(tmp_path):
    for method in ("rigl", "set", "str"):
        raw = _fsdp_raw(method={"name": method, "sparsity": 0.8})
        with pytest.raises(RecipeError, match=rf"`method.name: {method}` is not supported with "
                                              r"`distributed.strategy: fsdp`.*use strategy: ddp"):
            parse_recipe(raw)
    with pytest.raises(RecipeError, match=r"`measure_flops: true`.*fsdp.*measure_flops: false"):
        parse_recipe(_fsdp_raw(measure_flops=True))
    parse_recipe(_raw(method={"name": "rigl", "sparsity": 0.8}))  # the same methods are fine under ddp
    with pytest.raises(ValueError, match="--compress-checkpoints does not apply"):
        Trainer(parse_recipe(_fsdp_raw()), tmp_path / "c", compress_checkpoints=True).run()
    assert not (tmp_path / "c").exists()


def test_dcp_metadata_is_not_unpickled_freely(tmp_path):
    """A crafted .metadata (a pickle that would call a function) is refused by the allow-listed unpickler."""
    raw = _fsdp_raw(epochs=1, method={"name": "acdc", "sparsity": 0.8, "schedule": {"phases": [["sparse", 0, 1]]}})
    Trainer(parse_recipe(raw), tmp_path / "run").run()
    final, _ = load_tensors(tmp_path / "run" / "final.safetensors")
    masks = load_sharded_masks(tmp_path / "run", final)  # what `acdc export` reads, in one process
    assert sum(int(m.sum()) for m in masks.values()) == keep_count(sum(m.numel() for m in masks.values()), 0.8)
    assert all(torch.equal(final[n] != 0, m) for n, m in masks.items())
    md = tmp_path / "run" / "last" / "dcp" / ".metadata"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    md.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="pathlib.Path.touch|which acdc does not load"):
        Trainer(parse_recipe(raw), tmp_path / "run", resume=True).run()
    assert not (tmp_path / "pwned").exists()


def _net() -> torch.nn.Module:
    # rows 9 / 8 / 3 over 2 ranks: uneven (5 + 4) and small (2 + 1) shards; input channels 16, 9 (not a multiple of
    # 4: skipped by 2:4) and 8
    torch.manual_seed(11)
    return torch.nn.Sequential(torch.nn.Linear(16, 9), torch.nn.ReLU(), torch.nn.Linear(9, 8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 3))


def _targets_on_shards(rank: int, world: int, trained: str) -> None:
    import warnings

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from acdc.methods.acdc import ACDC
    from acdc.methods.oneshot import OneShot
    from acdc.schedule import Schedule
    from acdc.targets import Target

    ref_model = _net()
    ref_w = {n: p.detach() for n, p in ref_model.named_parameters() if n.endswith("weight")}
    trained_w = load_tensors(trained)[0]
    sparse = Schedule.from_phases([["sparse", 0, 1]])
    keys = {"global": {"distribution": "global"}, "uniform": {"distribution": "uniform"}, "2:4": {"structure": "2:4"}}
    for target, opts in keys.items():
        for oneshot in (False, True):
            model = fully_shard(_net(), mesh=init_device_mesh("cpu", (world,)))
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # 2:4 skips the 9-input layer
                method = (OneShot(model, opt, sparsity=0.7, from_checkpoint=trained, **opts) if oneshot
                          else ACDC(model, opt, sparsity=0.7, schedule=sparse, **opts))
                t = Target.parse(target)
                t.prepare(ref_w)
                want = t.compute({n: trained_w[n] for n in ref_w} if oneshot else ref_w, 0.7)
            assert all(is_dtensor(m) for m in method.masks.values())
            got = {n: m.full_tensor() for n, m in method.masks.items()}
            assert got.keys() == want.keys()
            for n in want:
                assert torch.equal(got[n], want[n]), (target, oneshot, n)
            src = {n: trained_w[n] for n in ref_w} if oneshot else ref_w
            zeros = sum(int((src[n] * m == 0).sum()) for n, m in want.items())
            assert method.sparsity() == zeros / sum(m.numel() for m in want.values())  # counted over both ranks


    # GMP's selection: |w| among allowed positions (topk_within / select_counts), with many zero weights so that at
    # sparsity 0.5 the threshold falls on zeros (allowed zeros, lowest global index first) and at 0.8 it does not
    from acdc.distributed.shards import load_full_state, shard_like

    g = torch.Generator().manual_seed(5)
    full = {n: p.detach() for n, p in _net().named_parameters()}
    full = {n: t * (torch.rand(t.shape, generator=g) < 0.5) for n, t in full.items()}
    allowed = {n: torch.rand(ref_w[n].shape, generator=g) < 0.6 for n in ref_w}
    model = fully_shard(_net(), mesh=init_device_mesh("cpu", (world,)))
    load_full_state(model, full)
    params = {n: p for n, p in model.named_parameters() if n in ref_w}
    for dist_name in ("global", "uniform"):
        t = Target(distribution=dist_name)
        for s in (0.5, 0.8):
            got = t.compute(params, s, allowed={n: shard_like(allowed[n], params[n]) for n in params})
            want = t.compute({n: full[n] for n in ref_w}, s, allowed=allowed)
            for n in want:
                assert torch.equal(got[n].full_tensor(), want[n]), (dist_name, s, n)

    # the FSDP mask check: a pruned weight made non-zero on one rank's shard only, or a wrong kept count, raises on
    # every rank (one all-reduce; no hang)
    from acdc.train.distributed import DistContext

    ctx = DistContext(world, rank, strategy="fsdp")
    masks = t.compute(params, 0.8)
    with torch.no_grad():
        for n, p in params.items():
            local(p).mul_(local(masks[n]))
    kept = sum(int(m.full_tensor().sum()) for m in masks.values())
    ctx.check_masks(masks, "ok", params, kept)
    with pytest.raises(RuntimeError, match="the target keeps"):
        ctx.check_masks(masks, "count", params, kept + 1)
    last = list(params)[-1]  # 3 rows: rank 1 holds row 2
    leaked = int((~masks[last].full_tensor()[2]).sum())
    assert leaked > 0
    if rank == 1:
        with torch.no_grad():
            local(params[last])[~local(masks[last])] = 1.0
    with pytest.raises(RuntimeError, match=f"{leaked} pruned weights are non-zero across the shards at leak"):
        ctx.check_masks(masks, "leak", params, kept)


def test_fsdp_targets_and_oneshot_equal_single_process(tmp_path):
    """global / uniform / 2:4 masks of AC/DC and one-shot (loading a trained file into the sharded model) on 2 ranks,
    gathered, equal the single-process masks bit for bit."""
    from acdc.train.checkpoint import save_model

    trained = _net()
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(torch.randn_like(p)).round_(decimals=2)  # other weights, with ties
    save_model(tmp_path / "trained.safetensors", trained)
    run_ranks(2, _targets_on_shards, str(tmp_path / "trained.safetensors"))
