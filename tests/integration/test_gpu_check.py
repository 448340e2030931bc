"""``tools/gpu_check.sh --dry-run`` end to end on CPU, and the driver's section runner."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import gpu_check
import pytest
from monorepo import PACKAGES, ROOT

from gp_maml import Conv4


def _summary(out: Path) -> dict:
    return json.loads((out / gpu_check.FOLDER / "summary.json").read_text())


def test_dry_run_end_to_end(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = _summary(out)
    assert summary["dry_run"] is True and summary["status"] == "ok"
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


def test_load_benchmark_without_higher(monkeypatch):
    monkeypatch.setitem(sys.modules, "higher", None)  # import higher -> ImportError
    bench, missing = gpu_check.load_benchmark("gp-maml", "bench_speed", optional=("higher",))
    assert missing == ["higher"]
    assert sys.modules["higher"] is None  # the stand-in was only there during the import
    xs, ys, xq, yq = bench.make_batch(2)
    assert xs.shape == (2, 5, 1, 28, 28) and yq.shape == (2, 75)
    with pytest.raises(ModuleNotFoundError, match="higher is not installed"):
        bench.higher_step(bench.torch_layers(Conv4(1, 5, 8, 28)), (xs, ys, xq, yq), False)
