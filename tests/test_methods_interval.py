"""StepInterval: the one "every N steps within a window" helper of GMP, RigL/SET and Top-KAST."""

from __future__ import annotations

import pytest

from acdc.methods.interval import StepInterval, check_every


@pytest.mark.parametrize("every", [1, 3, 7])
@pytest.mark.parametrize("start,stop", [(0, 0), (0, 20), (5, 40), (5, 5), (12, 13)])
def test_gmp_window_equals_the_spelled_out_rule(every: int, start: int, stop: int) -> None:
    iv = StepInterval(every, start, stop, final=True)
    want = [t for t in range(60) if start <= t <= stop and ((t - start) % every == 0 or t == stop)]
    assert [t for t in range(60) if iv.is_due(t)] == want


@pytest.mark.parametrize("every", [1, 4, 100])
@pytest.mark.parametrize("stop", [None, 0, 3, 30, 250])
def test_dropgrow_and_topkast_rule(every: int, stop: int | None) -> None:
    iv = StepInterval(every, start=every, stop=stop)
    want = [t for t in range(300) if t > 0 and t % every == 0 and (stop is None or t < stop)]
    assert [t for t in range(300) if iv.is_due(t)] == want


@pytest.mark.parametrize("bad", [0, -1, 2.0, "5", None])
def test_update_every_must_be_a_positive_int(bad) -> None:
    with pytest.raises(ValueError, match=r"^rigl: update_every must be a positive number of steps"):
        check_every(bad, "rigl")
    assert check_every(5, "rigl") == 5
