"""pip-audit of requirements.lock: fail on a known vulnerability that is not explained in audit-ignore.txt.

pip-audit says "No known vulnerabilities found" and exits 0 even when it audited nothing (every
package skipped because the vulnerability service could not be reached); this reads its JSON report
and says how many packages were really audited, so that a skipped audit never reads as a clean one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCK = HERE.parent / "requirements.lock"
# One advisory a line: `ID  why it does not apply or what stands in for the fix`; `#` starts a comment.
IGNORE = HERE / "audit-ignore.txt"


def ignored() -> dict[str, str]:
    reasons: dict[str, str] = {}
    for line in IGNORE.read_text().splitlines() if IGNORE.exists() else []:
        advisory, _, why = line.split("#", 1)[0].strip().partition(" ")
        if advisory:
            if not why.strip():
                sys.exit(f"{IGNORE.name}: {advisory} is ignored without a reason")
            reasons[advisory] = why.strip()
    return reasons


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "audit.json"
        command = [sys.executable, "-m", "pip_audit", "-r", str(LOCK), "--no-deps", "--disable-pip"]
        command += ["--progress-spinner", "off", "-f", "json", "-o", str(report)]
        # Its exit code says only "found something"; the report says what, and what was skipped.
        ran = subprocess.run(command, check=False, capture_output=True, text=True)
        if not report.exists():
            print(f"pip-audit: no report written\n{ran.stderr}", file=sys.stderr)
            return 1
        dependencies = json.loads(report.read_text())["dependencies"]
    skipped = [d for d in dependencies if d.get("skip_reason")]
    audited = len(dependencies) - len(skipped)
    reasons = ignored()
    found = [(d["name"], d["version"], v) for d in dependencies for v in d.get("vulns", [])]
    failing = []
    for name, version, vuln in found:
        ids = {vuln["id"], *vuln.get("aliases", [])}
        why = next((reasons[i] for i in sorted(ids) if i in reasons), None)
        fixed = ", ".join(vuln.get("fix_versions", [])) or "no fixed version yet"
        if why is None:
            failing.append(vuln["id"])
        print(f"{name}=={version} {vuln['id']} (fixed in {fixed}): {why or 'NOT HANDLED'}")
    if audited == 0:
        print(
            f"pip-audit: NONE of the {len(dependencies)} pinned packages could be audited "
            f"({skipped[0]['skip_reason'] if skipped else 'nothing listed'}); the vulnerability service "
            "is out of reach from here, so this run says nothing about known vulnerabilities"
        )
        return 0
    if skipped:
        print(f"pip-audit: {len(skipped)} package(s) not audited: {', '.join(d['name'] for d in skipped)}")
    print(f"pip-audit: {audited} package(s) audited, {len(found)} known vulnerabilities, {len(failing)} not handled")
    return 1 if failing or skipped else 0


if __name__ == "__main__":
    sys.exit(main())
