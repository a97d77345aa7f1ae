"""Per-step curves, IQM, the StartGrad speed-up statistic and Wilcoxon (`metrics.md` §10)."""
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from xaipipe.metrics.statistics import (bootstrap_indices, first_reaching, histories_from_long,
                                    iqm, nanquantiles, paired_resample, reference_point,
                                    speedup, step_curve, step_curve_ci, trimmed_mean,
                                    wilcoxon_per_step)


def rising(n_img=30, steps=40, seed=0, scale=1.0):
    """Noisy per-image curves that rise towards ``scale`` (N_img, T)."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    rate = rng.uniform(0.05, 0.3, size=(n_img, 1))
    return scale * (1 - np.exp(-rate * t)) + rng.normal(0, 0.02, size=(n_img, steps))


def test_iqm_constant_and_one_to_hundred():
    assert float(iqm(np.full(17, 3.25))) == 3.25
    v = np.arange(1, 101, dtype=float)
    s = pd.Series(v)
    manual = s[(s >= s.quantile(0.25)) & (s <= s.quantile(0.75))].mean()
    assert s.quantile(0.25) == 25.75 and s.quantile(0.75) == 75.25
    assert float(iqm(v)) == manual == pytest.approx(50.5)
    # skewed data: the IQM ignores the tail the mean follows
    w = np.r_[np.arange(1, 21, dtype=float), 1e6]
    sw = pd.Series(w)
    assert float(iqm(w)) == pytest.approx(sw[(sw >= sw.quantile(.25)) & (sw <= sw.quantile(.75))]
                                          .mean())
    assert float(iqm(w)) < 20 < w.mean()
    # along an axis, NaN-safe, with inclusive bounds on ties
    m = np.stack([v, v[::-1] * 2, np.r_[v[:50], [np.nan] * 50]], 1)        # (100, 3)
    got = iqm(m, axis=0)
    assert got.tolist() == pytest.approx([50.5, 101.0, float(iqm(v[:50]))])
    assert float(iqm([1.0, 2.0, 2.0, 2.0, 9.0])) == 2.0
    assert np.isnan(iqm(np.full(4, np.nan)))
    t = np.r_[0.0, np.arange(1, 99, dtype=float), 1000.0]
    st = pd.Series(t)
    assert float(trimmed_mean(t)) == pytest.approx(st[(st >= st.quantile(.01)) &
                                                      (st <= st.quantile(.99))].mean())


def test_nanquantiles_match_numpy():
    rng = np.random.default_rng(2)
    v = np.round(rng.normal(size=(60, 4, 3)), 1)              # ties
    v[rng.random(v.shape) < 0.2] = np.nan
    v[:, 0, 0] = np.nan                                        # an empty slice
    qs = (0.01, 0.25, 0.5, 0.75, 0.99)
    for axis in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)    # the all-NaN slice
            want = np.nanquantile(v, qs, axis=axis, keepdims=True)
        np.testing.assert_allclose(nanquantiles(v, qs, axis), want, rtol=1e-12, atol=1e-14)


def test_step_curve_statistics():
    h = rising()
    assert np.allclose(step_curve(h, "median"), np.median(h, 0))
    assert np.allclose(step_curve(h, "mean"), h.mean(0))
    assert np.allclose(step_curve(h, "iqm"), [float(iqm(h[:, j])) for j in range(h.shape[1])])
    assert np.allclose(step_curve(h, "trimmed_mean"), trimmed_mean(h, 0))
    with pytest.raises(ValueError, match="unknown statistic"):
        step_curve(h, "mode")
    with pytest.raises(ValueError, match="N_img, T"):
        step_curve(h[0])


def test_equal_curves_reach_the_reference_no_later_than_t_ref():
    h = rising()
    for kw in ({}, {"reference_step": 0.5}, {"use_reference_step_max": True},
               {"stat": "median"}):
        out = speedup({"ones": h, "startgrad": h.copy()}, n_boot=20, **kw)
        assert (out["t_star"] <= out["t_ref"]).all(), kw
        assert (out["speedup"] >= 1).all() and out["speedup_mean"] >= 1, kw
    out = speedup({"ones": h, "startgrad": h.copy()}, n_boot=20)
    assert (out["t_ref"] == h.shape[1] - 1).all()            # ρ = 1: the last step


def test_a_curve_that_never_reaches_v_ref_gives_the_last_step():
    h = rising()
    out = speedup({"uniform": h, "startgrad": h - 5.0}, reference="uniform", n_boot=10)
    assert (out["t_star"] == h.shape[1] - 1).all() and not out["verified"].any()
    assert out["speedup"] == pytest.approx(np.ones(10))       # (T-1+1)/(T-1+1)
    assert first_reaching([0.1, 0.2, 0.3], 0.5) == 2
    assert first_reaching([0.1, 0.6, 0.3], 0.5) == 1


def test_paired_bootstrap_uses_the_same_images_for_every_init():
    n, steps = 25, 6
    ids = np.arange(n, dtype=float)[:, None]
    curves = {"ones": ids + np.zeros(steps), "uniform": 1000 + ids + np.zeros(steps),
              "startgrad": -ids + np.zeros(steps)}
    for compat in (False, True):
        for b in (0, 1, 7):
            idx, res = paired_resample(curves, b, seed=3, compat=compat)
            assert np.array_equal(res["ones"][:, 0], idx)
            assert np.array_equal(res["uniform"][:, 0] - 1000, idx)
            assert np.array_equal(-res["startgrad"][:, 0], idx)
            assert np.array_equal(idx, bootstrap_indices(n, b, seed=3, compat=compat))
    assert not np.array_equal(bootstrap_indices(n, 0), bootstrap_indices(n, 1))
    assert not np.array_equal(bootstrap_indices(n, 0, seed=0), bootstrap_indices(n, 0, seed=1))
    # compat: the reference's draw (np.random.seed(b); randint), global state untouched
    state = np.random.get_state()
    np.random.seed(4)
    want = np.random.randint(0, n, size=n)
    np.random.set_state(state)
    assert np.array_equal(bootstrap_indices(n, 4, compat=True), want)
    assert np.array_equal(np.random.get_state()[1], state[1])
    # speedup itself pairs: recomputing every replicate with one index set per b agrees
    ref, cand = rising(seed=1), rising(seed=2, scale=1.1)
    out = speedup({"ones": ref, "uniform": rising(seed=3), "startgrad": cand}, n_boot=15,
                  seed=9)
    for b in range(15):
        idx = bootstrap_indices(ref.shape[0], b, seed=9)
        t_ref, v_ref = reference_point(step_curve(ref[idx]))
        assert out["t_star"][b] == first_reaching(step_curve(cand[idx]), v_ref)
        assert out["v_ref"][b] == v_ref and out["t_ref"][b] == t_ref
    with pytest.raises(ValueError, match="same images"):
        speedup({"ones": ref, "startgrad": cand[:-1]})


def test_constructed_case_gives_the_exact_speedup():
    steps, n = 100, 12
    t = np.arange(steps)
    ref = np.tile(t / (steps - 1), (n, 1))                     # reaches 1.0 at step 99
    cand = np.tile((t + 0.5) / 24, (n, 1))                     # first ≥ 1.0 at step 24
    curves = {"ones": ref, "startgrad": cand}
    out = speedup(curves, n_boot=5)
    assert out["t_ref"].tolist() == [99] * 5 and out["t_star"].tolist() == [24] * 5
    assert out["speedup"] == pytest.approx([100 / 25] * 5) and out["verified"].all()
    assert out["speedup_std"] == 0 and out["t_star_mean"] == 24
    comp = speedup(curves, n_boot=5, compat=True)
    assert comp["speedup_mean"] == pytest.approx(99 / 24)
    half = speedup(curves, n_boot=0, reference_step=0.5)       # t_ref 49, v_ref 49/99
    assert half["t_ref"].tolist() == [49] and half["t_star"].tolist() == [12]
    assert half["speedup"][0] == pytest.approx(50 / 13)
    # the reference's maximum (a peak at step 30), and compat's t* = 0
    peak = np.tile(np.exp(-((t - 30) / 10.0) ** 2), (n, 1))
    top = speedup({"ones": peak, "startgrad": cand}, n_boot=0, use_reference_step_max=True)
    assert top["t_ref"][0] == 30 and top["t_star"][0] == 24
    early = speedup({"ones": ref, "startgrad": ref + 2}, n_boot=0, compat=True)
    assert early["t_star"][0] == 0 and np.isinf(early["speedup"][0])
    assert speedup({"ones": ref, "startgrad": ref + 2}, n_boot=0)["speedup"][0] == 100
    # no bootstrap on asymmetric images: t* follows the per-step IQM, not the mean
    rng = np.random.default_rng(0)
    noisy = cand + rng.normal(0, 0.01, (n, 1))
    noisy[0] += 50                                             # one outlier image
    no_boot = speedup({"ones": ref, "startgrad": noisy}, n_boot=0)
    assert no_boot["t_star"][0] == first_reaching(step_curve(noisy), 1.0) > 20


def test_speedup_counts_optimisation_steps_when_entries_are_sparse():
    # every 10th step recorded: entry j is step 10·j; the run had 291 steps (entries 0..29)
    steps, n, k = 30, 6, 10
    t = np.arange(steps)
    ref = np.tile(t / (steps - 1), (n, 1))                     # reaches its final value last
    early = np.tile(np.r_[1.5, np.ones(steps - 1) * 2], (n, 1))  # above it from entry 0 on
    out = speedup({"ones": ref, "startgrad": early}, n_boot=0, every=k)
    assert out["t_ref"][0] == 290 and out["t_star"][0] == 0 and out["steps"] == 300
    assert out["speedup"][0] == 291 and out["every"] == k     # (290 + 1)/(0 + 1), in steps
    late = np.tile((t + 0.5) / 6, (n, 1))                      # first ≥ 1 at entry 6: step 60
    out = speedup({"ones": ref, "startgrad": late}, n_boot=3, every=k)
    assert out["t_star"].tolist() == [60] * 3 and out["speedup"] == pytest.approx([291 / 61] * 3)
    assert speedup({"ones": ref, "startgrad": late}, n_boot=0)["speedup"][0] == 30 / 7
    with pytest.raises(ValueError, match="every"):
        speedup({"ones": ref, "startgrad": late}, every=0)


def test_step_curve_ci_is_a_paired_bootstrap_around_the_iqm():
    h = rising(n_img=25, steps=8, seed=4)
    shift = h + 0.25                                           # every image 0.25 higher
    other = rising(n_img=25, steps=8, seed=5)
    ci = step_curve_ci({"ones": h, "uniform": other, "startgrad": shift}, n_boot=40,
                       candidate="startgrad", seed=2)
    for k, v in (("ones", h), ("uniform", other), ("startgrad", shift)):
        assert np.array_equal(ci["curve"][k], step_curve(v))
        assert (ci["lo"][k] <= ci["curve"][k] + 1e-12).all()
        assert (ci["hi"][k] >= ci["curve"][k] - 1e-12).all()
        # the interval is the 2.5/97.5 % quantiles of the replicates' IQM curves
        reps = np.stack([step_curve(v[bootstrap_indices(25, b, seed=2)]) for b in range(40)])
        assert np.allclose(ci["lo"][k], np.quantile(reps, 0.025, axis=0))
        assert np.allclose(ci["hi"][k], np.quantile(reps, 0.975, axis=0))
    assert (ci["hi"]["ones"] - ci["lo"]["ones"] > 0.01).any()  # the images do spread
    # paired: a constant shift of every image is known exactly in every replicate
    assert np.allclose(ci["diff"]["ones"], 0.25) and np.allclose(ci["diff_lo"]["ones"], 0.25)
    assert np.allclose(ci["diff_hi"]["ones"], 0.25)
    assert set(ci["diff"]) == {"ones", "uniform"}
    flat = step_curve_ci({"ones": np.full((9, 3), 2.0)}, n_boot=5)
    assert (flat["lo"]["ones"] == 2).all() and (flat["hi"]["ones"] == 2).all()
    with pytest.raises(ValueError, match="level"):
        step_curve_ci({"ones": h}, level=1.5)
    with pytest.raises(ValueError, match="no curves for init 'startgrad'"):
        step_curve_ci({"ones": h}, candidate="startgrad")


def test_wilcoxon_per_step():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(40, 5))
    up = base + 0.5 + rng.normal(0, 0.3, size=(40, 5))
    down = base - 0.5 + rng.normal(0, 0.3, size=(40, 5))
    p_up, p_down = wilcoxon_per_step(up, base), wilcoxon_per_step(down, base)
    assert p_up.shape == (5,) and (p_up < 1e-4).all() and (p_down > 0.99).all()
    assert p_up[2] == pytest.approx(stats.wilcoxon(up[:, 2] - base[:, 2], alternative="greater",
                                                   correction=True).pvalue, rel=1e-12)
    assert (wilcoxon_per_step(down, base, alternative="less") < 1e-4).all()
    # all differences zero: p = 1; pairs with NaN are dropped; no pair left: NaN
    same = base.copy()
    same[:, 1] += 1.0
    p = wilcoxon_per_step(same, base)
    assert p[0] == 1.0 and p[1] < 1e-4
    holes = up.copy()
    holes[:5, 3] = np.nan
    holes[:, 4] = np.nan
    ph = wilcoxon_per_step(holes, base)
    assert ph[3] == pytest.approx(stats.wilcoxon(up[5:, 3] - base[5:, 3],
                                                 alternative="greater").pvalue)
    assert np.isnan(ph[4])


def test_histories_from_long_round_trip():
    h = rising(n_img=4, steps=3)
    keys = np.array(["img_b", "img_a", "img_d", "img_c"])
    df = pd.DataFrame({"step": np.repeat(np.arange(3), 4), "lineKey": np.tile(keys, 3),
                       "lineVal": h.T.ravel()}).sample(frac=1, random_state=0)
    arr, got_keys = histories_from_long(df)
    order = np.argsort(keys)
    assert got_keys.tolist() == sorted(keys) and np.array_equal(arr, h[order])
    arr2, keys2 = histories_from_long(df, images=list(keys))
    assert keys2.tolist() == list(keys) and np.array_equal(arr2, h)
    with pytest.raises(ValueError, match="not in the table"):
        histories_from_long(df, images=["img_x"])
    with pytest.raises(ValueError, match="several"):
        histories_from_long(pd.concat([df, df.iloc[:1]]))


def test_startgrad_tables_from_sparse_histories():
    """The report's tables read ``history_every`` and count optimisation steps: histories
    recorded every 10 steps, StartGrad above the ones run's final IQM from entry 0."""
    from xaipipe.report.startgrad import iqm_frame, speedup_frame

    n, t, every = 8, 30, 10
    ref = np.tile(np.arange(t) / (t - 1), (n, 1)) + np.linspace(0, 0.01, n)[:, None]
    rows = []
    for init, h in (("ones", ref), ("startgrad", ref + 2.0)):
        for i in range(n):
            rows.append({"metric_name": "convergence", "model": "m", "variant": "original",
                         "method_name": "shearletx", "init": init, "image_id": i,
                         "history_every": every,
                         **{q: h[i] for q in ("retained_probability", "retained_l1",
                                              "cp_l1", "cp_pixel")}})
    per_image = pd.DataFrame(rows)
    sp = speedup_frame(per_image, n_boot=5)
    assert set(sp["quantity"]) == {"retained_probability", "cp_l1", "cp_pixel"}
    assert (sp["t_ref"] == 290).all() and (sp["t_star_mean"] == 0).all()
    assert (sp["speedup_mean"] == 291).all() and (sp["steps"] == 300).all()
    iq = iqm_frame(per_image, n_boot=20)
    row = iq[(iq["quantity"] == "cp_l1") & (iq["init"] == "startgrad - ones")].iloc[0]
    assert row["iqm_step_0"] == pytest.approx(2.0) and row["lo_step_290"] == pytest.approx(2.0)
    # steps 0, 10, 50, 100 and the last (290) are recorded; 1 is not
    assert {c for c in iq.columns if c.startswith("iqm_step_")} == \
        {f"iqm_step_{s}" for s in (0, 10, 50, 100, 290)}
    ones = iq[(iq["quantity"] == "cp_l1") & (iq["init"] == "ones")].iloc[0]
    assert ones["lo_step_290"] <= ones["iqm_step_290"] <= ones["hi_step_290"]
    assert ones["iqm_step_290"] == pytest.approx(float(iqm(ref[:, -1])))


def test_startgrad_tables_keep_lambda_settings_apart():
    """Two λ settings of one host (the λ grid): each is paired across its own inits and
    labelled with the parameters that differ; one init twice in one setting is an error."""
    import json

    from xaipipe.errors import DataError
    from xaipipe.report.startgrad import speedup_frame

    n, t = 6, 12
    base = np.tile(np.arange(t) / (t - 1), (n, 1)) + np.linspace(0, 0.01, n)[:, None]
    rows = []
    for lam, lead in ((0.1, 0.0), (10.0, 5.0)):      # StartGrad ahead by `lead` steps' worth
        setting = json.dumps({"lambda_1": lam, "lambda_2": 2.0, "lr": 0.1}, sort_keys=True)
        for init, h in (("ones", base), ("startgrad", base + lead / (t - 1))):
            for i in range(n):
                rows.append({"metric_name": "convergence", "model": "m", "variant": "original",
                             "method": f"sx_{lam}_{init}", "method_name": "shearletx",
                             "init": init, "setting": setting, "image_id": i,
                             "history_every": 1,
                             **{q: h[i] for q in ("retained_probability", "retained_l1",
                                                  "cp_l1", "cp_pixel")}})
    per_image = pd.DataFrame(rows)
    sp = speedup_frame(per_image, n_boot=5)
    assert set(sp["method"]) == {"shearletx (lambda_1=0.1)", "shearletx (lambda_1=10.0)"}
    same = sp[(sp["method"] == "shearletx (lambda_1=0.1)") & (sp["quantity"] == "cp_l1")]
    ahead = sp[(sp["method"] == "shearletx (lambda_1=10.0)") & (sp["quantity"] == "cp_l1")]
    assert same["t_star_mean"].iloc[0] == t - 1 and ahead["t_star_mean"].iloc[0] == t - 1 - 5
    twice = per_image[per_image["init"] == "ones"].assign(method="another_run")
    with pytest.raises(DataError, match="share the init 'ones'"):
        speedup_frame(pd.concat([per_image, twice]), n_boot=5)


def test_speedup_with_an_undefined_reference_value():
    """A reference whose statistic is NaN at t_ref (every image's CP undefined there) has
    nothing to reach: NaN t* and speed-up, left out of the summaries, counted."""
    n, t = 5, 8
    ones = np.tile(np.arange(t, dtype=float), (n, 1))
    ones[:, -1] = np.nan
    sg = ones.copy()
    sg[:, :-1] += 3.0
    out = speedup({"ones": ones, "startgrad": sg}, n_boot=0)
    assert np.isnan(out["speedup"]).all() and np.isnan(out["speedup_mean"])
    assert out["undefined_fraction"] == 1.0
    # two of five images undefined at the end: the IQM skips them, the speed-up is defined
    part = ones.copy()
    part[2:, -1] = 7.0
    out = speedup({"ones": part, "startgrad": part + 3.0}, n_boot=20)
    assert out["undefined_fraction"] < 0.5 and np.isfinite(out["speedup_mean"])
