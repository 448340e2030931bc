"""The one list of the monorepo's packages, and how to read each one's name and version.

``noxfile.py``, the tools in this folder and the integration tests import it; a new package
is one line in :data:`PACKAGES`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: distribution folder under ``packages/`` -> import name, in dependency order (core first).
PACKAGES: dict[str, str] = {
    "common": "lab_common",
    "lavit": "lavit",
    "clkd": "clkd",
    "trg-kd": "trg_kd",
    "gp-maml": "gp_maml",
}

_VERSION = re.compile(r'^__version__\s*=\s*"([^"]+)"', re.MULTILINE)


def package_dir(folder: str, root: Path = ROOT) -> Path:
    """``packages/<folder>`` of the checkout at ``root``."""
    return root / "packages" / folder


def distribution_name(folder: str, root: Path = ROOT) -> str:
    """The ``[project] name`` of ``packages/<folder>/pyproject.toml``."""
    pyproject = package_dir(folder, root) / "pyproject.toml"
    return tomllib.loads(pyproject.read_text())["project"]["name"]


def package_version(folder: str, root: Path = ROOT) -> str:
    """The package's one version: ``__version__`` in its ``__init__.py`` (hatch reads it too)."""
    (init,) = (package_dir(folder, root) / "src").glob("*/__init__.py")
    match = _VERSION.search(init.read_text())
    if match is None:
        raise ValueError(f'{init} has no line __version__ = "X.Y.Z"')
    return match.group(1)
