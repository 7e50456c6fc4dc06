"""MITRE ATT&CK for the analyzer: the shipped Enterprise dataset, and each alert's techniques and tactics.

Where an alert's techniques come from, in order:

1. the tool's own fields, which the detector's adapters already turn into ids on the alert
   (Wazuh ``rule.mitre``, Falco tags, Suricata ``mitre_*`` metadata, OCSF ``attacks``, ECS
   ``threat.*``, Hayabusa/Sigma tags, Defender, CrowdStrike, SentinelOne, GuardDuty attack sequences);
2. ATT&CK tags an alert carries as text (Sigma's ``attack.t1059`` and ``attack.execution``,
   Falco's ``mitre_execution``, a bare ``T1059``), for producers that send them as tags;
3. Vigil's mapping rules (``attack.yaml``), for tools whose records name no technique (GuardDuty
   finding types, Zeek notices, Suricata categories, Wazuh groups, Falco rules without tags).

Ids and names come from ``attack-enterprise.json`` (see ``attack_dataset``): a revoked id becomes
the one that replaced it, and an id the dataset does not know is kept and said to be unknown.
Pure: no I/O but reading the two shipped files once.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.events import AlertSummary
from shared.yamlfile import YamlFileError, validate_yaml

DATASET = Path(__file__).with_name("attack-enterprise.json")
RULES = Path(__file__).with_name("attack.yaml")
_ID = re.compile(r"^(?:T\d{4}(?:\.\d{3})?|TA\d{4})$")
_IDS_IN_TEXT = re.compile(r"(?<![A-Za-z0-9])(T[Aa]?\d{4}(?:\.\d{3})?)(?![0-9])", re.IGNORECASE)
# Where each format's adapter found the ids it put on the alert: said in the evidence.
FORMAT_FIELDS = {
    "wazuh": "rule.mitre",
    "falco": "tags",
    "suricata": "metadata mitre_*",
    "ocsf": "attacks",
    "elastic": "threat.*",
    "hayabusa": "MitreTags/MitreTactics",
    "guardduty": "finding type and description",
    "defender": "mitreTechniques/category",
    "crowdstrike": "Tactic/Technique",
    "sentinelone": "indicators",
}


# ---- the dataset ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tactic:
    id: str
    name: str
    shortname: str
    stage: int  # its place in the Enterprise matrix, 1 (Reconnaissance) to 14 (Impact)


@dataclass(frozen=True)
class Technique:
    id: str
    name: str
    tactics: tuple[str, ...]
    deprecated: bool = False

    @property
    def parent(self) -> str | None:
        """A sub-technique's technique (T1059 for T1059.001)."""
        return self.id.split(".", 1)[0] if "." in self.id else None


@dataclass(frozen=True)
class Named:
    """A group (actor) or a piece of software (malware, tool) the dataset names."""

    id: str
    name: str
    kind: str  # "actor", "malware" or "tool"


@dataclass(frozen=True)
class Dataset:
    version: str
    attribution: str
    tactics: Mapping[str, Tactic]
    techniques: Mapping[str, Technique]
    revoked: Mapping[str, str]
    names: Mapping[str, Named] = field(default_factory=dict)  # lower-cased name or alias -> what it names

    def technique(self, technique_id: str) -> Technique | None:
        """The technique an id names, following revoked ids to their replacement."""
        found = technique_id.upper()
        for _ in range(5):  # a revoked id may point at one revoked later
            if found not in self.revoked:
                break
            found = self.revoked[found]
        return self.techniques.get(found)

    def tactic_by_name(self, name: str) -> Tactic | None:
        """A tactic by any usual spelling of its name: "Defense Evasion", "defense_evasion", "DefenseEvasion"."""
        key = re.sub(r"[^a-z]", "", name.lower())
        return next((t for t in self.tactics.values() if re.sub(r"[^a-z]", "", t.shortname) == key), None)

    def named(self, tag: str) -> Named | None:
        """The actor or software a feed's tag names (APT28, Fancy Bear, Cobalt Strike), if ATT&CK knows it."""
        return self.names.get(tag.strip().lower())


class DatasetError(ValueError):
    """The shipped dataset cannot be read: a packaging bug."""


def parse_dataset(data: Mapping[str, Any]) -> Dataset:
    try:
        tactics = {
            row[0]: Tactic(id=row[0], name=row[1], shortname=row[2], stage=n)
            for n, row in enumerate(data["tactics"], 1)
        }
        techniques = {
            tid: Technique(tid, entry["name"], tuple(entry["tactics"]), bool(entry.get("deprecated")))
            for tid, entry in data["techniques"].items()
        }
        names: dict[str, Named] = {}
        for gid, (name, aliases) in data.get("groups", {}).items():
            for alias in (name, *aliases):
                names.setdefault(alias.lower(), Named(gid, name, "actor"))
        for sid, (name, kind, aliases) in data.get("software", {}).items():
            for alias in (name, *aliases):
                names.setdefault(alias.lower(), Named(sid, name, kind))
        return Dataset(
            version=str(data["version"]),
            attribution=str(data["attribution"]),
            tactics=tactics,
            techniques=techniques,
            revoked=dict(data.get("revoked", {})),
            names=names,
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise DatasetError(f"the ATT&CK dataset is not in the expected shape: {exc!r}") from exc


@functools.cache
def load_dataset(path: Path = DATASET) -> Dataset:
    """The shipped dataset, read once per process."""
    return parse_dataset(json.loads(path.read_text(encoding="utf-8")))


# ---- mapping rules -------------------------------------------------------------------------------


class Condition(BaseModel):
    """What an alert must show; each given field is a case-insensitive glob (`*SSHBruteForce*`), all must match."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str | None = None
    category: str | None = None
    rule: str | None = None
    title: str | None = None
    tag: str | None = Field(None, description="Any one of the alert's tags.")

    @model_validator(mode="after")
    def _something(self) -> Condition:
        if not any((self.format, self.category, self.rule, self.title, self.tag)):
            raise ValueError("a rule must test at least one of format, category, rule, title, tag")
        return self


class MappingRule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,80}$")
    when: Condition
    techniques: list[str] = Field(min_length=1, description="ATT&CK technique or tactic ids.")

    @field_validator("techniques")
    @classmethod
    def _ids(cls, ids: list[str]) -> list[str]:
        bad = [i for i in ids if not _ID.match(i.upper())]
        if bad:
            raise ValueError(f"not ATT&CK ids: {', '.join(bad)}")
        return [i.upper() for i in ids]

    def matches(self, alert: AlertSummary) -> bool:
        c = self.when
        return (
            _glob(c.format, alert.format)
            and _glob(c.category, alert.category)
            and _glob(c.rule, alert.rule)
            and _glob(c.title, alert.title)
            and (c.tag is None or any(_glob(c.tag, t) for t in alert.tags))
        )


class RulesFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: list[MappingRule] = Field(default_factory=list)


class RulesError(YamlFileError):
    """A mapping rules file that cannot be used; each problem says where and why."""


def _glob(pattern: str | None, value: str | None) -> bool:
    if pattern is None:
        return True
    return value is not None and fnmatch.fnmatchcase(value.lower(), pattern.lower())


def parse_rules(text: str, *, source: str, dataset: Dataset) -> list[MappingRule]:
    """Validate a rules file; every id must be one the dataset knows (a typo would map nothing)."""
    parsed = validate_yaml(text, RulesFile, source=source, raises=RulesError)
    problems = []
    for rule in parsed.rules:
        for tid in rule.techniques:
            if tid.startswith("TA") and tid not in dataset.tactics:
                problems.append(f"rule {rule.name}: {tid} is no ATT&CK Enterprise tactic")
            elif not tid.startswith("TA") and dataset.technique(tid) is None:
                problems.append(f"rule {rule.name}: {tid} is no ATT&CK {dataset.version} technique")
    if problems:
        raise RulesError([f"{source}: {p}" for p in problems])
    return list(parsed.rules)


@functools.cache
def load_rules(path: Path = RULES) -> tuple[MappingRule, ...]:
    return tuple(parse_rules(path.read_text(encoding="utf-8"), source=str(path), dataset=load_dataset()))


# ---- mapping an alert ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mapped:
    """One alert's ATT&CK: technique and tactic ids, each with how it was found."""

    techniques: dict[str, str]  # id (as the dataset has it, or as given when unknown) -> how
    tactics: dict[str, str]  # tactic id -> how (the tool named it, or "of technique T…")
    placed: dict[str, tuple[str, ...]]  # technique id -> the tactics it serves in this alert
    stated_tactics: frozenset[str]  # tactics the alert itself named


def ids_in_tags(tags: Iterable[str], dataset: Dataset) -> list[str]:
    """ATT&CK ids in tags as tools write them: `attack.t1059.001`, `attack.execution`, `mitre_execution`, `T1059`."""
    found: list[str] = []
    for tag in tags:
        lowered = tag.strip().lower()
        found.extend(m.upper() for m in _IDS_IN_TEXT.findall(lowered))
        for prefix in ("attack.", "mitre_", "mitre."):
            if lowered.startswith(prefix) and (tactic := dataset.tactic_by_name(lowered[len(prefix) :])) is not None:
                found.append(tactic.id)
    return found


def map_alert(alert: AlertSummary, dataset: Dataset, rules: Sequence[MappingRule]) -> Mapped:
    """The techniques and tactics of one alert, each with where it came from."""
    given: dict[str, str] = {}
    field_name = FORMAT_FIELDS.get(alert.format, "fields")
    for tid in alert.techniques:
        given.setdefault(tid.upper(), f"{alert.format} {field_name}")
    for tid in ids_in_tags(alert.tags, dataset):
        given.setdefault(tid, "tag")
    if not any(not t.startswith("TA") for t in given):
        # Rules fill in what the tool did not say; they never override the tool's own mapping. A
        # rule for the alert's format knows it better than one that reads any tool's words.
        matching = [rule for rule in rules if rule.matches(alert)]
        for rule in [r for r in matching if r.when.format] or matching:
            for tid in rule.techniques:
                given.setdefault(tid, f"rule {rule.name}")
    techniques: dict[str, str] = {}
    stated: dict[str, str] = {}
    for tid, how in given.items():
        if tid.startswith("TA"):
            if tid in dataset.tactics:
                stated.setdefault(tid, how)
            continue
        technique = dataset.technique(tid)
        techniques.setdefault(technique.id if technique else tid, how)
    tactics = dict(stated)
    placed: dict[str, tuple[str, ...]] = {}
    for tid in techniques:
        technique = dataset.technique(tid)
        if technique is None:
            continue
        # A technique serving several tactics (T1078) is placed where the tool said, when it said.
        said = tuple(t for t in technique.tactics if t in stated)
        placed[tid] = said or technique.tactics
        for tactic in placed[tid]:
            tactics.setdefault(tactic, f"of technique {tid}")
    return Mapped(techniques=techniques, tactics=tactics, placed=placed, stated_tactics=frozenset(stated))


def technique_label(technique_id: str, dataset: Dataset) -> str:
    """`T1059.001 Command and Scripting Interpreter: PowerShell`, as ATT&CK names a sub-technique."""
    technique = dataset.technique(technique_id)
    if technique is None:
        return f"{technique_id} (not in ATT&CK {dataset.version})"
    parent = dataset.techniques.get(technique.parent) if technique.parent else None
    return f"{technique.id} {parent.name}: {technique.name}" if parent else f"{technique.id} {technique.name}"
