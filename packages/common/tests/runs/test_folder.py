import json

import pytest
import torch

from lab_common import DistContext
from lab_common.checkpoint import previous_generation, save_checkpoint
from lab_common.runs import (
    ResumeSettingsError,
    check_resume_settings,
    load_optimizer_state,
    prepare_run_dir,
    resume_run_state,
    save_run_state,
    truncate_metrics,
)

#: a trainer's own files (what ``overwrite`` may delete)
RUN = ("last.pt", "last.prev.pt", "config.json", "metrics.jsonl")


def test_fresh_run_creates_the_folder(tmp_path):
    out = prepare_run_dir(tmp_path / "a" / "run", resume=False, run_files=RUN)
    assert out.is_dir()
    assert prepare_run_dir(out, resume=False, run_files=RUN) == out  # empty folder: fine


def test_fresh_run_into_a_previous_run_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    save_checkpoint({"step": 12}, out / "last.pt")
    (out / "metrics.jsonl").write_text('{"step": 12}\n')
    with pytest.raises(FileExistsError, match="not empty; pass --resume .* --overwrite"):
        prepare_run_dir(out, resume=False, run_files=RUN)
    assert (out / "last.pt").is_file()  # nothing lost
    prepare_run_dir(out, resume=False, run_files=RUN, overwrite=True)
    assert out.is_dir() and not any(out.iterdir())


def test_overwrite_replaces_a_run_killed_before_its_first_checkpoint(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")  # all such a run has written
    with pytest.raises(FileExistsError, match="not empty"):
        prepare_run_dir(out, resume=False, run_files=RUN)
    prepare_run_dir(out, resume=False, run_files=RUN, overwrite=True)
    assert out.is_dir() and not any(out.iterdir())


def test_overwrite_never_deletes_a_folder_that_holds_no_run(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="holds no previous run"):
        prepare_run_dir(tmp_path, resume=False, run_files=RUN, overwrite=True)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_overwrite_deletes_the_run_files_only_and_never_an_input(tmp_path):
    out = tmp_path / "run"
    save_checkpoint({"step": 2}, out / "last.pt")
    save_checkpoint({"step": 4}, out / "last.pt", keep_previous=True)
    (out / ".metrics.jsonl.x1.tmp").write_text("{")  # an atomic write killed midway
    (out / "notes.txt").write_text("mine")
    (out / "other_run").mkdir()
    (out / "other_run" / "config.json").write_text("{}")
    (out / "teacher.pt").write_text("the input")
    (out / "model").mkdir()  # a folder the trainer writes
    (out / "model" / "weights.pt").write_text("w")
    own = (*RUN, "teacher.pt", "model")
    prepare_run_dir(out, resume=False, overwrite=True, run_files=own, keep=[out / "teacher.pt"])
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "other_run", "teacher.pt"]
    assert (out / "other_run" / "config.json").is_file()
    # a folder holding only the run's inputs is empty to a fresh run
    assert prepare_run_dir(tmp_path / "in", resume=False, run_files=RUN) == tmp_path / "in"
    (tmp_path / "in" / "teacher.pt").write_text("the input")
    prepare_run_dir(
        tmp_path / "in", resume=False, run_files=RUN, keep=["", tmp_path / "in" / "teacher.pt"]
    )
    with pytest.raises(FileExistsError, match="not empty"):
        prepare_run_dir(tmp_path / "in", resume=False, run_files=RUN)


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no last.pt in .*without --resume"):
        prepare_run_dir(tmp_path, resume=True, run_files=RUN)
    save_checkpoint({"step": 1}, previous_generation(tmp_path / "last.pt"))
    # the fallback generation counts
    assert prepare_run_dir(tmp_path, resume=True, run_files=RUN) == tmp_path
    with pytest.raises(ValueError, match="contradict"):
        prepare_run_dir(tmp_path, resume=True, run_files=RUN, overwrite=True)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        prepare_run_dir(f, resume=False, run_files=RUN)


def test_changed_settings_are_refused_with_both_values():
    stored = {"method": "clkd", "lr": 0.05, "epochs": 2, "progress": True}
    current = {"method": "kd", "lr": 0.5, "epochs": 3, "progress": False}
    with pytest.raises(ResumeSettingsError) as err:  # a ValueError: run_console's status 2
        check_resume_settings(stored, current, always_allowed=["progress"])
    assert isinstance(err.value, ValueError)
    msg = str(err.value)
    assert "epochs: 2 -> 3; lr: 0.05 -> 0.5; method: 'clkd' -> 'kd'" in msg
    assert msg.endswith("--allow-changed epochs lr method")
    allowed = ["epochs", "lr", "method"]
    check_resume_settings(stored, current, allow_changed=allowed, always_allowed=["progress"])
    with pytest.raises(ValueError, match="unknown settings \\['lrr'\\]"):
        check_resume_settings(stored, stored, allow_changed=["lrr"])
    check_resume_settings(stored, dict(stored))
    with pytest.raises(ResumeSettingsError, match="--allow-changed method: .* cannot change"):
        check_resume_settings(stored, current, allow_changed=allowed, fixed=["method", "seed"])


def test_load_optimizer_state_keeps_this_runs_settings():
    w = torch.nn.Parameter(torch.ones(2))
    old = torch.optim.Adam([w], lr=0.1, weight_decay=0.5)
    w.grad = torch.ones(2)
    old.step()
    new = torch.optim.Adam([w], lr=0.01)
    load_optimizer_state(new, old.state_dict())
    assert new.param_groups[0]["lr"] == 0.01 and new.param_groups[0]["weight_decay"] == 0
    assert torch.equal(new.state[w]["exp_avg"], old.state[w]["exp_avg"])


def test_truncate_metrics_drops_records_after_the_checkpoint(tmp_path):
    p = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s} for s in (4, 8, 12)] + [{"note": "x"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 16, "lo')
    assert truncate_metrics(p, "step", 8) == 2  # step 12 and the torn line
    assert [json.loads(line) for line in p.read_text().splitlines()] == [rows[0], rows[1], rows[3]]
    assert truncate_metrics(p, "step", 8) == 0
    assert truncate_metrics(tmp_path / "none.jsonl", "step", 0) == 0


def test_save_then_resume_run_state_restores_rng_and_drops_later_records(tmp_path):
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    config = {"lr": 0.1, "epochs": 3}
    last = tmp_path / "last.pt"
    torch.manual_seed(5)
    save_run_state({"epoch": 1, "config": config}, last, ctx)
    expected = torch.rand(3)  # what the run drew next after its checkpoint
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')  # then killed
    torch.manual_seed(99)
    state = resume_run_state(last, config, ctx)
    assert state["epoch"] == 1 and len(state["rng"]) == 1
    assert torch.equal(torch.rand(3), expected)  # the same draws as the uninterrupted run
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]
    save_run_state({"epoch": 2, "config": config}, last, ctx)
    assert previous_generation(last).is_file()  # the epoch-1 checkpoint is kept
    with pytest.raises(ValueError, match="lr: 0.1 -> 0.5"):
        resume_run_state(last, {**config, "lr": 0.5}, ctx)
