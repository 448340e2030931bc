"""The study harness (``studies/harness.py``): runs the packages' trainers in keyed folders,
waits for dependencies, never recomputes a finished run, resumes a killed one exactly, and
aggregates seeds with paired differences."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

STUDIES = Path(__file__).resolve().parents[2] / "studies"
sys.path.insert(0, str(STUDIES))

from harness import (  # noqa: E402
    CHILD_ENV,
    TRAINERS,
    Evaluation,
    Output,
    Row,
    Run,
    Store,
    _added_settings,
    _fmt_row,
    execute,
    summarise,
    write_report,
)

DATA = {"dataset": "cifar10", "val_images": 100, "train_subset": 256, "workers": 0}
TEACHER = Run(
    "clkd",
    {**DATA, "method": "ce", "student": "cifar_resnet8", "epochs": 1, "batch_size": 64},
    keep=("student.pt",),
)


def _student(seed: int, method: str = "kd", epochs: int = 1) -> Run:
    kwargs = {
        **DATA,
        "method": method,
        "teacher": "cifar_resnet8",
        "teacher_checkpoint": Output(TEACHER, "student.pt"),
        "student": "cifar_resnet8",
        "epochs": epochs,
        "batch_size": 64,
        "teacher_cache": 2,
    }
    return Run("clkd", kwargs, seed)


def test_keys_depend_on_the_studys_settings_not_on_where_runs_live(tmp_path):
    assert _student(0).key == _student(0).key
    assert _student(0).key != _student(1).key != _student(0, "clkd").key
    assert _student(0).needs == [TEACHER]
    assert _student(0).key.startswith("clkd-")
    with pytest.raises(ValueError, match="'out' is set by the harness"):
        Run("clkd", {"out": "x"})
    with pytest.raises(ValueError, match="unknown trainer"):
        Run("nope", {})


def test_a_study_runs_its_dependencies_first_then_never_again(tmp_path, capsys):
    store = Store(tmp_path / "runs", tmp_path / "records")
    runs = [_student(0), _student(1)]
    assert execute(runs, store, jobs=2, report_every=5) == []
    for run in [TEACHER, *runs]:
        record = store.record(run)
        assert record["key"] == run.key and 0 <= record["acc"] <= 100
        assert record["config"]["val_images"] == 100 and record["curve"][0]["epoch"] == 1
    # the teacher's weights are kept with its record; students read them through the cache
    assert (tmp_path / "records" / TEACHER.key / "student.pt").is_file()
    assert store.record(runs[0])["config"]["teacher_cache"] == 2
    capsys.readouterr()
    assert execute(runs, store, jobs=2) == []
    assert "0 run(s) to do" in capsys.readouterr().out
    # another machine: the run folders are gone, the records and kept files are enough
    new = Store(tmp_path / "elsewhere", tmp_path / "records")
    assert execute([_student(2)], new, jobs=1) == []
    assert (tmp_path / "elsewhere" / TEACHER.key / "student.pt").is_file()

    rows = [Row("KD", [*runs, _student(2)]), Row("CE", [_student(0, "ce"), _student(5, "ce")])]
    summary = summarise(rows, new, baseline="KD")
    kd, ce = summary
    assert kd["seeds"] == [0, 1, 2] and "paired" not in kd
    assert ce["seeds"] == [] and "mean" not in ce
    md, js = write_report(
        "toy",
        title="toy",
        protocol={"train_images": 256, "val_images": 100, "epochs": 1},
        rows=summary,
        baseline="KD",
        command="python studies/toy.py",
        text="A toy study.",
        curves=None,
        results=tmp_path / "results",
    )
    payload = json.loads(js.read_text())
    assert payload["protocol"]["train_images"] == 256 and payload["rows"][0]["name"] == "KD"
    assert "not run yet" in md.read_text()


def test_evaluations_run_after_their_run_and_are_stored_apart(tmp_path, monkeypatch):
    module = tmp_path / "mod"
    module.mkdir()
    (module / "toy_eval.py").write_text(
        "import json, os\n"
        "def evaluate(folder, scale):\n"
        "    acc = json.loads((folder / 'result.json').read_text())['val_top1']\n"
        "    files = sorted(p.name for p in folder.iterdir())\n"
        "    env = {k: os.environ.get(k) for k in ('OMP_NUM_THREADS', 'MALLOC_MMAP_THRESHOLD_')}\n"
        "    return {'accuracy': acc * scale, 'files': files, 'env': env}\n"
    )
    monkeypatch.setenv("PYTHONPATH", f"{module}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    store = Store(tmp_path / "runs", tmp_path / "records")
    evals = [Evaluation(TEACHER, "toy_eval:evaluate", {"scale": s}) for s in (1, 2)]
    assert evals[0].key.startswith(TEACHER.key + ".eval-") and evals[0].key != evals[1].key
    assert execute(evals, store, jobs=2) == []
    one, two = (store.record(e)["result"] for e in evals)
    assert two["accuracy"] == pytest.approx(2 * one["accuracy"])
    assert "student.pt" in one["files"]
    # each child gets its share of the threads and the allocator settings
    assert one["env"] == {
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // 2)),
        "MALLOC_MMAP_THRESHOLD_": CHILD_ENV["MALLOC_MMAP_THRESHOLD_"],
    }
    row = Row("x2", [evals[1]], metric=lambda r: r["result"]["accuracy"])
    assert summarise([row], store, None)[0]["mean"] == pytest.approx(two["accuracy"], abs=1e-3)


def test_a_run_another_study_process_holds_is_left_to_it(tmp_path, capsys):
    """Two study processes on one run folder (e.g. an old one still running): the second
    neither restores nor trains the run; its child refuses too when both probed first."""
    import harness

    store = Store(tmp_path / "runs", tmp_path / "records")
    store.root.mkdir(parents=True)
    spec = store.root / f"{TEACHER.key}.spec.json"
    held = harness._try_lock(harness._lock_path(spec))  # the other process's child
    assert held is not None
    store.folder(TEACHER).mkdir()
    theirs = store.folder(TEACHER) / "last.pt"
    theirs.write_text("their checkpoint")
    assert execute([TEACHER], store, jobs=1) == [TEACHER]
    assert f"[{TEACHER.key}] busy" in capsys.readouterr().out
    assert theirs.read_text() == "their checkpoint" and not spec.exists()
    spec.write_text("{}")
    with pytest.raises(SystemExit) as exit_:
        harness.run_child(spec)
    assert exit_.value.code == harness.BUSY
    held.close()
    assert harness._try_lock(harness._lock_path(spec)) is not None  # free again


def test_paired_difference_uses_the_seeds_both_rows_have(tmp_path):
    store = Store(tmp_path / "runs", tmp_path / "records")
    a = [_student(s) for s in (0, 1, 2)]
    b = [_student(s, "clkd") for s in (0, 1)]
    for run, acc in zip([*a, *b], [50.0, 52.0, 54.0, 51.0, 54.0], strict=True):
        store.records.mkdir(parents=True, exist_ok=True)
        store.record_path(run).write_text(json.dumps({"acc": acc, "curve": []}))
    kd, clkd = summarise([Row("KD", a), Row("CLKD", b)], store, baseline="KD")
    assert kd["mean"] == pytest.approx(52.0)
    assert clkd["paired"]["seeds"] == [0, 1] and clkd["paired"]["mean"] == pytest.approx(1.5)
    # one shared seed: a difference, no interval
    one = summarise([Row("KD", a), Row("CLKD", b[:1])], store, baseline="KD")[1]
    assert _fmt_row(one).endswith("| +1.00 (1 seed, no CI) |")


def test_the_few_shot_report_gives_no_interval_over_one_seed():
    import fewshot_budget

    one = {"seeds": 1, "mean": 18.66, "ci95": 0.0, "task_ci95": [0.76]}
    two = {"seeds": 2, "mean": 17.0, "ci95": 1.5, "task_ci95": [0.7, 0.8]}
    assert fewshot_budget._delta_cell(one) == "+18.66 (1 seed; ± 0.76 over tasks)"
    assert fewshot_budget._delta_cell(two) == "+17.00 ± 1.50 (2)"
    assert fewshot_budget._error_bar(one) == 0.76 and fewshot_budget._error_bar(two) == 1.5
    assert fewshot_budget._accuracy_cell({"seeds": 1, "mean": 51.37, "ci95": 0.0}) == (
        "51.37 (1 seed, no CI)"
    )
    assert fewshot_budget._accuracy_cell(None) == "not run yet"


@pytest.mark.slow
def test_the_picking_rule_is_recommended_only_where_it_wins_in_every_setting():
    import fewshot_budget

    def rows(*diffs):
        return [{"fallback_minus_balanced": d, "task_ci95": 1.0} for d in diffs]

    verdict = fewshot_budget.picking_verdict
    assert verdict(rows(3.0, 2.0), settings=3).startswith("open: 2 of 3")
    assert "fallback rule wins in all 3" in verdict(rows(3.0, 2.0, 1.5), settings=3)
    assert "class-balanced rule wins in all 3" in verdict(rows(-3.0, -2.0, -1.5), settings=3)
    mixed = verdict(rows(3.0, -2.0, 0.5), settings=3)
    assert mixed.startswith("mixed: the fallback rule wins in 1, loses in 1 and ties in 1")
    assert "no rule is recommended" in mixed


def test_a_killed_study_resumes_the_run_exactly_on_another_machine(tmp_path):
    """SIGKILL the harness and its child mid-run, keep only the records (with the run's
    checkpoint saved into them); starting again ends bit-identical."""
    run = _student(0, epochs=6)
    code = (
        f"import sys; sys.path[:0] = [{str(STUDIES)!r}, {str(Path(__file__).parent)!r}]\n"
        "from pathlib import Path\n"
        "from harness import Store, execute\n"
        "from test_studies import _student\n"
        "root = Path(sys.argv[1])\n"
        "raise SystemExit(len(execute([_student(0, epochs=6)], Store(root / 'runs', root / "
        "'records'), jobs=1, threads=1)))\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="0")
    killed = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "a")], env=env, start_new_session=True
    )
    checkpoint = tmp_path / "a" / "runs" / run.key / "student_last.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert checkpoint.is_file() and not (tmp_path / "a" / "records" / f"{run.key}.json").exists()
    # another machine: only the records travel, with the unfinished run's checkpoint in them
    store = Store(tmp_path / "a" / "runs", tmp_path / "a" / "records")
    assert store.save_partial(run) and not store.save_partial(TEACHER)  # the teacher finished
    shutil.rmtree(tmp_path / "a" / "runs")
    for root in (tmp_path / "a", tmp_path / "b"):
        subprocess.run([sys.executable, "-c", code, str(root)], env=env, check=True)
    weights = [
        torch.load(root / "runs" / run.key / "student.pt", weights_only=False)["model"]
        for root in (tmp_path / "a", tmp_path / "b")
    ]
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k
    log = (tmp_path / "a" / "runs" / f"{run.key}.log").read_text()
    assert log.count("[student] epoch 6/6") == 1 and "[student] epoch 1/6" not in log
    assert not store.partial(run).exists()  # dropped once the run finished


def test_a_setting_added_since_the_checkpoint_may_pass_at_its_default(tmp_path):
    from clkd.train import TrainConfig

    config = TrainConfig(out=str(tmp_path))
    stored = {k: v for k, v in dataclasses.asdict(config).items() if k != "clkd_correlation_axis"}
    torch.save({"config": stored}, tmp_path / "student_last.pt")
    assert _added_settings(tmp_path, TRAINERS["clkd"], config) == ["clkd_correlation_axis"]
    changed = dataclasses.replace(config, clkd_correlation_axis="batch")
    assert _added_settings(tmp_path, TRAINERS["clkd"], changed) == []  # not its default
