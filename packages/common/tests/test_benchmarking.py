import json
import mmap
import time

import pytest

from lab_common import (
    machine_description,
    markdown_table,
    measure,
    measure_interleaved,
    write_benchmark,
)


def test_measure_counts_calls_and_orders_stats():
    calls = []
    m = measure(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7
    assert m.repeats == 5
    assert 0 <= m.min_s <= m.median_s
    assert m.peak_memory_mb >= 0


def test_measure_sees_memory_growth():
    def allocate():
        # a fresh anonymous mapping: malloc could reuse resident heap a previous test freed
        buf = mmap.mmap(-1, 64 * 2**20)
        buf[::4096] = b"x" * len(buf[::4096])  # touch every page so it is resident
        time.sleep(0.5)  # hold it long enough for the sampler thread on a loaded machine
        buf.close()

    m = measure(allocate, warmup=0, repeats=1)
    assert m.peak_memory_mb > 30


def test_measure_interleaved_alternates_the_order():
    calls = []
    fast, slow = (lambda: calls.append("a")), (lambda: (calls.append("b"), time.sleep(0.02)))
    m = measure_interleaved({"a": fast, "b": slow}, warmup=1, repeats=4)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then A B, B A
    assert m["a"].repeats == m["b"].repeats == 4
    assert m["b"].median_s > 0.015 > m["a"].median_s
    with pytest.raises(ValueError, match="repeats"):
        measure_interleaved({"a": fast}, repeats=0)


def test_measure_bad_args():
    with pytest.raises(ValueError, match="repeats"):
        measure(lambda: None, repeats=0)


def test_markdown_table_and_write(tmp_path):
    rows = [{"model": "a", "img/s": 12.3456}, {"model": "b", "img/s": 100000.0, "extra": 1}]
    md = markdown_table(rows)
    lines = md.splitlines()
    assert lines[0] == "| model | img/s | extra |"
    assert lines[2] == "| a | 12.35 |  |"
    assert lines[3] == "| b | 100,000 | 1 |"
    out = write_benchmark(rows, tmp_path, "demo", title="T")
    assert out.startswith("### T")
    assert (tmp_path / "demo.md").read_text() == out
    payload = json.loads((tmp_path / "demo.json").read_text())
    assert payload["rows"] == rows
    assert payload["machine"] == machine_description()
    with pytest.raises(ValueError):
        markdown_table([])
