"""The shared distillation engine: exact resume (also after SIGKILL), the run-folder rules,
checkpoint generations, CE-only path, DDP ranks identical, errors."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from lab_common import seed_everything
from lab_common.checkpoint import load_checkpoint
from lab_common.distill import DistillConfig, TensorImageDataset, run_distillation
from lab_common.testing import run_torchrun


class KD(nn.Module):
    def forward(self, s, t, target):
        kd = F.kl_div(F.log_softmax(s / 4, -1), F.softmax(t / 4, -1), reduction="batchmean")
        return {"loss_ce": 0.1 * F.cross_entropy(s, target), "loss_kd": 16 * kd}


def kd_factory(num_classes):
    return KD()


def ce_only(num_classes):
    return None


def synthetic(n_train=32, n_test=16, size=12, classes=4):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (n_train + n_test,), generator=g)
    x = torch.randint(0, 256, (n_train + n_test, 1, size, size), generator=g, dtype=torch.uint8)
    x[:, :, : size // 2] = (y * 60).to(torch.uint8).view(-1, 1, 1, 1)  # a learnable cue
    mean, std = (0.5,), (0.3,)
    train = TensorImageDataset(x[:n_train], y[:n_train], mean, std, augment=True, padding=2)
    test = TensorImageDataset(x[n_train:], y[n_train:], mean, std)
    return train, test, classes, 1


def config(out, **overrides) -> DistillConfig:
    base = {
        "teacher": "cifar_resnet8",
        "student": "cifar_wrn_16_1",
        "epochs": 3,
        "teacher_epochs": 2,
        "batch_size": 16,
        "workers": 0,
        "progress": False,
        "device": "cpu",
        "lr": 0.05,
        "out": out,
    }
    return DistillConfig(**{**base, **overrides})


def _weights(path):
    return load_checkpoint(path)["model"]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference run (teacher 2 epochs, student 3) the interrupted runs must reproduce."""
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, run_distillation(config(out), kd_factory, datasets=synthetic())


def test_interrupted_runs_resume_exactly(tmp_path, uninterrupted):
    data = synthetic()
    a, full = uninterrupted
    assert full.metrics["completed"] and full.metrics["epoch"] == 3  # epochs count from 1
    # Interrupt inside teacher training, then inside student training (1 epoch per call).
    part = run_distillation(config(tmp_path / "b", stop_after=1), kd_factory, datasets=data)
    assert part.student is None and not part.metrics["completed"]
    part = run_distillation(
        config(tmp_path / "b", stop_after=1), kd_factory, resume=True, datasets=data
    )
    assert not part.metrics["completed"] and part.metrics["epoch"] == 1
    part = run_distillation(config(tmp_path / "b"), kd_factory, resume=True, datasets=data)
    assert part.metrics["completed"]
    _assert_same(_weights(a / "teacher.pt"), _weights(tmp_path / "b/teacher.pt"))
    _assert_same(_weights(a / "student.pt"), _weights(tmp_path / "b/student.pt"))
    lines = [
        [json.loads(r) for r in (d / "student_metrics.jsonl").read_text().splitlines()]
        for d in (a, tmp_path / "b")
    ]
    assert [r["epoch"] for r in lines[1]] == [1, 2, 3]
    for ra, rb in zip(*lines, strict=True):
        assert ra["loss_kd"] == rb["loss_kd"] and ra["val_top1"] == rb["val_top1"]
    assert (tmp_path / "b/student_curves.png").stat().st_size > 0
    # the teacher really was frozen during distillation and is the cached one
    _assert_same(full.teacher.state_dict(), _weights(a / "teacher.pt"))
    # every checkpoint records the run's settings
    saved = load_checkpoint(a / "student_last.pt")["config"]
    assert saved == dataclasses.asdict(config(a))
    assert saved["out"] == str(a)


def test_ce_only_student_has_no_teacher_and_existing_run_needs_resume(tmp_path):
    data = synthetic()
    result = run_distillation(
        config(tmp_path, epochs=1, deterministic=True), ce_only, datasets=data
    )
    assert result.teacher is None and not (tmp_path / "teacher.pt").exists()
    assert not torch.are_deterministic_algorithms_enabled()  # switched on for that run only
    rec = json.loads((tmp_path / "result.json").read_text())
    assert set(rec) >= {"loss_ce", "val_top1", "train_acc", "lr"}
    with pytest.raises(FileExistsError, match="not empty; pass --resume .* --overwrite"):
        run_distillation(config(tmp_path, epochs=1), ce_only, datasets=data)


def test_run_folder_rules_changed_settings_and_checkpoint_fallback(tmp_path, uninterrupted):
    data = synthetic()
    ref_dir, ref = uninterrupted
    out = tmp_path / "run"
    cut = config(out, stop_after=1)
    with pytest.raises(FileNotFoundError, match="--resume: no student_last.pt"):
        run_distillation(cut, kd_factory, resume=True, datasets=data)  # nothing to resume yet
    run_distillation(cut, kd_factory, datasets=data)  # teacher epoch 0 of 2
    assert (out / "teacher_last.pt").is_file() and not (out / "teacher_last.prev.pt").exists()
    with pytest.raises(FileExistsError, match="not empty; pass --resume"):
        run_distillation(cut, kd_factory, datasets=data)  # a fresh run never overwrites one
    with pytest.raises(ValueError, match="contradict"):
        run_distillation(cut, kd_factory, resume=True, overwrite=True, datasets=data)
    # changed settings are refused, each named with both values, before any training
    changed = dataclasses.replace(cut, lr=0.5, epochs=4)
    with pytest.raises(
        ValueError, match=r"epochs: 3 -> 4; lr: 0.05 -> 0.5.*--allow-changed epochs lr"
    ):
        run_distillation(changed, kd_factory, resume=True, datasets=data)
    with pytest.raises(ValueError, match=r"lr: 0.05 -> 0.5"):
        run_distillation(changed, kd_factory, resume=True, allow_changed=["epochs"], datasets=data)
    assert torch.load(out / "teacher_last.pt", weights_only=False)["epoch"] == 1  # untouched
    # run-only settings may change: up to 2 epochs of each phase in this call (teacher epoch
    # 1, student epochs 0 and 1)
    run_distillation(
        dataclasses.replace(cut, stop_after=2, progress=True),
        kd_factory,
        resume=True,
        datasets=data,
    )
    assert torch.load(out / "teacher_last.prev.pt", weights_only=False)["epoch"] == 1
    assert torch.load(out / "student_last.prev.pt", weights_only=False)["epoch"] == 1
    assert torch.load(out / "student_last.pt", weights_only=False)["epoch"] == 2
    # the newest generation corrupted at rest, and a record a killed run wrote after it
    os.truncate(out / "student_last.pt", 2000)
    with (out / "student_metrics.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": 3, "loss_kd": 9.9}) + "\n" + '{"epoch": 4, "lo')
    with pytest.warns(UserWarning, match="previous generation"):
        done = run_distillation(config(out), kd_factory, resume=True, datasets=data)
    assert done.metrics["completed"]
    log = [json.loads(line) for line in (out / "student_metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]  # epoch 2 redone from the .prev generation
    ref_log = (ref_dir / "student_metrics.jsonl").read_text().splitlines()
    assert [r["loss_kd"] for r in log] == [json.loads(r)["loss_kd"] for r in ref_log]
    _assert_same(_weights(out / "student.pt"), _weights(ref_dir / "student.pt"))
    _assert_same(ref.student.state_dict(), _weights(out / "student.pt"))
    # --overwrite replaces the run (and only a folder that holds one)
    run_distillation(config(out, epochs=1), ce_only, overwrite=True, datasets=data)
    assert not (out / "teacher.pt").exists()
    assert len((out / "student_metrics.jsonl").read_text().splitlines()) == 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no previous run"):
        run_distillation(config(tmp_path / "other"), ce_only, overwrite=True, datasets=data)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_resume_between_the_phases_checks_the_teachers_settings(tmp_path, uninterrupted):
    """Killed after the teacher finished, before the first student checkpoint."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("teacher.pt", "teacher_last.pt", "teacher_metrics.jsonl"):
        shutil.copy(uninterrupted[0] / name, out / name)
    # the checkpoint's out differs too (copied here): a run-only setting, not refused
    with pytest.raises(ValueError, match=r"checkpoint's: lr: 0.05 -> 0.5\. .*--allow-changed lr$"):
        run_distillation(config(out, lr=0.5), kd_factory, resume=True, datasets=synthetic())
    assert sorted(p.name for p in out.iterdir()) == [
        "teacher.pt",
        "teacher_last.pt",
        "teacher_metrics.jsonl",
    ]


KILL_SCRIPT = """
import os, signal, sys
from torch.optim.optimizer import register_optimizer_step_post_hook
sys.path.insert(0, {test_dir!r})
from test_engine import config, kd_factory, synthetic
from lab_common.distill import run_distillation

kill_at, resume = int(sys.argv[1]), sys.argv[2] == "resume"
steps = 0


def kill_after(optimizer, args, kwargs):  # SIGKILL right after the kill_at-th optimiser step
    global steps
    steps += 1
    if steps == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


register_optimizer_step_post_hook(kill_after)
run_distillation(config({out!r}), kd_factory, resume=resume, datasets=synthetic())
"""


@pytest.mark.slow  # three fresh interpreters importing timm: about a minute on a loaded CPU
def test_sigkill_mid_epoch_then_resume_is_bit_exact(tmp_path, uninterrupted):
    """Killed in the middle of a teacher epoch, then of a student epoch; resumed each time."""
    script = tmp_path / "kill.py"
    out = tmp_path / "killed"
    test_dir = str(Path(__file__).parent)
    script.write_text(textwrap.dedent(KILL_SCRIPT.format(test_dir=test_dir, out=str(out))))

    def run(kill_at: int, resume: bool) -> int:
        argv = [sys.executable, str(script), str(kill_at), "resume" if resume else "fresh"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert proc.returncode in (0, -9), proc.stderr[-2000:]
        return proc.returncode

    # 32 images, batch 16: 2 steps an epoch; teacher 2 epochs, student 3
    assert run(3, resume=False) == -9  # after step 1 of teacher epoch 1
    assert torch.load(out / "teacher_last.pt", weights_only=False)["epoch"] == 1
    assert run(5, resume=True) == -9  # teacher epoch 1 redone, killed in student epoch 1
    assert torch.load(out / "student_last.pt", weights_only=False)["epoch"] == 1
    assert run(0, resume=True) == 0
    ref_dir, ref = uninterrupted
    _assert_same(_weights(out / "teacher.pt"), _weights(ref_dir / "teacher.pt"))
    _assert_same(_weights(out / "student.pt"), ref.student.state_dict())
    for phase in ("teacher", "student"):
        got, want = (
            [json.loads(r) for r in (d / f"{phase}_metrics.jsonl").read_text().splitlines()]
            for d in (out, ref_dir)
        )
        assert [r["epoch"] for r in got] == [r["epoch"] for r in want]  # no duplicates
        assert [r["train_acc"] for r in got] == [r["train_acc"] for r in want]


def test_bad_model_mismatched_teacher_and_too_large_batch(tmp_path):
    data = synthetic()
    with pytest.raises(
        ValueError, match=r"unknown model 'nope_net' \(--student\).*timm.list_models"
    ):
        run_distillation(config(tmp_path / "x", student="nope_net"), kd_factory, datasets=data)
    with pytest.raises(ValueError, match=r"unknown model 'resnet_9000' \(--teacher\)"):
        run_distillation(config(tmp_path / "x", teacher="resnet_9000"), kd_factory, datasets=data)
    assert not (tmp_path / "x").exists()  # refused before the run folder was made
    torch.save({"model": nn.Linear(2, 2).state_dict()}, tmp_path / "t.pt")
    with pytest.raises(ValueError, match="does not fit"):
        run_distillation(
            config(tmp_path / "y", teacher_checkpoint=tmp_path / "t.pt"), kd_factory, datasets=data
        )
    with pytest.raises(ValueError, match="32 per process, fewer than one global batch"):
        run_distillation(config(tmp_path / "z", batch_size=64), ce_only, datasets=data)
    with pytest.raises(TypeError, match="DistillConfig"):
        run_distillation({"epochs": 1}, ce_only, datasets=data)


DDP_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {test_dir!r})
from test_engine import config, kd_factory, synthetic
from lab_common.distill import run_distillation

out = {out!r}
cfg = config(out, epochs=2, teacher_checkpoint=out + "/t.pt")
result = run_distillation(cfg, kd_factory, datasets=synthetic())
torch.save(result.student.state_dict(), f"{{out}}/rank{{os.environ['RANK']}}.pt")
"""


@pytest.mark.slow
def test_torchrun_two_processes_keep_ranks_identical(tmp_path):
    script, out = tmp_path / "ddp.py", tmp_path / "run"  # the run folder starts empty
    script.write_text(
        textwrap.dedent(DDP_SCRIPT.format(test_dir=str(Path(__file__).parent), out=str(out)))
    )
    run_torchrun([script], timeout=240)
    r0, r1 = (torch.load(out / f"rank{r}.pt") for r in (0, 1))
    _assert_same(r0, r1)
    # the ranks trained: their weights left the seeded initialisation the engine starts from
    seed_everything(0)
    init = timm.create_model("cifar_wrn_16_1", num_classes=4, in_chans=1).state_dict()
    moved = [k for k in init if init[k].is_floating_point() and not torch.equal(init[k], r0[k])]
    assert "stem.conv.weight" in moved
    saved = _weights(out / "student.pt")
    _assert_same(saved, r0)


def test_workers_do_not_change_the_run(tmp_path):
    """Augmentation is drawn per item from (seed, epoch, index): 0 or 2 workers, same weights."""
    data = synthetic()
    teacher = dict(teacher_checkpoint=None, epochs=1, teacher_epochs=1)
    run_distillation(config(tmp_path / "w0", workers=0, **teacher), kd_factory, datasets=data)
    run_distillation(config(tmp_path / "w2", workers=2, **teacher), kd_factory, datasets=data)
    for name in ("teacher.pt", "student.pt"):
        _assert_same(_weights(tmp_path / "w0" / name), _weights(tmp_path / "w2" / name))


def test_channels_last_trains_the_same_model_in_the_other_layout_and_resumes_exactly(
    tmp_path, uninterrupted
):
    """--channels-last: both phases' weights are kept channels-last, match the default layout's
    run up to rounding, and an interrupted channels-last run resumes bit for bit."""
    data = synthetic()
    full = run_distillation(config(tmp_path / "a", channels_last=True), kd_factory, datasets=data)
    assert full.metrics["completed"]
    for name in ("teacher.pt", "student.pt"):
        cl, ref = _weights(tmp_path / "a" / name), _weights(uninterrupted[0] / name)
        convs = [k for k, v in cl.items() if v.dim() == 4 and v.shape[1] > 1 and v.shape[-1] > 1]
        assert convs and all(
            cl[k].is_contiguous(memory_format=torch.channels_last) and not cl[k].is_contiguous()
            for k in convs
        ), name
        for k in ref:
            assert torch.allclose(cl[k].float(), ref[k].float(), rtol=1e-3, atol=1e-4), (name, k)
    b = tmp_path / "b"
    run_distillation(config(b, channels_last=True, stop_after=2), kd_factory, datasets=data)
    run_distillation(config(b, channels_last=True), kd_factory, resume=True, datasets=data)
    _assert_same(_weights(tmp_path / "a/student.pt"), _weights(b / "student.pt"))


def test_changed_lr_on_resume_applies_from_the_resume_on(tmp_path, uninterrupted):
    data = synthetic()
    out = tmp_path / "lr"
    shutil.copytree(uninterrupted[0], out)
    (out / "student.pt").unlink()
    (out / "result.json").unlink()
    state = load_checkpoint(out / "student_last.prev.pt")  # after student epoch 2 of 3
    torch.save(state, out / "student_last.pt")
    run_distillation(
        config(out, lr=0.5), kd_factory, resume=True, allow_changed=["lr"], datasets=data
    )
    records = [json.loads(r) for r in (out / "student_metrics.jsonl").read_text().splitlines()]
    # the schedule's drop after epoch 2 of 3 applies to the new rate: epoch 3 runs at 0.5·0.1
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[1]["lr"] == pytest.approx(0.05) and records[2]["lr"] == pytest.approx(0.05)
    assert load_checkpoint(out / "student_last.pt")["config"]["lr"] == 0.5


def test_non_finite_evaluation_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from lab_common.distill import engine

    data = synthetic()
    run_distillation(config(tmp_path / "n", stop_after=1), kd_factory, datasets=data)  # teacher
    run_distillation(config(tmp_path / "n", stop_after=1), kd_factory, resume=True, datasets=data)
    real = engine.evaluate
    monkeypatch.setattr(
        engine, "evaluate", lambda *a, **k: {**real(*a, **k), "val_loss": float("nan")}
    )
    with pytest.raises(
        FloatingPointError, match="student epoch 2: non-finite val_loss.*after epoch 1 is kept"
    ):
        run_distillation(config(tmp_path / "n"), kd_factory, resume=True, datasets=data)
    assert load_checkpoint(tmp_path / "n/student_last.pt")["epoch"] == 1
    assert not (tmp_path / "n/result.json").exists()
    records = (tmp_path / "n/student_metrics.jsonl").read_text()
    assert "NaN" not in records and len(records.splitlines()) == 1


def test_read_only_out_is_refused_before_any_training(tmp_path, monkeypatch):
    out = tmp_path / "run"
    mkstemp = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == out:
            raise PermissionError(13, "Permission denied")
        return mkstemp(*args, dir=dir, **kwargs)

    steps = []
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    hook = register_optimizer_step_post_hook(lambda *args: steps.append(1))
    try:
        with pytest.raises(PermissionError, match="--out .*cannot write"):
            run_distillation(config(out), kd_factory, datasets=synthetic())
    finally:
        hook.remove()
    assert not steps
