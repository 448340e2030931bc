"""Sessions for the monorepo: tests, wheels, demo, bench, lint, changelog.

The method packages share one virtual environment (``.nox/_shared``) holding torch,
torchvision and every package installed editable with its test/bench extras. It is
rebuilt only when a ``pyproject.toml`` or the torch pin changes, so sessions do not
reinstall several GB of torch each time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent.resolve()
#: distribution folder -> import name; a new package is one line here.
PACKAGES = {
    "common": "lab_common",
    "lavit": "lavit",
    "clkd": "clkd",
    "trg-kd": "trg_kd",
    "gp-maml": "gp_maml",
}
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
SHARED_VENV = ROOT / ".nox" / "_shared"
TORCH_BASE_VENV = ROOT / ".nox" / "_torch_base"
DEMO_REQUIREMENTS = ROOT / "demo" / "requirements.txt"

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "venv"


def _bin(venv: Path, name: str) -> str:
    return str(venv / ("Scripts" if os.name == "nt" else "bin") / name)


def _make_venv(
    session: nox.Session, venv: Path, stamp_text: str, installs: list[list[str]]
) -> None:
    """Create ``venv`` with ``installs`` unless its stamp says it is up to date."""
    stamp = venv / ".stamp"
    if stamp.is_file() and stamp.read_text() == stamp_text:
        session.log(f"reusing {venv}")
        return
    if venv.exists():
        shutil.rmtree(venv)
    session.run(sys.executable, "-m", "venv", str(venv), external=True)
    pip = [_bin(venv, "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for args in installs:
        session.run(*pip, *args, external=True)
    stamp.write_text(stamp_text)


def shared_env(session: nox.Session) -> str:
    """Path of the shared environment's python, built or reused."""
    digest = hashlib.sha256(" ".join(TORCH).encode())
    for name in PACKAGES:
        digest.update((ROOT / "packages" / name / "pyproject.toml").read_bytes())
    digest.update(DEMO_REQUIREMENTS.read_bytes())
    editable = ["-r", str(DEMO_REQUIREMENTS)]
    for name in PACKAGES:
        editable += ["-e", f"{ROOT / 'packages' / name}[test,bench]"]
    _make_venv(session, SHARED_VENV, digest.hexdigest(), [TORCH, editable])
    return _bin(SHARED_VENV, "python")


def torch_base_env(session: nox.Session) -> Path:
    """An environment holding only torch and torchvision (and what they need)."""
    _make_venv(session, TORCH_BASE_VENV, " ".join(TORCH), [TORCH])
    return TORCH_BASE_VENV


def _env() -> dict[str, str]:
    env = {"PYTHONHASHSEED": "0", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    env.setdefault(
        "LAB_DATASETS", os.environ.get("LAB_DATASETS", str(ROOT.parent / "shared" / "datasets"))
    )
    return env


@nox.session(venv_backend="none")
@nox.parametrize("package", [*PACKAGES, "integration"])
def tests(session: nox.Session, package: str) -> None:
    """Unit tests of one package (or the cross-package integration tests)."""
    python = shared_env(session)
    path = (
        ROOT / "tests" / "integration" if package == "integration" else ROOT / "packages" / package
    )
    with session.chdir(path):
        session.run(
            python, "-m", "pytest", "-q", "-rs", *session.posargs, external=True, env=_env()
        )
    if package == "integration":
        _check_wheels(session, python)


def _check_wheels(session: nox.Session, python: str) -> None:
    base = torch_base_env(session)
    script = ROOT / "tools" / "check_wheels.py"
    work = ROOT / ".nox" / "_wheels"
    session.run(
        python,
        str(script),
        "--torch-base",
        str(base),
        "--work",
        str(work),
        external=True,
        env=_env(),
    )


@nox.session(venv_backend="none")
def wheels(session: nox.Session) -> None:
    """Build every wheel and install each alone, with only its declared dependencies, then run it."""
    _check_wheels(session, shared_env(session))


@nox.session(venv_backend="none")
def demo(session: nox.Session) -> None:
    """The main job: build, train, distil and meta-train briefly; writes a report folder."""
    python = shared_env(session)
    session.run(
        python, str(ROOT / "demo" / "run_demo.py"), *session.posargs, external=True, env=_env()
    )


@nox.session(venv_backend="none")
@nox.parametrize("package", list(PACKAGES))
def bench(session: nox.Session, package: str) -> None:
    """Run a package's benchmark scripts; each prints a table and writes Markdown + JSON."""
    python = shared_env(session)
    bench_dir = ROOT / "packages" / package / "benchmarks"
    scripts = sorted(bench_dir.glob("bench_*.py"))
    if not scripts:
        session.skip(f"{package} has no benchmarks/bench_*.py")
    for script in scripts:
        session.run(python, str(script), *session.posargs, external=True, env=_env())


@nox.session
def lint(session: nox.Session) -> None:
    """ruff format (check) and ruff check over the whole tree."""
    session.install("ruff>=0.6")
    session.run("ruff", "format", "--check", ".")
    session.run("ruff", "check", ".")


@nox.session(venv_backend="none")
def changelog(session: nox.Session) -> None:
    """Each package's version has an entry in its CHANGELOG.md."""
    session.run(sys.executable, str(ROOT / "tools" / "check_changelogs.py"), external=True)
