"""Which form posts the web view takes as its own pages': what the browser says, else where the form was."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from services.reporter.web import _from_this_site


def request(url: str, **headers: str) -> Request:
    scheme, rest = url.split("://", 1)
    host = rest.split("/", 1)[0]
    raw = [
        (name.replace("_", "-").lower().encode(), value.encode()) for name, value in {"host": host, **headers}.items()
    ]
    return Request({"type": "http", "method": "POST", "scheme": scheme, "path": "/ui/incidents/i/commands",
                    "query_string": b"", "headers": raw, "server": (host, 80)})  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "public_url", "taken"),
    [
        ({"sec_fetch_site": "same-origin", "origin": "https://vigil.example.com"}, None, True),  # behind a proxy
        ({"sec_fetch_site": "same-site"}, None, False),
        ({"sec_fetch_site": "cross-site", "origin": "http://reporter:8080"}, None, False),
        ({"origin": "http://reporter:8080"}, None, True),
        ({"origin": "https://vigil.example.com"}, None, False),
        ({"origin": "https://vigil.example.com"}, "https://vigil.example.com", True),
        ({"origin": "http://reporter:8080"}, "https://vigil.example.com", False),
        ({"origin": "null"}, None, False),
        ({"referer": "http://reporter:8080/ui/incidents/i"}, None, True),
        ({"referer": "https://evil.example/ui/incidents/i"}, None, False),
        ({}, None, True),  # no browser: a script with a bearer token
    ],
)
def test_a_form_is_taken_only_from_this_sites_pages(
    headers: dict[str, str], public_url: str | None, taken: bool
) -> None:
    assert _from_this_site(request("http://reporter:8080", **headers), public_url) is taken


def test_a_form_sent_twice_is_one_command_and_two_forms_are_two() -> None:
    from services.reporter.page_commands import command_event
    from shared.identity import Principal

    cora = Principal(name="cora@example.com", role="commander", kind="person")
    note = {"command": ["note"], "note": ["paged fast"], "kind": ["went_well"], "nonce": ["n" * 24]}
    first, again = command_event("inc-1", note, by=cora), command_event("inc-1", note, by=cora)
    assert first.id == again.id and first.data.actor == "cora@example.com"  # type: ignore[attr-defined]
    approve = {"command": ["approve"], "step_id": ["inc-1:block:ab"], "nonce": ["n" * 24]}
    deny = {"command": ["deny"], "step_id": ["inc-1:block:ab"], "note": ["no"], "nonce": ["n" * 24]}
    other_step = {**approve, "step_id": ["inc-1:block:cd"]}
    ids = {command_event("inc-1", form, by=cora).id for form in (note, approve, deny, other_step)}
    assert len(ids) == 4
    other_text = {**note, "note": ["the runbook was stale"]}
    assert command_event("inc-1", other_text, by=cora).id != first.id
    bob = Principal(name="bob@example.com", role="commander", kind="person")
    assert command_event("inc-1", note, by=bob).id != first.id
    # Without a nonce of the page's making, each is a command of its own.
    bare = {k: v for k, v in note.items() if k != "nonce"}
    assert command_event("inc-1", bare, by=cora).id != command_event("inc-1", bare, by=cora).id
    assert command_event("inc-1", {**note, "nonce": ["../x"]}, by=cora).id != first.id


def test_the_same_form_from_two_page_loads_is_two_commands() -> None:
    """Resolved "fixed" again after a reopen, or the same status update posted twice: each page load's nonce
    makes another command, which no consumer takes for the first one sent again."""
    from services.reporter.page_commands import command_event
    from shared.identity import Principal

    cora = Principal(name="cora@example.com", role="commander", kind="person")
    resolve = {"command": ["resolve"], "resolution": ["fixed"], "note": [""]}
    first = command_event("inc-1", {**resolve, "nonce": ["a" * 24]}, by=cora)
    later = command_event("inc-1", {**resolve, "nonce": ["b" * 24]}, by=cora)
    assert first.id != later.id
    assert command_event("inc-1", {**resolve, "nonce": ["a" * 24]}, by=cora).id == first.id  # a double click
    update = {"command": ["note"], "note": ["still investigating"], "kind": ["status_update"]}
    monday = command_event("inc-1", {**update, "nonce": ["c" * 24]}, by=cora)
    tuesday = command_event("inc-1", {**update, "nonce": ["d" * 24]}, by=cora)
    assert monday.id != tuesday.id
