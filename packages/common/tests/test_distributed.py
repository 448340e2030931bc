import json

import pytest
import torch

from lab_common import (
    all_reduce_mean,
    average_gradients,
    barrier,
    init_distributed,
    is_main_process,
)
from lab_common.testing import run_torchrun


def test_single_process_context(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed(device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(all_reduce_mean(t), t)
    assert is_main_process()
    barrier()
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([1.0, 2.0])
    average_gradients([p])  # alone: the gradient as it is
    assert torch.equal(p.grad, torch.tensor([1.0, 2.0]))


WORKER = """
import json, sys
import torch
from lab_common import (
    all_reduce_mean, average_gradients, cleanup_distributed, init_distributed, is_main_process
)

ctx = init_distributed(device="cpu")
mean = all_reduce_mean(torch.tensor([float(ctx.rank), 10.0]))
# a gradient on both ranks, one on rank 1 only, one on neither
both, one, none = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
both.grad = torch.tensor([float(ctx.rank), 4.0])
if ctx.rank == 1:
    one.grad = torch.tensor([2.0, 6.0])
average_gradients([both, one, none])
grads = [both.grad.tolist(), one.grad.tolist(), none.grad]
with open(f"{sys.argv[1]}/rank{ctx.rank}.json", "w") as f:
    json.dump([ctx.rank, ctx.world_size, ctx.is_main, is_main_process(), mean.tolist(), grads], f)
cleanup_distributed()
"""


@pytest.mark.slow
def test_two_process_torchrun_gloo_means(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run_torchrun([script, tmp_path], timeout=180)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    grads = [[0.5, 4.0], [1.0, 3.0], None]  # a missing gradient counts as zeros
    assert results == [
        [0, 2, True, True, [0.5, 10.0], grads],
        [1, 2, False, False, [0.5, 10.0], grads],
    ]
