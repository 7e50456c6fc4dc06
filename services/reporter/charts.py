"""Pure SVG charts for the reports: an incident's timeline, and response times against their targets.

Plain SVG text (no library, no script), every label escaped: the charts embed in HTML as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape

from services.reporter.measures import humanize

WIDTH = 760
MARGIN = 20
MILESTONE_COLOURS = {
    "first_alert": "#6b7280",
    "detected": "#d97706",
    "acknowledged": "#2563eb",
    "contained": "#7c3aed",
    "recovered": "#059669",
    "resolved": "#16a34a",
}


def _x(at: datetime, start: datetime, span_s: float) -> float:
    return MARGIN + (WIDTH - 2 * MARGIN) * ((at - start).total_seconds() / span_s if span_s else 0.0)


def timeline_svg(milestones: Mapping[str, datetime | None], events: Sequence[datetime]) -> str:
    """The incident on one time axis: a tick per timeline entry, a labelled marker per milestone reached."""
    reached = [(name, at) for name, at in milestones.items() if at is not None]
    moments = [at for _, at in reached] + list(events)
    if not moments:
        return _svg(60, ['<text x="20" y="35" class="label">no events yet</text>'])
    start, end = min(moments), max(moments)
    span = (end - start).total_seconds()
    height = 60 + 22 * len(reached)
    axis_y = 40
    parts = [
        f'<line x1="{MARGIN}" y1="{axis_y}" x2="{WIDTH - MARGIN}" y2="{axis_y}" stroke="#9ca3af" stroke-width="2"/>',
        f'<text x="{MARGIN}" y="{axis_y - 14}" class="label">{escape(f"{start:%Y-%m-%d %H:%M:%S} UTC")}</text>',
        f'<text x="{WIDTH - MARGIN}" y="{axis_y - 14}" class="label" text-anchor="end">'
        f"+{escape(humanize(span))}</text>",
    ]
    for at in events:
        x = _x(at, start, span)
        parts.append(f'<line x1="{x:.1f}" y1="{axis_y - 5}" x2="{x:.1f}" y2="{axis_y + 5}" stroke="#9ca3af"/>')
    for row, (name, at) in enumerate(sorted(reached, key=lambda m: m[1])):
        x = _x(at, start, span)
        y = axis_y + 22 * (row + 1)
        colour = MILESTONE_COLOURS.get(name, "#111827")
        label = f"{name.replace('_', ' ')} +{humanize((at - start).total_seconds())}"
        anchor = "end" if x > WIDTH / 2 else "start"
        dx = -8 if anchor == "end" else 8
        parts += [
            f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{y}" stroke="{colour}" stroke-dasharray="2,2"/>',
            f'<circle cx="{x:.1f}" cy="{y}" r="5" fill="{colour}"><title>{escape(f"{name} {at:%H:%M:%S}")}</title>'
            "</circle>",
            f'<text x="{x + dx:.1f}" y="{y + 4}" class="label" text-anchor="{anchor}">{escape(label)}</text>',
        ]
    return _svg(height, parts)


def bars_svg(rows: Sequence[tuple[str, float | None, float | None]], *, title: str) -> str:
    """Horizontal bars, one per (label, value in seconds, target in seconds); a bar over its target is red."""
    known = [max(v or 0, t or 0) for _, v, t in rows]
    top = max(known) if known and max(known) > 0 else 1.0
    height = 40 + 26 * len(rows)
    label_w = 190
    scale = (WIDTH - label_w - 2 * MARGIN - 70) / top
    parts = [f'<text x="{MARGIN}" y="20" class="title">{escape(title)}</text>']
    for row, (label, value, target) in enumerate(rows):
        y = 34 + 26 * row
        over = value is not None and target is not None and value > target
        colour = "#dc2626" if over else "#2563eb"
        parts.append(f'<text x="{MARGIN}" y="{y + 13}" class="label">{escape(label)}</text>')
        if value is not None:
            width = max(1.0, value * scale)
            parts += [
                f'<rect x="{label_w}" y="{y}" width="{width:.1f}" height="16" fill="{colour}"/>',
                f'<text x="{label_w + width + 6:.1f}" y="{y + 13}" class="label">{escape(humanize(value))}</text>',
            ]
        else:
            parts.append(f'<text x="{label_w}" y="{y + 13}" class="label">-</text>')
        if target is not None:
            x = label_w + target * scale
            parts.append(
                f'<line x1="{x:.1f}" y1="{y - 3}" x2="{x:.1f}" y2="{y + 19}" stroke="#111827" stroke-width="2">'
                f"<title>{escape('target ' + humanize(target))}</title></line>"
            )
    return _svg(height, parts)


def _svg(height: int, parts: Sequence[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img">'
        "<style>.label{font:12px sans-serif;fill:#111827}.title{font:bold 13px sans-serif;fill:#111827}</style>"
        + "".join(parts)
        + "</svg>"
    )
