"""timm's model contract for graph capture: FX tracing, torchvision feature extraction, TorchScript.

``lavit_tiny`` at small inputs: 64 x 64 gives grids 16/8/4/2, padded to 7 x 7 windows in every
stage (masked keys, windows of padding only in the attention residuals); 96 x 160 a non-square
grid. A graph is traced once and run at both sizes.
"""

import pytest
import timm
import torch
from torch.fx import symbolic_trace
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from lavit import LaViT

SIZES = [(64, 64), (96, 160)]


def _tiny(train: bool = False, **kwargs) -> LaViT:
    torch.manual_seed(0)
    return timm.create_model("lavit_tiny", num_classes=10, **kwargs).train(train)


def _input(size: tuple[int, int], batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_symbolic_trace_runs_at_every_size_like_the_eager_model():
    model = _tiny()
    graph = symbolic_trace(model)
    with torch.no_grad():
        for size in SIZES:
            x = _input(size)
            torch.testing.assert_close(graph(x), model(x), rtol=0, atol=0)


def test_traced_graph_keeps_the_input_check():
    graph = symbolic_trace(_tiny())
    with pytest.raises(ValueError, match="multiples of the total stride 32"):
        graph(torch.randn(1, 3, 64, 70))
    with pytest.raises(ValueError, match="in_chans=3"):
        graph(torch.randn(1, 1, 64, 64))


@pytest.mark.parametrize("mlp_dwconv", [False, True])
def test_traced_forward_backward_with_aux_loss_match_eager(mlp_dwconv):
    """``return_aux`` is a Python flag: trace it with ``concrete_args``; train mode, gradients."""
    model, twin = _tiny(train=True, mlp_dwconv=mlp_dwconv), _tiny(train=True, mlp_dwconv=mlp_dwconv)
    graph = symbolic_trace(twin, concrete_args={"return_aux": True})
    x = _input((96, 160))
    logits, aux = model(x, return_aux=True)
    traced_logits, traced_aux = graph(x, True)
    torch.testing.assert_close(traced_logits, logits)
    torch.testing.assert_close(traced_aux["loss_dp"], aux["loss_dp"])
    (logits.square().mean() + aux["loss_dp"]).backward()
    (traced_logits.square().mean() + traced_aux["loss_dp"]).backward()
    expected, got = _grads(model), _grads(graph)
    assert expected.keys() == got.keys()
    assert len(expected) == sum(p.requires_grad for p in model.parameters())
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


def test_global_attention_layout_traces(tiny_kwargs):
    """The PVTv2 layout: global attention, spatial-reduction keys, attention downsampling convs."""
    torch.manual_seed(0)
    model = LaViT(**tiny_kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    graph = symbolic_trace(model, concrete_args={"return_aux": True})
    logits, aux = model(x, return_aux=True)
    traced_logits, traced_aux = graph(x, True)
    torch.testing.assert_close(traced_logits, logits)
    torch.testing.assert_close(traced_aux["loss_dp"], aux["loss_dp"])


def test_create_feature_extractor_stage_maps_and_logits_forward_backward():
    model = _tiny(train=True)
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert train_nodes == eval_nodes
    nodes = {f"stages.{i}": f"s{i}" for i in range(4)} | {"head": "logits"}
    extractor = create_feature_extractor(model, return_nodes=nodes)
    x = _input((96, 160))
    out = extractor(x)
    final, stages = model.forward_intermediates(x)
    logits = model.forward_head(final)
    assert [out[f"s{i}"].shape[1] for i in range(4)] == [f["num_chs"] for f in model.feature_info]
    for i, stage in enumerate(stages):
        torch.testing.assert_close(out[f"s{i}"], stage)
    torch.testing.assert_close(out["logits"], logits)
    (logits.square().mean() + stages[1].mean()).backward()
    (out["logits"].square().mean() + out["s1"].mean()).backward()
    expected, got = _grads(model), _grads(extractor)
    assert expected.keys() == got.keys() and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


def test_timm_fx_feature_model_matches_the_getter():
    """``features_only=True, feature_cls="fx"`` (timm's ``FeatureGraphNet``) like the default."""
    torch.manual_seed(0)
    getter = timm.create_model("lavit_tiny", features_only=True, out_indices=(1, 2, 3)).eval()
    torch.manual_seed(0)
    graph = timm.create_model(
        "lavit_tiny", features_only=True, feature_cls="fx", out_indices=(1, 2, 3)
    ).eval()
    x = _input((64, 64))
    with torch.no_grad():
        for a, b in zip(graph(x), getter(x), strict=True):
            torch.testing.assert_close(a, b)


def test_torchscript_by_tracing_at_a_fixed_size():
    """``torch.jit.trace`` records one input size: the window geometry becomes constants."""
    model = _tiny()
    x = _input((64, 64), batch=1)
    with torch.no_grad():
        scripted = torch.jit.trace(model, x, check_trace=False)
        torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.xfail(
    raises=RuntimeError,
    strict=True,
    reason="not scriptable: the window geometry (StageGeometry) is a Python object made per "
    "input size and forward returns a tensor or a (tensor, dict) pair by flag; use FX, "
    "torch.jit.trace at one size, torch.compile or torch.export (ONNX) instead",
)
def test_torch_jit_script():
    torch.jit.script(_tiny())
