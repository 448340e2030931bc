import json

import pytest
import torch

from lab_common import all_reduce_mean, barrier, init_distributed, is_main_process
from lab_common.testing import run_torchrun


def test_single_process_context(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed(device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(all_reduce_mean(t), t)
    assert is_main_process()
    barrier()


WORKER = """
import json, sys
import torch
from lab_common import all_reduce_mean, cleanup_distributed, init_distributed, is_main_process

ctx = init_distributed(device="cpu")
mean = all_reduce_mean(torch.tensor([float(ctx.rank), 10.0]))
with open(f"{sys.argv[1]}/rank{ctx.rank}.json", "w") as f:
    json.dump([ctx.rank, ctx.world_size, ctx.is_main, is_main_process(), mean.tolist()], f)
cleanup_distributed()
"""


@pytest.mark.slow
def test_two_process_torchrun_gloo_mean(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run_torchrun([script, tmp_path], timeout=180)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results == [[0, 2, True, True, [0.5, 10.0]], [1, 2, False, False, [0.5, 10.0]]]
