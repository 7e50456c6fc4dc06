"""Retry delays shared by everything in Vigil that tries again later (timers, effects), and waiting out an outage."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shared.errors import is_retriable

log = logging.getLogger(__name__)
T = TypeVar("T")


def backoff_delay(attempt: int, *, base_s: float, cap_s: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after the ``attempt``-th failure (1 = first): full jitter below an exponential ceiling.

    Full jitter (a uniform draw between zero and the ceiling) spreads the retries of effects that
    failed together, so a recovering target is not hit by all of them at once.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt - 1, 64))
    return ceiling * rand()


async def until_available(
    attempt: Callable[[], Awaitable[T]], *, what: str, first_s: float = 0.5, cap_s: float = 10.0
) -> T:
    """Run ``attempt`` until it succeeds, waiting out failures that pass (a database or broker not there yet);
    any other failure is raised."""
    wait = first_s
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.warning("%s: again in %.1fs: %r", what, wait, exc)
            await asyncio.sleep(wait)
            wait = min(wait * 2, cap_s)
