import json
from dataclasses import asdict
from pathlib import Path

import pytest
import timm
import torch

from lab_common import save_checkpoint
from lab_common.cli import run_console
from lavit.analysis import (
    AnalysisConfig,
    capture_attention,
    consecutive_similarity,
    main,
    run_analysis,
)
from lavit.lavit import LessAttention
from lavit.train import TrainConfig


def test_capture_lavit_attention_and_la_identity(tiny_model, tiny_input):
    maps = capture_attention(tiny_model, tiny_input)
    names = [n for n, _ in maps]
    assert len(maps) == 8 and names[0] == "stages.0.blocks.0.attn"
    assert maps[0][1].shape == (2, 1, 64, 16)  # stage 0: 8x8 queries, 4x4 reduced keys
    assert torch.allclose(maps[0][1].sum(-1), torch.ones(2, 1, 64), atol=1e-5)
    sims = consecutive_similarity(maps)
    # within each stage VA -> LA; at init (Theta = Psi = I) the LA map equals the VA map
    assert [s["layer"] for s in sims] == [0, 2, 4, 6]
    assert all(s["cosine"] == pytest.approx(1.0, abs=1e-6) for s in sims)
    # capture restored the fused (SDPA) setting and did not leave hooks behind
    assert tiny_model.stages[0].blocks[0].attn.fused_attn is True
    assert not tiny_model.stages[0].blocks[0].attn.attn_drop._forward_hooks


def test_capture_timm_vit_and_pvt():
    torch.manual_seed(0)
    deit = timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=3)
    maps = capture_attention(deit, torch.randn(1, 3, 32, 32))
    assert [m.shape for _, m in maps] == [(1, 3, 17, 17)] * 3
    sims = consecutive_similarity(maps)
    assert [(s["layer_a"], s["layer_b"]) for s in sims] == [
        ("blocks.0.attn", "blocks.1.attn"),
        ("blocks.1.attn", "blocks.2.attn"),
    ]
    # independent random layers: alike (probabilities are positive) but far from identical
    assert all(0.2 < s["cosine"] < 0.999 for s in sims), sims
    pvt = timm.create_model("pvt_v2_b0")
    assert len(capture_attention(pvt, torch.randn(1, 3, 64, 64))) == 8


def test_capture_rejects_models_without_attention():
    with pytest.raises(ValueError, match="no attention modules"):
        capture_attention(torch.nn.Linear(3, 3), torch.randn(1, 3))


def test_consecutive_similarity_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).expand(2, 3, 2, 2)  # (B, H, N_q, N_k)
    b = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).expand(2, 3, 2, 2)  # orthogonal to a
    c = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).expand(2, 3, 2, 2)
    small = torch.ones(2, 3, 1, 1)
    sims = consecutive_similarity([("a", a), ("a2", a), ("b", b), ("s", small), ("s2", small)])
    assert [(s["layer"], s["layer_a"], s["layer_b"]) for s in sims] == [
        (0, "a", "a2"),
        (1, "a2", "b"),
        (3, "s", "s2"),  # the pair across the change of shape is skipped
    ]
    assert [s["cosine"] for s in sims] == pytest.approx([1.0, 0.0, 1.0], abs=1e-6)
    # <a, c> = 2, |a| = sqrt(2), |c| = sqrt(3)
    expected = 2 / (2**0.5 * 3**0.5)
    assert consecutive_similarity([("a", a), ("c", c)])[0]["cosine"] == pytest.approx(expected)


def test_cli_writes_pngs_and_json(tmp_path):
    results = main(
        ["--models", "lavit_tiny", "pvt_v2_b0", "--img-size", "224", "--out", str(tmp_path)]
    )
    assert set(results) == {"lavit_tiny", "pvt_v2_b0"}
    assert json.loads((tmp_path / "similarity.json").read_text()) == results
    # untrained lavit_tiny at 224² (full 7x7 windows in every stage): each LA map re-uses the
    # softmax map before it (Psi = N·I, Theta = I); the pvt_v2 VA blocks compute new maps
    cosine = {r["layer_b"]: r["cosine"] for r in results["lavit_tiny"]}
    la = {
        n
        for n, m in timm.create_model("lavit_tiny").named_modules()
        if isinstance(m, LessAttention)
    }
    assert {n.split(".")[1] for n in la} == {"0", "1", "2", "3"}  # LA blocks in every stage
    for name in la:
        assert cosine[name] > 0.999, name
    assert min(r["cosine"] for r in results["pvt_v2_b0"]) < 0.995  # 0.990 measured
    for f in ("similarity.png", "attention_lavit_tiny.png", "attention_pvt_v2_b0.png"):
        assert (tmp_path / f).read_bytes()[:4] == b"\x89PNG"


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"checkpoints given for \['deit'\]"):
        AnalysisConfig(models=("lavit_tiny",), checkpoints={"deit": "x.pth"})
    with pytest.raises(ValueError, match="models is empty"):
        AnalysisConfig(models=())
    with pytest.raises(ValueError, match=r"unknown model 'lavit_huge'.*timm\.list_models"):
        run_analysis(AnalysisConfig(models=("lavit_huge",), out=str(tmp_path)))
    assert not any(tmp_path.iterdir())  # refused before writing anything


def test_console_script_exit_status(tmp_path, run_modules):
    ok, bad = run_modules(
        ("lavit.analysis", "--models", "lavit_tiny", "--img-size", "32", "--out", tmp_path),
        ("lavit.analysis", "--models", "lavit_huge", "--out", tmp_path / "bad"),
    )
    assert ok.returncode == 0, ok.stderr[-3000:]  # main returns a dict: still status 0
    assert "lavit_tiny: 9 attention layers" in ok.stdout
    assert (tmp_path / "similarity.json").is_file()
    assert bad.returncode == 2, bad.stderr[-3000:]
    lines = bad.stderr.strip().splitlines()
    # one error line, last (a library's import-time warning may come before it), no traceback
    assert lines[-1].startswith("lavit-analysis: error: unknown model 'lavit_huge'"), bad.stderr
    assert sum("error:" in line for line in lines) == 1 and "Traceback" not in bad.stderr
    assert "timm.list_models('lavit*')" in lines[-1]


def _lavit_train_run(folder, tiny_kwargs) -> str:
    """A folder as ``lavit-train`` leaves it: ``config.json`` and ``model.pth`` (10 classes)."""
    kwargs = {k: v for k, v in tiny_kwargs.items() if k not in ("img_size", "num_classes")}
    kwargs["window_sizes"] = (0, 0, 0, 0)
    model = timm.create_model("lavit_tiny", img_size=32, num_classes=10, **kwargs)
    cfg = TrainConfig(model="lavit_tiny", model_kwargs=kwargs, img_size=32, out=str(folder))
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(asdict(cfg)))
    return str(save_checkpoint(model.state_dict(), folder / "model.pth"))


def test_a_lavit_train_checkpoint_loads_with_its_run_settings(tmp_path, tiny_kwargs):
    checkpoint = _lavit_train_run(tmp_path / "r", tiny_kwargs)
    argv = ["--models", "lavit_tiny", "--checkpoint", f"lavit_tiny={checkpoint}"]
    results = main([*argv, "--img-size", "32", "--out", str(tmp_path / "a")])
    assert len(results["lavit_tiny"]) > 0
    with pytest.raises(ValueError, match=r"trained at img_size 32 .*pass --img-size 32"):
        main([*argv, "--img-size", "64", "--out", str(tmp_path / "b")])


def test_bad_checkpoints_and_images_are_one_line_naming_the_file(tmp_path, tiny_kwargs, capsys):
    checkpoint = _lavit_train_run(tmp_path / "r", tiny_kwargs)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(Path(checkpoint).read_bytes()[:1000])
    corrupt = tmp_path / "cat.jpg"
    corrupt.write_bytes(b"\xff\xd8 not a jpeg")
    common = ["--models", "lavit_tiny", "--img-size", "32", "--out", str(tmp_path / "a")]
    for extra, name in [
        (["--checkpoint", f"lavit_tiny={tmp_path / 'missing.pth'}"], "missing.pth"),
        (["--checkpoint", f"lavit_tiny={truncated}"], "truncated.pth"),
        (["--image", str(corrupt)], "cat.jpg"),
    ]:
        assert run_console(main, [*common, *extra], prog="lavit-analysis") == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("lavit-analysis: error: ") and name in line, line
