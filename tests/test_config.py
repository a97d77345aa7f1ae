import copy

import pytest
import yaml

from xaipipe.config import ROOT, Plan, check_config, load_config, validate_schema
from xaipipe.errors import ConfigError

BASE = yaml.safe_load((ROOT / "config.yaml").read_text())


def cfg(**changes):
    c = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = c
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return c


def check(c):
    return check_config(validate_schema(c))


def test_default_config_is_valid_and_planned():
    c = load_config()
    plan = Plan(c)
    targets = plan.all_targets()
    assert "results/tables/summary.csv" in targets
    assert ("results/metrics/shapes/shapes_resnet18/insertion/integrated_gradients/jpeg.parquet"
            in targets)
    assert "results/selection/shapes/shapes_resnet18/confident.parquet" in targets
    job = plan.explain_job("shapes", "shapes_resnet18", "integrated_gradients", "original")
    assert job["method"] == "integrated_gradients" and job["params"]["steps"] == 64
    assert job["model_spec"] == {"name": "demo_resnet18",
                                 "weights": "results/models/shapes_resnet18/weights.pt"}


@pytest.mark.parametrize("path,value,match", [
    ("explain__max_images", -3, r"config key explain.max_images: -3 is less than the minimum of 1"),
    ("explain__target", "truth", r"explain.target: 'truth' is not one of \['label', 'pred'\]"),
    ("device", "tpu", r"'tpu' does not match"),
    ("explain__bogus", 1, r"config key explain: Additional properties are not allowed \('bogus'"),
    ("models__shapes_resnet18__arch", 5, r"models.shapes_resnet18.arch: 5 is not of type 'string'"),
])
def test_schema_errors_name_the_key(path, value, match):
    with pytest.raises(ConfigError, match=match):
        validate_schema(cfg(**{path: value}))


@pytest.mark.parametrize("path,value,match", [
    ("methods__ig", {"method": "integrated_gradientz"},
     r"unknown method 'integrated_gradientz'; available: .*integrated_gradients"),
    ("methods__integrated_gradients", {"steps": 64, "rule": "simpson"},
     r"methods.integrated_gradients.rule: 'simpson' is not allowed; allowed values: 'left'"),
    ("methods__smoothgrad", {"samples": 0}, r"methods.smoothgrad.samples: 0 is below"),
    ("methods__saliency", {"objective": "softmax"}, r"methods.saliency.objective.*'prob'"),
    ("metrics__insertion", {"fill": "white"}, r"metrics.insertion.fill: 'white'.*'black'"),
    ("metrics__auc", {}, r"unknown metric 'auc'; available: deletion, insertion"),
    ("models__shapes_resnet18__arch", "resnet9000", r"unknown model 'resnet9000'"),
    ("models__shapes_resnet18__train", {"epochs": 0}, r"models.shapes_resnet18.train.epochs"),
    ("variants__sharpened", {}, r"unknown variant 'sharpened'; allowed: original, jpeg, blur"),
    ("variants__jpeg", {"quality": 200}, r"variants.jpeg.quality: 200 is above"),
    ("filters__best", {}, r"unknown filter 'best'; allowed: all, correct, confident"),
    ("explain__variants", ["original", "png"], r"explain.variants: unknown name 'png'"),
    ("explain__methods", ["ig"], r"explain.methods: unknown name 'ig'; allowed: saliency"),
    ("explain__filter", "top", r"explain.filter: unknown name 'top'"),
    ("datasets__shapes__kind", "mnist", r"datasets.shapes.kind: unknown name 'mnist'"),
    ("datasets__shapes__num_classes", 30, r"datasets.shapes.num_classes: 30 is above"),
    ("report__variant", "blur", r"report.variant: unknown name 'blur'"),
])
def test_registry_errors_name_the_key_and_the_allowed_values(path, value, match):
    with pytest.raises(ConfigError, match=match):
        check(cfg(**{path: value}))


def test_metric_needing_blur_requires_the_variant():
    c = cfg(metrics__insertion={"fill": "blur"})
    del c["variants"]["blur"]
    with pytest.raises(ConfigError, match="needs the variant 'blur'"):
        check(c)


def test_runs_can_rename_methods_and_metrics():
    c = check(cfg(methods={"ig8": {"method": "integrated_gradients", "steps": 8}},
                  metrics={"ins_blur": {"metric": "insertion", "fill": "blur"}}))
    plan = Plan(c)
    job = plan.score_job("shapes", "shapes_resnet18", "ins_blur", "ig8", "jpeg")
    assert job["metric_name"] == "insertion" and job["fill_path"] == "results/data/shapes/blur.zarr"
    assert job["saliency_path"] == "results/saliency/shapes/shapes_resnet18/ig8/jpeg.zarr"
