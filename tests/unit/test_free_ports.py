"""Ports chosen for servers: never the same one twice in a process, though not listened on yet."""

from __future__ import annotations

from shared.embedded import free_port


def test_a_port_chosen_is_not_chosen_again_before_its_server_listens() -> None:
    ports = range(24_101, 24_105)
    chosen = [free_port(within=ports) for _ in range(len(ports))]
    assert sorted(chosen) == list(ports)  # each once, though none is listened on
