"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tiny-tensor tests on one intra-op thread.

    On a small shared CPU, torch's thread pool waiting on a descheduled worker makes tiny ops 3x slower; tests that
    opt in (``pytestmark = pytest.mark.usefixtures("single_thread")``) get the previous setting back afterwards.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
