"""Non-finite values never pass silently, and failed writes name the output.

- ``explain`` / ``explain_sweep`` / ``run_method``: maps with NaN/Inf raise NonFiniteError
  naming the batch positions (and image ids); ``on_nonfinite="record"`` keeps them, flagged in
  ``extras["nonfinite"]``.
- metrics: NaN/Inf maps (checked before ranking) and non-finite model scores raise naming the
  image ids; ``on_nonfinite: record`` gives NaN columns and a ``nonfinite`` column.
- writers: an OSError while writing (disk full, a parent that is a file) becomes an
  OutputWriteError naming the final path, and no temporary is left behind.
"""
import errno
import os

import numpy as np
import pytest
import torch
from torch import nn

from xaipipe.errors import ConfigError, DataError, NonFiniteError, OutputWriteError
from xaipipe.explain import explain, explain_sweep, get_method, run_method
from xaipipe.metrics import MetricInputs, deletion, get_metric, insertion, pic, stability
from xaipipe.metrics.perturbation import perturbation_curves
from xaipipe.models import NormalizedModel
from xaipipe.store import open_saliency, write_saliency
from xaipipe.utils import atomic_path

IDS = np.array([10, 11, 12])


class Tiny(nn.Module):
    """Conv2d + flatten + Linear on 3x8x8 inputs, 3 classes. ``trigger``: logits are NaN for
    inputs whose pixel (0, 0, 0) exceeds 0.9 (only images made so ever reach that)."""

    def __init__(self, nan_weights=False, trigger=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 8 * 8, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            if nan_weights:
                self.fc.weight.fill_(float("nan"))
        self.trigger = trigger

    def forward(self, x):
        z = self.fc(self.conv(x).flatten(1))
        if self.trigger:
            z = z * torch.where(x[:, 0, 0, 0] > 0.9, float("nan"), 1.0)[:, None]
        return z


class SqrtGrad(Tiny):
    """Finite outputs, NaN gradients where pixel (0, 0, 0) < 0.9: √(u·1[u > 0]) has
    d√v/dv = ∞ at v = 0, times the zero slope of v = u·1[u > 0]: 0·∞ = NaN."""

    def forward(self, x):
        u = x[:, :1, 0, 0] - 0.9
        return self.fc(self.conv(x).flatten(1)) + torch.sqrt(u * (u > 0))


def wrap(net):
    return NormalizedModel(net, mean=(0, 0, 0), std=(1, 1, 1)).eval()


def batch():
    g = torch.Generator().manual_seed(3)
    images = torch.rand(3, 3, 8, 8, generator=g) * 0.8       # pixel (0,0,0) never > 0.9 ...
    maps = torch.randn(3, 3, 8, 8, generator=g)
    return images, maps, torch.tensor([0, 2, 1])


# -- metrics ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [insertion, deletion])
def test_model_with_nan_weights_raises_naming_the_ids(fn):
    images, maps, target = batch()
    model = wrap(Tiny(nan_weights=True))
    with pytest.raises(NonFiniteError, match=r"model's scores of image ids \[0, 1, 2\]") as e:
        fn(model, images, maps, target, steps=5)
    assert e.value.ids == [0, 1, 2] and isinstance(e.value, DataError)
    metric = get_metric(fn.__name__)(steps=5)
    inputs = MetricInputs(ids=IDS, target=target, maps=maps, model=model, images=images)
    with pytest.raises(NonFiniteError, match=r"image ids \[10, 11, 12\]"):
        metric(inputs)


def test_record_mode_gives_nan_auc_and_flags_only_the_bad_image():
    images, maps, target = batch()
    images[1, 0, 0, 0] = 1.0                                 # ... except image 1's
    model = wrap(Tiny(trigger=True))
    with pytest.raises(NonFiniteError, match=r"image ids \[1\]"):
        insertion(model, images, maps, target, steps=5)
    out = insertion(model, images, maps, target, steps=5, on_nonfinite="record")
    assert out["nonfinite"].tolist() == [False, True, False]
    assert np.isnan(out["auc"][1]) and np.isnan(out["curve"][1]).all()
    assert np.isnan(out["auc_norm"][1]) and np.isnan(out["score_full"][1])
    # the other images score exactly as they do alone (and as in raise mode)
    ok = [0, 2]
    alone = insertion(model, images[ok], maps[ok], target[ok], steps=5)
    for k in ("curve", "auc", "auc_norm", "score_full"):
        np.testing.assert_array_equal(out[k][ok], alone[k], err_msg=k)
    assert "nonfinite" not in alone                          # raise mode adds no column


def test_nan_map_with_a_fine_model_raises_and_records():
    images, maps, target = batch()
    maps[2, 1, 3, 4] = float("nan")
    maps[0, 0, 0, 0] = float("inf")
    model = wrap(Tiny())
    with pytest.raises(NonFiniteError, match=r"maps of image ids \[10, 12\] hold NaN/Inf"):
        get_metric("deletion")(steps=5)(MetricInputs(ids=IDS, target=target, maps=maps,
                                                     model=model, images=images))
    out = deletion(model, images, maps, target, steps=5, on_nonfinite="record")
    assert out["nonfinite"].tolist() == [True, False, True]
    assert np.isnan(out["auc"][[0, 2]]).all() and np.isfinite(out["auc"][1])
    np.testing.assert_array_equal(out["auc"][1], deletion(model, images[1:2], maps[1:2],
                                                          target[1:2], steps=5)["auc"][0])


def test_finite_inputs_unchanged_hand_computed():
    # 2x2 image of ones, logits [3 Σ w over the kept pixels, 0]: the map's order 4, 3, 2, 1
    w = torch.tensor([[4.0, 3.0], [2.0, 1.0]])

    class PixelSum(nn.Module):
        def forward(self, x):
            z = (x * w).sum((1, 2, 3))
            return torch.stack([z, torch.zeros_like(z)], 1)

    model, x = wrap(PixelSum()), torch.ones(1, 3, 2, 2)
    sal = w.expand(1, 3, 2, 2)
    curve = 3 * np.array([0.0, 4, 7, 9, 10])                 # q = 0, .25, .5, .75, 1
    for mode in ("raise", "record"):
        out = insertion(model, x, sal, 0, steps=5, score="logit", on_nonfinite=mode)
        np.testing.assert_allclose(out["curve"][0], curve, rtol=1e-6)
        np.testing.assert_allclose(out["auc"][0], 0.25 * (curve[1:4].sum() + curve[4] / 2),
                                   rtol=1e-6)
        assert ("nonfinite" in out) == (mode == "record")
    assert out["nonfinite"].tolist() == [False]
    # and equal to the curves computed without the metric's checks
    images, maps, target = batch()
    model = wrap(Tiny())
    ref = perturbation_curves(model, images, maps, target, "insertion", steps=5)
    got = insertion(model, images, maps, target, steps=5, on_nonfinite="record")
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_on_nonfinite_is_a_declared_param():
    for name in ("insertion", "deletion", "pic", "stability"):
        cls = get_metric(name)
        assert cls.params["on_nonfinite"].default == "raise"
        assert cls(on_nonfinite="record").hparams.on_nonfinite == "record"
        with pytest.raises(ConfigError, match="on_nonfinite.*'ignore'.*allowed"):
            cls(on_nonfinite="ignore")


def test_stability_and_pic_share_the_rule():
    _, maps, _ = batch()
    other = maps.clone()
    other[1, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"other_maps of image ids \[1\]"):
        stability(other, maps)
    out = stability(other, maps, on_nonfinite="record")
    assert out["nonfinite"].tolist() == [False, True, False]
    assert np.isnan(out["mse"][1]) and np.isfinite(out["mse"][[0, 2]]).all()
    # PIC with a model whose scores are NaN on image 1
    images, maps, target = batch()
    images[1, 0, 0, 0] = 1.0
    model = wrap(Tiny(trigger=True))
    kw = dict(variant="tmlr", fill_images=images * 0.5, min_pred_value=0.0, ids=IDS)
    with pytest.raises(NonFiniteError, match=r"image ids \[11\]"):
        pic(model, images, maps, target, **kw)
    out = pic(model, images, maps, target, on_nonfinite="record", **kw)
    assert out["nonfinite"].tolist() == [False, True, False]
    assert out["sic_reason"][1] == "nonfinite" and not out["sic_valid"][1]
    assert np.isnan(out["sic_auc"][1]) and np.isnan(out["sic_curve"][1]).all()


# -- explain ----------------------------------------------------------------------------------
def grad_batch():
    images, _, target = batch()
    images[:, 0, 0, 0] = 1.0
    images[2, 0, 0, 0] = 0.0              # image 2: NaN gradient, finite output
    return images, target


def test_explain_with_nan_gradients_raises_naming_positions_and_ids():
    images, target = grad_batch()
    model = wrap(SqrtGrad())
    assert torch.isfinite(model(images)).all()
    with pytest.raises(NonFiniteError, match=r"'saliency'.*batch positions \[2\] hold") as e:
        explain("saliency", model, images, target)
    assert e.value.ids == [2]
    with pytest.raises(NonFiniteError, match=r"positions \[2\] \(image ids \[12\]\)"):
        explain("saliency", model, images, target, image_ids=IDS)
    with pytest.raises(NonFiniteError, match=r"'integrated_gradients@2'.*positions \[2\]"):
        explain_sweep("integrated_gradients", model, images, target, steps=(2, 4),
                      baseline=torch.ones_like(images))    # image 2's path crosses 0.9
    with pytest.raises(ConfigError, match="on_nonfinite"):
        explain("saliency", model, images, target, on_nonfinite="warn")


def test_explain_record_mode_returns_maps_as_they_are():
    images, target = grad_batch()
    model = wrap(SqrtGrad())
    out = explain("saliency", model, images, target, on_nonfinite="record", return_extras=True)
    assert out.extras["nonfinite"].tolist() == [False, False, True]
    plain = get_method("saliency")(model).run(images, target).maps    # no check at all
    assert torch.isnan(out.maps[2]).any()
    torch.testing.assert_close(out.maps, plain, equal_nan=True, rtol=0, atol=0)
    maps = explain("saliency", model, images, target, on_nonfinite="record")
    assert isinstance(maps, torch.Tensor) and maps.shape == images.shape
    sweep = explain_sweep("integrated_gradients", model, images, target, steps=(2, 4),
                          baseline=torch.ones_like(images), on_nonfinite="record",
                          return_extras=True)
    assert sorted(sweep) == [2, 4]
    for a in sweep.values():
        assert a.extras["nonfinite"].tolist() == [False, False, True]


def test_finite_maps_unchanged_and_flagged_false():
    images, _, target = batch()
    model = wrap(Tiny())
    plain = get_method("saliency")(model).run(images, target)
    x = images.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    torch.testing.assert_close(plain.maps, g, rtol=0, atol=0)     # the hand-made gradient
    torch.testing.assert_close(explain("saliency", model, images, target), g, rtol=0, atol=0)
    rec = run_method("saliency", model, images, target, on_nonfinite="record")
    torch.testing.assert_close(rec.maps, g, rtol=0, atol=0)
    assert rec.extras["nonfinite"].tolist() == [False] * 3


# -- writes -----------------------------------------------------------------------------------
def _disk_full_on_chunks(monkeypatch):
    """zarr's file writer raises ENOSPC for chunk data (metadata still gets written)."""
    import zarr.storage._local as local
    real = local._put

    def put(path, value, exclusive=False):
        if "/c/" in str(path) or "/c" == str(path)[-2:]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, value, exclusive)
    monkeypatch.setattr(local, "_put", put)


def test_disk_full_during_a_store_write_names_the_path_and_leaves_nothing(tmp_path,
                                                                          monkeypatch):
    _disk_full_on_chunks(monkeypatch)
    out = tmp_path / "results" / "s.zarr"
    maps = torch.randn(2, 3, 8, 8)
    with pytest.raises(OutputWriteError, match=f"no space left on device writing {out}$") as e:
        write_saliency(out, maps, [5, 6], [0, 1])
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    assert e.value.filename == str(out)
    assert list((tmp_path / "results").iterdir()) == []      # no temporary, no output
    monkeypatch.undo()
    write_saliency(out, maps, [5, 6], [0, 1])                # the space is back
    np.testing.assert_array_equal(open_saliency(out).saliency.compute(), maps.numpy())


def test_disk_full_in_the_image_store_writer(tmp_path, monkeypatch):
    from xaipipe.data.image_store import ImageStoreWriter
    _disk_full_on_chunks(monkeypatch)
    out = tmp_path / "data" / "original.zarr"
    with pytest.raises(OutputWriteError, match=f"no space left on device writing {out}$"):
        with ImageStoreWriter(out, {"dataset": "d"}) as w:
            w.add_split("val", 2, 4, 4, masks=False)
            w.write("val", np.zeros((2, 3, 4, 4), np.uint8), [0, 1], [0, 1])
    assert list((tmp_path / "data").iterdir()) == []


@pytest.mark.parametrize("below", ["", "sub/"])
def test_a_parent_that_is_a_file_is_named(tmp_path, below):
    (tmp_path / "results").write_text("not a folder")
    out = tmp_path / "results" / f"{below}s.zarr"
    with pytest.raises(OutputWriteError,
                       match=f"cannot write {out}: {tmp_path / 'results'} is a file"):
        write_saliency(out, torch.zeros(1, 1, 2, 2), [0], [0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_failed_rename_keeps_the_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "table.csv"
    out.write_text("old")
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:                                   # tmp -> out
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dst))
        return real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputWriteError, match=f"permission denied writing {out}$"):
        with atomic_path(out) as tmp:
            tmp.write_text("new")
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_other_errors_pass_through_unchanged(tmp_path):
    # reading a missing input inside the block is not a write error
    with pytest.raises(FileNotFoundError) as e:
        with atomic_path(tmp_path / "out.csv") as tmp:
            tmp.write_text("x")
            (tmp_path / "missing.csv").read_text()
    assert not isinstance(e.value, OutputWriteError)
    # an error without a file name that only writes raise is the output's
    with pytest.raises(OutputWriteError, match="disk quota exceeded writing"):
        with atomic_path(tmp_path / "out.csv"):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert list(tmp_path.iterdir()) == []
