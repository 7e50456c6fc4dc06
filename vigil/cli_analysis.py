"""Impact, root cause and ATT&CK for operators: how `vigil incidents show` prints them, and `vigil attack`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from vigil.markup import escape

attack_app = typer.Typer(help="MITRE ATT&CK as Vigil ships it, and what an alert maps to.", no_args_is_help=True)
console = Console(soft_wrap=True)  # one line per id or technique, whatever the terminal width
AttackJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

LEVEL_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "green"}
HYPOTHESES = (
    ("stage", "stage"),
    ("patient_zero", "patient zero"),
    ("entry_vector", "entry"),
    ("first_alert", "first alert"),
)


def _listed(names: list[str], limit: int) -> str:
    shown = ", ".join(names[:limit])
    return escape(shown + (f" and {len(names) - limit} more" if len(names) > limit else ""))


def print_impact(console: Console, impact: dict[str, Any]) -> None:
    """The affected systems and how critical, what they serve and hold, and what the inventory lacks."""
    systems = impact.get("systems") or []
    radius = impact.get("blast_radius")
    radius = len(systems) if radius is None else radius  # an analysis from before the count was carried
    counts = sorted((int(level), n) for level, n in (impact.get("by_criticality") or {}).items() if n)
    weight = ", ".join(f"{n} at criticality {level}" for level, n in counts)
    said = f"{radius} system(s) affected" + (f" ({weight})" if weight else "")
    if not radius:
        said = "no system the inventory lists is affected"
    console.print(f"[b]impact[/b] {said}" + (f": {_listed(systems, 10)}" if systems else ""))
    weighed = [
        f"crown jewels: {_listed(impact['crown_jewels'], 5)}" if impact.get("crown_jewels") else "",
        f"privileged accounts: {_listed(impact['privileged_users'], 5)}" if impact.get("privileged_users") else "",
        f"services: {_listed(impact['business_services'], 5)}" if impact.get("business_services") else "",
        f"data at risk: {escape(impact['data_at_risk'])}" if impact.get("data_at_risk") else "",
    ]
    if said_weight := "; ".join(p for p in weighed if p):
        console.print(f"  {said_weight}")
    unknown = [
        f"systems {_listed(impact['unknown_systems'], 5)}" if impact.get("unknown_systems") else "",
        f"accounts {_listed(impact['unknown_users'], 5)}" if impact.get("unknown_users") else "",
    ]
    if said_unknown := "; ".join(p for p in unknown if p):
        console.print(f"  unknown to the inventory: {said_unknown}")


def print_threat_analysis(console: Console, analysis: dict[str, Any]) -> None:
    """Risk with every factor, the root-cause hypotheses, the threat profile, ATT&CK and alike incidents."""
    if risk := analysis.get("risk"):
        said = escape(f"{risk['score']}/100 {risk['level']}")
        style = LEVEL_STYLE.get(risk["level"])
        console.print(f"[b]risk[/b] [{style}]{said}[/]" if style else f"[b]risk[/b] {said}")
        for factor in risk["factors"]:
            console.print(
                f"  {factor['points']:>3}/{factor['max_points']:<3} {escape(factor['factor'].ljust(17))} "
                f"{escape(factor['reason'])}"
            )
    if cause := analysis.get("root_cause"):
        for key, label in HYPOTHESES:
            if hypothesis := cause.get(key):
                console.print(
                    f"[b]{label}[/b] {escape(hypothesis['statement'])} [dim]({hypothesis['confidence']}% sure)[/]"
                )
                for evidence in hypothesis["evidence"]:
                    console.print(f"    [dim]-[/] {escape(evidence)}")
    if threat := analysis.get("threat"):
        origin = f"[b]origin[/b] {escape(threat['origin'])}"
        if threat.get("origin_evidence"):
            origin += f": {escape('; '.join(threat['origin_evidence']))}"
        console.print(origin)
        for label, key in (("known bad", "known_bad"), ("actors", "actors"), ("malware", "malware"), ("tags", "tags")):
            if threat.get(key):
                console.print(f"  {label}: {escape(', '.join(threat[key]))}")
    if techniques := analysis.get("techniques"):
        version = analysis.get("attack_version")
        console.print(f"[b]ATT&CK[/b]{escape(f' {version}') if version else ''}")
        for technique in techniques[:20]:
            tactics = escape(", ".join(technique["tactics"]))
            console.print(
                f"  {escape(technique['id'].ljust(10))} {escape(technique['name'])} [dim]({tactics}; "
                f"{technique['alerts']} alert(s); {escape(', '.join(technique['mapped_by']))})[/]"
            )
        if len(techniques) > 20:
            console.print(f"  … and {len(techniques) - 20} more")
    if path := analysis.get("attack_path"):
        hops = analysis.get("attack_path_hops") or len(path)
        console.print(f"[b]attack path[/b] [dim]({len(path)} of {hops} hop(s), the earliest first)[/]")
        for hop in path[:20]:
            lateral = " [red]lateral[/]" if hop.get("lateral") else ""
            techniques = f" [dim]{escape(', '.join(hop['techniques']))}[/]" if hop.get("techniques") else ""
            console.print(
                f"  {escape(hop['first_seen'][:19])} {escape(hop['source'])} -> {escape(hop['target'])}"
                f"{lateral} [dim]({hop['alerts']} alert(s))[/]{techniques}"
            )
    for alike in analysis.get("similar", []):
        console.print(
            f"[b]alike[/b] {escape(alike['incident_id'][:8])} {escape(alike['title'])} [dim](score {alike['score']}: "
            f"{escape(alike['reason'])})[/]"
        )


@attack_app.command("show")
def attack_show(attack_id: Annotated[str, typer.Argument(help="T1059.001, TA0006, G0007 or S0154.")]) -> None:
    """What an ATT&CK id names in the dataset Vigil ships (a revoked id: what replaced it)."""
    from services.analyzer import attack

    dataset = attack.load_dataset()
    wanted = attack_id.strip().upper()
    if (tactic := dataset.tactics.get(wanted)) is not None:
        console.print(escape(f"{tactic.id} {tactic.name}: tactic, stage {tactic.stage} of {len(dataset.tactics)}"))
        return
    if (technique := dataset.technique(wanted)) is not None:
        moved = f" (revoked {wanted}, replaced by {technique.id})" if technique.id != wanted else ""
        tactics = ", ".join(f"{t} {dataset.tactics[t].name}" for t in technique.tactics if t in dataset.tactics)
        deprecated = " [deprecated]" if technique.deprecated else ""  # shown: escaped with the rest
        console.print(escape(f"{attack.technique_label(technique.id, dataset)}{deprecated}{moved}: {tactics}"))
        return
    named = next((n for n in dataset.names.values() if n.id == wanted), None)
    if named is None:
        console.print(f"[red]error:[/red] {escape(attack_id)} is not in ATT&CK Enterprise {dataset.version}")
        raise typer.Exit(1)
    console.print(escape(f"{named.id} {named.name}: {named.kind}"))


@attack_app.command("map")
def attack_map(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="One tool record (JSON), as it is sent.")],
    format_name: Annotated[str | None, typer.Option("--format", help="The record's format; else recognised.")] = None,
    as_json: AttackJson = False,
) -> None:
    """The techniques and tactics Vigil finds in a tool's record, and where each came from."""
    from services.analyzer import attack
    from services.detector.adapters import Rejected, parse_record
    from services.detector.domain import summarise

    try:
        parsed = parse_record(file.read_bytes(), format_name=format_name)
    except Rejected as exc:
        console.print(f"[red]error:[/red] {escape(exc.reason)}")
        raise typer.Exit(1) from exc
    dataset, rules = attack.load_dataset(), attack.load_rules()
    found: list[dict[str, Any]] = []
    for alert in parsed.alerts:
        mapped = attack.map_alert(summarise(alert), dataset, rules)
        found.append(
            {
                "alert": alert.title,
                "format": parsed.format,
                "techniques": {attack.technique_label(t, dataset): how for t, how in mapped.techniques.items()},
                "tactics": {f"{t} {dataset.tactics[t].name}": how for t, how in mapped.tactics.items()},
            }
        )
    if as_json:
        print(json.dumps(found, indent=2))
        return
    for item in found:
        console.print(f"[b]{escape(item['alert'])}[/b] ({escape(item['format'])})")
        for label, how in [*item["techniques"].items(), *item["tactics"].items()]:
            console.print(f"  {escape(label)} [dim]({escape(how)})[/]")
        if not item["techniques"] and not item["tactics"]:
            console.print("  no ATT&CK technique or tactic")
