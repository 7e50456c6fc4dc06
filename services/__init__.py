"""Vigil's five services; each runs as its own process and talks to the others only through Kafka."""

import sys

# httpx imports its command-line client when click, rich and pygments are installed (Vigil's CLI
# installs them): 4.6 MB of every service's memory for a tool no service runs. Marked absent, httpx
# skips it; the `httpx` command itself is unaffected, in its own process.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
