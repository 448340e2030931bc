"""The four method packages are independent: none imports another; all may use lab_common."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
METHODS = {"lavit": "lavit", "clkd": "clkd", "trg-kd": "trg_kd", "gp-maml": "gp_maml"}


def _imported_top_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("folder", list(METHODS))
def test_no_method_package_imports_another(folder):
    others = set(METHODS.values()) - {METHODS[folder]}
    files = list((ROOT / "packages" / folder).rglob("*.py"))
    assert files
    offenders = {
        str(f.relative_to(ROOT)): sorted(_imported_top_modules(f) & others)
        for f in files
        if _imported_top_modules(f) & others
    }
    assert not offenders, f"method packages must not import each other: {offenders}"


@pytest.mark.parametrize("folder", list(METHODS))
def test_declared_dependencies_exclude_siblings(folder):
    project = tomllib.loads((ROOT / "packages" / folder / "pyproject.toml").read_text())["project"]
    deps = [d.split(">")[0].split("<")[0].split("=")[0].strip() for d in project["dependencies"]]
    assert "lab-common" in deps
    assert "torch" in deps
    assert not set(deps) & ({"lavit", "clkd", "trg-kd", "gp-maml"} - {folder})


def test_import_detector_sees_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import clkd.losses\nfrom trg_kd import TRGLoss\nfrom . import local\n")
    assert _imported_top_modules(f) == {"clkd", "trg_kd"}
