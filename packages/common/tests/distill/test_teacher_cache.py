"""The teacher cache: stored outputs equal the live teacher's per view; a cached student run
resumes exactly; a stale cache is rebuilt and a corrupt one is named."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from lab_common.checkpoint import load_checkpoint
from lab_common.distill import (
    CachedViews,
    CacheError,
    TeacherCache,
    create_model,
    features_and_logits,
    run_distillation,
)

from .test_engine import _assert_same, config, kd_factory, synthetic


class FeatureKD(torch.nn.Module):
    """A loss that reads features (as TRG does): KD on logits plus MSE of pooled features."""

    needs_features = True

    def forward(self, s, t, target, *, student_features, teacher_features):
        pooled = (student_features.mean((2, 3)) - teacher_features.mean((2, 3))).pow(2).mean()
        return {"loss_ce": torch.nn.functional.cross_entropy(s, target), "loss_feat": pooled}


def _teacher(tmp_path):
    torch.manual_seed(0)
    teacher = create_model("cifar_resnet8", 4, 1).eval()
    path = tmp_path / "teacher.pt"
    torch.save({"model": teacher.state_dict(), "model_name": "cifar_resnet8"}, path)
    return teacher, path


def _build(teacher, path, train, *, views=3, features=False):
    def fn(model, x):
        return features_and_logits(model, x) if features else (None, model(x))

    return TeacherCache.build_or_load(
        teacher,
        train,
        fn,
        teacher_checkpoint=path,
        views=views,
        device=torch.device("cpu"),
        with_features=features,
        batch_size=7,
    )


def test_cached_outputs_equal_the_live_teachers_for_every_view(tmp_path):
    train, *_ = synthetic()
    subset = Subset(train, list(range(3, 30)))  # through a Subset, as a validation split gives
    teacher, path = _teacher(tmp_path)
    cache = _build(teacher, path, subset, features=True)
    assert cache.logits.shape == (27, 3, 4) and cache.features.shape[:2] == (27, 3)
    assert cache.logits.dtype == np.float16
    views = CachedViews(subset, cache.views)
    with torch.no_grad():
        for position in (0, 11, 26):
            for v in range(3):
                views.choice[position] = v
                x, y, pos, view = views[position]
                assert (pos, view) == (position, v) and y == train.labels[position + 3]
                feats, logits = features_and_logits(teacher, x[None])
                c_feats, c_logits = cache.lookup(torch.tensor([pos]), torch.tensor([view]), "cpu")
                torch.testing.assert_close(c_logits, logits, atol=2e-3, rtol=2e-3)
                torch.testing.assert_close(c_feats, feats, atol=2e-3, rtol=2e-3)
    # the views are real augmentations: not all the same crop
    assert len({tuple(v) for v in cache.views.reshape(-1, 3).tolist()}) > 3
    # an epoch's views are drawn from the seed alone
    views.set_epoch(5)
    first = views.choice.clone()
    views.set_epoch(5)
    assert torch.equal(first, views.choice)


def test_stale_cache_is_rebuilt_and_corrupt_one_is_named(tmp_path):
    train, *_ = synthetic()
    teacher, path = _teacher(tmp_path)
    cache = _build(teacher, path, train)
    key = cache.key
    again = _build(teacher, path, train)  # up to date: loaded, not rebuilt
    assert again.key == key
    torch.manual_seed(1)  # a retrained teacher: another key, the folder is rebuilt
    teacher = create_model("cifar_resnet8", 4, 1).eval()
    torch.save({"model": teacher.state_dict(), "model_name": "cifar_resnet8"}, path)
    rebuilt = _build(teacher, path, train)
    assert rebuilt.key != key and rebuilt.folder == cache.folder
    with torch.no_grad():
        live = teacher(_view(train, rebuilt, 0, 0)[None])
    cached = rebuilt.lookup(torch.tensor([0]), torch.tensor([0]), "cpu")[1]
    torch.testing.assert_close(cached, live, atol=2e-3, rtol=2e-3)
    # another number of views lives beside it
    assert _build(teacher, path, train, views=2).folder != rebuilt.folder
    logits = rebuilt.folder / "logits.npy"
    data = bytearray(logits.read_bytes())
    data[-1] ^= 0xFF
    logits.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="logits.npy does not match its checksum"):
        _build(teacher, path, train)
    (rebuilt.folder / "meta.json").write_text("{")
    with pytest.raises(CacheError, match="unreadable.*delete the folder"):
        _build(teacher, path, train)


def test_outputs_beyond_float16_are_refused(tmp_path):
    train, *_ = synthetic()
    teacher, path = _teacher(tmp_path)
    with torch.no_grad():
        teacher.get_classifier().bias.fill_(1e6)
    with pytest.raises(ValueError, match="logits reach 1e\\+06, beyond float16"):
        _build(teacher, path, train)


def _view(train, cache, position, view):
    top, left, flip = (int(v) for v in cache.views[position, view])
    return train.image(position, (top, left, bool(flip)))


def test_image_folders_are_refused(tmp_path):
    teacher, path = _teacher(tmp_path)
    with pytest.raises(ValueError, match="in-memory dataset.*--teacher-cache 0"):
        _build(teacher, path, [(torch.zeros(1, 12, 12), 0)])


def test_cached_student_resumes_exactly_and_matches_its_settings(tmp_path):
    data = synthetic()
    full = run_distillation(config(tmp_path / "a", teacher_cache=3), kd_factory, datasets=data)
    assert full.metrics["completed"]
    assert (tmp_path / "a/teacher.pt.views3/meta.json").is_file()
    run_distillation(
        config(tmp_path / "b", teacher_cache=3, stop_after=1), kd_factory, datasets=data
    )
    run_distillation(
        config(tmp_path / "b", teacher_cache=3, stop_after=1),
        kd_factory,
        resume=True,
        datasets=data,
    )
    run_distillation(
        config(tmp_path / "b", teacher_cache=3), kd_factory, resume=True, datasets=data
    )
    _assert_same(
        load_checkpoint(tmp_path / "a/student.pt")["model"],
        load_checkpoint(tmp_path / "b/student.pt")["model"],
    )
    meta = json.loads((tmp_path / "b/teacher.pt.views3/meta.json").read_text())
    assert meta["views"] == 3 and meta["images"] == 32
    # with the cache the student learns from the same teacher: a feature loss works too
    out = run_distillation(
        config(
            tmp_path / "c", teacher_cache=2, epochs=1, teacher_checkpoint=tmp_path / "a/teacher.pt"
        ),
        lambda k: FeatureKD(),
        datasets=data,
    )
    assert out.metrics["completed"]
    assert np.load(tmp_path / "a/teacher.pt.views2/features.npy").shape[:2] == (32, 2)


def test_overwrite_replaces_a_cache_kept_in_the_run_folder(tmp_path):
    data = synthetic()
    cfg = config(tmp_path / "o", teacher_cache=2, epochs=1, teacher_epochs=1)
    run_distillation(cfg, kd_factory, datasets=data)
    (tmp_path / "o/notes.txt").write_text("mine")
    stale = tmp_path / "o/teacher.pt.views2/meta.json"
    stale.write_text("{")  # would be named as corrupt if it survived the overwrite
    run_distillation(cfg, kd_factory, overwrite=True, datasets=data)
    assert json.loads(stale.read_text())["views"] == 2
    assert (tmp_path / "o/notes.txt").read_text() == "mine"
