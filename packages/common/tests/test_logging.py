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


def test_progress_in_a_log_writes_lines_not_carriage_returns():
    import io

    stream = io.StringIO()  # not a terminal
    bar = progress(range(5), desc="epoch 1", file=stream, interval=0.0)
    for i in bar:
        bar.set_postfix(loss=f"{1.0 / (i + 1):.2f}")
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 6  # one per item at interval 0, plus the closing line
    assert lines[-1].startswith("epoch 1: 5/5 [") and lines[-1].endswith("loss=0.20")


def test_progress_line_interval_bounds_the_output():
    import io

    stream = io.StringIO()
    assert list(progress(range(1000), file=stream, interval=3600.0)) == list(range(1000))
    assert stream.getvalue().splitlines() == [stream.getvalue().splitlines()[0]]
    assert stream.getvalue().startswith("progress: 1000/1000 [")


def test_disabled_progress_prints_nothing_and_takes_postfix(capsys):
    bar = progress(range(2), enabled=False, desc="x")
    bar.set_postfix(a=1)
    assert list(bar) == [0, 1]
    assert capsys.readouterr().err == ""
