"""StartGrad tables (Uendes et al., ICLR 2025), registered by name; the convergence figure is
in :mod:`xaipipe.report.masks`. Both read the per-image histories of the ``convergence``
metric, paired by image id across the inits of one host method (the images every init has).

``startgrad_speedup``: one row per (model, variant, method, quantity, reference init):
the reference curve's value at its last step (v_ref, the per-step IQM), the first step t* at
which StartGrad's IQM curve reaches it, and the speed-up (t_ref + 1)/(t* + 1) (clean form),
each as mean ± std over 250 paired bootstrap replicates (:func:`xaipipe.metrics.curves.speedup`),
with the fraction of replicates where StartGrad stays above v_ref from t* on (``verified``)
and the fraction whose v_ref is undefined (``undefined``: the reference's CP NaN at its last
step in every resampled image, a mask gone to zero; left out of the other columns).
Steps are optimisation steps (recorded index × ``history_every``), and so is the speed-up.

``startgrad_iqm``: one row per (model, variant, method, quantity, init) and per paired
difference ``startgrad - <init>``: the per-step IQM over images at steps 0, 1, 10, 50, 100 and
the last recorded step (those recorded), with the 95 % percentile interval over 250 paired
bootstrap replicates of the images (:func:`xaipipe.metrics.curves.step_curve_ci`; the same
resampled images for every init, so the differences' intervals are paired ones).

``startgrad_wilcoxon``: one row per (model, variant, method, quantity, baseline init): the
one-sided Wilcoxon signed-rank p-value (H1: StartGrad − baseline > 0, per image) at steps 0,
1, 10, 50, 100 and the last recorded step (those recorded), and the fraction of recorded
steps with p < 0.05.

``startgrad_faithfulness``: one row per (model, variant, method as configured): the StartGrad
faithfulness at each recorded iteration as mean and IQM over images (``mean_it_<k>``,
``iqm_it_<k>``), as the paper's faithfulness table reports it. Mask methods record it with
``faithfulness_at``; pixel maps (the IG and GradCAM baselines) have one value, repeated in every
iteration column (they do not iterate).

Formats: csv (the rows), md, tex, html; every file written atomically once all are rendered.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import DataError
from ..metrics.curves import iqm, speedup, step_curve_ci, wilcoxon_per_step
from .inputs import read_per_image
from .masks import history_curves
from .tables import TABLES, _write_text

QUANTITIES = ("cp_l1", "cp_pixel", "retained_probability")
REFERENCES = ("ones", "uniform")
#: the startgrad_iqm table's rows: every history of the mask methods, those recorded
IQM_QUANTITIES = (*QUANTITIES, "cp_entropy", "retained_l1", "retained_entropy",
                  "retained_pixel", "clean_retained_probability", "clean_cp_l1_pixel",
                  "clean_cp_l1", "clean_cp_entropy")
P_STEPS = (0, 1, 10, 50, 100)
N_BOOT = 250


def paired(curves: dict) -> dict:
    """{(model, variant, method): {init: entry}} with every init restricted to the image ids
    all inits of that method have, in the same order."""
    groups: dict = {}
    for (model, variant, host, init), e in curves.items():
        groups.setdefault((model, variant, host), {})[init] = e
    out = {}
    for key, inits in groups.items():
        common = None
        for e in inits.values():
            ids = set(e["image_id"].tolist())
            common = ids if common is None else common & ids
        ids = np.array(sorted(common))
        sub = {}
        for init, e in inits.items():
            pos = pd.Index(e["image_id"]).get_indexer(ids)
            sub[init] = {k: (v[pos] if isinstance(v, np.ndarray) and v.ndim == 2 else v)
                         for k, v in e.items()}
            sub[init]["image_id"] = ids
        out[key] = sub
    return out


def speedup_frame(per_image: pd.DataFrame, n_boot: int = N_BOOT) -> pd.DataFrame:
    rows = []
    for (model, variant, host), inits in paired(history_curves(per_image)).items():
        if "startgrad" not in inits:
            continue
        every = inits["startgrad"]["every"]
        for q in QUANTITIES:
            for ref in REFERENCES:
                if ref not in inits or q not in inits[ref]:
                    continue
                cur = {ref: inits[ref][q], "startgrad": inits["startgrad"][q]}
                if cur[ref].shape[0] == 0:
                    continue
                s = speedup(cur, reference=ref, candidate="startgrad", n_boot=n_boot,
                            every=every)
                rows.append({"model": model, "variant": variant, "method": host,
                             "quantity": q, "reference": ref, "n_images": s["n_images"],
                             "steps": s["steps"],
                             "v_ref": float(np.nanmean(s["v_ref"]))
                             if np.isfinite(s["v_ref"]).any() else float("nan"),
                             "t_ref": int(np.max(s["t_ref"])),
                             "t_star_mean": s["t_star_mean"],
                             "t_star_std": s["t_star_std"],
                             "speedup_mean": s["speedup_mean"], "speedup_std": s["speedup_std"],
                             "verified": s["verified_fraction"],
                             "undefined": s["undefined_fraction"], "n_boot": n_boot})
    return pd.DataFrame(rows)


def _report_steps(t: int, every: int) -> list[int]:
    """The recorded entries the tables show: steps 0, 1, 10, 50, 100 (those recorded) and the
    last recorded step, as entry indices."""
    want = [*P_STEPS, (t - 1) * every]
    return sorted({s // every for s in want if s % every == 0 and s // every < t})


def iqm_frame(per_image: pd.DataFrame, n_boot: int = N_BOOT, level: float = 0.95
              ) -> pd.DataFrame:
    rows = []
    for (model, variant, host), inits in paired(history_curves(per_image)).items():
        names = [i for i in ("ones", "uniform", "startgrad") if i in inits]
        every = inits[names[0]]["every"] if names else 1
        for q in IQM_QUANTITIES:
            cur = {i: inits[i][q] for i in names if q in inits[i]}
            if not cur or next(iter(cur.values())).shape[0] == 0:
                continue
            cand = "startgrad" if "startgrad" in cur and len(cur) > 1 else None
            ci = step_curve_ci(cur, n_boot=n_boot, level=level, candidate=cand)
            t = len(next(iter(ci["curve"].values())))
            entries = _report_steps(t, every)
            series = [(i, ci["curve"][i], ci["lo"][i], ci["hi"][i]) for i in cur]
            if cand:
                series += [(f"startgrad - {o}", ci["diff"][o], ci["diff_lo"][o],
                            ci["diff_hi"][o]) for o in ci["diff"]]
            for name, c, lo, hi in series:
                row = {"model": model, "variant": variant, "method": host, "quantity": q,
                       "init": name, "n_images": ci["n_images"]}
                for j in entries:
                    row[f"iqm_step_{j * every}"] = float(c[j])
                    row[f"lo_step_{j * every}"] = float(lo[j])
                    row[f"hi_step_{j * every}"] = float(hi[j])
                rows.append(row)
    return pd.DataFrame(rows)


def wilcoxon_frame(per_image: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (model, variant, host), inits in paired(history_curves(per_image)).items():
        if "startgrad" not in inits:
            continue
        every = inits["startgrad"]["every"]
        for q in ("cp_l1", "cp_pixel"):
            for base in REFERENCES:
                if base not in inits or q not in inits[base]:
                    continue
                p = wilcoxon_per_step(inits["startgrad"][q], inits[base][q])
                t = len(p)
                row = {"model": model, "variant": variant, "method": host, "quantity": q,
                       "baseline": base, "n_images": len(inits[base]["image_id"])}
                for j in _report_steps(t, every):
                    row[f"p_step_{j * every}"] = float(p[j])
                row["frac_p_below_0.05"] = float(np.mean(p < 0.05)) if t else np.nan
                rows.append(row)
    return pd.DataFrame(rows)


def faithfulness_frame(per_image: pd.DataFrame) -> pd.DataFrame:
    rows_in = per_image[per_image["metric_name"] == "faithfulness"] \
        if "metric_name" in per_image else per_image.iloc[:0]
    if rows_in.empty:
        raise DataError("startgrad_faithfulness needs the metric 'faithfulness' in the "
                        "experiment (metrics: [..., faithfulness])")
    groups, steps_all = [], set()
    for (model, variant, method), d in rows_in.groupby(["model", "variant", "method"],
                                                      sort=False):
        d = d.sort_values("image_id")
        if "faithfulness_step" in d and d["faithfulness_step"].notna().any():
            steps = [int(v) for v in np.asarray(d["faithfulness_step"].iloc[0])]
            values = np.stack([np.asarray(v, np.float64) for v in d["faithfulness_curve"]])
            iterative = True
        else:
            steps, values, iterative = None, d["faithfulness"].to_numpy(np.float64)[:, None], False
        if steps:
            steps_all.update(steps)
        init = d["init"].iloc[0] if "init" in d and pd.notna(d["init"].iloc[0]) else ""
        groups.append((model, variant, method, init, steps, values, iterative))
    steps_all = sorted(steps_all) or [0]
    rows = []
    for model, variant, method, init, steps, values, iterative in groups:
        row = {"model": model, "variant": variant, "method": method, "init": init,
               "n_images": values.shape[0]}
        for k in steps_all:
            col = values[:, steps.index(k)] if iterative and k in steps else \
                (values[:, 0] if not iterative else np.full(values.shape[0], np.nan))
            row[f"mean_it_{k}"] = float(np.nanmean(col)) if np.isfinite(col).any() else np.nan
            row[f"iqm_it_{k}"] = float(iqm(col)) if np.isfinite(col).any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "–" if not np.isfinite(v) else f"{v:.3g}"
    return str(v)


def write_frame(df: pd.DataFrame, out: dict[str, str], caption: str) -> None:
    """csv, md, tex and html of one flat table; all rendered first, then each written
    atomically."""
    shown = df.map(_fmt) if len(df) else df
    texts = {
        "csv": df.to_csv(index=False),
        "md": f"{caption}\n\n" + (shown.to_markdown(index=False) if len(df) else "(no rows)")
        + "\n",
        "tex": "% " + caption + "\n" + (shown.to_latex(index=False) if len(df) else "") + "\n",
        "html": f"<p>{caption}</p>\n" + (shown.to_html(index=False) if len(df) else "") + "\n",
    }
    for ext, path in out.items():
        if ext not in texts:
            raise ValueError(f"{path}: a table is written as csv, md, tex or html")
    for ext, path in out.items():
        _write_text(path, texts[ext])


@TABLES.register(name="startgrad_speedup")
def startgrad_speedup(summary: pd.DataFrame, out: dict[str, str], per_image=None) -> None:
    """StartGrad's speed-up over the ones / uniform inits (module docstring)."""
    write_frame(speedup_frame(read_per_image(per_image)), out,
                "StartGrad speed-up: first step t* at which StartGrad's per-step IQM reaches "
                "the reference init's final IQM; speed-up (t_ref + 1)/(t* + 1); mean ± std "
                f"over {N_BOOT} paired bootstrap replicates of the images.")


@TABLES.register(name="startgrad_iqm")
def startgrad_iqm(summary: pd.DataFrame, out: dict[str, str], per_image=None) -> None:
    """Per-step IQM over images of every history, with paired bootstrap CIs (module
    docstring)."""
    write_frame(iqm_frame(read_per_image(per_image)), out,
                "Per-step interquartile mean (IQM) over images of each recorded quantity per "
                f"init, with 95 % percentile intervals over {N_BOOT} paired bootstrap "
                "replicates of the images (the same images for every init); rows "
                "'startgrad - <init>' are the paired differences of the IQM curves.")


@TABLES.register(name="startgrad_wilcoxon")
def startgrad_wilcoxon(summary: pd.DataFrame, out: dict[str, str], per_image=None) -> None:
    """One-sided Wilcoxon p-values of StartGrad against each baseline init per step."""
    write_frame(wilcoxon_frame(read_per_image(per_image)), out,
                "One-sided Wilcoxon signed-rank tests, H1: StartGrad − baseline > 0 per image, "
                "at selected steps; frac_p_below_0.05 over all recorded steps.")


@TABLES.register(name="startgrad_faithfulness")
def startgrad_faithfulness(summary: pd.DataFrame, out: dict[str, str], per_image=None) -> None:
    """StartGrad faithfulness per recorded iteration, mean and IQM over images."""
    write_frame(faithfulness_frame(read_per_image(per_image)), out,
                "StartGrad faithfulness AUC(d_remove) − AUC(d_keep) (Uendes et al., ICLR "
                "2025) at the masks of each recorded iteration (0: the initial mask); "
                "mean and IQM over images. Pixel maps (IG, GradCAM) do not iterate: one "
                "value, repeated.")
