"""The StartGrad study's report (Uendes et al., ICLR 2025): tables and the convergence figure,
registered by name. All read the per-image histories of the ``convergence`` metric, paired by
image id across the inits of one host method (the images every init has).

Figure ``convergence_curves``: rows = host method (``method_name``), columns = retained
probability, retained ℓ1 information, CP-ℓ1, CP-pixel; per init (``ones``, ``uniform``,
``startgrad``) the median over images and the interquartile band at every recorded step
(x = step, from ``history_every``).

``startgrad_speedup``: one row per (model, variant, method, quantity, reference init):
the reference curve's value at its last step (v_ref, the per-step IQM), the first step t* at
which StartGrad's IQM curve reaches it, and the speed-up (t_ref + 1)/(t* + 1) (clean form),
each as mean ± std over 250 paired bootstrap replicates (:func:`xaipipe.metrics.statistics.speedup`),
with the fraction of replicates where StartGrad stays above v_ref from t* on (``verified``)
and the fraction whose v_ref is undefined (``undefined``: the reference's CP NaN at its last
step in every resampled image, a mask gone to zero; left out of the other columns).
Steps are optimisation steps (recorded index × ``history_every``), and so is the speed-up.

``startgrad_iqm``: one row per (model, variant, method, quantity, init) and per paired
difference ``startgrad - <init>``: the per-step IQM over images at steps 0, 1, 10, 50, 100 and
the last recorded step (those recorded), with the 95 % percentile interval over 250 paired
bootstrap replicates of the images (:func:`xaipipe.metrics.statistics.step_curve_ci`; the same
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
from ..metrics.convergence import CURVES as HISTORIES, OPTIONAL_CURVES
from ..metrics.statistics import iqm, speedup, step_curve_ci, wilcoxon_per_step
from .figures import FIGURES, FigureInputs, plt, save_figure
from .inputs import metric_rows, read_per_image
from .render import flat_table, write_table
from .tables import TABLES

CURVES = (("retained_probability", "retained probability"),
          ("retained_l1", "retained ℓ1 information"),
          ("cp_l1", "CP-ℓ1"), ("cp_pixel", "CP-pixel"))
INIT_ORDER = ("ones", "uniform", "startgrad")
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


def write_frame(df: pd.DataFrame, out: dict[str, str], caption: str) -> None:
    """csv (the rows), md, tex and html (:mod:`xaipipe.report.render`) of one flat table."""
    write_table(flat_table(df, caption, name="startgrad"), out, csv=df, name="startgrad",
                style=False)


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


# -- the convergence figure ----------------------------------------------------------------
def setting_labels(frame: pd.DataFrame) -> pd.Series:
    """Per row, the host label of its run: ``method_name`` where the experiment has one
    setting of that method (per model and variant), else ``method_name (k=v, ...)`` with the
    parameters that differ between its settings (the ``setting`` column,
    :func:`xaipipe.explain.masks.params.run_setting`; a λ grid gives ``shearletx (lambda_1=0.1,
    lambda_2=0.2)``). Without a ``setting`` column: ``method_name``."""
    import json
    label = frame["method_name"].astype(str)
    if "setting" not in frame or frame["setting"].isna().all():
        return label
    label = label.copy()
    for _, d in frame.groupby(["model", "variant", "method_name"], sort=False):
        settings = list(dict.fromkeys(d["setting"].dropna()))
        if len(settings) < 2:
            continue
        parsed = {st: json.loads(st) for st in settings}
        keys = sorted({k for v in parsed.values() for k in v}, key=str)
        varying = [k for k in keys if len({json.dumps(v.get(k), sort_keys=True)
                                           for v in parsed.values()}) > 1]
        for st, v in parsed.items():
            rows = d.index[d["setting"] == st]
            desc = ", ".join(f"{k}={v.get(k)}" for k in varying)
            label.loc[rows] = f"{d['method_name'].iloc[0]} ({desc})"
    return label


def history_curves(per_image: pd.DataFrame) -> dict:
    """{(model, variant, host, init): {quantity: (images, T) array, "image_id": ids,
    "every": history_every}} from the ``convergence`` metric's rows, images sorted by id.
    ``host`` is the method's label (:func:`setting_labels`: ``method_name``, or with the
    parameters of its setting where the experiment runs several, e.g. a λ grid); ``init`` is
    the init's label (``startgrad[ablation=adversarial]`` for an ablation). Two runs with one
    key (the same setting and init twice) are an error naming them."""
    conv = metric_rows(per_image, "convergence")
    if conv.empty:
        raise DataError("the StartGrad report needs the metric 'convergence' (the histories of "
                        "mask methods run with history_every) in the experiment")
    conv = conv.assign(_host=setting_labels(conv))
    out = {}
    for key, d in conv.groupby(["model", "variant", "_host", "init"], sort=False):
        if "method" in d and d["method"].nunique() > 1:
            raise DataError(f"the runs {sorted(d['method'].unique())} of {key[0]} / {key[2]} "
                            f"share the init {key[3]!r} and every other parameter: the "
                            "StartGrad tables compare one run per init and setting")
        d = d.sort_values("image_id")
        entry = {q: np.stack([np.asarray(v, np.float64) for v in d[q]])
                 for q in (*HISTORIES, *OPTIONAL_CURVES)
                 if q in d and d[q].map(lambda v: isinstance(v, np.ndarray)).all()}
        entry["image_id"] = d["image_id"].to_numpy()
        every = d["history_every"].iloc[0] if "history_every" in d else 1
        entry["every"] = int(every) if pd.notna(every) and every else 1
        out[key] = entry
    return out


def convergence_figure(curves: dict, paths, *, suptitle: str | None = None) -> None:
    """Median and interquartile band over images per init (module docstring)."""
    rows = list(dict.fromkeys((m, v, h) for m, v, h, _ in curves))
    fig, axes = plt.subplots(len(rows), len(CURVES), figsize=(3.6 * len(CURVES),
                                                            2.8 * len(rows)), squeeze=False)
    colors = {"ones": "tab:blue", "uniform": "tab:orange", "startgrad": "tab:green"}
    for r, (model, variant, host) in enumerate(rows):
        inits = [i for i in INIT_ORDER if (model, variant, host, i) in curves] + \
            [i for (m, v, h, i) in curves if (m, v, h) == (model, variant, host)
             and i not in INIT_ORDER]
        for c, (q, label) in enumerate(CURVES):
            ax = axes[r, c]
            for init in inits:
                e = curves[(model, variant, host, init)]
                if q not in e:
                    continue
                a = e[q]
                x = np.arange(a.shape[1]) * e["every"]
                lo, med, hi = np.nanpercentile(a, [25, 50, 75], axis=0)
                ax.plot(x, med, color=colors.get(init), label=init, lw=1.2)
                ax.fill_between(x, lo, hi, color=colors.get(init), alpha=0.2, lw=0)
            ax.set_title(f"{host}\n{model}: {label}", fontsize=7.5)
            ax.set_xlabel("step", fontsize=7)
            ax.tick_params(labelsize=7)
            if q.startswith("cp_"):
                ax.set_yscale("log")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8,
               bbox_to_anchor=(0.5, -0.03), title="init (median, IQR band over images)",
               title_fontsize=8)
    fig.tight_layout()
    if suptitle:                # above the panels (the saved figure's box is tight)
        fig.suptitle(suptitle, fontsize=10, y=1.0 + 0.25 / fig.get_figheight())
    save_figure(fig, paths)


@FIGURES.register(name="convergence_curves")
def convergence_curves_figure(inputs: FigureInputs, paths: list[str]) -> None:
    """Convergence curves of ones / uniform / StartGrad inits per mask method."""
    convergence_figure(history_curves(read_per_image(inputs.per_image)), paths,
                       suptitle=inputs.experiment or None)
