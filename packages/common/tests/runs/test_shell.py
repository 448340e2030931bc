import json
from types import SimpleNamespace

import pytest
import torch

from lab_common import read_metrics
from lab_common.runs import TrainingRun

RUN_FILES = ("last.pt", "last.prev.pt", "config.json", "metrics.jsonl", "curves.png", "model.pth")


def _train(out, *, epochs=3, stop_after=None, resume=False, lr=0.1):
    """A toy trainer on the shell: one noisy SGD step per epoch (the noise from the RNG)."""
    cfg = SimpleNamespace(out=out, device="cpu", epochs=epochs, stop_after_epoch=stop_after)
    run = TrainingRun.open(cfg, RUN_FILES, resume=resume, overwrite=False)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    settings = {"epochs": epochs, "lr": lr}
    if resume:
        state = run.restore(settings, allow_changed=(), always_allowed=("epochs",), fixed=())
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    model = run.begin(model, settings, "val")
    for epoch in run.remaining():
        loss = model(torch.randn(4, 3)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        state |= {"epoch": epoch + 1, "config": settings}
        run.end_epoch({"epoch": epoch + 1, "val_top1": 10.0 * epoch}, state)
    run.finish(model.state_dict())
    run.close()
    return model


def test_interrupted_run_resumes_to_the_same_weights_and_metrics(tmp_path):
    full = _train(tmp_path / "a")
    assert _train(tmp_path / "b", stop_after=1) is not None
    assert [r["epoch"] for r in read_metrics(tmp_path / "b/metrics.jsonl")] == [1]
    resumed = _train(tmp_path / "b", resume=True)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the RNG states came back with the checkpoint
    a, b = (read_metrics(tmp_path / f"{x}/metrics.jsonl") for x in "ab")
    assert [(r["epoch"], r["val_top1"]) for r in a] == [(r["epoch"], r["val_top1"]) for r in b]
    assert [r["epoch"] for r in b] == [1, 2, 3]
    config = json.loads((tmp_path / "b/config.json").read_text())
    assert config == {"epochs": 3, "lr": 0.1, "eval_split": "val"}
    assert (tmp_path / "b/model.pth").is_file() and (tmp_path / "b/curves.png").is_file()
    assert torch.load(tmp_path / "b/last.prev.pt", weights_only=False)["epoch"] == 2


def test_the_folder_rules_hold(tmp_path):
    _train(tmp_path / "a", epochs=1)
    with pytest.raises(FileExistsError, match="not empty"):
        _train(tmp_path / "a", epochs=1)
    with pytest.raises(ValueError, match="lr"):
        _train(tmp_path / "a", epochs=2, resume=True, lr=0.5)  # a changed setting, not named
