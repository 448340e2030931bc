"""trg_kd.train on the shared engine: typed config, exact resume, long-tail metrics, t-SNE, DDP."""

import json
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lab_common.checkpoint import load_checkpoint
from lab_common.cli import run_console
from lab_common.distill import KDLoss, TensorImageDataset
from lab_common.testing import require_optional, run_torchrun
from trg_kd.train import TrainConfig, check_graph_settings, main, parse_config, train


def synthetic(n_train=96, n_test=40, size=16, classes=4):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (n_train + n_test,), generator=g)
    x = torch.randint(0, 256, (n_train + n_test, 1, size, size), generator=g, dtype=torch.uint8)
    x[:, :, : size // 2] = (y * 60).to(torch.uint8).view(-1, 1, 1, 1)  # a learnable cue
    mean, std = (0.5,), (0.3,)
    train_ds = TensorImageDataset(x[:n_train], y[:n_train], mean, std, augment=True, padding=2)
    test_ds = TensorImageDataset(x[n_train:], y[n_train:], mean, std)
    return train_ds, test_ds, classes, 1


def config(out, **overrides) -> TrainConfig:
    base = {
        "teacher": "cifar_resnet8",
        "student": "cifar_wrn_16_1",
        "epochs": 2,
        "teacher_epochs": 1,
        "batch_size": 16,
        "workers": 0,
        "progress": False,
        "device": "cpu",
        "lr": 0.05,
        "tokens_per_image": 4,
        "k": 4,
        "out": out,
    }
    return TrainConfig(**{**base, **overrides})


def test_options_build_the_config_and_its_trg_config():
    argv = "--inner-weight 0.5 --k 3 --tau-schedule linear --graph per-rank --out r --seed 3"
    cfg = parse_config(argv.split())
    assert isinstance(cfg, TrainConfig) and cfg.out == "r"
    trg = cfg.trg_config()
    assert trg.inner_weight == 0.5 and trg.k == 3 and trg.temperature.kind == "linear"
    assert not trg.gather_distributed and trg.seed == 3
    for bad in (["--epochs", "0"], ["--k", "0"], ["--method", "crd"]):
        with pytest.raises(SystemExit):
            parse_config(bad)
    with pytest.raises(ValueError, match="graph must be one of"):
        TrainConfig(graph="ring")
    with pytest.raises(ValueError, match="sigma must be > 0"):
        TrainConfig(sigma=0.0)


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory):
    """A KD run (teacher trained here, then 1 student epoch) whose teacher.pt other tests reuse.

    It plots a t-SNE where scikit-learn (the ``tsne`` extra) is installed.
    """
    out = tmp_path_factory.mktemp("kd")
    try:
        import sklearn.manifold  # noqa: F401
    except ImportError:
        tsne = 0
    else:
        tsne = 30
    result = train(config(out, method="kd", epochs=1, tsne=tsne), datasets=synthetic())
    return out, result


def test_kd_method_is_the_shared_baseline_with_ce_one_and_plots_tsne(kd_run):
    require_optional("sklearn")
    out, result = kd_run
    assert result.teacher is not None and (out / "teacher.pt").is_file()
    assert set(json.loads((out / "result.json").read_text())) >= {"loss_kd", "tsne_png"}
    assert (out / "tsne.png").stat().st_size > 0
    state = load_checkpoint(out / "student_last.pt")
    assert state["config"]["method"] == "kd" and state["config"]["tsne"] == 30


def test_kd_method_passes_ce_one_and_lambda(monkeypatch, tmp_path, kd_run):
    built = []
    real_init = KDLoss.__init__

    def spy(self, **weights):
        built.append(weights)
        real_init(self, **weights)

    monkeypatch.setattr(KDLoss, "__init__", spy)
    teacher = kd_run[0] / "teacher.pt"
    cfg = config(tmp_path, method="kd", kd_weight=2.5, kd_temperature=3.0, epochs=1)
    train(replace(cfg, teacher_checkpoint=teacher), datasets=synthetic())
    assert built == [{"ce_weight": 1.0, "kd_weight": 2.5, "temperature": 3.0}]


def test_ce_method_has_no_teacher(tmp_path):
    ce = train(config(tmp_path, method="ce", epochs=1), datasets=synthetic())
    assert ce.teacher is None and not (tmp_path / "teacher.pt").exists()


def test_resume_continues_exactly_and_reports_longtail_splits(tmp_path, kd_run):
    data = synthetic()
    lt = {
        "imbalance_ratio": 4,
        "lt_n_max": 16,
        "many_shot": 10,
        "few_shot": 5,
        "teacher_checkpoint": kd_run[0] / "teacher.pt",
    }
    full = train(config(tmp_path / "a", **lt), datasets=data)
    assert full.metrics["completed"] and isinstance(full.student, torch.nn.Module)
    # interrupted after one of the two student epochs
    part = train(config(tmp_path / "b", **lt, stop_after=1), datasets=data)
    assert not part.metrics["completed"]
    changed = config(tmp_path / "b", **{**lt, "k": 3})
    with pytest.raises(ValueError, match=r"k: 4 -> 3.*--allow-changed k"):
        train(changed, resume=True, datasets=data)
    part = train(config(tmp_path / "b", **lt), resume=True, datasets=data)
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
    assert {"val_top1_many", "val_top1_medium", "val_top1_few"} <= set(res)


def test_train_needs_its_config():
    with pytest.raises(TypeError, match="trg_kd.train.TrainConfig"):
        train({"method": "trg"})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"k": 64},  # 16 images x 4 tokens = 64 nodes
            r"--k 64 needs more than 64 graph nodes, but a step has 64 \(--batch-size 16 x 4 "
            r"tokens per image of the 16 aligned tokens x 1 process\(es\)\)",
        ),
        ({"k": 300, "tokens_per_image": 64}, r"--k 300 .* a step has 256 .* x 16 tokens per image"),
        ({"batch_size": 1}, r"--batch-size 1: .* at least 2 images per batch"),
    ],
)
def test_graph_settings_are_checked_before_the_teacher_trains(tmp_path, overrides, message):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        train(config(out, **overrides), datasets=synthetic())
    assert not out.exists()  # no teacher epoch was spent (it used to fail at the first TRG step)
    for no_graph in ({"method": "kd"}, {"local_weight": 0.0, "global_weight": 0.0}):
        check_graph_settings(config(out, **overrides, **no_graph), 4, (1, 16, 16))


def test_unknown_model_and_bad_numbers_are_one_line_errors(tmp_path, capsys):
    argv = ["--out", str(tmp_path / "run"), "--device", "cpu", "--teacher", "resnet_9000"]
    assert run_console(main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: unknown model 'resnet_9000' (--teacher)" in err
    assert "timm.list_models()" in err and "cifar_*" in err
    for bad, message in (
        (["--lr", "-1"], "--lr: expected a number > 0, got -1"),
        (["--epochs", "0"], "--epochs: expected a positive integer, got 0"),
        (["--epochs", "-1"], "--epochs: expected a positive integer, got -1"),
        (["--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
        (["--batch-size", "-4"], "--batch-size: expected a positive integer, got -4"),
        (["--kd-weight", "-1"], "--kd-weight: expected a number >= 0, got -1"),
        (["--local-weight", "-0.5"], "--local-weight: expected a number >= 0, got -0.5"),
        (["--kd-temperature", "0"], "--kd-temperature: expected a number > 0, got 0"),
        (["--tau-end", "-0.1"], "--tau-end: expected a number > 0, got -0.1"),
        (["--sigma", "0"], "--sigma: expected a number > 0, got 0"),
        (["--k", "0"], "--k: expected a positive integer, got 0"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            parse_config(bad)
        assert exit_info.value.code == 2
        assert (
            capsys.readouterr().err.splitlines()[-1] == f"trg-kd-train: error: argument {message}"
        )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("kd_temperature", 0.0, r"kd_temperature \(--kd-temperature\) must be > 0"),
        ("imbalance_ratio", 0.5, r"imbalance_ratio \(--imbalance-ratio\) must be >= 1"),
        ("lt_n_max", 0, r"lt_n_max must be >= 1"),
        ("few_shot", 200, r"few_shot <= many_shot \(--few-shot, --many-shot\), got 200 and 100"),
        ("tau_start", 0.0, "temperatures must be > 0"),
        ("global_weight", -1.0, "global_weight must be >= 0"),
        ("lr", -1.0, "lr must be > 0"),
        ("batch_size", -4, "batch_size must be >= 1, got -4"),
    ],
)
def test_config_rejects_bad_numbers(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_same_seed_runs_are_bit_identical_on_several_threads(tmp_path, kd_run):
    """Two same-seed TRG runs on a multi-threaded CPU give identical weights, --deterministic
    or not (the local term's accumulation does not depend on the thread schedule)."""
    data = synthetic(n_train=48)  # 3 steps of 16
    teacher = kd_run[0] / "teacher.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        weights = {}
        for deterministic in (False, True):
            for run in "ab":
                out = tmp_path / f"{deterministic}-{run}"
                cfg = config(out, epochs=1, teacher_checkpoint=teacher, tokens_per_image=16)
                train(replace(cfg, deterministic=deterministic), datasets=data)
                weights[deterministic, run] = load_checkpoint(out / "student_last.pt")["model"]
    finally:
        torch.set_num_threads(threads)
    for deterministic in (False, True):
        a, b = weights[deterministic, "a"], weights[deterministic, "b"]
        for key in a:
            if key != "loss._extra_state":
                assert torch.equal(a[key], b[key]), (deterministic, key)


DDP_SCRIPT = """
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, {test_dir!r})
from test_train import config, synthetic
from trg_kd import TRGLoss
from trg_kd.train import train

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
# 2) a short DDP distillation keeps the ranks identical (--batch-size 16 per process)
result = train(config(out, teacher_checkpoint=out + "/t.pt"), datasets=synthetic())
torch.save(result.student.state_dict(), f"{{out}}/rank{{os.environ['RANK']}}.pt")
"""


@pytest.mark.slow
def test_torchrun_two_processes_gathered_graph_and_identical_ranks(tmp_path):
    script, out = tmp_path / "ddp.py", tmp_path / "run"  # the run folder starts empty
    script.write_text(
        textwrap.dedent(DDP_SCRIPT.format(test_dir=str(Path(__file__).parent), out=str(out)))
    )
    run_torchrun([script])
    r0, r1 = (torch.load(out / f"rank{r}.pt") for r in (0, 1))
    assert r0.keys() == r1.keys()
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    saved = load_checkpoint(out / "student.pt")["model"]
    for key in r0:
        assert torch.equal(saved[key], r0[key]), key
