"""Guardrails: each one refuses what it guards against, and says which it was and why."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.responder.guardrails import (
    Action,
    Context,
    Execution,
    Guardrails,
    GuardrailsError,
    check,
    load_guardrails,
    parse_guardrails,
    usage,
)
from services.responder.playbook import parse_playbooks

SHIPPED_PLAYBOOKS = Path(__file__).parents[2] / "services" / "responder" / "playbooks.yaml"

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RULES = parse_guardrails(
    """
never_block:
  networks: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 127.0.0.0/8, 169.254.0.0/16, "::1/128", "fe80::/10"]
  domains: [corp.example, Vigil.Example.ORG]
  hosts: [dc01.corp.example, payroll, 198.51.100.10]
rate_limits:
  - {action: block_ip, per: action, limit: 5, window: 10m}
  - {action: "*", per: target, limit: 2, window: 1h}
blast_radius: {per_step: 50, per_incident: 60}
"""
)
BLOCK_IP = Action(name="block_ip", target_kind="ip", incident_id="inc-1")
BLOCK_DOMAIN = Action(name="block_domain", target_kind="domain", incident_id="inc-1")
BLOCK_URL = Action(name="block_url", target_kind="url", incident_id="inc-1")
ISOLATE = Action(name="isolate_host", target_kind="host", incident_id="inc-1")


def context(**changes: object) -> Context:
    return Context(**{"guardrails": RULES, "now": NOW, **changes})  # type: ignore[arg-type]


def test_an_external_address_may_be_blocked() -> None:
    verdict = check(BLOCK_IP, ["203.0.113.7", "2001:db8::1", "198.51.100.0/30"], context())
    assert verdict.allowed and verdict.guardrail is None


@pytest.mark.parametrize(
    "target",
    [
        "10.1.2.3",
        "192.168.1.1/32",
        "10.0.0.0/7",
        "0.0.0.0/0",
        "172.20.0.0/16",
        "::1",
        "fe80::1",
        "127.0.0.1",
        # The same IPv4 hosts written as IPv6, as dual-stack listeners log them, or within a wider IPv6 network.
        "::ffff:10.1.2.3",
        "::ffff:10.0.0.0/104",
        "::ffff:0:0/96",
        "::/0",
    ],
)
def test_own_networks_and_cidrs_overlapping_them_are_never_blocked(target: str) -> None:
    verdict = check(BLOCK_IP, ["203.0.113.7", target], context())
    assert (verdict.allowed, verdict.guardrail) == (False, "never_block")
    assert "overlaps the own network" in verdict.reason


def test_the_addresses_vigil_runs_on_are_never_blocked() -> None:
    own = [ipaddress.ip_network("203.0.113.50")]
    verdict = check(BLOCK_IP, ["203.0.113.0/24"], context(own_addresses=own))
    assert (verdict.guardrail, verdict.reason) == (
        "never_block",
        "203.0.113.0/24 overlaps Vigil's own address 203.0.113.50/32",
    )
    assert check(BLOCK_IP, ["203.0.114.1"], context(own_addresses=own)).allowed


@pytest.mark.parametrize(
    "domain",
    ["corp.example", "mail.corp.example", "A.B.Corp.Example.", "*.corp.example", "vigil.example.org", "example.org"],
)
def test_never_block_domains_their_subdomains_and_parents_are_refused(domain: str) -> None:
    verdict = check(BLOCK_DOMAIN, [domain], context())
    assert (verdict.allowed, verdict.guardrail) == (False, "never_block")


def test_a_lookalike_domain_is_not_protected() -> None:
    assert check(BLOCK_DOMAIN, ["evilcorp.example", "corp.example.evil.test"], context()).allowed


def test_a_url_on_a_protected_host_or_address_is_refused() -> None:
    assert check(BLOCK_URL, ["https://sso.corp.example/login"], context()).guardrail == "never_block"
    assert check(BLOCK_URL, ["http://10.1.2.3:8080/x"], context()).guardrail == "never_block"
    assert check(BLOCK_URL, ["http://evil.test/payload"], context()).allowed


@pytest.mark.parametrize(
    "host", ["dc01.corp.example", "payroll", "PAYROLL.corp.example", "198.51.100.10", "DC01", "dc01."]
)
def test_critical_assets_are_never_isolated(host: str) -> None:
    verdict = check(ISOLATE, [host], context())
    assert (verdict.allowed, verdict.guardrail) == (False, "never_block")
    assert check(ISOLATE, ["laptop-42"], context()).allowed


def test_a_critical_asset_address_is_never_blocked() -> None:
    assert check(BLOCK_IP, ["198.51.100.10"], context()).guardrail == "never_block"
    assert check(BLOCK_IP, ["::ffff:198.51.100.10"], context()).guardrail == "never_block"


def test_a_short_name_is_a_critical_asset_only_as_the_first_label_of_one() -> None:
    assert check(ISOLATE, ["dc01.other.example", "dc02", "corp"], context()).allowed


def test_a_target_that_is_not_one_is_refused() -> None:
    verdict = check(BLOCK_IP, ["not-an-ip"], context())
    assert (verdict.guardrail, verdict.reason) == ("invalid_target", "not an IP address or CIDR: 'not-an-ip'")


def test_at_most_so_many_targets_in_one_step() -> None:
    targets = [f"203.0.113.{i}" for i in range(51)]
    verdict = check(BLOCK_IP, targets, context())
    assert (verdict.guardrail, verdict.reason) == (
        "blast_radius_step",
        "51 targets in one step; at most 50 are allowed",
    )
    assert check(BLOCK_IP, targets[:5], context()).allowed


def test_an_item_of_a_step_is_checked_against_all_the_steps_targets() -> None:
    # A for_each step's items are sent one by one; its blast radius is every item it expands to.
    verdict = check(BLOCK_IP, ["203.0.113.1"], context(step_targets=51))
    assert (verdict.guardrail, verdict.reason) == (
        "blast_radius_step",
        "51 targets in one step; at most 50 are allowed",
    )
    assert check(BLOCK_IP, ["203.0.113.1"], context(step_targets=50)).allowed


def test_the_shipped_playbooks_blocks_are_rate_limited_by_the_shipped_guardrails() -> None:
    # The shipped playbooks block through the blocklist, whose action is `block`: that is what is limited.
    books = parse_playbooks(SHIPPED_PLAYBOOKS.read_text())
    assert "block" in {s.action for book in books for s in book.steps if s.connector == "blocklist"}
    block = Action(name="block", target_kind="ip", incident_id="inc-1")
    recent = [Execution("block", f"203.0.113.{i}", NOW - timedelta(minutes=1)) for i in range(100)]
    verdict = check(block, ["198.51.100.1"], Context(guardrails=load_guardrails(), now=NOW, recent=recent))
    assert (verdict.guardrail, verdict.reason) == (
        "rate_limit",
        "block: 100 executions in the last 10m, 1 more would pass the limit of 100",
    )


def test_at_most_so_many_targets_in_one_incident() -> None:
    verdict = check(BLOCK_IP, ["203.0.113.1", "203.0.113.2"], context(incident_targets=59))
    assert (verdict.allowed, verdict.guardrail) == (False, "blast_radius_incident")
    assert check(BLOCK_IP, ["203.0.113.1"], context(incident_targets=59)).allowed


def test_the_rate_limit_per_action_counts_its_window_only() -> None:
    recent = [Execution("block_ip", f"203.0.113.{i}", NOW - timedelta(minutes=i)) for i in range(4)]
    old = [Execution("block_ip", "203.0.113.200", NOW - timedelta(minutes=11))]
    others = [Execution("block_domain", "evil.test", NOW)]
    assert check(BLOCK_IP, ["198.51.100.1"], context(recent=recent + old + others)).allowed
    verdict = check(BLOCK_IP, ["198.51.100.1", "198.51.100.2"], context(recent=recent + old + others))
    assert (verdict.allowed, verdict.guardrail) == (False, "rate_limit")
    assert "4 executions in the last 10m" in verdict.reason


def test_the_rate_limit_per_target_applies_to_every_action() -> None:
    recent = [
        Execution("block_domain", "evil.test", NOW - timedelta(minutes=5)),
        Execution("block_domain", "evil.test", NOW - timedelta(minutes=50)),
    ]
    verdict = check(BLOCK_DOMAIN, ["other.test", "evil.test"], context(recent=recent))
    assert (verdict.guardrail, verdict.reason) == (
        "rate_limit",
        "block_domain on evil.test: 2 executions in the last 1h, the limit is 2",
    )
    assert check(BLOCK_DOMAIN, ["evil.test"], context(recent=recent[:1])).allowed
    # Spelt otherwise, it is the same target.
    assert check(BLOCK_DOMAIN, ["Evil.Test."], context(recent=recent)).guardrail == "rate_limit"
    assert (
        check(BLOCK_IP, ["203.0.113.7/32"], context(recent=[Execution("block_ip", "203.0.113.7", NOW)] * 2)).guardrail
        == "rate_limit"
    )


def test_the_usage_of_each_rate_limit_counts_as_a_dispatch_would() -> None:
    recent = [
        Execution("block_ip", "203.0.113.7", NOW - timedelta(minutes=1)),
        Execution("block_ip", "203.0.113.8", NOW - timedelta(minutes=20)),  # past block_ip's 10m window
        Execution("block_domain", "Evil.Test.", NOW - timedelta(minutes=5)),
        Execution("block_domain", "evil.test", NOW - timedelta(minutes=50)),
        Execution("block_domain", "evil.test", NOW - timedelta(hours=2)),  # past every window
    ]
    per_action, per_target = usage(RULES.rate_limits, recent, now=NOW)
    assert (per_action.limit.action, per_action.used, per_action.target) == ("block_ip", 1, None)
    # The busiest target, however it was spelt.
    assert (per_target.used, per_target.target) == (2, "evil.test")
    assert [u.used for u in usage(RULES.rate_limits, [], now=NOW)] == [0, 0]


def test_the_kill_switch_refuses_everything() -> None:
    verdict = check(BLOCK_IP, ["203.0.113.7"], context(paused=True))
    assert (verdict.allowed, verdict.guardrail) == (False, "kill_switch")


def test_the_shipped_guardrails_are_valid_and_protect_private_networks() -> None:
    shipped = load_guardrails()
    assert isinstance(shipped, Guardrails)
    verdict = check(BLOCK_IP, ["10.1.2.3"], Context(guardrails=shipped, now=NOW))
    assert verdict.guardrail == "never_block"
    assert check(BLOCK_IP, ["203.0.113.7"], Context(guardrails=shipped, now=NOW)).allowed


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("never_block: [", "not valid YAML"),
        ("blast_radius: {per_step: 1, per_incident: 1}", "never_block: Field required"),
        (
            "never_block: {networks: [10.0.0.0/33]}\nblast_radius: {per_step: 1, per_incident: 1}",
            "never_block.networks.0",
        ),
        (
            "never_block: {networks: [], domains: ['bad domain']}\nblast_radius: {per_step: 1, per_incident: 1}",
            "not a valid domain",
        ),
        (
            "never_block: {networks: []}\nrate_limits: [{action: x, per: action, limit: 1, window: 5 minutes}]\n"
            "blast_radius: {per_step: 1, per_incident: 1}",
            "is not a number followed by",
        ),
        ("never_block: {networks: []}\nblast_radius: {per_step: 0, per_incident: 1}", "blast_radius.per_step"),
        ("never_block: {networks: []}\nblast_radius: {per_step: 1, per_incident: 1}\nextra: 1", "extra"),
    ],
)
def test_a_broken_file_is_refused_with_the_reason(document: str, reason: str) -> None:
    with pytest.raises(GuardrailsError, match=reason):
        parse_guardrails(document)


def test_a_broken_file_refuses_start_up(tmp_path: Path) -> None:
    from services.responder.service import spec
    from shared.settings import VigilSettings

    broken = tmp_path / "guardrails.yaml"
    broken.write_text("never_block: {networks: [not-a-network]}\nblast_radius: {per_step: 1, per_incident: 1}\n")
    with pytest.raises(GuardrailsError, match=r"never_block\.networks\.0"):
        spec(VigilSettings(responder_guardrails=broken))


def test_the_addresses_vigil_runs_on_are_found_and_never_the_unspecified_one() -> None:
    from services.responder.service import own_addresses
    from shared.settings import VigilSettings

    assert ipaddress.ip_network("::1") in own_addresses(VigilSettings(http_host="::1"))
    everywhere = own_addresses(VigilSettings(http_host="0.0.0.0"))
    assert all(not n.network_address.is_unspecified for n in everywhere)
