"""Code every Vigil service shares: event contract, topics, bus and database plumbing."""
