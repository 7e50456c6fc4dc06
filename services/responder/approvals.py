"""Approval policy as data: whether a step runs by itself, waits for people, or may never run.

The policy is a list of rules read from ``approvals.yaml``; the first rule whose conditions all hold
decides, by the incident's severity, the step's action risk, its response type, the affected
assets' tags and the step's blast radius (how many targets its playbook step expands to). A rule
that waits for approval says for how long, and what happens when nobody answers: SEV1 containment
may proceed after five minutes, a low-severity step is denied. A playbook step marked
``approval: required`` never runs without at least one approval, whatever the rule says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

from services.responder.playbook import Risk, duration_seconds
from shared.events import Severity
from shared.yamlfile import YamlFileError, validate_yaml

DEFAULT_APPROVALS = Path(__file__).with_name("approvals.yaml")

Mode = Literal["auto", "approve", "forbid"]
OnTimeout = Literal["proceed", "deny"]


class ApprovalsError(YamlFileError):
    """A policy file that cannot be used; the message says why."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class When(_Model):
    """Conditions of a rule; an empty list matches anything, every non-empty one must hold."""

    severities: list[Severity] = Field(default_factory=list)
    risks: list[Risk] = Field(default_factory=list)
    responses: list[Literal["immediate", "tactical", "strategic", "recovery"]] = Field(default_factory=list)
    actions: list[str] = Field(default_factory=list)
    connectors: list[str] = Field(default_factory=list)
    asset_tags: list[str] = Field(default_factory=list, description="Any of these tags on an affected asset.")
    min_targets: int = Field(0, ge=0, description="The step expands to at least this many targets.")


class Rule(_Model):
    name: str = Field(min_length=1)
    when: When = Field(default_factory=When)
    mode: Mode
    approvals: PositiveInt = Field(1, description="Distinct people who must approve (mode approve).")
    roles: list[str] = Field(default_factory=list, description="Roles that may approve; empty: any operator.")
    timeout: str | None = Field(None, description="How long an approval request waits, e.g. 5m, 1h.")
    on_timeout: OnTimeout = "deny"

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, timeout: str | None) -> str | None:
        if timeout is not None:
            duration_seconds(timeout)
        return timeout


class Policy(_Model):
    rules: list[Rule] = Field(min_length=1)

    @field_validator("rules")
    @classmethod
    def _last_rule_matches_all(cls, rules: list[Rule]) -> list[Rule]:
        if rules and rules[-1].when != When():
            raise ValueError("the last rule must have no conditions, so that every step has a decision")
        return rules


def parse_policy(document: str, *, source: str = "approvals.yaml") -> Policy:
    """Validate the file's text; each problem says `source:line:column: where: why`."""
    return validate_yaml(document, Policy, source=source, raises=ApprovalsError)


def load_policy(path: Path = DEFAULT_APPROVALS) -> Policy:
    return parse_policy(path.read_text(), source=str(path))


# ---- the decision (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class StepFacts:
    """What the policy looks at for one step."""

    severity: Severity
    risk: Risk
    response: str
    action: str
    connector: str
    asset_tags: Sequence[str]
    targets: int
    required_by_playbook: bool


@dataclass(frozen=True)
class Decision:
    mode: Mode
    rule: str
    approvals: int = 0
    roles: tuple[str, ...] = ()
    timeout_s: int | None = None
    on_timeout: OnTimeout = "deny"

    @property
    def reason(self) -> str:
        if self.mode == "auto":
            return f"runs without approval (policy rule {self.rule})"
        if self.mode == "forbid":
            return f"forbidden by policy rule {self.rule}"
        who = " or ".join(self.roles) if self.roles else "any operator"
        wait = f"; after {self.timeout_s}s unanswered it will {self.on_timeout}" if self.timeout_s else ""
        return f"needs {self.approvals} approval(s) from {who} (policy rule {self.rule}){wait}"


def _holds(when: When, step: StepFacts) -> bool:
    return (
        (not when.severities or step.severity in when.severities)
        and (not when.risks or step.risk in when.risks)
        and (not when.responses or step.response in when.responses)
        and (not when.actions or step.action in when.actions)
        and (not when.connectors or step.connector in when.connectors)
        and (not when.asset_tags or bool(set(when.asset_tags) & set(step.asset_tags)))
        and step.targets >= when.min_targets
    )


def decide(policy: Policy, step: StepFacts) -> Decision:
    """The first rule that holds decides; a playbook's `approval: required` turns `auto` into one approval."""
    rule = next(r for r in policy.rules if _holds(r.when, step))  # the last rule holds for every step
    timeout_s = duration_seconds(rule.timeout) if rule.timeout else None
    if rule.mode == "forbid":
        return Decision("forbid", rule.name)
    if rule.mode == "auto" and not step.required_by_playbook:
        return Decision("auto", rule.name)
    if rule.mode == "auto":
        # The playbook asks for a person; the policy sets no terms, so one operator, no deadline.
        return Decision("approve", f"{rule.name}+playbook", approvals=1)
    return Decision(
        "approve",
        rule.name,
        approvals=rule.approvals,
        roles=tuple(rule.roles),
        timeout_s=timeout_s,
        # The playbook asks for a person: nobody answering is no approval, whatever the rule's default.
        on_timeout="deny" if step.required_by_playbook else rule.on_timeout,
    )
