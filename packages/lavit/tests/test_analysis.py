import json

import pytest
import timm
import torch

import lavit
from lavit.analysis import capture_attention, consecutive_similarity, main


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
    assert len(sims) == 2 and all(-1 <= s["cosine"] <= 1 for s in sims)
    pvt = timm.create_model("pvt_v2_b0")
    assert len(capture_attention(pvt, torch.randn(1, 3, 64, 64))) == 8


def test_capture_rejects_models_without_attention():
    with pytest.raises(ValueError, match="no attention modules"):
        capture_attention(torch.nn.Linear(3, 3), torch.randn(1, 3))


def test_cli_writes_pngs_and_json(tmp_path):
    assert lavit.__version__
    results = main(
        ["--models", "lavit_tiny", "pvt_v2_b0", "--img-size", "64", "--out", str(tmp_path)]
    )
    assert set(results) == {"lavit_tiny", "pvt_v2_b0"}
    assert json.loads((tmp_path / "similarity.json").read_text()).keys() == results.keys()
    for f in ("similarity.png", "attention_lavit_tiny.png", "attention_pvt_v2_b0.png"):
        assert (tmp_path / f).stat().st_size > 1000
