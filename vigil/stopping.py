"""How `vigil up` is told to stop: SIGINT (Ctrl-C), SIGTERM or SIGHUP only ask, they interrupt nothing.

A KeyboardInterrupt raised wherever start-up happens to be (an import, initdb, a migration, the wait for
the services) skips the stopping of what had started and prints a traceback. With the handler installed
(first thing, before the commands' half second of imports), a signal is only recorded, and `vigil up`
acts on it between its steps and while it waits: it stops what it started, then exits.

Imports nothing heavy: it is installed before everything else loads.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType


class StopRequests:
    """The stop asked for by a signal, if any, and who is to be woken when one is."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._wakers: list[Callable[[], None]] = []
        self._installed = False

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def install(self) -> None:
        """From now on, for the rest of the process, these signals ask for a stop (main thread only)."""
        if self._installed:
            return
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if sig is signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN:
                continue  # under nohup the stack outlives the terminal, as asked
            signal.signal(sig, self._ask)
        self._installed = True

    def on_request(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` at every request from now on (in the signal handler: it must only schedule);
        return what stops that."""
        self._wakers.append(wake)
        return lambda: self._wakers.remove(wake)

    def _ask(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum)
        for wake in list(self._wakers):
            wake()


# The process's: the program's entry installs it before `vigil up` has loaded, `vigil up` uses it.
stop_requests = StopRequests()
