"""The `vigil` program (also `python -m vigil`)."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["up"]:
        # Before the commands load (half a second): a Ctrl-C from here on only asks `vigil up` to stop.
        from vigil.stopping import stop_requests

        stop_requests.install()
    from vigil.cli import main as run

    run()


if __name__ == "__main__":
    main()
