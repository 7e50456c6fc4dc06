"""Notifications without I/O: the file and its errors, routing, keys, every template on every channel, the shapes."""

from __future__ import annotations

import functools
import json
import re
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import pytest

from services.coordinator.notifications import (
    CHANNELS,
    DEFAULT_NOTIFICATIONS,
    KINDS,
    REPORTER_KINDS,
    REQUIRED_DATA,
    Delivery,
    Notice,
    NoticeError,
    NotificationsConfig,
    NotificationsConfigError,
    Rendered,
    channels_for,
    check_notice,
    dispatch,
    effect_kinds,
    escalation_notice,
    exhausted_notice,
    fallback,
    load_notifications,
    mail_domain_allowed,
    mail_text,
    notice_key,
    parse_key,
    parse_notifications,
    plan,
    state_changed_notice,
    step_notice,
    unknown_recipients,
)
from shared.effects.domain import message_id
from shared.effects.mail_async import ThreadedMail, build_message
from shared.events import (
    Escalation,
    EscalationExhaustion,
    IncidentState,
    IncidentType,
    Severity,
    StateChange,
    StepChange,
)

EXAMPLE = DEFAULT_NOTIFICATIONS.with_name("notifications.example.yaml")
SECRETS = {
    "VIGIL_NOTIFY_WEBHOOK_SECRET": "a-webhook-secret-of-some-length",
    "VIGIL_SMTP_USERNAME": "vigil",
    "VIGIL_SMTP_PASSWORD": "an-smtp-password",
}
INCIDENT = "4f1c2d3e-0000-4000-8000-00000000abcd"
HOOK = "https://hooks.example.com"


@functools.cache
def example() -> NotificationsConfig:
    """The example file, checked once: every template rendered on every channel."""
    return load_notifications(EXAMPLE, environ=SECRETS)


def config_from(
    document: str, *, environ: dict[str, str] | None = None, base_dir: Path = Path(".")
) -> NotificationsConfig:
    return parse_notifications(
        textwrap.dedent(document), source="n.yaml", base_dir=base_dir, environ=SECRETS if environ is None else environ
    )


def problems_of(document: str, **options: Any) -> list[str]:
    with pytest.raises(NotificationsConfigError) as caught:
        config_from(document, **options)
    return caught.value.problems


FULL_DATA: dict[str, dict[str, Any]] = {
    "escalation": {
        "title": "Reverse shell on bastion-01",
        "reason": "new SEV1 security_breach incident: immediate escalation",
        "commander": "alice@example.com",
        "channel": "pager",
        "type": "security_breach",
        "severity": "SEV1",
        "classification_reason": "rule reverse_shell matched",
        "severity_reason": "a critical asset",
        "alert_count": 31,
        "hosts": [f"host-{i:02d}" for i in range(12)],
        "users": ["root"],
        "first_seen": "2026-03-01T10:00:00Z",
        "last_seen": "2026-03-01T10:05:00Z",
        "alerts": [
            {
                "time": "2026-03-01T10:00:00Z",
                "source": "falco",
                "title": "shell spawned",
                "host": "host-01",
                "user": None,
            },
            {"time": "2026-03-01T10:01:00Z", "source": "suricata", "title": "C2 beacon", "host": None, "user": "bob"},
        ],
    },
    "update": {"title": "Reverse shell on bastion-01", "reason": "severity raised from SEV2 to SEV1", "commander": "a"},
    "state_changed": {
        "title": "Reverse shell on bastion-01",
        "from_state": "detected",
        "to_state": "acknowledged",
        "actor": "alice@example.com",
        "note": "on it",
        "commander": "alice@example.com",
    },
    "reminder": {
        "title": "Reverse shell on bastion-01",
        "state": "acknowledged",
        "reason": "acknowledged 4 hours ago and not resolved",
        "commander": "alice@example.com",
        "since": "2026-03-01T10:06:00Z",
    },
    "approval_requested": {
        "title": "Reverse shell on bastion-01",
        "step": "isolate host",
        "step_id": "inc:isolate-host#0",
        "item": "host-01",
        "action": "isolate_host",
        "reason": "isolating a production host needs an approval",
        "deadline": "2026-03-01T10:20:00Z",
    },
    "step_failed": {
        "title": "Reverse shell on bastion-01",
        "step": "block address",
        "item": "203.0.113.7",
        "reason": "HTTP 503 from the firewall",
        "commander": "alice@example.com",
    },
    "status_update": {
        "title": "Reverse shell on bastion-01",
        "state": "contained",
        "message": "bastion-01 is isolated; the stolen key is revoked",
        "actor": "alice@example.com",
        "commander": "alice@example.com",
    },
    "exhausted": {
        "title": "Reverse shell on bastion-01",
        "rotation": "security",
        "paged": ["alice@example.com", "bob@example.com", "carol@example.com"],
        "reason": "none of the 3 people of rotation 'security' acknowledged within the SEV1 deadline",
    },
    "digest": {
        "name": "weekly-review",
        "period": "2026-11-23 09:00 to 2026-11-30 09:00 (Europe/Lisbon)",
        "opened": 12,
        "opened_by_severity": {"SEV1": 1, "SEV3": 11},
        "resolved": 10,
        "resolved_by_resolution": {"fixed": 8, "false_positive": 2},
        "open_now": 4,
        "open_by_severity": {"SEV1": 1, "SEV3": 3},
        "mtta_minutes": 6.5,
        "mttr_minutes": 190.0,
        "notable": [
            {
                "incident_id": INCIDENT,
                "short_id": INCIDENT[:8],
                "severity": "SEV1",
                "title": "Reverse shell on bastion-01",
                "state": "contained",
            }
        ],
        "notable_more": 0,
        "overdue_tasks": 2,
        "open_follow_ups": 5,
    },
}


def notice(kind: str = "escalation", *, data: dict[str, Any] | None = None, **overrides: Any) -> Notice:
    fields: dict[str, Any] = {
        "kind": kind,
        "incident_id": INCIDENT,
        "discriminator": "step-1",
        "severity": "SEV1",
        "recipients": ["alice@example.com"],
        "data": FULL_DATA[kind] if data is None else data,
        **overrides,
    }
    return Notice(**fields)


def required_only(kind: str) -> dict[str, Any]:
    return {key: FULL_DATA[kind][key] for key in REQUIRED_DATA[kind]}


# ---- the file ----------------------------------------------------------------------------------


def test_the_shipped_file_sends_nothing_and_needs_no_secret() -> None:
    config = load_notifications(environ={})
    assert effect_kinds(config) == []
    assert plan(config.file, notice()) == ([], ["alice@example.com"])


def test_the_example_file_configures_every_channel() -> None:
    config = load_notifications(EXAMPLE, environ=SECRETS)
    assert [kind.name for kind in effect_kinds(config)] == [f"notify.{channel}" for channel in CHANNELS]
    # Secrets are read from the environment and kept as secrets.
    assert (
        config.webhook_secret is not None
        and config.webhook_secret.get_secret_value() == SECRETS["VIGIL_NOTIFY_WEBHOOK_SECRET"]
    )
    assert "an-smtp-password" not in repr(config)
    assert unknown_recipients(config, ["alice@example.com", "mallory@example.com", "operations"]) == [
        "mallory@example.com"
    ]


def test_a_file_of_comments_only_sends_nothing() -> None:
    assert config_from("# nothing yet\n").file.routes == {}


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("channels: [\n", "n.yaml:2:1: not YAML"),
        (
            """
            channels:
              slack: {url: https://hooks.example.com/a}
            routes:
              escalation:
                SEV1: [slack, pager]
            """,
            "n.yaml:6:19: routes.escalation.SEV1.1: Input should be 'webhook', 'slack', 'teams', 'mattermost' or "
            "'email'",
        ),
        (
            """
            channels:
              slack: {url: https://hooks.example.com/a}
            routes:
              escalation: {default: [slack, email]}
            """,
            "n.yaml:5:33: routes.escalation.default.1: email is not configured under channels",
        ),
        (
            """
            routes:
              escalations: {default: []}
            """,
            "n.yaml:3:3: routes.escalations: Input should be 'escalation', 'update'",
        ),
        (
            """
            routes:
              escalation: {SEV5: []}
            """,
            "n.yaml:3:16: routes.escalation.SEV5: Input should be 'SEV1', 'SEV2', 'SEV3', 'SEV4' or 'default'",
        ),
        (
            """
            people:
              alice: {email: alice@example.com}
            groups:
              leads: {members: [alice, bob]}
            """,
            "n.yaml:5:28: groups.leads.members.1: bob is not listed under people",
        ),
        (
            """
            people:
              alice: {email: alice@example.com}
            groups:
              alice: {email: leads@example.com}
            """,
            "n.yaml:5:3: groups.alice: alice is a person too",
        ),
        (
            """
            people:
              alice: {email: "alice@example.com\\nBcc: everyone@example.com"}
            """,
            "n.yaml:3:18: people.alice.email: String should match pattern",
        ),
        (
            """
            people:
              alice: {slack: "ftp://hooks.example.com/a"}
            """,
            "n.yaml:3:18: people.alice.slack: Value error, not an http(s) URL with a host",
        ),
        (
            """
            people:
              "alice:admin": {email: alice@example.com}
            """,
            "n.yaml:3:3: people.alice:admin: String should match pattern",
        ),
        (
            """
            channels:
              email: {host: smtp.example.com, sender: vigil@example.com, username_env: SMTP_USER}
            """,
            "n.yaml:3:10: channels.email: Value error, a login needs both username_env and password_env",
        ),
        (
            """
            channels:
              webhook: {url: https://hooks.example.com/a}
            """,
            "n.yaml:3:12: channels.webhook.secret_env: Field required",
        ),
    ],
)
def test_a_broken_file_says_where_and_why(document: str, expected: str) -> None:
    assert any(problem.startswith(expected) for problem in problems_of(document)), problems_of(document)


def test_secrets_named_in_the_file_must_be_set_and_long_enough() -> None:
    document = """
        channels:
          webhook: {url: https://hooks.example.com/a, secret_env: HOOK_SECRET}
        """
    assert problems_of(document, environ={}) == ["n.yaml: channels.webhook.secret_env: HOOK_SECRET is not set"]
    assert problems_of(document, environ={"HOOK_SECRET": "short"}) == [
        "n.yaml: channels.webhook.secret_env: HOOK_SECRET holds fewer than 16 characters"
    ]
    login = """
        channels:
          email: {host: smtp.example.com, sender: v@example.com, username_env: U, password_env: P}
        """
    assert problems_of(login, environ={"U": "vigil"}) == ["n.yaml: channels.email.password_env: P is not set"]


def test_paths_in_the_file_are_relative_to_it(tmp_path: Path) -> None:
    assert problems_of("templates_dir: mine\n", base_dir=tmp_path) == [
        f"n.yaml: templates_dir: {tmp_path / 'mine'} is not a directory"
    ]
    email = "channels: {email: {host: h, sender: v@example.com, cafile: ca.pem}}\n"
    assert problems_of(email, base_dir=tmp_path) == [
        f"n.yaml: channels.email.cafile: {tmp_path / 'ca.pem'} is not a file"
    ]
    (tmp_path / "ca.pem").write_text("not checked until it is used")
    assert config_from(email, base_dir=tmp_path).cafile == tmp_path / "ca.pem"


# ---- templates ---------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("kind", [kind for kind in KINDS if kind not in REPORTER_KINDS])
def test_every_kind_renders_on_every_channel_with_all_data_or_only_the_required(kind: str, channel: str) -> None:
    templates = example().templates
    full = templates.render(channel, notice(kind), recipient="alice@example.com")
    least = templates.render(channel, notice(kind, data=required_only(kind)), recipient="alice@example.com")
    for rendered in (full, least):
        assert rendered.title and "\n" not in rendered.title
        assert rendered.body
        assert all(label or value for label, value in rendered.facts)
    # What the kind is about reaches every channel.
    words = {
        "escalation": "alice@example.com",
        "update": "severity raised from SEV2 to SEV1",
        "state_changed": "acknowledged",
        "reminder": "not resolved",
        "approval_requested": "needs an approval",
        "step_failed": "HTTP 503",
        "exhausted": "none of the 3 people",
        "status_update": "the stolen key is revoked",
        "digest": "4f1c2d3e SEV1 Reverse shell on bastion-01 (contained)",
    }[kind]
    assert words in full.title + full.body
    if kind == "digest":
        assert full.title == "Vigil weekly-review: 12 incident(s) opened, 10 resolved"
        assert ("Time to acknowledge (median)", "6.5 min") in full.facts
    elif channel == "email":
        # One subject per incident, whatever the notice: mail clients keep one conversation.
        assert full.title == "Vigil incident 4f1c2d3e: Reverse shell on bastion-01"
    else:
        assert full.title.startswith("[SEV1] ")


def test_the_email_escalation_carries_everything_gathered() -> None:
    templates = example().templates
    text = mail_text(templates.render("email", notice(), recipient="alice@example.com"))
    assert "Alerts (2 of 31):" in text
    assert "- 2026-03-01T10:00:00Z falco: shell spawned on host-01\n" in text
    assert "- 2026-03-01T10:01:00Z suricata: C2 beacon (bob)\n" in text
    assert f"vigil ack {INCIDENT}" in text
    assert "\nSeverity:  SEV1\nCommander: alice@example.com\n" in text


def test_a_chat_escalation_lists_ten_hosts_and_counts_the_rest() -> None:
    templates = example().templates
    facts = dict(templates.render("slack", notice(), recipient="alice@example.com").facts)
    assert facts["Hosts"] == ", ".join(f"host-{i:02d}" for i in range(10)) + " and 2 more"


def test_alert_text_is_data_never_markup_or_template() -> None:
    data = {
        **FULL_DATA["escalation"],
        "title": "<!channel> {{ 7 * 7 }} <https://evil.example|click> & @all\nSeverity: SEV4",
    }
    templates = example().templates
    slack = templates.render("slack", notice(data=data), recipient="a")
    assert (
        slack.title
        == "[SEV1] &lt;!channel&gt; {{ 7 * 7 }} &lt;https://evil.example|click&gt; &amp; @all Severity: SEV4"
    )
    mattermost = templates.render("mattermost", notice(data=data), recipient="a")
    assert "@\u200ball" in mattermost.title and "@all" not in mattermost.title
    # A value cannot add a line, so it cannot forge a fact.
    escalated = templates.render("teams", notice(data={**data, "commander": "eve\nSeverity: SEV4"}), recipient="a")
    assert ("Severity", "SEV1") in escalated.facts and ("Severity", "SEV4") not in escalated.facts


# Mattermost's server reads Slack's markup in an incoming webhook's text before its Markdown (ProcessSlackText,
# ParseSlackLinksToMarkdown): <!channel> becomes @channel, <url|text> the link [text](url).
_SLACK_LINK = re.compile(r"<([^<|]+)\|([^>]+)>")


def _as_mattermost_reads_it(text: str) -> str:
    for slack, mention in (("<!channel>", "@channel"), ("<!here>", "@here"), ("<!all>", "@all")):
        text = text.replace(slack, mention)
    return _SLACK_LINK.sub(r"[\2](\1)", text)


def test_alert_text_neither_pings_a_mattermost_channel_nor_links_through_slack_markup() -> None:
    evil = "Disk full <!channel> <https://evil.example/ack|Acknowledge here> & <!here>"
    data = {**FULL_DATA["escalation"], "title": evil, "hosts": [evil]}
    rendered = example().templates.render("mattermost", notice(data=data), recipient="a")
    body = dispatch(notice(data=data), Delivery("mattermost", "a", HOOK), rendered, key="k").payload["body"]
    attachment = body["attachments"][0]
    shown = [body["text"], attachment["title"], attachment["text"], attachment["footer"]]
    shown += [str(field["value"]) for field in attachment["fields"]]
    for text in shown:
        read = _as_mattermost_reads_it(text)
        assert "@channel" not in read and "@here" not in read and "](https://evil.example" not in read, read
    # Shown as the characters: Markdown reads the entities back.
    assert "&lt;!channel&gt; &lt;https://evil.example/ack|Acknowledge here&gt; &amp; &lt;!here&gt;" in body["text"]


@pytest.mark.parametrize("channel", ["teams", "mattermost"])
def test_alert_text_never_becomes_a_link_or_an_image_in_a_markdown_channel(channel: str) -> None:
    data = {**FULL_DATA["escalation"], "title": "[Ack here](https://evil.example/p) ![x](https://evil.example/t.png)"}
    rendered = example().templates.render(channel, notice(data=data), recipient="a")
    assert "](" not in rendered.title
    assert "[Ack here]\u200b(https://evil.example/p) ![x]\u200b(https://evil.example/t.png)" in rendered.title


def test_a_mention_inside_an_address_is_left_alone() -> None:
    templates = example().templates
    rendered = templates.render("mattermost", notice(), recipient="a")
    assert ("Commander", "alice@example.com") in rendered.facts


def test_templates_in_the_operators_directory_win_by_name(tmp_path: Path) -> None:
    (tmp_path / "slack").mkdir()
    (tmp_path / "slack" / "escalation.j2").write_text(
        "{% block title %}PAGE {{ data.commander }}{% endblock %}{% block body %}{{ data.reason }}{% endblock %}"
    )
    (tmp_path / "update.j2").write_text(
        "{% block title %}U{% endblock %}{% block body %}{{ data.reason }}{% endblock %}"
    )
    templates = config_from("templates_dir: .\nchannels: {slack: {url: https://h.example.com/x}}\n", base_dir=tmp_path)
    slack = templates.templates.render("slack", notice(), recipient="a")
    assert (slack.title, slack.body, slack.facts) == ("PAGE alice@example.com", FULL_DATA["escalation"]["reason"], ())
    assert templates.templates.render("teams", notice(), recipient="a").title == "[SEV1] Reverse shell on bastion-01"
    assert templates.templates.render("email", notice("update"), recipient="a").title.startswith("Vigil incident")
    assert templates.templates.render("webhook", notice("update"), recipient="a").title == "U"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{% block title %}{{ data.title }", "slack/escalation.j2:1: unexpected '}'"),
        ("{% block title %}x{% endblock %}", "slack/escalation.j2: defines no block body"),
        (
            "{% block title %}{{ data.hosts|length }}{% endblock %}{% block body %}x{% endblock %}",
            "slack/escalation: cannot render with the data every escalation notice has (title, reason, commander)",
        ),
        (
            "{% block title %}{{ data.__class__.__subclasses__() }}{% endblock %}{% block body %}x{% endblock %}",
            "slack/escalation: cannot render with the data every escalation notice has",
        ),
        ("{% block title %} {% endblock %}{% block body %}x{% endblock %}", "slack/escalation.j2: the title is empty"),
    ],
)
def test_a_broken_template_stops_the_start_saying_where(tmp_path: Path, template: str, expected: str) -> None:
    (tmp_path / "slack").mkdir()
    (tmp_path / "slack" / "escalation.j2").write_text(template)
    [problem] = problems_of("templates_dir: .\nchannels: {slack: {url: https://h.example.com/x}}\n", base_dir=tmp_path)
    assert expected in problem


def test_a_template_that_fails_on_some_data_has_a_plain_fallback(tmp_path: Path) -> None:
    (tmp_path / "escalation.j2").write_text(
        "{% block title %}{% if data.extra is defined %}{{ data.extra.missing }}{% endif %}T{% endblock %}"
        "{% block body %}x{% endblock %}"
    )
    config = config_from("templates_dir: .\nchannels: {slack: {url: https://h.example.com/x}}\n", base_dir=tmp_path)
    with pytest.raises(jinja2.UndefinedError):
        config.templates.render("slack", notice(data={**FULL_DATA["escalation"], "extra": {}}), recipient="a")
    plain = fallback(notice(data={**FULL_DATA["escalation"], "title": "<b>"}), "slack")
    assert plain.title == "[SEV1] escalation: &lt;b&gt;"
    assert "commander: alice@example.com" in plain.body


# ---- notices, routes, keys ---------------------------------------------------------------------


def test_a_notice_built_wrong_is_refused() -> None:
    with pytest.raises(NoticeError, match="unknown notice kind 'paged'"):
        check_notice(notice(kind="paged", data={}))
    with pytest.raises(NoticeError, match="a state_changed notice needs to_state, actor in its data"):
        check_notice(notice("state_changed", data={"title": "t", "from_state": None}))
    with pytest.raises(NoticeError, match="holding ':'"):
        check_notice(notice(incident_id="a:b"))
    with pytest.raises(NoticeError, match="JSON-able"):
        check_notice(notice(data={**FULL_DATA["escalation"], "odd": {1, 2}}))
    check_notice(notice(data={**FULL_DATA["escalation"], "at": datetime(2026, 3, 1, tzinfo=UTC)}))


ROUTED = f"""
channels:
  webhook: {{url: {HOOK}/vigil, secret_env: VIGIL_NOTIFY_WEBHOOK_SECRET}}
  slack: {{url: {HOOK}/slack/incidents}}
  email: {{host: smtp.example.com, sender: vigil@example.com}}
people:
  alice: {{email: alice@example.com, slack: {HOOK}/slack/alice}}
  bob: {{email: bob@example.com}}
  carol: {{email: shared@example.com}}
  dave: {{email: shared@example.com}}
groups:
  leads: {{email: leads@example.com, members: [alice, bob]}}
  ops: {{members: [carol, dave]}}
routes:
  escalation: {{SEV1: [email, slack, webhook], default: [email]}}
  default: {{default: [slack]}}
"""


def test_routes_pick_channels_by_kind_then_severity_each_with_a_default() -> None:
    file = config_from(ROUTED).file
    assert channels_for(file, "escalation", "SEV1") == ["email", "slack", "webhook"]
    assert channels_for(file, "escalation", "SEV3") == ["email"]
    assert channels_for(file, "reminder", "SEV1") == ["slack"]
    assert channels_for(config_from("routes: {update: {SEV1: []}}").file, "update", "SEV2") == []


def test_recipients_are_reached_once_per_address_and_groups_by_their_own_address_or_members() -> None:
    file = config_from(ROUTED).file
    deliveries, unknown = plan(file, notice(recipients=["ops", "leads", "alice", "alice", "mallory"]))
    assert unknown == ["mallory"]
    assert deliveries == [
        Delivery("email", "alice", "alice@example.com"),
        Delivery("email", "leads", "leads@example.com"),  # the list, not each lead
        Delivery("email", "carol", "shared@example.com"),  # carol and dave share a mailbox: one mail
        Delivery("slack", "alice", f"{HOOK}/slack/alice"),
        Delivery("slack", "bob", f"{HOOK}/slack/incidents"),  # leads has no Slack: its members, bob on the default
        # carol and dave post to the same default channel as bob: once
        Delivery("webhook", "alice", f"{HOOK}/vigil"),  # one call per recipient: the receiver routes by name
        Delivery("webhook", "bob", f"{HOOK}/vigil"),
        Delivery("webhook", "carol", f"{HOOK}/vigil"),
        Delivery("webhook", "dave", f"{HOOK}/vigil"),
    ]


def test_the_key_names_incident_notice_channel_and_recipient_and_reads_back() -> None:
    state = notice("state_changed", discriminator="detected->acknowledged:1")
    key = notice_key(state, "email", "alice@example.com")
    assert key == f"{INCIDENT}:state_changed:detected->acknowledged:1:email:alice@example.com"
    parsed = parse_key(key)
    assert (parsed.incident_id, parsed.kind, parsed.discriminator, parsed.channel, parsed.recipient) == (
        INCIDENT,
        "state_changed",
        "detected->acknowledged:1",
        "email",
        "alice@example.com",
    )


# ---- what each channel is sent ------------------------------------------------------------------

RENDERED = Rendered(
    title="[SEV1] Reverse shell on bastion-01",
    body="alice, you command this incident",
    facts=(("Severity", "SEV1"), ("Commander", "alice"), ("", "a line without a label")),
)


def test_slack_gets_block_kit_header_text_fields_and_context() -> None:
    effect = dispatch(notice(), Delivery("slack", "alice", f"{HOOK}/slack/alice"), RENDERED, key="k")
    assert (effect.kind, effect.target, effect.payload["url"], effect.payload["method"]) == (
        "notify.slack",
        "hooks.example.com",
        f"{HOOK}/slack/alice",
        "POST",
    )
    body = effect.payload["body"]
    assert body["text"] == RENDERED.title
    assert body["blocks"] == [
        {"type": "header", "text": {"type": "plain_text", "text": RENDERED.title}},
        {"type": "section", "text": {"type": "mrkdwn", "text": RENDERED.body}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": "*Severity*\nSEV1"},
                {"type": "mrkdwn", "text": "*Commander*\nalice"},
                {"type": "mrkdwn", "text": "a line without a label"},
            ],
        },
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"Vigil · escalation · SEV1 · incident {INCIDENT}"}],
        },
    ]


def test_slack_limits_are_kept() -> None:
    long = Rendered(title="t" * 400, body="b" * 5000, facts=tuple((f"L{i}", "v") for i in range(14)))
    blocks = dispatch(notice(), Delivery("slack", "a", HOOK), long, key="k").payload["body"]["blocks"]
    assert len(blocks[0]["text"]["text"]) == 150 and blocks[0]["text"]["text"].endswith("…")
    assert len(blocks[1]["text"]["text"]) == 3000
    assert len(blocks[2]["fields"]) == 10


def test_teams_gets_an_adaptive_card() -> None:
    body = dispatch(notice(), Delivery("teams", "alice", f"{HOOK}/teams"), RENDERED, key="k").payload["body"]
    [attachment] = body["attachments"]
    assert body["type"] == "message"
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    title, text, facts, context = card["body"]
    assert (title["type"], title["text"], title["weight"], title["color"]) == (
        "TextBlock",
        RENDERED.title,
        "Bolder",
        "Attention",
    )
    assert (text["type"], text["text"]) == ("TextBlock", RENDERED.body)
    assert facts == {
        "type": "FactSet",
        "facts": [
            {"title": "Severity", "value": "SEV1"},
            {"title": "Commander", "value": "alice"},
            {"title": "", "value": "a line without a label"},
        ],
    }
    assert INCIDENT in context["text"]


def test_mattermost_gets_a_slack_compatible_attachment() -> None:
    body = dispatch(notice(severity="SEV3"), Delivery("mattermost", "a", HOOK), RENDERED, key="k").payload["body"]
    [attachment] = body["attachments"]
    assert body["text"] == RENDERED.title
    assert (attachment["title"], attachment["text"], attachment["color"]) == (RENDERED.title, RENDERED.body, "#fbca04")
    assert attachment["fields"][0] == {"title": "Severity", "value": "SEV1", "short": True}


def test_the_generic_webhook_carries_the_incident_as_its_conversation_and_the_data() -> None:
    effect = dispatch(notice(), Delivery("webhook", "alice", f"{HOOK}/vigil"), RENDERED, key="the-key")
    body = effect.payload["body"]
    assert body["conversation"] == body["thread_key"] == body["incident_id"] == INCIDENT
    assert (body["key"], body["kind"], body["recipient"], body["discriminator"]) == (
        "the-key",
        "escalation",
        "alice",
        "step-1",
    )
    assert body["data"] == FULL_DATA["escalation"]
    assert body["facts"][0] == {"label": "Severity", "value": "SEV1"}
    json.dumps(effect.payload)  # stored as it is


def test_a_mail_answers_the_incidents_first_mail_unless_it_is_that_mail() -> None:
    delivery = Delivery("email", "alice", "alice@example.com")
    first = dispatch(notice(), delivery, RENDERED, key="k1", thread_root=message_id("k1"))
    assert first.target == "alice@example.com"
    assert (first.payload["in_reply_to"], first.payload["references"]) == (None, [])
    later = dispatch(notice("update"), delivery, RENDERED, key="k2", thread_root=message_id("k1"))
    assert (later.payload["in_reply_to"], later.payload["references"]) == (message_id("k1"), [message_id("k1")])
    assert later.payload["body"] == mail_text(RENDERED)
    assert later.payload["subject"] == RENDERED.title


def test_the_mail_message_carries_its_key_as_message_id_and_its_thread() -> None:
    mail = ThreadedMail(
        to=["alice@example.com"], subject="s", body="b", in_reply_to=message_id("k1"), references=[message_id("k1")]
    )
    message = build_message(mail, key="k2", sender="vigil@example.com", now=datetime(2026, 3, 1, tzinfo=UTC))
    assert (message["Message-ID"], message["In-Reply-To"], message["References"]) == (
        message_id("k2"),
        message_id("k1"),
        message_id("k1"),
    )
    assert (message["From"], message["To"], message["Subject"]) == ("vigil@example.com", "alice@example.com", "s")


def test_http_channels_are_held_to_the_files_addresses() -> None:
    config = config_from(ROUTED)
    assert config.urls("slack") == {f"{HOOK}/slack/incidents", f"{HOOK}/slack/alice"}
    assert config.urls("webhook") == {f"{HOOK}/vigil"}
    assert config.urls("teams") == set()
    names = [kind.name for kind in effect_kinds(config)]
    assert names == ["notify.webhook", "notify.slack", "notify.email"]


# ---- notices from the coordinator's events -----------------------------------------------------


def test_notices_built_from_the_coordinators_events_carry_what_their_templates_need() -> None:
    escalation = Escalation(
        commander="alice@example.com",
        channel="pager",
        reason="new SEV1 security_breach incident: immediate escalation",
        title="Reverse shell on bastion-01",
        type=IncidentType.SECURITY_BREACH,
        severity=Severity.SEV1,
        classification_reason="rule reverse_shell",
        severity_reason="critical asset",
        alert_count=1,
        hosts=["bastion-01"],
        users=[],
        first_seen=datetime(2026, 3, 1, 10, tzinfo=UTC),
        last_seen=datetime(2026, 3, 1, 10, tzinfo=UTC),
        alerts=[],
    )
    page = escalation_notice(INCIDENT, escalation, discriminator="step-1")
    assert (page.kind, page.discriminator, page.severity, page.recipients) == (
        "escalation",
        "step-1",
        "SEV1",
        ["alice@example.com"],
    )
    exhausted = exhausted_notice(
        INCIDENT,
        EscalationExhaustion(
            rotation="security",
            paged=["alice@example.com"],
            last_commander="alice@example.com",
            severity=Severity.SEV2,
            reason="nobody acknowledged",
        ),
        title="Reverse shell on bastion-01",
        recipients=["security-leads"],
    )
    assert (exhausted.discriminator, exhausted.severity, exhausted.recipients) == (
        "security",
        "SEV2",
        ["security-leads"],
    )
    change = StateChange(
        from_state=IncidentState.DETECTED, to_state=IncidentState.ACKNOWLEDGED, actor="alice", command_id="cmd-1"
    )
    moved = state_changed_notice(INCIDENT, change, title="t", severity="SEV1", recipients=["alice@example.com"])
    assert moved.discriminator == "detected->acknowledged:cmd-1"
    assert (
        state_changed_notice(
            INCIDENT,
            StateChange(from_state=None, to_state=IncidentState.DETECTED, actor="detector"),
            title="t",
            severity="SEV1",
            recipients=[],
        ).discriminator
        == "none->detected"
    )
    step = StepChange(
        step_id="inc:isolate-host#0",
        plan_id="p",
        step="isolate-host",
        name="isolate host",
        item="host-01",
        connector="webhook",
        action="isolate_host",
        from_state="planned",
        state="awaiting_approval",
        actor="policy",
        on_failure="escalate",
    )
    asked = step_notice(INCIDENT, step, title="t", severity="SEV1", recipients=["alice@example.com"])
    assert asked is not None and (asked.kind, asked.discriminator, asked.data["reason"]) == (
        "approval_requested",
        "inc:isolate-host#0",
        "awaiting approval",
    )
    failed = step_notice(
        INCIDENT,
        step.model_copy(update={"state": "failed", "reason": "HTTP 503"}),
        title="t",
        severity="SEV1",
        recipients=[],
    )
    assert failed is not None and (failed.kind, failed.data["reason"]) == ("step_failed", "HTTP 503")
    assert (
        step_notice(INCIDENT, step.model_copy(update={"state": "succeeded"}), title="t", severity="SEV1", recipients=[])
        is None
    )
    for built in (page, exhausted, moved, asked, failed):
        check_notice(built)
        for channel in CHANNELS:
            assert example().templates.render(channel, built, recipient="alice@example.com").title


def test_with_a_public_url_every_channel_links_the_incidents_page() -> None:
    config = load_notifications(EXAMPLE, environ=SECRETS, public_url="https://vigil.example.com/")
    link = f"https://vigil.example.com/ui/incidents/{INCIDENT}"
    rendered = config.templates.render("slack", notice(data=FULL_DATA["escalation"]), recipient="alice")
    assert rendered.link == link
    slack = dispatch(notice(), Delivery("slack", "a", HOOK), rendered, key="k").payload["body"]["blocks"]
    assert {
        "type": "actions",
        "elements": [{"type": "button", "text": {"type": "plain_text", "text": "Open in Vigil"}, "url": link}],
    } in slack
    teams = dispatch(notice(), Delivery("teams", "a", HOOK), rendered, key="k").payload["body"]
    assert teams["attachments"][0]["content"]["actions"] == [
        {"type": "Action.OpenUrl", "title": "Open in Vigil", "url": link}
    ]
    mattermost = dispatch(notice(), Delivery("mattermost", "a", HOOK), rendered, key="k").payload["body"]
    assert mattermost["attachments"][0]["title_link"] == link
    assert dispatch(notice(), Delivery("webhook", "a", HOOK), rendered, key="k").payload["body"]["link"] == link
    assert mail_text(rendered).endswith(f"\nOpen in Vigil: {link}\n")
    # Templates may place it themselves; without a public URL there is none, and no button.
    plain = example().templates.render("slack", notice(data=FULL_DATA["escalation"]), recipient="alice")
    assert plain.link is None
    assert all(
        b["type"] != "actions"
        for b in dispatch(notice(), Delivery("slack", "a", HOOK), plain, key="k").payload["body"]["blocks"]
    )
    assert "Open in Vigil" not in mail_text(plain)


def test_an_incident_id_is_quoted_in_its_link() -> None:
    config = load_notifications(EXAMPLE, environ=SECRETS, public_url="https://vigil.example.com/vigil")
    rendered = config.templates.render(
        "email", notice(incident_id="a b/../c", data=FULL_DATA["escalation"]), recipient="alice"
    )
    assert rendered.link == "https://vigil.example.com/vigil/ui/incidents/a%20b%2F..%2Fc"


@pytest.mark.parametrize(
    "url",
    [
        "vigil.example.com",
        "ftp://vigil.example.com",
        "https://vigil.example.com/?x=1",
        "https://vigil.example.com/#top",
        "https://ops:secret@vigil.example.com",
        'https://vigil.example.com/"><script>',
    ],
)
def test_a_public_url_that_is_no_web_address_is_refused_at_start_up(url: str) -> None:
    from pydantic import ValidationError

    from shared.settings import VigilSettings

    with pytest.raises(ValidationError, match="public_url"):
        VigilSettings(public_url=url)


# ---- writing back to the people who reported a problem -------------------------------------------

REPORTERS_FILE = """
channels:
  email: {host: smtp.example.com, sender: vigil@example.com, security: none}
reporters:
  domains: [Example.ORG, "@corp.example"]
"""


def test_reporters_are_written_to_by_mail_only_in_the_domains_given() -> None:
    reporters = config_from(REPORTERS_FILE).file.reporters
    assert reporters is not None
    assert reporters.domains == ["example.org", "corp.example"]
    assert reporters.when == ["received", "resolved"]  # status updates only when asked for
    assert mail_domain_allowed("ana@example.org", reporters.domains)
    assert mail_domain_allowed("Ana.Lima@mail.example.org", reporters.domains)  # below a domain given
    assert not mail_domain_allowed("ana@badexample.org", reporters.domains)  # a suffix is not a subdomain
    assert not mail_domain_allowed("ana@example.org.evil.test", reporters.domains)
    assert not mail_domain_allowed("+351 21 000 0000", reporters.domains)
    for read_otherwise in ("a@evil.test(.example.org", "victim%evil.test@example.org", "x!y@example.org"):
        assert not mail_domain_allowed(read_otherwise, reporters.domains)


def test_reporters_without_a_mail_channel_or_with_a_bad_domain_are_refused_where_they_are_written() -> None:
    assert problems_of("reporters: {domains: [example.org]}") == [
        "n.yaml:1:12: reporters: reporters are written to by mail: configure channels.email"
    ]
    (bad,) = problems_of(REPORTERS_FILE.replace('"@corp.example"', "'not a domain'"))
    assert bad.startswith("n.yaml:5:26: reporters.domains.1: Value error, not a mail domain")
    (none,) = problems_of(REPORTERS_FILE.replace('[Example.ORG, "@corp.example"]', "[]"))
    assert "reporters.domains" in none and "at least 1 item" in none
    (unknown,) = problems_of(REPORTERS_FILE + "  when: [received, escalation]\n")
    assert "reporters.when.1" in unknown


@pytest.mark.parametrize(
    ("kind", "data", "words"),
    [
        ("reporter_received", {"reported_at": "2026-11-27 09:05 UTC"}, "It is being handled as incident 4f1c2d3e"),
        ("reporter_update", {"reported_at": "2026-11-27 09:05 UTC", "message": "Payroll is back"}, "Payroll is back"),
        ("reporter_resolved", {"reported_at": "2026-11-27 09:05 UTC", "resolution": "fixed"}, "has been fixed"),
        (
            "reporter_resolved",
            {"reported_at": "2026-11-27 09:05 UTC", "resolution": "false_positive"},
            "found no fault",
        ),
        ("reporter_resolved", {"reported_at": "2026-11-27 09:05 UTC", "resolution": "other"}, "resolved (other)"),
    ],
)
def test_a_reporter_is_told_in_plain_words_with_the_reference_and_no_link(
    kind: str, data: dict[str, Any], words: str
) -> None:
    config = parse_notifications(textwrap.dedent(REPORTERS_FILE), environ={}, public_url="https://vigil.example.com")
    rendered = config.templates.render("email", notice(kind, data=data), recipient="ana@example.org")
    assert "2026-11-27 09:05 UTC" in rendered.title and "4f1c2d3e" in rendered.title
    assert words in rendered.body
    assert ("Reference", f"incident {INCIDENT}") in rendered.facts
    # The web view is for Vigil's users: a reporter's mail has no link to it, as a page's has.
    assert rendered.link is None and "https://" not in mail_text(rendered)
    page = config.templates.render("email", notice("escalation"), recipient="alice@example.com")
    assert page.link == f"https://vigil.example.com/ui/incidents/{INCIDENT}"


def test_reporters_notices_and_peoples_notices_go_their_own_ways() -> None:
    with pytest.raises(NoticeError, match="notify_reporters sends it"):
        import asyncio

        from services.coordinator.notifications import notify

        asyncio.run(notify(None, example(), notice("reporter_received", data={"reported_at": "x"})))  # type: ignore[arg-type]


def test_a_page_names_the_incidents_room_where_it_has_one() -> None:
    templates = example().templates
    for channel in ("email", "slack", "webhook"):
        with_room = templates.render(channel, notice("escalation"), recipient="a", room="inc-4f1c2d3e-reverse-shell")
        assert ("Room", "#inc-4f1c2d3e-reverse-shell") in with_room.facts, channel
        without = templates.render(channel, notice("escalation"), recipient="a")
        assert all(label != "Room" for label, _ in without.facts), channel
