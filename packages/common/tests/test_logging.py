import json

import torch

from lab_common import MetricsLogger, plot_metrics, progress, read_metrics


def test_logger_writes_json_lines(tmp_path):
    log = MetricsLogger(tmp_path / "m.jsonl")
    for epoch in range(3):
        log.log(epoch=epoch, loss=torch.tensor(1.0 / (epoch + 1)), acc=50.0 + epoch)
    records = read_metrics(tmp_path / "m.jsonl")
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert records[1]["loss"] == 0.5
    assert all("time" in r for r in records)


def test_disabled_logger_writes_nothing(tmp_path):
    MetricsLogger(tmp_path / "x" / "m.jsonl", enabled=False).log(a=1)
    assert not (tmp_path / "x").exists()


def test_truncated_last_line_ignored(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"epoch": 0, "loss": 1.0}) + "\n" + '{"epoch": 1, "lo')
    assert read_metrics(p) == [{"epoch": 0, "loss": 1.0}]


def test_plot_metrics_writes_png(tmp_path):
    log = MetricsLogger(tmp_path / "m.jsonl")
    for epoch in range(4):
        log.log(epoch=epoch, loss=1.0 / (epoch + 1), acc=10.0 * epoch, note="text")
    out = plot_metrics(tmp_path / "m.jsonl", tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_passthrough():
    assert list(progress(range(3), enabled=False)) == [0, 1, 2]
