"""Check that every package's current version has a heading in its CHANGELOG.md."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path

from monorepo import PACKAGES, ROOT, distribution_name, package_dir, package_version


def missing_entries(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> list[str]:
    """Messages for packages whose version has no ``## <version>`` heading in CHANGELOG.md."""
    problems = []
    for folder in packages:
        name, version = distribution_name(folder, root), package_version(folder, root)
        changelog = package_dir(folder, root) / "CHANGELOG.md"
        if not changelog.is_file():
            problems.append(f"{name}: {changelog} is missing")
            continue
        heading = re.compile(rf"^##\s+\[?{re.escape(version)}\]?(\s|$)", re.MULTILINE)
        if not heading.search(changelog.read_text()):
            problems.append(f"{name} {version}: no '## {version}' heading in {changelog}")
    return problems


if __name__ == "__main__":
    problems = missing_entries()
    for p in problems:
        print(p, file=sys.stderr)
    print(f"checked changelogs: {len(problems)} problem(s)")
    sys.exit(1 if problems else 0)
