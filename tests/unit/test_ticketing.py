"""The ticketing file and what a ticket says, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.coordinator import ticketing
from services.coordinator.tasks import Task

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def task(**fields: object) -> Task:
    base: dict[str, object] = {
        "id": 7,
        "incident_id": "inc-1",
        "phase": "post_mortem",
        "template_id": "adhoc-1f2e",
        "position": 9,
        "title": "Rotate the deploy keys",
        "description": "",
        "owner": "bob@example.com",
        "owner_role": None,
        "required": False,
        "state": "open",
        "due_after_s": None,
        "due_from": "creation",
        "due_at": None,
        "done_at": None,
        "done_by": None,
        "note": "",
        "escalated_at": None,
        "created_at": T0,
        "updated_at": T0,
    }
    return Task.model_validate({**base, **fields})


def test_as_shipped_no_tracker_takes_any_task() -> None:
    assert ticketing.load_ticketing().tracker is None
    assert not ticketing.NONE.syncs(task())


def test_only_tasks_an_operator_added_in_the_files_phases_become_tickets() -> None:
    config = ticketing.parse_ticketing(
        "tracker: {kind: github, repository: acme/ops, token_env: T}\nphases: [post_mortem, remediation]",
        environ={"T": "a-token"},
    )
    assert config.syncs(task())
    assert config.syncs(task(phase="remediation"))
    assert not config.syncs(task(phase="containment"))
    assert not config.syncs(task(template_id="hold-post-mortem"))  # the runbook's checklist stays in Vigil


def test_a_ticketing_file_is_refused_where_it_is_wrong() -> None:
    with pytest.raises(ticketing.TicketingError) as caught:
        ticketing.parse_ticketing("tracker: {kind: github, repository: acme, token_env: T}", environ={"T": "x"})
    assert caught.value.problems[0].startswith("ticketing:1:")
    assert "tracker.github.repository" in caught.value.problems[0]
    with pytest.raises(ticketing.TicketingError, match="TRACKER_TOKEN is not set"):
        ticketing.parse_ticketing(
            "tracker: {kind: jira, url: https://j.example, project: SEC, token_env: TRACKER_TOKEN}", environ={}
        )
    with pytest.raises(ticketing.TicketingError, match="JIRA_USER is not set"):
        ticketing.parse_ticketing(
            "tracker: {kind: jira, url: https://j.example, project: SEC, token_env: T, user_env: JIRA_USER}",
            environ={"T": "x"},
        )
    with pytest.raises(ticketing.TicketingError, match="phases"):
        ticketing.parse_ticketing("phases: [aftermath]", environ={})
    cloud = "tracker: {kind: jira, url: https://acme.atlassian.net, project: SEC, token_env: T}"
    with pytest.raises(ticketing.TicketingError, match="Jira Cloud takes an API token with the account's e-mail"):
        ticketing.parse_ticketing(cloud, environ={"T": "x"})
    with pytest.raises(ticketing.TicketingError, match="labels"):
        ticketing.parse_ticketing(
            "tracker: {kind: github, repository: a/b, token_env: T, labels: [incident follow-up]}", environ={"T": "x"}
        )


def test_a_token_is_taken_without_a_secret_files_newline_and_refused_with_control_characters_unquoted() -> None:
    github = "tracker: {kind: github, repository: a/b, token_env: T}"
    config = ticketing.parse_ticketing(github, environ={"T": "ghp_abc123\n"})
    assert config.token is not None and config.token.get_secret_value() == "ghp_abc123"
    with pytest.raises(ticketing.TicketingError) as caught:
        ticketing.parse_ticketing(github, environ={"T": "ghp_abc\r\n123"})
    assert "holds spaces or control characters" in str(caught.value) and "ghp_abc" not in str(caught.value)


def test_a_ticket_says_what_to_do_where_it_came_from_and_carries_its_key() -> None:
    follow_up = task(description="Every key the attacker could read.", due_at=datetime(2026, 12, 11, 9, tzinfo=UTC))
    title, body = ticketing.ticket_text(
        follow_up, incident_title="Reverse shell on web-1", public_url="https://v.example/"
    )
    assert title == "Rotate the deploy keys"
    assert body.splitlines() == [
        "Every key the attacker could read.",
        "",
        "Follow-up of incident inc-1: Reverse shell on web-1",
        "The incident in Vigil: https://v.example/ui/incidents/inc-1",
        "Owner in Vigil: bob@example.com",
        "Due: 2026-12-11 09:00 UTC",
        "Vigil task 7 (post mortem); it is closed here when the task is done in Vigil.",
    ]
    assert ticketing.ticket_key(follow_up) == "inc-1:ticket:7"
    assert ticketing.marker("inc-1:ticket:7") == "<!-- vigil-ticket: inc-1:ticket:7 -->"
    label = ticketing.jira_label("inc-1:ticket:7")
    assert label.startswith("vigil-") and " " not in label and label != ticketing.jira_label("inc-1:ticket:8")


def test_only_an_issue_of_the_trackers_own_closed_as_done_is_word_to_close_a_task() -> None:
    github = ticketing.parse_ticketing(
        "tracker: {kind: github, repository: Acme/Ops, token_env: T}", environ={"T": "x"}
    ).tracker
    assert isinstance(github, ticketing.GitHubTracker)

    def issue(**changes: object) -> dict[str, object]:
        payload: dict[str, object] = {
            "action": "closed",
            "issue": {"number": 7, "state_reason": "completed"},
            "repository": {"full_name": "acme/ops"},
            "sender": {"login": "octocat"},
        }
        return {**payload, **changes}

    assert ticketing.closed_issue("issues", issue(), github) == ("Acme/Ops#7", "octocat", "completed")
    assert ticketing.closed_issue("issues", issue(issue={"number": 7, "state_reason": "not_planned"}), github) == (
        "Acme/Ops#7",
        "octocat",
        "not_planned",
    )
    for event, payload in [
        ("issues", issue(action="reopened")),
        ("issues", issue(repository={"full_name": "acme/other"})),
        ("issues", issue(issue={"number": 7, "pull_request": {}})),
        ("issues", issue(issue="not an object")),
        ("pull_request", issue()),
        ("issues", ["not", "an", "object"]),
    ]:
        assert ticketing.closed_issue(event, payload, github) is None, (event, payload)

    jira = ticketing.parse_ticketing(
        "tracker: {kind: jira, url: https://jira.example, project: SEC, token_env: T}", environ={"T": "x"}
    ).tracker
    assert isinstance(jira, ticketing.JiraTracker)

    def moved(
        key: str = "SEC-3",
        category: str = "done",
        resolution: str | None = "Done",
        status: str = "Done",
        changed: str = "status",
    ) -> dict[str, object]:
        fields = {
            "status": {"name": status, "statusCategory": {"key": category}},
            "resolution": {"name": resolution} if resolution else None,
        }
        return {
            "webhookEvent": "jira:issue_updated",
            "user": {"displayName": "Ana", "accountId": "5b10ac8d82e05b22cc7d4ef5"},
            "issue": {"key": key, "fields": fields},
            "changelog": {"items": [{"field": changed}]},
        }

    ana = "5b10ac8d82e05b22cc7d4ef5"  # who, by the id a display name cannot change
    assert ticketing.closed_jira_issue(moved(), jira) == ("SEC-3", ana, "completed")
    assert ticketing.closed_jira_issue(moved(resolution="Fixed", changed="resolution"), jira) == (
        "SEC-3",
        ana,
        "completed",
    )
    assert ticketing.closed_jira_issue(moved(resolution=None), jira) == ("SEC-3", ana, "completed")  # status Done
    assert ticketing.closed_jira_issue(moved(resolution=None, status="Cancelled"), jira) == ("SEC-3", ana, "Cancelled")
    assert ticketing.closed_jira_issue(moved(resolution="Won't Do"), jira) == ("SEC-3", ana, "Won't Do")
    assert ticketing.closed_jira_issue(moved(category="indeterminate"), jira) is None
    assert ticketing.closed_jira_issue(moved(key="OPS-3"), jira) is None
    assert ticketing.closed_jira_issue(moved(changed="comment"), jira) is None  # a comment on an issue done before
    assert ticketing.closed_jira_issue({"webhookEvent": "jira:issue_created"}, jira) is None
    broken = moved()
    broken["issue"] = {"key": "SEC-3", "fields": {"status": "Done", "resolution": ["x"]}}
    assert ticketing.closed_jira_issue(broken, jira) is None  # signed, but not Jira's shape: no crash
