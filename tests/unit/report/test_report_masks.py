"""The CP-HS scatter of the ShearletX paper (`metrics.md` §8: 3 measures x 3 areas x 3
models = 27 plots) on synthetic per-image scores, without the workflow."""
import numpy as np
import pandas as pd
import pytest


SX_RUNS = {"shearletx": "shearletx", "waveletx": "waveletx", "pixel_mask": "pixel_mask",
           "smooth_mask_a02": "smooth_mask", "smooth_mask_a005": "smooth_mask"}


def cp_hs_per_image(models=("m_a", "m_b"), runs=SX_RUNS, n=6, seed=0):
    """Long-form per-image scores as per_image_frame writes them: a `cp` and a
    `hallucination_score` row per (model, run, image); images 0 and 1 of each run have CP-ℓ1
    Pixel and CP-ℓ1 beyond the paper's 0.1-2000 axis (1e4 and 1e-3)."""
    rng = np.random.default_rng(seed)
    rows = []
    for model in models:
        for run, name in runs.items():
            for i in range(n):
                base = {"experiment": "sx", "model": model, "variant": "original",
                        "method": run, "method_run": run, "method_name": name, "image_id": i}
                cp = 10 ** rng.uniform(-0.5, 3, 3)
                if i < 2:
                    cp[:2] = (1e4, 1e-3)[i]
                rows.append({**base, "metric": "cp", "metric_name": "cp",
                             **dict(zip(("cp_l1_pixel", "cp_l1", "cp_entropy"), cp))})
                rows.append({**base, "metric": "hallucination_score",
                             "metric_name": "hallucination_score",
                             "hs": float(10 ** rng.uniform(-3, 0))})
    return pd.DataFrame(rows)


def cp_hs_summary(frame):
    from xaipipe.report.shearletx import CP_MEASURES
    rows = []
    for (model, run), d in frame.groupby(["model", "method"]):
        for score in (*CP_MEASURES, "hs"):
            v = d[score].to_numpy(float)
            rows.append({"model": model, "method": run, "variant": "original",
                         "score": score, "mean": v.mean(), "ci_low": v.min(),
                         "ci_high": v.max()})
    return pd.DataFrame(rows)


def scatter_axes(fig):
    return [a for a in fig.axes if a.get_label() == "cp_hs_scatter"]


def points(ax):
    from matplotlib.collections import PathCollection
    return [c for c in ax.collections if isinstance(c, PathCollection)]


def drawn_runs(ax):
    return {c.get_label() for c in points(ax) if not c.get_label().startswith("_")}


def test_cp_hs_scatter_has_a_row_per_model_and_smooth_mask_area(tmp_path):
    from xaipipe.report.shearletx import cp_hs_frame, cp_hs_scatter
    frame = cp_hs_frame(cp_hs_per_image())
    areas = {"smooth_mask_a005": 0.05, "smooth_mask_a02": 0.2}
    fig = cp_hs_scatter(frame, [tmp_path / "f.png"], summary=cp_hs_summary(frame),
                        areas=areas)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    axes = scatter_axes(fig)
    assert len(axes) == 2 * 2 * 3                    # models x areas x CP measures
    assert sum(a.get_label() == "cp_hs_kde" for a in fig.axes) == 2 * len(axes)
    assert fig.get_figheight() == pytest.approx(3.7 * 4 + 0.6)
    others = {"shearletx", "waveletx", "pixel_mask"}
    # rows ordered by area (a005 before a02, although a02 comes first in the scores)
    expect = [("m_a", "a005"), ("m_a", "a02"), ("m_b", "a005"), ("m_b", "a02")]
    for k, ax in enumerate(axes):
        model, area = expect[k // 3]
        assert ax.get_xlim() == pytest.approx((0.1, 2000))
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        run = f"smooth_mask_{area}"
        assert drawn_runs(ax) == others | {f"{run} (a = {areas[run]:g})"}
        col = ("cp_l1_pixel", "cp_l1", "cp_entropy")[k % 3]
        title = [a for a in fig.axes if a.get_title()][k].get_title()
        assert title.startswith(f"{model} · smooth_mask_{area}") and title.endswith(col)
        # the points beyond the axis are drawn at its edges, none hidden
        xs = np.concatenate([c.get_offsets()[:, 0] for c in points(ax)])
        assert len(xs) == 4 * 6                      # 4 runs x 6 images
        assert 0.1 - 1e-9 <= xs.min() and xs.max() <= 2000 + 1e-9
        note = [t.get_text() for t in ax.texts if "beyond" in t.get_text()]
        if col == "cp_entropy":
            assert not note
        else:                                        # images 0, 1 of the 4 runs
            assert xs.min() == pytest.approx(0.1) and xs.max() == pytest.approx(2000)
            assert note == ["8 of 24 beyond [0.1, 2000]: at the edge"]


def test_cp_hs_scatter_with_one_area_or_none(tmp_path):
    from xaipipe.report.shearletx import cp_hs_frame, cp_hs_scatter
    one = {k: v for k, v in SX_RUNS.items() if k != "smooth_mask_a005"}
    fig = cp_hs_scatter(cp_hs_frame(cp_hs_per_image(models=("m_a",), runs=one)),
                        [tmp_path / "one.png"])
    axes = scatter_axes(fig)
    assert len(axes) == 3
    assert all("smooth_mask_a02" in drawn_runs(a) for a in axes)
    none = {k: v for k, v in SX_RUNS.items() if v != "smooth_mask"}
    fig = cp_hs_scatter(cp_hs_frame(cp_hs_per_image(runs=none)), [tmp_path / "none.png"])
    axes = scatter_axes(fig)
    assert len(axes) == 2 * 3                        # one row per model
    assert all(drawn_runs(a) == set(none) for a in axes)
    assert all(a.get_xlim() == pytest.approx((0.1, 2000)) for a in axes)


def test_cp_hs_scatter_figure_reads_the_areas_from_the_stores(tmp_path):
    """The registered builder: per_image.parquet in, PNG and PDF out; the smooth masks'
    target areas come from their stores' parameters (and a missing store is no error)."""
    from xaipipe.report.figures import FIGURES, FigureInputs
    from xaipipe.report.shearletx import cp_hs_frame, smooth_mask_areas
    from xaipipe.store import write_saliency
    stores = {}
    for run, a in (("smooth_mask_a02", 0.2), ("shearletx", None)):
        stores[run] = str(tmp_path / f"{run}.zarr")
        write_saliency(stores[run], np.ones((1, 1, 4, 4), np.float32), [0], [0],
                       {"method_name": SX_RUNS[run],
                        "parameters": {"area": a} if a else {"lambda_1": 1.0}})
    stores["smooth_mask_a005"] = str(tmp_path / "missing.zarr")
    assert smooth_mask_areas(stores) == {"smooth_mask_a02": 0.2}
    per = cp_hs_per_image()
    per.to_parquet(tmp_path / "per_image.parquet")
    out = [str(tmp_path / "cp_hs.png"), str(tmp_path / "cp_hs.pdf")]
    FIGURES.get("cp_hs_scatter")(FigureInputs(
        summary=cp_hs_summary(cp_hs_frame(per)),
        stores=stores, images=None, experiment="sx",
        per_image=str(tmp_path / "per_image.parquet")), out)
    assert (tmp_path / "cp_hs.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "cp_hs.pdf").read_bytes()[:4] == b"%PDF"
