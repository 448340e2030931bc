"""The house rules: which layer may import what (see the root README's Layout).

core ``lab_common`` -> ``lab_common.cli`` / ``lab_common.testing`` / ``lab_common.data`` ->
``lab_common.distill`` -> method packages -> demo and benchmarks. A layer imports only layers to
its left; the core stays under 1,000 lines; method packages (their ``src/`` and
``tests/``) never import each other; benchmark scripts that compare methods side by side (not
installed) sit on top with the demo.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from monorepo import PACKAGES, ROOT, distribution_name

METHODS = {folder: name for folder, name in PACKAGES.items() if folder != "common"}
COMMON = ROOT / "packages" / "common" / "src" / "lab_common"
#: Third-party imports core ``lab_common`` may not make at all, or only inside a function.
CORE_NEVER = {"timm", "torchvision"}
CORE_ONLY_LAZY = {"matplotlib", "PIL", "tqdm"}
#: The layers above the core inside lab_common (subpackages, and the pytest helpers' module).
UPPER = ("cli", "data", "distill", "runs", "testing.py")
CORE_MAX_LINES = 1000


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(dotted module, at module level)`` for every import in ``path``.

    Relative imports are resolved for files under a ``src/`` folder (``from ..cli import x``
    in ``lab_common/distill/engine.py`` is ``lab_common.cli``) and skipped elsewhere.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    package = _package_of(path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, id(node) in top_level))
        elif isinstance(node, ast.ImportFrom) and package is not None:
            base = ".".join(package[: len(package) - node.level + 1])
            if node.module:  # from ..cli import x -> lab_common.cli
                found.append((f"{base}.{node.module}", id(node) in top_level))
            else:  # from . import cli -> lab_common.cli (each name may be a module)
                found += [(f"{base}.{a.name}", id(node) in top_level) for a in node.names]
    return found


def _package_of(path: Path) -> list[str] | None:
    """The package ``path`` belongs to, as name parts, when it sits under a ``src/`` folder."""
    parts = path.resolve().parts
    if "src" not in parts:
        return None
    return list(parts[len(parts) - parts[::-1].index("src") : -1])


def _py_files(folder: Path) -> list[Path]:
    files = sorted(folder.rglob("*.py"))
    assert files, f"no Python files under {folder}"
    return files


def _core_files() -> list[Path]:
    return [f for f in _py_files(COMMON) if f.relative_to(COMMON).parts[0] not in UPPER]


def test_core_stays_small():
    lines = sum(len(f.read_text().splitlines()) for f in _core_files())
    assert lines < CORE_MAX_LINES, f"the lab_common core has grown to {lines} lines"


def test_core_imports_no_vision_stack_and_no_upper_layer():
    offenders = []
    for f in _core_files():
        for module, top in _imports(f):
            root = module.split(".")[0]
            upper = module.startswith(tuple(f"lab_common.{u.removesuffix('.py')}" for u in UPPER))
            if root in CORE_NEVER or upper:
                offenders.append(f"{f.relative_to(ROOT)}: {module}")
            elif root in CORE_ONLY_LAZY and top:
                offenders.append(f"{f.relative_to(ROOT)}: {module} at module level")
            elif root in METHODS.values():
                offenders.append(f"{f.relative_to(ROOT)}: {module}")
    assert not offenders, offenders


@pytest.mark.parametrize("layer", ["cli", "runs", "testing.py"])
def test_cli_runs_and_testing_layers_need_only_the_core(layer):
    files = [COMMON / layer] if layer.endswith(".py") else _py_files(COMMON / layer)
    offenders = [
        f"{f.relative_to(ROOT)}: {module}"
        for f in files
        for module, _ in _imports(f)
        if module.split(".")[0] in CORE_NEVER | set(METHODS.values())
        or module.startswith(("lab_common.data", "lab_common.distill"))
    ]
    assert not offenders, offenders


def test_data_layer_does_not_import_distill_or_methods():
    offenders = [
        f"{f.relative_to(ROOT)}: {module}"
        for f in _py_files(COMMON / "data")
        for module, _ in _imports(f)
        if module.startswith("lab_common.distill") or module.split(".")[0] in METHODS.values()
    ]
    assert not offenders, offenders


def test_distill_layer_does_not_import_methods():
    offenders = [
        f"{f.relative_to(ROOT)}: {module}"
        for f in _py_files(COMMON / "distill")
        for module, _ in _imports(f)
        if module.split(".")[0] in METHODS.values()
    ]
    assert not offenders, offenders


@pytest.mark.parametrize("folder", list(METHODS))
def test_no_method_package_imports_another(folder):
    """The installed code and its tests; ``benchmarks/`` sits with the demo, on top."""
    others = set(METHODS.values()) - {METHODS[folder]}
    package = ROOT / "packages" / folder
    offenders = {
        str(f.relative_to(ROOT)): sorted({m.split(".")[0] for m, _ in _imports(f)} & others)
        for f in [*_py_files(package / "src"), *_py_files(package / "tests")]
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"method packages must not import each other: {offenders}"


def test_gp_maml_needs_no_vision_stack():
    offenders = [
        f"{f.relative_to(ROOT)}: {module}"
        for f in _py_files(ROOT / "packages" / "gp-maml" / "src")
        for module, _ in _imports(f)
        if module.split(".")[0] in {"timm", "torchvision"}
        or module.startswith(("lab_common.data", "lab_common.distill"))
    ]
    assert not offenders, offenders


@pytest.mark.parametrize("module", ["lab_common", "gp_maml"])
def test_importing_loads_no_vision_stack(module):
    probe = (
        f"import sys, {module}; "
        "bad = {'timm', 'torchvision', 'matplotlib'} & set(sys.modules); "
        "assert not bad, sorted(bad)"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("folder", list(METHODS))
def test_declared_dependencies_exclude_siblings(folder):
    pyproject = ROOT / "packages" / folder / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip() for d in deps}
    assert {"lab-common", "torch"} <= names
    siblings = {distribution_name(f) for f in METHODS} - {distribution_name(folder)}
    assert not names & siblings


def test_import_detector_sees_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "import clkd.losses\nfrom trg_kd import TRGLoss\nfrom . import local\n"
        "def lazy():\n    import matplotlib\n"
    )
    assert _imports(f) == [("clkd.losses", True), ("trg_kd", True), ("matplotlib", False)]


def test_import_detector_resolves_relative_imports(tmp_path):
    f = tmp_path / "src" / "lab_common" / "distill" / "engine.py"
    f.parent.mkdir(parents=True)
    f.write_text("from ..cli import run_console\nfrom . import zoo\nfrom .. import data\n")
    assert [m for m, _ in _imports(f)] == [
        "lab_common.cli",
        "lab_common.distill.zoo",
        "lab_common.data",
    ]
