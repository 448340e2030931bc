"""trg_kd.train on the shared engine: exact resume, long-tail metrics, t-SNE, torchrun DDP."""

import json
import textwrap
from pathlib import Path

import pytest
import torch

from lab_common.checkpoint import load_checkpoint
from lab_common.distill_training import TensorImageDataset
from lab_common.testing import run_torchrun
from trg_kd.train import build_train_parser, main, trg_config_from_args


def synthetic(n_train=96, n_test=40, size=16, classes=4):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (n_train + n_test,), generator=g)
    x = torch.randint(0, 256, (n_train + n_test, 1, size, size), generator=g, dtype=torch.uint8)
    x[:, :, : size // 2] = (y * 60).to(torch.uint8).view(-1, 1, 1, 1)  # a learnable cue
    mean, std = (0.5,), (0.3,)
    train = TensorImageDataset(x[:n_train], y[:n_train], mean, std, augment=True, padding=2)
    test = TensorImageDataset(x[n_train:], y[n_train:], mean, std)
    return train, test, classes, 1


def argv(out_dir, *extra):
    return ["--teacher", "cifar_resnet8", "--student", "cifar_wrn_16_1", "--epochs", "2",
            "--teacher-epochs", "1", "--batch-size", "16", "--workers", "0", "--no-progress",
            "--device", "cpu", "--lr", "0.05", "--tokens-per-image", "4", "--k", "4",
            "--out-dir", str(out_dir), *extra]  # fmt: skip


def test_parser_maps_to_config():
    args = build_train_parser().parse_args(
        ["--inner-weight", "0.5", "--k", "3", "--tau-schedule", "linear", "--graph", "per-rank"]
    )
    cfg = trg_config_from_args(args)
    assert cfg.inner_weight == 0.5 and cfg.k == 3 and cfg.temperature.kind == "linear"
    assert not cfg.gather_distributed


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory):
    """A KD run (teacher trained here, then 1 student epoch) whose teacher.pt other tests reuse."""
    out = tmp_path_factory.mktemp("kd")
    result = main(
        argv(out, "--method", "kd", "--epochs", "1", "--tsne", "30"), datasets=synthetic()
    )
    return out, result


def test_kd_method_trains_teacher_and_plots_tsne(kd_run):
    out, result = kd_run
    assert result.teacher is not None and (out / "teacher.pt").is_file()
    assert set(json.loads((out / "result.json").read_text())) >= {"loss_kd", "tsne_png"}
    assert (out / "tsne.png").stat().st_size > 0


def test_ce_method_has_no_teacher(tmp_path):
    ce = main(argv(tmp_path, "--method", "ce", "--epochs", "1"), datasets=synthetic())
    assert ce.teacher is None and not (tmp_path / "teacher.pt").exists()


def test_resume_continues_exactly_and_reports_longtail_splits(tmp_path, kd_run):
    data = synthetic()
    lt = ["--imbalance-ratio", "4", "--lt-n-max", "16", "--many-shot", "10", "--few-shot", "5",
          "--teacher-checkpoint", str(kd_run[0] / "teacher.pt")]  # fmt: skip
    full = main(argv(tmp_path / "a", *lt), datasets=data)
    assert full.metrics["completed"]
    # interrupted after one of the two student epochs
    part = main(argv(tmp_path / "b", *lt, "--stop-after", "1"), datasets=data)
    assert not part.metrics["completed"]
    part = main(argv(tmp_path / "b", *lt, "--resume"), datasets=data)
    assert part.metrics["completed"]
    a, b = (load_checkpoint(tmp_path / d / "student_last.pt")["model"] for d in "ab")
    assert a.keys() == b.keys() and "loss.projector.proj.weight" in a
    for key in a:
        if key == "loss._extra_state":
            assert torch.equal(a[key]["generator"], b[key]["generator"])
        else:
            assert torch.equal(a[key], b[key]), key
    rows = [
        [json.loads(r) for r in (tmp_path / d / "student_metrics.jsonl").read_text().splitlines()]
        for d in "ab"
    ]
    assert [r["loss_local"] for r in rows[0]] == [r["loss_local"] for r in rows[1]]
    res = json.loads((tmp_path / "b" / "result.json").read_text())
    assert res["train_counts"] == [16, 10, 6, 4]  # 16 * 4^(-i/3)
    assert res["shot_splits"] == {"many": [0], "medium": [1, 2], "few": [3]}
    assert {"test_acc_many", "test_acc_medium", "test_acc_few"} <= set(res)


DDP_SCRIPT = """
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, {test_dir!r})
from test_train import argv, synthetic
from trg_kd import TRGLoss
from trg_kd.train import main

out = {out!r}
# 1) the gathered graph: mean of per-rank losses and DDP-averaged gradients equal one process
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
g = torch.Generator().manual_seed(0)
z_s, z_t = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
y = torch.randint(0, 5, (8,), generator=g)
f_s, f_t = torch.randn(8, 6, 4, 4, generator=g), torch.randn(8, 7, 4, 4, generator=g)
def grads(sl, **kw):
    torch.manual_seed(1); lf = TRGLoss(6, 7, tokens_per_image=16, k=5, **kw)
    fs = f_s[sl].clone().requires_grad_(True)
    terms = lf(z_s[sl], z_t[sl], y[sl], fs, f_t[sl])
    sum(terms.values()).backward()
    return {{k: v.detach() for k, v in terms.items()}}, lf.projector.proj.weight.grad, fs.grad
ref_out, ref_w, ref_f = grads(slice(None), gather_distributed=False)
sl = slice(4 * rank, 4 * rank + 4)
terms, w, f = grads(sl)
for k in terms:
    v = terms[k].clone(); dist.all_reduce(v); v /= world
    torch.testing.assert_close(v, ref_out[k], rtol=1e-5, atol=1e-6)
dist.all_reduce(w); w /= world
torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)
torch.testing.assert_close(f / world, ref_f[sl], rtol=1e-5, atol=1e-6)
# 2) a short DDP distillation keeps the ranks identical
result = main(argv(out, "--teacher-checkpoint", out + "/t.pt"), datasets=synthetic())
torch.save(result.student.state_dict(), f"{{out}}/rank{{os.environ['RANK']}}.pt")
"""


def test_torchrun_two_processes_gathered_graph_and_identical_ranks(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(
        textwrap.dedent(DDP_SCRIPT.format(test_dir=str(Path(__file__).parent), out=str(tmp_path)))
    )
    run_torchrun([script])
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0.keys() == r1.keys()
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    saved = load_checkpoint(tmp_path / "student.pt")["model"]
    for key in r0:
        assert torch.equal(saved[key], r0[key]), key
