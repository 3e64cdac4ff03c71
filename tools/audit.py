"""`make audit`: pip-audit of the installed, pinned dependencies of HaloTrack.

Fails (exit 1) when any installed package has a known vulnerability. pip-audit itself treats a package it could
not look up as clean; this wrapper says how many were actually audited, so a run where the vulnerability
service was out of reach (every package skipped) reads as "not audited", not as "clean". `--strict` makes that
case fail too, for a CI that must not land unaudited.
"""

from __future__ import annotations

import json
import subprocess
import sys


def main(argv: list[str]) -> int:
    strict = "--strict" in argv
    run = subprocess.run(
        [sys.executable, "-m", "pip_audit", "--local", "--skip-editable", "--progress-spinner", "off",
         "--format", "json", "--timeout", "10"],
        capture_output=True, text=True, check=False)
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        print(f"audit: pip-audit failed (exit {run.returncode}):\n{run.stderr.strip()[-2000:]}", file=sys.stderr)
        return 2 if strict else 0
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if "skip_reason" in d]
    found = [(d["name"], d["version"], v) for d in deps for v in d.get("vulns", [])]
    for name, version, vuln in found:
        fixes = ", ".join(vuln.get("fix_versions", [])) or "no fixed release"
        print(f"audit: {name} {version}: {vuln['id']} (fixed in {fixes})")
    audited = len(deps) - len(skipped)
    print(f"audit: {audited} of {len(deps)} packages audited, {len(found)} known vulnerabilities")
    if found:
        return 1
    if not audited:
        print("audit: NOT AUDITED: the vulnerability service (PyPI's JSON API) was not reachable from here",
              file=sys.stderr)
        return 2 if strict else 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
