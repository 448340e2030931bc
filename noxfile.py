"""Sessions for the monorepo: tests, wheels, demo, bench, lint, lowest, changelog.

The method packages share one virtual environment (``.nox/_shared``) holding torch,
torchvision and every package installed editable with its test/bench extras. It is
created once per torch pin; a changed ``pyproject.toml`` only re-runs the editable
install, so sessions do not reinstall several GB of torch each time.

``nox -s tests`` is the full suite (CI); ``nox -s tests -- -m "not slow"`` is the fast tier a
developer runs while working (under 2 minutes a package).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent.resolve()
sys.path.insert(0, str(ROOT / "tools"))
from monorepo import PACKAGES  # noqa: E402  (the one package list)

TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
#: The declared lowest versions this machine can install, in two environments: the vision
#: stack (timm needs torchvision, whose only working build here is 0.29.1 for torch 2.14.1)
#: and torch alone (2.13.0 is a local CPU wheel) for the packages that need no torchvision.
LOWEST = {
    "vision": [
        "torch==2.14.1",
        "torchvision==0.29.1",
        "timm==1.0.3",
        "numpy==1.24.4",
        "scipy==1.10.1",
    ],
    "torch": ["torch==2.13.0", "numpy==1.24.4", "scipy==1.10.1"],
}
#: Which lowest environment tests which package (``torch``: gp-maml, which needs no torchvision;
#: lab-common's own tests cover its vision and distill layers, so they run beside torchvision).
LOWEST_ENV = {
    "common": "vision",
    "gp-maml": "torch",
    "lavit": "vision",
    "clkd": "vision",
    "trg-kd": "vision",
}
SHARED_VENV = ROOT / ".nox" / "_shared"
DEMO_REQUIREMENTS = ROOT / "demo" / "requirements.txt"
#: What the tools in ``tools/`` and the test runner need besides the packages (the wheel check
#: builds sdists; ``tests`` spreads each package's files over processes with pytest-xdist).
TOOL_REQUIREMENTS = ["build>=1.0", "pytest-xdist>=3.5"]

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "venv"


def _bin(venv: Path, name: str) -> str:
    return str(venv / ("Scripts" if os.name == "nt" else "bin") / name)


def _make_venv(
    session: nox.Session, venv: Path, stamp_text: str, installs: list[list[str]]
) -> bool:
    """Create ``venv`` with ``installs`` unless its stamp says it is up to date.

    Returns whether the environment was (re)built.
    """
    stamp = venv / ".stamp"
    if stamp.is_file() and stamp.read_text() == stamp_text:
        session.log(f"reusing {venv}")
        return False
    if venv.exists():
        shutil.rmtree(venv)
    session.run(sys.executable, "-m", "venv", str(venv), external=True)
    for args in installs:
        _pip_install(session, venv, args)
    stamp.write_text(stamp_text)
    return True


def _pip_install(session: nox.Session, venv: Path, args: list[str]) -> None:
    pip = [_bin(venv, "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    session.run(*pip, *args, external=True)


def _install_packages(session: nox.Session, venv: Path, extras: str) -> None:
    """Editable installs of every package (with ``extras``), redone when a pyproject changes."""
    digest = hashlib.sha256(" ".join([extras, *TOOL_REQUIREMENTS]).encode())
    for name in PACKAGES:
        digest.update((ROOT / "packages" / name / "pyproject.toml").read_bytes())
    digest.update(DEMO_REQUIREMENTS.read_bytes())
    stamp = venv / ".packages-stamp"
    if stamp.is_file() and stamp.read_text() == digest.hexdigest():
        return
    editable = ["-r", str(DEMO_REQUIREMENTS), *TOOL_REQUIREMENTS]
    for name in PACKAGES:
        editable += ["-e", f"{ROOT / 'packages' / name}[{extras}]"]
    _pip_install(session, venv, editable)
    stamp.write_text(digest.hexdigest())


def shared_env(session: nox.Session) -> str:
    """Path of the shared environment's python, built or reused."""
    _make_venv(session, SHARED_VENV, " ".join(TORCH), [TORCH])
    _install_packages(session, SHARED_VENV, "test,bench")
    return _bin(SHARED_VENV, "python")


def _env(threads: int = 2) -> dict[str, str]:
    """Environment of every session: fixed hash seed, ``threads`` torch threads."""
    env = {
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
    }
    env.setdefault(
        "LAB_DATASETS", os.environ.get("LAB_DATASETS", str(ROOT.parent / "shared" / "datasets"))
    )
    return env


def _test_workers(posargs: list[str]) -> int:
    """pytest-xdist processes: ``$LAB_TEST_WORKERS``, else one per core up to 4; 1 with ``-n``."""
    if any(a.startswith(("-n", "--numprocesses")) for a in posargs):
        return 1  # the caller chose
    return int(os.environ.get("LAB_TEST_WORKERS", min(4, os.cpu_count() or 1)))


@nox.session(venv_backend="none")
@nox.parametrize("package", [*PACKAGES, "integration"])
def tests(session: nox.Session, package: str) -> None:
    """Unit tests of one package (or the cross-package integration tests).

    Tests are spread over pytest-xdist workers, each with its share of the cores as threads
    (``--dist worksteal``: an idle worker takes queued tests from a busy one, so one long test
    does not hold the others back).
    """
    python = shared_env(session)
    path = (
        ROOT / "tests" / "integration" if package == "integration" else ROOT / "packages" / package
    )
    workers = _test_workers(session.posargs)
    spread = ["-n", str(workers), "--dist", "worksteal"] if workers > 1 else []
    threads = max(1, (os.cpu_count() or 1) // workers)
    pytest = [python, "-m", "pytest", "-q", "-rs", *spread, *session.posargs]
    with session.chdir(path):
        session.run(*pytest, external=True, env=_env(threads))
    if package == "integration":
        _check_wheels(session, python)


def _check_wheels(session: nox.Session, python: str) -> None:
    """Each wheel alone in a fresh venv; torch is linked from the shared environment."""
    script = ROOT / "tools" / "check_wheels.py"
    work = ROOT / ".nox" / "_wheels"
    args = ["--torch-from", python, "--work", str(work)]
    session.run(python, str(script), *args, external=True, env=_env())


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
    """ruff format (check) and ruff check over the whole tree (CI runs it)."""
    session.install("ruff>=0.6")
    session.run("ruff", "format", "--check", ".")
    session.run("ruff", "check", ".")


@nox.session(venv_backend="none")
def lowest(session: nox.Session) -> None:
    """The fast tier of every package against the declared lowest torch, torchvision, timm."""
    for env_name, pins in LOWEST.items():
        venv = ROOT / ".nox" / f"_lowest_{env_name}"
        _make_venv(session, venv, " ".join(pins), [pins])
        folders = [f for f in PACKAGES if LOWEST_ENV[f] == env_name]
        python = _bin(venv, "python")
        # the pins constrain every later install: a package cannot pull a newer numpy in
        constraints = venv / "constraints.txt"
        constraints.write_text("\n".join(pins) + "\n")
        pinned = ["-c", str(constraints)]
        # lab-common first (its core alone beside torch 2.13: its test extra needs
        # torchvision), so that the method packages find it here and not on an index.
        common = ROOT / "packages" / "common"
        first = f"{common}[test]" if "common" in folders else str(common)
        _pip_install(session, venv, [*pinned, "-e", first])
        for folder in folders:
            if folder != "common":
                _pip_install(session, venv, [*pinned, "-e", f"{ROOT / 'packages' / folder}[test]"])
        session.run(python, "-m", "pip", "list", "--format=freeze", external=True)
        for folder in folders:
            with session.chdir(ROOT / "packages" / folder):
                pytest = [python, "-m", "pytest", "-q", "-m", "not slow", *session.posargs]
                session.run(*pytest, external=True, env=_env())


@nox.session(venv_backend="none")
def changelog(session: nox.Session) -> None:
    """Each package's version has an entry in its CHANGELOG.md."""
    session.run(sys.executable, str(ROOT / "tools" / "check_changelogs.py"), external=True)
