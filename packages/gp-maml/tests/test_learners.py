import pytest
import torch
from torch import nn

from gp_maml import METHODS, Conv4, MetaLearner, RelationNet, create_learner
from lab_common.testing import DEVICES


def _tasks(b=3, ways=3, shots=1, queries=4, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(b, ways, 1, size, size, generator=g)
    xs = protos.repeat_interleave(shots, 1) + 0.1 * torch.randn(
        b, ways * shots, 1, size, size, generator=g
    )
    xq = protos.repeat_interleave(queries, 1) + 0.1 * torch.randn(
        b, ways * queries, 1, size, size, generator=g
    )
    ys = torch.arange(ways).repeat_interleave(shots).repeat(b, 1)
    yq = torch.arange(ways).repeat_interleave(queries).repeat(b, 1)
    return xs, ys, xq, yq


def _model():
    torch.manual_seed(0)
    return Conv4(1, 3, 8, 16).double()


@pytest.mark.parametrize("method,changed", [("anil", "head"), ("boil", "body"), ("maml", "all")])
def test_inner_loop_subset(method, changed):
    learner = create_learner(method, _model())
    params = dict(learner.model.named_parameters())
    xs, ys, _, _ = _tasks()
    out = learner.adapt(params, xs[0].double(), ys[0])
    for name, p in params.items():
        moved = not torch.equal(out[name], p)
        is_head = name.startswith("head.")
        expect = {"head": is_head, "body": not is_head, "all": True}[changed]
        assert moved == expect, name


@pytest.mark.parametrize("method", METHODS)
def test_vmap_equals_loop(method):
    xs, ys, xq, yq = (t.double() if t.is_floating_point() else t for t in _tasks())
    results = []
    for batching in ("loop", "vmap"):
        learner = create_learner(method, _model(), task_batching=batching, lp_topk=8).double()
        torch.manual_seed(1)
        if learner.relation_net is not None:
            for p in learner.relation_net.parameters():
                nn.init.normal_(p, std=0.5)
        out = learner(xs, ys, xq, yq)
        out.loss.backward()
        grads = [p.grad.clone() for p in learner.parameters()]
        results.append((out, grads))
    (a, ga), (b, gb) = results
    if learner.gp:  # some task re-trains on a strict subset: loop gathers, vmap weights
        assert torch.any((a.picked > 0) & (a.picked < xq.shape[1]))
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.logits, b.logits)
    assert torch.equal(a.picked, b.picked)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y)


def test_propagate_uses_the_learners_graph():
    from gp_maml import label_propagation

    z, ys, sigma = torch.randn(8, 4), torch.tensor([0, 1, 2]), torch.rand(8, 1) + 0.5
    for loops in (True, False):
        learner = create_learner("gp-maml", _model(), lp_alpha=0.9, lp_topk=3, self_loops=loops)
        expect = label_propagation(z, ys, sigma, 3, alpha=0.9, topk=3, self_loops=loops)
        torch.testing.assert_close(learner.propagate(z, ys, sigma, 3), expect)
    looped = create_learner("gp-maml", _model(), lp_topk=3).propagate(z, ys, sigma, 3)
    plain = create_learner("gp-maml", _model(), lp_topk=3, self_loops=False)
    assert not torch.allclose(looped, plain.propagate(z, ys, sigma, 3))  # the graphs differ


def test_gp_learner_picks_on_easy_tasks_and_trains_relation_net():
    learner = create_learner("gp-maml", _model(), lp_topk=5).double()
    xs, ys, xq, yq = (t.double() if t.is_floating_point() else t for t in _tasks())
    out = learner(xs, ys, xq, yq)
    assert torch.all(out.picked > 0) and torch.all(out.picked % 3 == 0)
    out.loss.backward()
    assert all(p.grad is not None for p in learner.relation_net.parameters())


def _sequential(outputs=3):
    """A plain ``nn.Sequential`` (no ``head`` submodule, no ``num_features``), as users of
    learn2learn's ``MAML(model)`` write one."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, outputs),
    )


@pytest.mark.parametrize("method", METHODS)
def test_any_sequential_model_without_head_argument(method):
    learner = create_learner(method, _sequential())
    assert learner.head == "4"  # its last layer with parameters
    expect = {"maml": ["0.weight", "0.bias", "4.weight", "4.bias"], "anil": ["4.weight", "4.bias"]}
    expect["boil"] = ["0.weight", "0.bias"]
    assert learner.adapted == expect[method.removeprefix("gp-")]
    out = learner(*_tasks())  # GP: a relation net sized from the head's in_features
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None for p in learner.model.parameters())


def test_a_head_wider_than_the_tasks_ways_is_refused():
    learner = create_learner("maml", _sequential(outputs=10))
    with pytest.raises(
        ValueError, match=r"the head \('4'\) has 10 outputs but the tasks are 3-way"
    ):
        learner(*_tasks(ways=3))


def test_from_modules_and_errors():
    body = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))
    learner = MetaLearner.from_modules(
        body, nn.Linear(8, 2), method="gp-anil", relation_net=RelationNet(8)
    )
    assert learner.adapted == ["head.weight", "head.bias"]
    with pytest.raises(ValueError, match="unknown method"):
        create_learner("reptile", _model())
    with pytest.raises(ValueError, match="head prefix"):
        create_learner("maml", _model(), head="classifier")
    with pytest.raises(ValueError, match="task_batching"):
        create_learner("maml", _model(), task_batching="fast")
    # the relation net is sized from model.num_features, else a linear head's in_features
    assert MetaLearner.from_modules(body, nn.Linear(8, 2), method="gp-maml").relation_net
    with pytest.raises(ValueError, match="relation_net"):
        MetaLearner.from_modules(body, nn.Sequential(nn.Linear(8, 2)), method="gp-maml")
    with pytest.raises(ValueError, match=r"\(B, N, C, H, W\)"):
        create_learner("maml", _model())(
            torch.randn(3, 1, 16, 16),
            torch.zeros(3).long(),
            torch.randn(3, 1, 16, 16),
            torch.zeros(3).long(),
        )


def test_fused_batch_norm_refused_under_vmap_second_order():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten()
    )
    model.add_module("head", nn.Linear(4 * 14 * 14, 3))
    xs, ys, xq, yq = _tasks()
    with pytest.raises(ValueError, match="second-order"):
        create_learner("maml", model, task_batching="vmap")(xs, ys, xq, yq)
    # loop mode and first order are fine
    create_learner("maml", model, task_batching="loop")(xs, ys, xq, yq)
    create_learner("maml", model, task_batching="vmap", first_order=True)(xs, ys, xq, yq)


def test_gp_fallback_without_picks_equals_vmap_and_base_adaptation():
    # random tasks on an untrained net: some class gets no pseudo-label -> theta' is kept
    g = torch.Generator().manual_seed(3)
    xs, xq = torch.randn(2, 3, 1, 16, 16, generator=g), torch.randn(2, 6, 1, 16, 16, generator=g)
    ys, yq = torch.arange(3).repeat(2, 1), torch.arange(3).repeat_interleave(2).repeat(2, 1)
    outs = []
    for batching in ("loop", "vmap"):
        learner = create_learner("gp-maml", _model().float(), task_batching=batching, lp_topk=3)
        learner.eval()
        with torch.no_grad():
            outs.append(learner(xs, ys, xq, yq))
    assert torch.equal(outs[0].picked, outs[1].picked)
    torch.testing.assert_close(outs[0].logits, outs[1].logits)
    base = create_learner("maml", _model().float()).eval()
    skipped = outs[0].picked == 0
    assert skipped.any(), "fixture should produce a task without picks"
    with torch.no_grad():
        ref = base(xs, ys, xq, yq).logits
    torch.testing.assert_close(outs[0].logits[skipped], ref[skipped])


def test_lp_loss_weight_scales_the_label_propagation_term():
    xs, ys, xq, yq = (t.double() if t.is_floating_point() else t for t in _tasks())
    losses = {}
    for weight in (0.0, 0.5, 1.0):
        learner = create_learner("gp-maml", _model(), lp_topk=5, lp_loss_weight=weight).double()
        losses[weight] = learner(xs, ys, xq, yq).loss
    torch.testing.assert_close(losses[0.5] - losses[0.0], 0.5 * (losses[1.0] - losses[0.0]))
    assert losses[1.0] > losses[0.0]  # the term is a cross-entropy, positive
    # evaluation mode never adds it (query labels are unknown at test time)
    learner = create_learner("gp-maml", _model(), lp_topk=5, lp_loss_weight=1.0).double().eval()
    torch.testing.assert_close(learner(xs, ys, xq, yq).loss, losses[0.0])


def test_class_mass_norm_switch_changes_what_is_picked():
    # identical learners except for the picking rule: on random tasks of an untrained net the
    # raw scores leave some class unpredicted (nothing picked) more often than the normalised
    xs, ys, xq, yq = _tasks(b=6, ways=3, queries=6, seed=4)
    xs, xq = torch.randn_like(xs), torch.randn_like(xq)
    picked = {}
    for norm in (False, True):
        learner = create_learner("gp-maml", _model().float(), lp_topk=5, class_mass_norm=norm)
        with torch.no_grad():
            picked[norm] = learner.eval()(xs, ys, xq, yq).picked
    assert picked[True].sum() > picked[False].sum()


@pytest.mark.slow
def test_compiled_forward_matches_eager():
    # GP learners (and forward()) compile the query forward; second order flows through it
    xs, ys, xq, yq = _tasks(b=2)
    results = []
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for compiled in (False, True):
        learner = create_learner("gp-boil", _model().float(), lp_topk=5, compiled=compiled)
        out = learner(xs, ys, xq, yq)
        out.loss.backward()
        results.append((out, [p.grad.clone() for p in learner.model.parameters()]))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # really compiled
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-5)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,steps,first_order", [("maml", 1, False), ("boil", 2, False), ("anil", 1, True)]
)
def test_compiled_meta_gradient_matches_backward_through_the_inner_loop(method, steps, first_order):
    # compiled support/query gradients + Hessian-vector products == autograd through adapt()
    xs, ys, xq, yq = (t.double() if t.is_floating_point() else t for t in _tasks(b=2))
    outs, grads = [], []
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for compiled in (False, True):
        learner = create_learner(
            method, _model(), inner_steps=steps, first_order=first_order, compiled=compiled
        )
        outs.append(learner.forward_backward(xs, ys, xq, yq))
        grads.append([p.grad.clone() for p in learner.model.parameters()])
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs >= (2 if first_order else 3)  # support, query (and Hessian-vector) graphs
    torch.testing.assert_close(outs[0].loss, outs[1].loss)
    torch.testing.assert_close(outs[0].logits, outs[1].logits)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
    if not first_order:  # the second-order term is really there
        fo = create_learner(method, _model(), inner_steps=steps, first_order=True)
        fo.forward_backward(xs, ys, xq, yq)
        fo_grads = zip(fo.model.parameters(), grads[1], strict=True)
        assert any(not torch.allclose(p.grad, g) for p, g in fo_grads)


@pytest.mark.parametrize("method", ["maml", "gp-anil"])
def test_forward_backward_per_task_matches_one_backward(method):
    xs, ys, xq, yq = (t.double() if t.is_floating_point() else t for t in _tasks())
    grads, outs = [], []
    for per_task in (False, True):
        learner = create_learner(method, _model(), lp_topk=5).double()
        if per_task:
            out = learner.forward_backward(xs, ys, xq, yq)
            assert not out.loss.requires_grad
        else:
            out = learner(xs, ys, xq, yq)
            out.loss.backward()
        outs.append(out)
        grads.append([p.grad.clone() for p in learner.parameters()])
    torch.testing.assert_close(outs[0].loss.detach(), outs[1].loss)
    torch.testing.assert_close(outs[0].logits.detach(), outs[1].logits)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["maml", "gp-anil"])
def test_meta_gradient_on_device_matches_cpu(device, method):
    # task_batching="auto": a loop on CPU, vmap on CUDA; both match the CPU loop
    xs, ys, xq, yq = _tasks()
    ref = create_learner(method, _model().float(), lp_topk=5, task_batching="loop")
    ref.forward_backward(xs, ys, xq, yq)
    learner = create_learner(method, _model().float(), lp_topk=5).to(device)
    learner.load_state_dict(ref.state_dict())
    out = learner(*(t.to(device) for t in (xs, ys, xq, yq)))
    out.loss.backward()
    for p, q in zip(learner.parameters(), ref.parameters(), strict=True):
        assert p.grad.device.type == device
        torch.testing.assert_close(p.grad.cpu(), q.grad, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("device", [d for d in DEVICES if d.id == "cuda"])
def test_compiled_meta_gradient_on_cuda_matches_cpu(device):
    xs, ys, xq, yq = _tasks()
    ref = create_learner("maml", _model().float(), task_batching="loop")
    ref.forward_backward(xs, ys, xq, yq)
    learner = create_learner("maml", _model().float(), compiled=True).to(device)
    learner.forward_backward(*(t.to(device) for t in (xs, ys, xq, yq)))
    for p, q in zip(learner.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad.cpu(), q.grad, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_learner_leaves_the_model_alone(batching):
    # the code paths use views of the network (layers.swap_layers): the model's modules,
    # attributes, hooks and parameters stay as they were
    model = _model()
    learner = create_learner("gp-maml", model, task_batching=batching, lp_topk=5).double()
    snapshot = [(n, type(m), dict(vars(m))) for n, m in model.named_modules()]
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    xs, ys, xq, yq = (t.double() if t.is_floating_point() else t for t in _tasks())
    learner(xs, ys, xq, yq).loss.backward()
    learner.zero_grad()
    learner.forward_backward(xs, ys, xq, yq)
    with torch.no_grad():
        learner.eval()(xs, ys, xq, yq)
    learner.train()
    after = [(n, type(m), dict(vars(m))) for n, m in model.named_modules()]
    for (n, t, d), (n2, t2, d2) in zip(snapshot, after, strict=True):
        assert (n, t) == (n2, t2)
        assert d.keys() == d2.keys(), n
        for k, v in d.items():
            if k in ("_parameters", "_buffers", "_modules"):
                assert v == d2[k], (n, k)  # the same objects under the same names
            elif not k.endswith("hooks") and not isinstance(v, torch.Tensor):
                assert v == d2[k], (n, k)
        hooks = [k for k in d2 if k.endswith("hooks") and hasattr(d2[k], "__len__")]
        assert hooks and not any(len(d2[k]) for k in hooks), n
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), params[n]), n


def test_views_follow_train_and_eval():
    learner = create_learner("gp-maml", _model(), lp_topk=5)
    views = [m for net in learner._networks.values() for m in (net.model, net.body)]
    assert any(v is not learner.model for v in views)  # the eager view is a copy
    learner.eval()
    assert not any(m.training for v in views for m in v.modules())
    learner.train()
    assert all(m.training for v in views for m in v.modules())


def test_mode_is_explicit_and_checked():
    learner = create_learner("maml", _model())
    xs, ys, xq, yq = (t.double() if t.is_floating_point() else t for t in _tasks(b=1))
    params = dict(learner.model.named_parameters())
    with pytest.raises(ValueError, match="mode"):
        learner.task_loss(params, {}, xs[0], ys[0], xq[0], yq[0], 3, mode="auto")
    # the two modes are the same function (func: vmap-safe layers; autograd: the fast ones)
    func = learner.task_loss(params, {}, xs[0], ys[0], xq[0], yq[0], 3, mode="func")
    eager = learner.task_loss(params, {}, xs[0], ys[0], xq[0], yq[0], 3, mode="autograd")
    torch.testing.assert_close(func[0], eager[0])
    torch.testing.assert_close(func[1], eager[1])


def test_no_code_path_reads_ambient_state():
    # code paths are chosen by arguments and module types, not by the functorch interpreter
    # stack or by attributes that context managers set
    from pathlib import Path

    import gp_maml

    src = Path(gp_maml.__file__).parent
    text = "\n".join(p.read_text() for p in src.rglob("*.py"))
    for needle in ("peek_interpreter_stack", "contextmanager", "is_compiling"):
        assert needle not in text, needle


@pytest.mark.parametrize("method", ["maml", "gp-maml"])
def test_views_are_not_submodules_and_state_dicts_are_unchanged(method):
    # compiled=True only wraps functions at construction (compilation happens at the first call)
    plain = create_learner(method, _model())
    compiled = create_learner(method, _model(), compiled=True)
    expected = {f"model.{k}" for k in _model().state_dict()}
    if plain.gp:
        expected |= {f"relation_net.{k}" for k in plain.relation_net.state_dict()}
    assert set(plain.state_dict()) == set(compiled.state_dict()) == expected
    assert [n for n, _ in compiled.named_children()] == [n for n, _ in plain.named_children()]
    n_params = sum(p.numel() for p in plain.parameters())
    assert sum(p.numel() for p in compiled.parameters()) == n_params
