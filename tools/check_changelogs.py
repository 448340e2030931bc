"""Check that every package's current version has a heading in its CHANGELOG.md."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def missing_entries(root: Path = ROOT) -> list[str]:
    """Messages for packages whose version has no ``## <version>`` heading in CHANGELOG.md."""
    problems = []
    for pyproject in sorted(root.glob("packages/*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        changelog = pyproject.parent / "CHANGELOG.md"
        if not changelog.is_file():
            problems.append(f"{project['name']}: {changelog} is missing")
            continue
        heading = re.compile(rf"^##\s+\[?{re.escape(project['version'])}\]?(\s|$)", re.MULTILINE)
        if not heading.search(changelog.read_text()):
            problems.append(
                f"{project['name']} {project['version']}: no '## {project['version']}' heading in {changelog}"
            )
    return problems


if __name__ == "__main__":
    problems = missing_entries()
    for p in problems:
        print(p, file=sys.stderr)
    print(f"checked changelogs: {len(problems)} problem(s)")
    sys.exit(1 if problems else 0)
