"""``tools/gpu_check.sh --dry-run`` end to end on CPU, and the driver's section runner."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import gpu_check
import pytest
from monorepo import PACKAGES, ROOT

from lab_common.testing import OPTIONAL_SKIP_PREFIX


def _summary(out: Path) -> dict:
    return json.loads((out / gpu_check.FOLDER / "summary.json").read_text())


def _gpu_check(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    """``bash tools/gpu_check.sh <args>`` with results in ``tmp_path/out``; no wheels unless
    ``GPU_CHECK_WHEELS`` is given (a developer's own ``.whl/`` stays out of the test)."""
    out = tmp_path / "out"
    wheels = tmp_path / "no_wheels"
    wheels.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "OUT": str(out),
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
        "GPU_CHECK_WHEELS": str(wheels),
        **env,
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_check.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, out


def _hide(folder: Path, module: str) -> Path:
    """``folder`` with a package ``module`` that fails to import as if it were not installed."""
    (folder / module).mkdir(parents=True)
    (folder / module / "__init__.py").write_text(
        f"raise ModuleNotFoundError('{module} is hidden by the test', name='{module}')\n"
    )
    return folder


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel of one module ``name`` with ``__version__ = version``."""
    dist = f"{name}-{version}"
    files = {
        f"{name}/__init__.py": f'__version__ = "{version}"\n',
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}.dist-info/RECORD"] = "".join(
        f"{f},,\n" for f in [*files, f"{dist}.dist-info/RECORD"]
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def test_dry_run_end_to_end(tmp_path):
    proc, out = _gpu_check(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = _summary(out)
    assert summary["dry_run"] is True and summary["status"] == "ok"
    assert summary["expected"] == []
    assert {"python", "torch", "torchvision", "timm", "pycocotools", "higher"} <= set(
        summary["versions"]
    )
    sections = summary["sections"]
    assert list(sections) == [s.name for s in gpu_check.SECTIONS]
    assert {name: s["status"] for name, s in sections.items()} == dict.fromkeys(sections, "ok")
    # every package's CUDA tests were collected
    rows = sections["tests"]["tables"]["pytest -m cuda"]
    assert [r["package"] for r in rows] == list(PACKAGES)
    assert all(r["cuda tests collected"] > 0 for r in rows), rows
    # every trainer's smoke command parses
    rows = sections["trainers"]["tables"]["smoke runs"]
    assert [r["trainer"] for r in rows] == [s.name for s in gpu_check.SMOKE]
    assert all(r["status"] == "options parse" for r in rows)
    # every model of every section ran once
    lavit_rows = sections["lavit"]["tables"]["classifiers (bf16 autocast, inference)"]
    models = {n for pair in gpu_check.LAVIT_PAIRS for n in pair[:2]}
    assert {r["model"] for r in lavit_rows} == models
    backbone_rows = sections["lavit"]["tables"]["backbones (per-stage maps, bf16 autocast, eager)"]
    assert {r["model"] for r in backbone_rows if not r["error"]} == models
    (maml_table,) = [t for name, t in sections["maml"]["tables"].items() if name != "targets"]
    implementations = {r["implementation"] for r in maml_table}
    assert {name for name, *_ in gpu_check.MAML_ROWS} <= implementations
    kd = sections["kd"]["tables"]["targets"]
    assert {r["what"].split(" / ")[0] for r in kd} == {"clkd: CLKD", "trg-kd: TRG"}
    # what comes back from the GPU machine: at most 8 files, at most 2 folders down
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= 8
    assert all(len(p.relative_to(out).parts) - 1 <= 2 for p in files)
    md = (out / gpu_check.FOLDER / "summary.md").read_text()
    assert md.startswith("# GPU check") and "**Dry run**" in md
    assert "## lavit" in md and "| lavit_tiny / pvt_v2_b1 |" in md
    log = (out / gpu_check.FOLDER / gpu_check.LOG_NAME).read_text()
    assert "gpu_check: ok" in log


def _section(name: str, run, budget_s: float = 60.0) -> gpu_check.Section:
    return gpu_check.Section(name, f"test section {name}", budget_s, run)


def _ok(ctx: gpu_check.Context) -> None:
    ctx.add("rows", {"value": 1})


def _raises(ctx: gpu_check.Context) -> None:
    ctx.add("rows", {"value": 2})
    raise RuntimeError("injected failure")


def _fails_softly(ctx: gpu_check.Context) -> None:
    ctx.fail("first problem")
    ctx.add("rows", {"value": 3})


def test_a_failing_section_fails_the_run_but_not_the_others(tmp_path):
    sections = [
        _section("first", _ok),
        _section("broken", _raises),
        _section("soft", _fails_softly),
        _section("after", _ok),
    ]
    rc = gpu_check.run_check(sections, tmp_path, dry_run=True, stream=io.StringIO())
    assert rc == 1
    summary = _summary(tmp_path)
    assert summary["status"] == "failed"
    results = summary["sections"]
    assert [results[n]["status"] for n in results] == ["ok", "failed", "failed", "ok"]
    assert results["broken"]["error"] == "RuntimeError: injected failure"
    assert results["broken"]["tables"]["rows"] == [{"value": 2}]  # rows before the failure stay
    assert "first problem" in results["soft"]["error"]
    assert results["soft"]["tables"]["rows"] == [{"value": 3}]  # the section carried on
    assert results["after"]["tables"]["rows"] == [{"value": 1}]
    md = (tmp_path / gpu_check.FOLDER / "summary.md").read_text()
    assert "**Failed:** RuntimeError: injected failure" in md


def test_all_sections_ok_exit_zero(tmp_path):
    rc = gpu_check.run_check([_section("only", _ok)], tmp_path, dry_run=True, stream=io.StringIO())
    assert rc == 0 and _summary(tmp_path)["status"] == "ok"


def test_a_section_past_its_hard_limit_is_interrupted(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "HARD_GRACE_S", 0.3)

    def hangs(ctx: gpu_check.Context) -> None:
        time.sleep(30)

    start = time.monotonic()
    rc = gpu_check.run_check(
        [_section("hangs", hangs, budget_s=0.2), _section("after", _ok)],
        tmp_path,
        dry_run=True,
        stream=io.StringIO(),
    )
    assert rc == 1 and time.monotonic() - start < 10
    results = _summary(tmp_path)["sections"]
    assert results["hangs"]["error"].startswith("SectionTimeout")
    assert results["after"]["status"] == "ok"


def test_only_selects_sections(tmp_path, monkeypatch):
    calls = []
    sections = tuple(_section(n, lambda ctx, n=n: calls.append(n)) for n in ("a", "b", "c"))
    monkeypatch.setattr(gpu_check, "SECTIONS", sections)
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path), "--only", "c", "a"]) == 0
    assert calls == ["a", "c"]
    assert list(_summary(tmp_path)["sections"]) == ["a", "c"]


def _help(*options: str, flags: tuple[str, ...] = ()) -> str:
    p = argparse.ArgumentParser(prog="trainer", description="see --out in the prose")
    for option in options:
        p.add_argument(option, help="also mentions --prose-option")
    for flag in flags:
        p.add_argument(flag, action="store_true")
    return p.format_help()


def test_listed_options_reads_usage_and_option_lines_only():
    text = _help("--out-dir", "--meta-batch", flags=("--no-progress",))
    assert gpu_check.listed_options(text) == {
        "--help",
        "--out-dir",
        "--meta-batch",
        "--no-progress",
    }


def test_resolve_options_drops_only_optional_flags():
    accepted = gpu_check.listed_options(_help("--out", "--batch-size", "--device"))
    args, notes = gpu_check.resolve_options(
        ["--out", "x", "--batch-size", "2", "--device", "cuda", "--amp"], accepted
    )
    assert args == ["--out", "x", "--batch-size", "2", "--device", "cuda"]
    assert len(notes) == 1 and "--amp" in notes[0]
    new = gpu_check.listed_options(_help("--out", "--batch-size", flags=("--amp",)))
    args, notes = gpu_check.resolve_options(["--out", "x", "--amp"], new)
    assert args == ["--out", "x", "--amp"] and notes == []
    with pytest.raises(ValueError, match="accepts no --epochs"):
        gpu_check.resolve_options(["--epochs", "1"], accepted)
    with pytest.raises(ValueError, match="accepts no --out-dir"):
        gpu_check.resolve_options(["--out-dir", "x"], accepted)


@pytest.mark.slow
def test_smoke_runs_train_on_cpu(tmp_path):
    """The trainers section for real, on CPU: the dry run only parses the commands' options."""
    (trainers,) = [s for s in gpu_check.SECTIONS if s.name == "trainers"]
    section = dataclasses.replace(trainers, budget_s=480.0)  # CPU, with other tests beside it
    rc = gpu_check.run_check([section], tmp_path, dry_run=False, device="cpu", stream=io.StringIO())
    rows = _summary(tmp_path)["sections"]["trainers"]["tables"]["smoke runs"]
    assert rc == 0, [(r["trainer"], r["status"], r["last record"]) for r in rows]
    assert [r["trainer"] for r in rows] == [s.name for s in gpu_check.SMOKE]
    assert all(r["status"] == "ok" and r["checkpoints"] for r in rows)


def test_smoke_commands_fill_placeholders():
    values = {
        "images": "/d",
        "omniglot": "/o",
        "out": "/r",
        "device": "cuda",
        "lavit_32px": gpu_check.LAVIT_32PX,
    }
    for smoke in gpu_check.SMOKE:
        args = [gpu_check.fill(a, values) for a in smoke.args.split()]
        assert not any("{" in a and not a.startswith('{"') for a in args), args
        assert "--amp" in args and args[args.index("--device") + 1] == "cuda"
    lavit = next(s for s in gpu_check.SMOKE if s.module == "lavit.train")
    args = [gpu_check.fill(a, values) for a in lavit.args.split()]
    assert json.loads(args[args.index("--model-kwargs") + 1])["patch_size"] == 2


def test_dry_run_with_pycocotools_hidden_and_a_carried_wheel(tmp_path):
    """Without pycocotools the tests still collect; a carried wheel is installed and expected."""
    hidden = _hide(tmp_path / "hidden", "pycocotools")
    wheels = _wheel(tmp_path / "wheels", "lab_fake_optional", "0.1").parent
    path = os.pathsep.join(filter(None, [str(hidden), os.environ.get("PYTHONPATH")]))
    proc, out = _gpu_check(
        tmp_path, "--dry-run", "--only", "tests", PYTHONPATH=path, GPU_CHECK_WHEELS=str(wheels)
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "installed 1 wheel(s)" in proc.stdout
    summary = _summary(out)
    assert summary["status"] == "ok" and summary["expected"] == ["lab_fake_optional"]
    assert summary["versions"]["pycocotools"] is None
    assert summary["versions"]["lab_fake_optional"] == "0.1"
    rows = summary["sections"]["tests"]["tables"]["pytest -m cuda"]
    assert all(r["status"] == "ok" and "error" not in r["pytest summary"] for r in rows), rows


def test_pycocotools_tests_skip_with_the_reason_where_it_is_hidden(tmp_path):
    hidden = _hide(tmp_path / "hidden", "pycocotools")
    path = os.pathsep.join(filter(None, [str(hidden), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
        + ["tests/test_dense_data.py"],
        cwd=ROOT / "packages" / "lavit",
        env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    skips = gpu_check.optional_skips(proc.stdout)
    assert set(skips) == {"pycocotools"} and skips["pycocotools"] >= 1
    assert "passed" in proc.stdout and "failed" not in proc.stdout and "error" not in proc.stdout


def test_optional_skips_reads_pytest_skip_lines():
    output = "\n".join(
        [
            f"SKIPPED [2] tests/test_a.py:12: {OPTIONAL_SKIP_PREFIX} pycocotools",
            f"SKIPPED [1] tests/test_b.py:3: {OPTIONAL_SKIP_PREFIX} pycocotools",
            f"SKIPPED [1] tests/test_b.py:9: {OPTIONAL_SKIP_PREFIX} higher",
            "SKIPPED [3] tests/test_c.py:40: no CUDA device on this machine",
            "1 passed, 7 skipped in 1.00s",
        ]
    )
    assert gpu_check.optional_skips(output) == {"pycocotools": 3, "higher": 1}


def test_an_expected_module_that_does_not_import_fails_the_section(tmp_path):
    def needs(ctx: gpu_check.Context) -> None:
        assert gpu_check.check_expected(ctx, ["json", "lab_common_absent"]) == ["lab_common_absent"]

    sections = [_section("needs", needs)]
    quiet = io.StringIO()
    assert gpu_check.run_check(sections, tmp_path / "a", dry_run=True, stream=quiet) == 0
    rc = gpu_check.run_check(
        sections, tmp_path / "b", dry_run=True, stream=quiet, expect=["lab_common_absent"]
    )
    assert rc == 1
    summary = _summary(tmp_path / "b")
    assert summary["expected"] == ["lab_common_absent"]
    assert summary["versions"]["lab_common_absent"] is None
    assert "lab_common_absent was expected" in summary["sections"]["needs"]["error"]


def test_the_run_limit_bounds_every_section(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "HARD_GRACE_S", 0.3)
    seen = []

    def sleeps(ctx: gpu_check.Context) -> None:
        seen.append(ctx.time_left())
        time.sleep(30)

    start = time.monotonic()
    rc = gpu_check.run_check(
        [_section("first", sleeps, budget_s=60.0), _section("second", _ok)],
        tmp_path,
        dry_run=True,
        stream=io.StringIO(),
        limit_s=0.5,
    )
    assert rc == 1 and time.monotonic() - start < 10
    assert seen[0] <= 0.5  # the soft deadline is the run's limit, not the 60-s budget
    results = _summary(tmp_path)["sections"]
    assert results["first"]["error"].startswith("SectionTimeout")
    assert results["second"]["status"] == "failed"
    assert "time limit" in results["second"]["error"]


def test_section_budgets_fit_the_run_limit():
    assert sum(s.budget_s for s in gpu_check.SECTIONS) <= gpu_check.RUN_LIMIT_S
    assert gpu_check.RUN_LIMIT_S + gpu_check.HARD_GRACE_S <= 420 - 10  # start-up and wheels
