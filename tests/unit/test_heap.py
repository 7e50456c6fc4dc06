"""A service settles its heap once started: start-up's objects frozen, the collector's passes spaced out."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from shared.service import settle_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_settled_heap_is_frozen_and_passes_are_spaced() -> None:
    _, middle, old = gc.get_threshold()
    kept = [object() for _ in range(10)]  # something start-up made and the service holds
    settle_heap(50_000)
    assert gc.get_threshold() == (50_000, middle, old)
    assert gc.get_freeze_count() >= len(kept)


@pytest.mark.usefixtures("restored_gc")
def test_zero_leaves_the_collector_as_python_set_it() -> None:
    gc.set_threshold(700, 10, 10)
    frozen = gc.get_freeze_count()  # a service run earlier in this process may have frozen its own
    settle_heap(0)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == frozen
