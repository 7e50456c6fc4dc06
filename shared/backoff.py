"""Retry delays shared by everything in Vigil that tries again later (timers, effects)."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(attempt: int, *, base_s: float, cap_s: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after the ``attempt``-th failure (1 = first): full jitter below an exponential ceiling.

    Full jitter (a uniform draw between zero and the ceiling) spreads the retries of effects that
    failed together, so a recovering target is not hit by all of them at once.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt - 1, 64))
    return ceiling * rand()
