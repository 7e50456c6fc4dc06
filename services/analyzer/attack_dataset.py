"""Make Vigil's compact copy of the MITRE ATT&CK Enterprise dataset from the official STIX data.

The analyzer names techniques, tactics, groups and software from ``attack-enterprise.json`` beside
this file and never fetches anything at run time. To move to a new ATT&CK release, point this at
the release's STIX data and commit the file it writes::

    python -m services.analyzer.attack_dataset SOURCE --version 18.1 --origin "mitre/cti <commit>"

SOURCE is either a STIX bundle (``enterprise-attack-18.1.json`` of mitre-attack/attack-stix-data)
or a folder of bundles (``enterprise-attack/`` of mitre/cti, one object per file). Kept: each
technique's id, name, tactics and whether it is deprecated (a sub-technique's parent is its id
before the dot); the tactics in the matrix's kill-chain order; revoked ids and what replaced them;
groups and software with their aliases (so that feed tags name actors and malware). Dropped: every
description, reference and relationship but ``revoked-by``, which keeps the file small.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

DEFAULT_OUTPUT = Path(__file__).with_name("attack-enterprise.json")
ATTRIBUTION = (
    "© 2025 The MITRE Corporation. This work is reproduced and distributed with the permission of "
    "The MITRE Corporation."
)
LICENCE = (
    "The MITRE Corporation (MITRE) hereby grants you a non-exclusive, royalty-free license to use ATT&CK® "
    "for research, development, and commercial purposes. Any copy you make for such purposes is authorized "
    "provided that you reproduce MITRE's copyright designation and this license in any such copy."
)
TERMS = "https://attack.mitre.org/resources/legal-and-branding/terms-of-use/"


class DatasetError(ValueError):
    """The source is not ATT&CK Enterprise STIX data this script understands."""


def stix_objects(source: Path) -> Iterator[Mapping[str, Any]]:
    """Every STIX object of a bundle file, or of every bundle under a folder."""
    paths = sorted(source.rglob("*.json")) if source.is_dir() else [source]
    for path in paths:
        try:
            bundle = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{path}: {exc}") from exc
        if isinstance(bundle, dict) and bundle.get("type") == "bundle":
            yield from (o for o in bundle.get("objects", ()) if isinstance(o, dict))


def attack_id(stix: Mapping[str, Any]) -> str | None:
    """The object's ATT&CK id (T1059.001, TA0002, G0007, S0154), from its mitre-attack reference."""
    for reference in stix.get("external_references", ()):
        if reference.get("source_name") == "mitre-attack" and reference.get("external_id"):
            return str(reference["external_id"])
    return None


def _live(stix: Mapping[str, Any]) -> bool:
    return not stix.get("revoked") and not stix.get("x_mitre_deprecated")


def compact(objects: Iterable[Mapping[str, Any]], *, version: str | None, origin: str) -> dict[str, Any]:
    """The compact dataset of the Enterprise objects among ``objects``."""
    by_ref: dict[str, Mapping[str, Any]] = {}
    revoked_by: dict[str, str] = {}
    matrices = []
    collection_version = None
    for stix in objects:
        kind = stix.get("type")
        if kind == "relationship" and stix.get("relationship_type") == "revoked-by":
            revoked_by[str(stix["source_ref"])] = str(stix["target_ref"])
        elif kind == "x-mitre-matrix" and attack_id(stix) == "enterprise-attack":
            matrices.append(stix)
        elif kind == "x-mitre-collection":
            collection_version = stix.get("x_mitre_version")
        elif "enterprise-attack" in stix.get("x_mitre_domains", ("enterprise-attack",)):
            by_ref[str(stix["id"])] = stix
    version = version or collection_version
    if not version:
        raise DatasetError("the source names no ATT&CK version (no x-mitre-collection): give --version")
    if len(matrices) != 1:
        raise DatasetError(f"expected the Enterprise matrix once, found it {len(matrices)} times")
    tactics = [by_ref[ref] for ref in matrices[0]["tactic_refs"]]
    tactic_ids = {t["x_mitre_shortname"]: attack_id(t) for t in tactics}
    techniques: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[Any]] = {}
    software: dict[str, list[Any]] = {}
    revoked: dict[str, str] = {}
    for ref, stix in by_ref.items():
        found = attack_id(stix)
        if found is None:
            continue
        if stix.get("revoked"):
            replacement = by_ref.get(revoked_by.get(ref, ""))
            if replacement is not None and (new := attack_id(replacement)) is not None and new != found:
                revoked[found] = new
            continue
        if stix["type"] == "attack-pattern":
            phases = [
                tactic_ids[p["phase_name"]]
                for p in stix.get("kill_chain_phases", ())
                if p.get("kill_chain_name") == "mitre-attack" and p.get("phase_name") in tactic_ids
            ]
            entry: dict[str, Any] = {
                "name": stix["name"],
                "tactics": sorted(set(phases), key=list(tactic_ids.values()).index),
            }
            if stix.get("x_mitre_deprecated"):
                entry["deprecated"] = True
            techniques[found] = entry
        elif stix["type"] == "intrusion-set" and _live(stix):
            groups[found] = [stix["name"], sorted(set(stix.get("aliases", ())) - {stix["name"]})]
        elif stix["type"] in ("malware", "tool") and _live(stix):
            aliases = set(stix.get("x_mitre_aliases", ())) - {stix["name"]}
            software[found] = [stix["name"], stix["type"], sorted(aliases)]
    return {
        "dataset": "MITRE ATT&CK Enterprise",
        "version": str(version),
        "origin": origin,
        "attribution": ATTRIBUTION,
        "licence": LICENCE,
        "terms": TERMS,
        "generated_by": "python -m services.analyzer.attack_dataset",
        "tactics": [[attack_id(t), t["name"], t["x_mitre_shortname"]] for t in tactics],
        "techniques": dict(sorted(techniques.items())),
        "revoked": dict(sorted(revoked.items())),
        "groups": dict(sorted(groups.items())),
        "software": dict(sorted(software.items())),
    }


def dumps(dataset: Mapping[str, Any]) -> str:
    """JSON with one technique, group or program a line: small, and a new release reads as a short diff."""
    out = ["{"]
    items = list(dataset.items())
    for index, (key, value) in enumerate(items):
        comma = "," if index < len(items) - 1 else ""
        if isinstance(value, dict) and value:
            out.append(f"  {json.dumps(key)}: {{")
            rows = [f"    {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in value.items()]
            out.append(",\n".join(rows))
            out.append(f"  }}{comma}")
        elif isinstance(value, list) and value:
            out.append(f"  {json.dumps(key)}: [")
            out.append(",\n".join(f"    {json.dumps(v, ensure_ascii=False)}" for v in value))
            out.append(f"  ]{comma}")
        else:
            out.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}")
    out.append("}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("source", type=Path, help="a STIX bundle, or a folder of bundles (mitre/cti layout)")
    parser.add_argument("--version", help="the ATT&CK release, when the source does not say it (18.1)")
    parser.add_argument("--origin", required=True, help="where the source came from (repository and commit)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    try:
        dataset = compact(stix_objects(args.source), version=args.version, origin=args.origin)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.output.write_text(dumps(dataset), encoding="utf-8")
    print(
        f"{args.output}: ATT&CK {dataset['version']}, {len(dataset['tactics'])} tactics, "
        f"{len(dataset['techniques'])} techniques, {len(dataset['revoked'])} revoked ids, "
        f"{len(dataset['groups'])} groups, {len(dataset['software'])} software"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
