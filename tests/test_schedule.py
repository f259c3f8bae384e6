"""Schedule: paper timelines epoch by epoch, scaling, explicit phases, and every invalid input."""

from __future__ import annotations

import pytest

from acdc.schedule import Phase, Schedule

pytestmark = pytest.mark.usefixtures("single_thread")


def _expand(spec: list[tuple[str, int]]) -> list[str]:
    out: list[str] = []
    for kind, n in spec:
        out += [{"D": "dense", "S": "sparse"}[kind]] * n
    return out


# D0-9, (S5,D5)x6, S70-74, D75-84, S85-99
IMAGENET_EXPECTED = _expand([("D", 10)] + [("S", 5), ("D", 5)] * 6 + [("S", 5), ("D", 10), ("S", 15)])
# D0-9, (S20,D20)x4, S170-199
CIFAR_EXPECTED = _expand([("D", 10)] + [("S", 20), ("D", 20)] * 4 + [("S", 30)])


def test_expected_lists_are_the_right_length():
    assert len(IMAGENET_EXPECTED) == 100
    assert len(CIFAR_EXPECTED) == 200
    # hand spot checks of the hand-written lists themselves
    assert IMAGENET_EXPECTED[9] == "dense" and IMAGENET_EXPECTED[10] == "sparse" and IMAGENET_EXPECTED[15] == "dense"
    assert IMAGENET_EXPECTED[70:75] == ["sparse"] * 5 and IMAGENET_EXPECTED[75:85] == ["dense"] * 10
    assert IMAGENET_EXPECTED[85:] == ["sparse"] * 15
    assert CIFAR_EXPECTED[169] == "dense" and CIFAR_EXPECTED[170:] == ["sparse"] * 30


def test_paper_imagenet_every_epoch():
    s = Schedule.paper_imagenet(epochs=100)
    assert s.epochs == 100
    assert [s.phase(t) for t in range(100)] == IMAGENET_EXPECTED
    assert s.describe() == (
        "D0-9, S10-14, D15-19, S20-24, D25-29, S30-34, D35-39, S40-44, D45-49, S50-54, D55-59, "
        "S60-64, D65-69, S70-74, D75-84, S85-99"
    )
    assert s.sparse_epochs() == 50


def test_paper_imagenet_fractional_times():
    s = Schedule.paper_imagenet(epochs=100)
    assert s.phase(0.0) == "dense"
    assert s.phase(9.999) == "dense"
    assert s.phase(10.0) == "sparse"
    assert s.phase(14.5) == "sparse"
    assert s.phase(14.9999) == "sparse"
    assert s.phase(15.0) == "dense"
    assert s.phase(74.99) == "sparse"
    assert s.phase(75.0) == "dense"
    assert s.phase(84.999) == "dense"
    assert s.phase(85.0) == "sparse"
    assert s.phase(99.999) == "sparse"
    assert s.phase(100.0) == "sparse"  # past the end: stays in the final sparse phase
    assert s.phase(250) == "sparse"
    with pytest.raises(ValueError, match="time"):
        s.phase(-0.5)


def test_paper_cifar_every_epoch():
    s = Schedule.paper_cifar(epochs=200)
    assert s.epochs == 200
    assert [s.phase(t) for t in range(200)] == CIFAR_EXPECTED
    assert s.describe() == "D0-9, S10-29, D30-49, S50-69, D70-89, S90-109, D110-129, S130-149, D150-169, S170-199"
    assert s.phase(9.999) == "dense" and s.phase(10.0) == "sparse"
    assert s.phase(169.999) == "dense" and s.phase(170.0) == "sparse"


def test_timeline_unpacks_and_tiles():
    s = Schedule.paper_imagenet()
    tl = s.timeline()
    assert tl[0] == Phase("dense", 0.0, 10.0)
    kind, start, end = tl[-1]
    assert (kind, start, end) == ("sparse", 85.0, 100.0)
    for a, b in zip(tl, tl[1:]):
        assert a.end == b.start and a.kind != b.kind


def test_constructor_matches_preset():
    s = Schedule(epochs=100, warmup=10, sparse=5, dense=5, final_dense=10, final_sparse=15)
    assert s == Schedule.paper_imagenet()
    c = Schedule(epochs=200, warmup=10, sparse=20, dense=20, final_sparse=30)
    assert c == Schedule.paper_cifar()


@pytest.mark.parametrize("factor", [0.5, 2.0, 0.1])
def test_scaled_imagenet(factor):
    base = Schedule.paper_imagenet()
    n = 100 * factor
    s = Schedule.scaled(base, epochs=n)
    assert s.epochs == pytest.approx(n)
    assert len(s.timeline()) == len(base.timeline())
    for p, q in zip(s.timeline(), base.timeline()):
        assert p.kind == q.kind
        assert p.start == pytest.approx(q.start * factor)
        assert p.end == pytest.approx(q.end * factor)
    assert s.timeline()[-1].end == n  # exact end
    # phase at the scaled midpoint of each base epoch equals the base phase
    for e in range(100):
        assert s.phase((e + 0.5) * factor) == IMAGENET_EXPECTED[e]


def test_scaled_cifar_and_preset_epochs_argument():
    s = Schedule.paper_cifar(epochs=20)  # boundaries /10: D0-1, (S2,D2)x4, S17-19
    assert s == Schedule.scaled(Schedule.paper_cifar(), epochs=20)
    assert [s.phase(t) for t in range(20)] == _expand([("D", 1)] + [("S", 2), ("D", 2)] * 4 + [("S", 3)])
    assert s.phase(0.999) == "dense" and s.phase(1.0) == "sparse"
    assert Schedule.paper_imagenet(epochs=50).describe().startswith("D0-4, S5-7.5, D7.5-10,")
    with pytest.raises(ValueError, match="epochs"):
        Schedule.scaled(Schedule.paper_cifar(), epochs=0)
    with pytest.raises(ValueError, match="epochs"):
        Schedule.scaled(Schedule.paper_cifar(), epochs=-3)


def test_from_phases_explicit_and_merging():
    s = Schedule.from_phases([("dense", 0, 3), ("sparse", 3, 5), ("dense", 5, 6), ("sparse", 6, 10)])
    assert s.epochs == 10
    assert [s.phase(t) for t in range(10)] == ["dense"] * 3 + ["sparse"] * 2 + ["dense"] + ["sparse"] * 4
    # dicts and Phase objects are accepted; adjacent same-kind phases merge
    m = Schedule.from_phases([{"kind": "dense", "start": 0, "end": 1}, Phase("dense", 1, 2), ("sparse", 2, 4)])
    assert m.timeline() == [Phase("dense", 0, 2), Phase("sparse", 2, 4)]
    # round trip through to_dict
    assert Schedule.from_phases(s.to_dict()["phases"]) == s
    # all-sparse is a valid schedule
    assert Schedule.from_phases([("sparse", 0, 4)]).phase(0) == "sparse"
    # fractional boundaries
    f = Schedule.from_phases([("dense", 0, 0.5), ("sparse", 0.5, 1.25)])
    assert f.phase(0.4999) == "dense" and f.phase(0.5) == "sparse" and f.phase(1.2) == "sparse"


@pytest.mark.parametrize(
    "phases, match",
    [
        ([("sparse", 0, 5), ("dense", 5, 10)], "last phase must be sparse"),
        ([("dense", 0, 5), ("sparse", 4, 10)], "overlaps"),
        ([("dense", 0, 5), ("sparse", 6, 10)], "gap"),
        ([("dense", 1, 5), ("sparse", 5, 10)], "gap"),
        ([("dense", 0, -5), ("sparse", -5, 10)], r"phases\[0\]\.end"),
        ([("dense", -1, 5), ("sparse", 5, 10)], r"phases\[0\]\.start"),
        ([("dense", 0, 5), ("sparse", 5, 5)], "empty or reversed"),
        ([("dense", 0, 5), ("sparse", 7, 6)], "empty or reversed"),
        ([("dense", 0, 5), ("compressed", 5, 10)], "kind must be 'dense' or 'sparse'"),
        ([("Dense", 0, 5), ("sparse", 5, 10)], "kind"),
        ([("dense", 0, "five"), ("sparse", 5, 10)], r"phases\[0\]\.end.*number"),
        ([("dense", None, 5), ("sparse", 5, 10)], r"phases\[0\]\.start.*number"),
        ([("dense", 0, True), ("sparse", 1, 10)], "number"),
        ([("dense", 0, float("nan")), ("sparse", 5, 10)], r"phases\[0\]\.end"),
        ([("dense", 0, 5, 7), ("sparse", 5, 10)], r"\(kind, start, end\)"),
        ([], "no phases"),
    ],
)
def test_from_phases_invalid(phases, match):
    with pytest.raises(ValueError, match=match):
        Schedule.from_phases(phases)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        # lengths not adding up: 10 + n*10 - 5 + 10 + 15 = 99 has no whole n
        (dict(epochs=99, warmup=10, sparse=5, dense=5, final_dense=10, final_sparse=15), "add up to `epochs`"),
        (dict(epochs=20, warmup=10, sparse=5, dense=5, final_sparse=15), "add up to `epochs`"),  # n = 0
        (dict(epochs=-100, warmup=10, sparse=5, dense=5, final_sparse=15), "`epochs`"),
        (dict(epochs=0, warmup=10, sparse=5, dense=5, final_sparse=15), "`epochs`"),
        (dict(epochs=100, warmup=-10, sparse=5, dense=5, final_sparse=15), "`warmup`"),
        (dict(epochs=100, warmup=10, sparse=0, dense=5, final_sparse=15), "`sparse`"),
        (dict(epochs=100, warmup=10, sparse=5, dense=-5, final_sparse=15), "`dense`"),
        (dict(epochs=100, warmup=10, sparse=5, dense=5, final_sparse=0), "`final_sparse`"),  # must end sparse
        (dict(epochs=100, warmup=10, sparse=5, dense=5, final_dense=0, final_sparse=15), "`final_dense`"),
        (dict(epochs="100", warmup=10, sparse=5, dense=5, final_sparse=15), "`epochs`.*number"),
        (dict(epochs=100, warmup=None, sparse=5, dense=5, final_sparse=15), "`warmup`.*number"),
        (dict(epochs=100, warmup=10, sparse=[5], dense=5, final_sparse=15), "`sparse`.*number"),
        (dict(epochs=100, warmup=10, sparse=5, dense=True, final_sparse=15), "`dense`.*number"),
        (dict(epochs=float("inf"), warmup=10, sparse=5, dense=5, final_sparse=15), "`epochs`"),
    ],
)
def test_constructor_invalid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Schedule(**kwargs)


def test_lengths_error_suggests_valid_epochs():
    with pytest.raises(ValueError, match="choose `epochs` among 40, 50, 60"):
        Schedule(epochs=99, warmup=10, sparse=5, dense=5, final_dense=10, final_sparse=15)


def test_from_config():
    assert Schedule.from_config("paper_imagenet", 100) == Schedule.paper_imagenet()
    assert Schedule.from_config({"preset": "paper_cifar"}, 20) == Schedule.paper_cifar(epochs=20)
    s = Schedule.from_config({"warmup": 2, "sparse": 2, "dense": 2, "final_sparse": 4}, 14)
    assert s.describe() == "D0-1, S2-3, D4-5, S6-7, D8-9, S10-13"
    assert [s.phase(t) for t in range(14)] == _expand([("D", 2), ("S", 2), ("D", 2), ("S", 2), ("D", 2), ("S", 4)])
    with pytest.raises(ValueError, match="add up"):
        Schedule.from_config({"warmup": 2, "sparse": 2, "dense": 2, "final_sparse": 4}, 12)
    with pytest.raises(ValueError, match="unknown preset"):
        Schedule.from_config("paper_mnist", 10)
    with pytest.raises(ValueError, match="make them equal"):
        Schedule.from_config({"phases": [("sparse", 0, 5)]}, 6)
    with pytest.raises(ValueError, match="unknown key"):
        Schedule.from_config({"warmup": 1, "sparse": 1, "dense": 1, "final_sparse": 1, "bogus": 1}, 4)


# ----------------------------------------------------------------------------- exact boundaries (issue 8)
def test_stretched_preset_boundaries_are_exact():
    """paper_imagenet(220): boundaries 2.2x the base's are whole epochs exactly (no 55.00000000000001)."""
    s = Schedule.paper_imagenet(epochs=220)
    base = Schedule.paper_imagenet()
    for p, q in zip(s.timeline(), base.timeline(), strict=True):
        assert (p.start, p.end) == (q.start * 22 // 10, q.end * 22 // 10)
    assert s.phase(55.0) == "dense" and s.phase(54.0) == "sparse"
    assert s.describe().startswith("D0-21, S22-32, D33-43, S44-54, D55-65,")
    assert Schedule.from_phases(s.to_dict()["phases"]) == s


@pytest.mark.parametrize("steps_per_epoch", [None, 1, 7])
def test_acdc_changes_phase_exactly_at_stretched_boundaries(steps_per_epoch):
    """One ``ac.step()`` per epoch (or per step) on a stretched preset: the phase changes on the boundary itself."""
    import torch

    from acdc import ACDC

    sched = Schedule.paper_imagenet(epochs=220)
    model = torch.nn.Linear(8, 8)
    ac = ACDC(model, torch.optim.SGD(model.parameters(), lr=0.1), sparsity=0.5, schedule=sched,
              steps_per_epoch=steps_per_epoch)
    spe = steps_per_epoch or 1
    seen = []
    for _ in range(60 * spe):
        ac.step()
        seen.append((ac.steps, ac.phase))
    changes = [step for (step, ph), (_, prev) in zip(seen[1:], seen) if ph != prev]
    assert changes == [22 * spe, 33 * spe, 44 * spe, 55 * spe]  # D0-21, S22-32, D33-43, S44-54, D55-65


def test_fractional_boundaries_change_on_the_first_step_at_or_after_them():
    s = Schedule.from_phases([("dense", 0, 1 / 3), ("sparse", 1 / 3, 1)])
    import torch

    from acdc import ACDC

    model = torch.nn.Linear(4, 4)
    ac = ACDC(model, torch.optim.SGD(model.parameters(), lr=0.1), sparsity=0.5, schedule=s, steps_per_epoch=3)
    ac.step()
    assert ac.phase == "sparse"  # step 1 of 3 = 1/3 epoch, exactly the boundary
    assert Schedule(epochs=1.0, warmup=0.1, sparse=0.2, dense=0.3, final_sparse=0.4).phase(0.3) == "dense"
