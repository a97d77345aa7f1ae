"""Typed jobs for runner tests: a tiny demo model spec and jobs with test defaults."""
from xaipipe.jobs import ExplainJob, ModelSpec, ScoreJob

SPEC = ModelSpec("demo_resnet18", None, {"num_classes": 3, "width": 4})


def explain_job(**kw):
    base = dict(method="saliency", params={"objective": "logit", "grad_space": "pixel"},
                model=SPEC, target="label", max_images=(None,), split="val", seed=0,
                device="cpu", batch_size=4, memory_mb=None, dtype="float32",
                provenance={"method": "saliency"})
    return ExplainJob(**{**base, **kw})


def score_job(metric, params, model=None, **kw):
    base = dict(metric=metric, params=params, model=model, max_images=(None,), split="val",
                device="cpu", batch_size=16, scheduler="synchronous",
                provenance={"metric": metric, "method_params": {"objective": "logit"}})
    return ScoreJob(**{**base, **kw})
