import copy

import pytest
import yaml

from xaipipe.jobs import signature
from xaipipe.config import (ROOT, Plan, check_overlays, load_config, prepare,
                            validate_schema)
from xaipipe.errors import ConfigError
from helpers.configs import BASE, cfg, check

TINY = ROOT / "tests" / "configs" / "tiny.yaml"


def test_default_config_is_valid_and_planned():
    plan = Plan(load_config())
    targets = plan.all_targets()
    assert "results/papers/demo/tables/summary.md" in targets
    assert "results/papers/demo/figures/auc_bars.pdf" in targets
    assert ("shapes", "shapes_resnet18", "insertion", "integrated_gradients", "jpeg") \
        in plan.score_keys()
    # stability compares jpeg with original maps: not scored on its reference variant
    assert ("shapes", "shapes_resnet18", "stability", "gradcam", "jpeg") in plan.score_keys()
    assert ("shapes", "shapes_resnet18", "stability", "gradcam", "original") \
        not in plan.score_keys()
    job = plan.explain_job("shapes", "shapes_resnet18", "integrated_gradients", "original")
    assert job.method == "integrated_gradients" and job.params.steps == 64
    assert job.params.objective == "logit"            # defaults filled in
    assert job.model.arch == "demo_resnet18" and job.max_images == (100,)
    assert plan.model_inputs("shapes_resnet18") == ["results/models/shapes_resnet18/weights.pt"]
    # each variant is filtered on its own predictions by default
    assert plan.explain_selections("shapes", "shapes_resnet18", "gradcam", "jpeg") == \
        ["results/selection/shapes/shapes_resnet18/correct/jpeg.parquet"]
    assert plan.model_images("shapes_resnet18", "jpeg") == "results/data/shapes/native/jpeg.zarr"


def test_filter_variant_and_per_metric_filters():
    c = check(cfg(experiments__demo__filter={"default": "correct", "pointing_game": "all"},
                  experiments__demo__filter_variant="original"))
    plan = Plan(c)
    sels = plan.explain_selections("shapes", "shapes_resnet18", "gradcam", "jpeg")
    assert sels == ["results/selection/shapes/shapes_resnet18/all/original.parquet",
                    "results/selection/shapes/shapes_resnet18/correct/original.parquet"]
    inputs = plan.score_inputs("shapes", "shapes_resnet18", "pointing_game", "gradcam", "jpeg")
    assert inputs["selections"] == ["results/selection/shapes/shapes_resnet18/all/original.parquet"]
    assert "model" not in inputs and "images" in inputs        # masks come with the images
    st = plan.score_inputs("shapes", "shapes_resnet18", "stability", "gradcam", "jpeg")
    assert st["other_maps"] == "results/saliency/shapes/shapes_resnet18/gradcam/original.zarr"
    assert "model" not in st and "images" not in st


def test_jobs_carry_filled_in_defaults_so_explicit_defaults_do_not_rerun():
    a = Plan(check(cfg(methods__smoothgrad={"samples": 25, "noise": 0.15})))
    b = Plan(check(cfg(methods__smoothgrad={"noise": 0.15, "samples": 25, "squared": False,
                                            "objective": "logit"})))
    key = ("shapes", "shapes_resnet18", "smoothgrad", "original")
    sig = repr(signature(a.explain_job(*key)))         # what Snakemake compares
    assert sig == repr(signature(b.explain_job(*key)))
    skey = ("shapes", "shapes_resnet18", "insertion", "smoothgrad", "original")
    assert repr(signature(a.score_job(*skey))) == repr(signature(b.score_job(*skey)))
    c = Plan(check(cfg(methods__smoothgrad={"samples": 4})))
    assert repr(signature(c.explain_job(*key))) != sig
    # execution settings never change a result, so they do not rerun anything
    d = Plan(check(cfg(explain__batch_size=7, explain__memory_mb=64, score__batch_size=9,
                       score__scheduler="threads", methods__smoothgrad={"samples": 25})))
    assert repr(signature(d.explain_job(*key))) == sig
    assert d.explain_job(*key).batch_size == 7
    assert repr(signature(d.score_job(*skey))) == repr(signature(a.score_job(*skey)))
    # the signature is plain data (Snakemake ignores parameters it cannot represent)
    assert eval(repr(signature(a.summary_job("demo"))))


@pytest.mark.parametrize("path,value,match", [
    ("experiments__demo__max_images", -3,
     r"config key experiments.demo.max_images: -3 is less than the minimum of 1"),
    ("experiments__demo__target", "truth", r"'truth' is not one of \['label', 'pred'\]"),
    ("device", "tpu", r"'tpu' does not match"),
    ("allocator", "jemalloc",
     r"config key allocator: 'jemalloc' is not one of \['retain', 'system'\]"),
    ("explain__bogus", 1, r"config key explain: Additional properties are not allowed \('bogus'"),
    ("bogus", 1, r"config key \(top level\): Additional properties are not allowed \('bogus' "
                 r"was unexpected\); allowed keys: .*experiments"),
    ("models__shapes_resnet18__arch", 5, r"models.shapes_resnet18.arch: 5 is not of type"),
])
def test_schema_errors_are_one_line_naming_the_key(path, value, match):
    with pytest.raises(ConfigError, match=match) as e:
        validate_schema(cfg(**{path: value}))
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


@pytest.mark.parametrize("path,value,match", [
    ("methods__ig", {"method": "integrated_gradientz"},
     r"methods.ig.method: unknown method 'integrated_gradientz'; did you mean "
     r"integrated_gradients(, \w+)*\? available: .*integrated_gradients"),
    ("methods__integrated_gradients", {"steps": 64, "rule": "simpson"},
     r"methods.integrated_gradients.rule: 'simpson' is not allowed; allowed values: 'left'"),
    ("methods__smoothgrad", {"samples": 0}, r"methods.smoothgrad.samples: 0 is below"),
    ("methods__saliency", {"objective": "softmax"}, r"methods.saliency.objective.*'prob'"),
    ("metrics__insertion", {"fill": "white"}, r"metrics.insertion.fill: 'white'.*'black'"),
    ("metrics__auc", {}, r"metrics.auc.metric: unknown metric .auc.; available: convergence, cp,"),
    ("models__shapes_resnet18__arch", "resnet9000",
     r"models.shapes_resnet18.arch: unknown model 'resnet9000'; did you mean resnet50"),
    ("models__shapes_resnet18__train", {"epochs": 0}, r"models.shapes_resnet18.train.epochs"),
    ("models__shapes_resnet18__dataset", "imagenet",
     r"models.shapes_resnet18.dataset: unknown name 'imagenet'; allowed: shapes"),
    ("models__shapes_resnet18__preprocess", "crop224",
     r"models.shapes_resnet18.preprocess: unknown name 'crop224'; allowed: native"),
    ("variants__sharpened", {}, r"variants.sharpened: unknown variant 'sharpened'; "
                                r"available: blur, jpeg, original"),
    ("variants__jpeg", {"quality": 200}, r"variants.jpeg.quality: 200 is above"),
    ("filters__best", {}, r"filters.best: unknown filter 'best'; available: all, confident"),
    ("preprocess__x", {"crop": 0}, r"preprocess.x.crop: 0 is below"),
    ("experiments__demo__variants", ["original", "png"],
     r"experiments.demo.variants: unknown name 'png'"),
    ("experiments__demo__methods", ["ig"], r"experiments.demo.methods: unknown name 'ig'"),
    ("experiments__demo__methods", ["saliencyy"],
     r"experiments.demo.methods: unknown name 'saliencyy'; did you mean saliency\? allowed: "),
    ("experiments__demo__filter", "top", r"experiments.demo.filter: unknown name 'top'"),
    ("experiments__demo__filter", {"default": "correct", "pic": "confident"},
     r"experiments.demo.filter \(metric\): unknown name 'pic'; allowed: insertion"),
    ("experiments__demo__tables", ["summry"], r"experiments.demo.tables: unknown table 'summry'; did you mean summary\? "
     r"available: .*summary"),
    ("experiments__demo__figures", ["grid"], r"experiments.demo.figures: unknown figure 'grid'"),
    ("experiments__demo__report_variant", "blur",
     r"experiments.demo.report_variant: unknown name 'blur'; allowed: original, jpeg"),
    ("run", ["paper"], r"run: unknown name 'paper'; allowed: demo"),
    ("datasets__shapes__kind", "mnist",
     r"datasets.shapes.kind: unknown dataset kind 'mnist'; available: imagefolder, imagenet, shapes"),
    ("datasets__shapes__num_classes", 30, r"datasets.shapes.num_classes: 30 is above"),
])
def test_registry_errors_name_the_key_and_the_allowed_values(path, value, match):
    with pytest.raises(ConfigError, match=match):
        check(cfg(**{path: value}))


def test_unworkable_pairs_name_both_sides():
    c = cfg(methods__gradcam={"layer": "layer9.conv"})
    with pytest.raises(ConfigError, match=r"experiments.demo: method 'gradcam' on model "
                                          r"'shapes_resnet18'.*layer9.conv"):
        check(c)
    c = cfg(datasets__folder={"kind": "imagefolder", "root": "/nonexistent"},
            models__folder_net={"arch": "resnet18", "weights": "random", "dataset": "folder"},
            experiments__f={"models": ["folder_net"], "methods": ["saliency"],
                            "metrics": ["pointing_game"]})
    with pytest.raises(ConfigError, match=r"experiments.f: metric 'pointing_game' needs masks, "
                                          r"which data set 'folder' \(of model 'folder_net'\)"):
        check(c)
    c = cfg(experiments__demo__variants=["jpeg"])
    with pytest.raises(ConfigError, match=r"metric 'stability' compares with the maps of "
                                          r"variant 'original'"):
        check(c)


def test_missing_dataset_root_stops_before_any_job(tmp_path):
    c = cfg(datasets__folder={"kind": "imagefolder", "root": str(tmp_path / "nope")},
            models__folder_net={"arch": "resnet18", "weights": "random", "dataset": "folder"},
            experiments__f={"models": ["folder_net"], "methods": ["saliency"]})
    prepare(copy.deepcopy(c), targets=["demo"])        # not run: not checked
    with pytest.raises(ConfigError, match=r"datasets.folder.root: folder '.*nope' does not exist"):
        prepare(copy.deepcopy(c), targets=["f"])


def test_data_checks_follow_the_targets(tmp_path):
    """Named experiments (in any order, `all` = run), an experiment's own output file, and
    any other file or rule (all experiments) decide whose data are checked."""
    c = cfg(datasets__folder={"kind": "imagefolder", "root": str(tmp_path / "nope")},
            models__folder_net={"arch": "resnet18", "weights": "random", "dataset": "folder"},
            experiments__f={"models": ["folder_net"], "methods": ["saliency"]})
    missing = r"datasets.folder.root: folder '.*nope' does not exist"
    summary = "results/papers/demo/summary.csv"
    for targets in (["demo"], ["all"], [], [summary], ["demo", "all", summary]):
        prepare(copy.deepcopy(c), targets=targets)
    for targets in (["demo", "f"], ["f", "demo"], ["demo", "results/papers/f/summary.csv"],
                    [summary, "results/selection/folder/folder_net/correct/original.parquet"],
                    ["explain"], None):
        with pytest.raises(ConfigError, match=missing):
            prepare(copy.deepcopy(c), targets=targets)
    prepare(copy.deepcopy(c), targets=["f"], check_data=False)     # a job process: no check


def test_snakemake_targets_while_the_snakefile_is_parsed(tmp_path, monkeypatch):
    """The DAG settings when Snakemake has attached them; else those of the snakemake.api
    DAGApi on the call stack (Snakemake 9 parses the Snakefile inside it); else sys.argv read
    by Snakemake's own parser, targets before or after the options."""
    from types import SimpleNamespace

    from snakemake.settings.types import DAGSettings

    from xaipipe.config import snakemake_targets
    monkeypatch.chdir(tmp_path)
    wf = SimpleNamespace(dag_settings=DAGSettings(targets={"demo"}))
    assert snakemake_targets(wf) == ("demo",)

    class DAGApiLike:                     # what DAGApi.__post_init__ holds while parsing
        dag_settings = DAGSettings(targets={"idgi_tmlr"})

        def parse(self, workflow):
            return snakemake_targets(workflow)

    none = SimpleNamespace(dag_settings=None)
    assert DAGApiLike().parse(none) == ("idgi_tmlr",)
    main = str(tmp_path / "snakemake" / "__main__.py")             # python -m snakemake
    for argv, want in ([["--configfile", "a.yaml", "-n", "demo", "x"], ("demo", "x")],
                       [["demo", "--config", "seed=1", "--configfile", "a.yaml"], ("demo",)],
                       [["--configfile", "a.yaml", "--", "demo"], ("demo",)],
                       [["--lint"], ()]):
        monkeypatch.setattr("sys.argv", [main, *argv])
        assert snakemake_targets(none) == want, argv
    monkeypatch.setattr("sys.argv", ["pytest", "demo"])             # not a snakemake command
    assert snakemake_targets(none) is None


def test_unknown_targets_name_the_experiments_and_the_preset_that_defines_them(tmp_path,
                                                                            monkeypatch):
    from xaipipe.config import check_targets
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "a.yaml").write_text("experiments: {paper_a: {}, paper_b: {}}\n")
    (presets / "b.yaml").write_text("experiments: {paper_b: {}}\nrun: [paper_b]\n")
    (presets / "notes.yaml").write_text("- not a mapping\n")         # skipped
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing").write_text("")
    c = check(cfg())
    check_targets(c, ["demo", "all", "explain", "explain_sweep_x", "results/x.csv",
                      "existing"], presets)                            # rules and files pass
    with pytest.raises(ConfigError, match=r"^target 'paper_a': no experiment of that name in "
                                          r"the loaded config; it is defined in presets/a.yaml, "
                                          r"which is not loaded: snakemake paper_a --configfile "
                                          r"presets/a.yaml "):
        check_targets(c, ["demo", "paper_a"], presets)
    with pytest.raises(ConfigError, match=r"defined in presets/a.yaml or presets/b.yaml, "):
        check_targets(c, ["paper_b"], presets)
    with pytest.raises(ConfigError, match=r"^target 'dmeo' is neither an experiment nor a "
                                          r"workflow rule nor a file path; experiments: demo; "
                                          r"in presets not loaded: paper_a \(presets/a.yaml\), "
                                          r"paper_b \(presets/a.yaml\); did you mean 'demo'\?$"):
        check_targets(c, ["dmeo"], presets)
    with pytest.raises(ConfigError, match=r"did you mean 'paper_a' \(--configfile "
                                          r"presets/a.yaml\)\?$"):
        check_targets(c, ["papr_a"], presets)
    with pytest.raises(ConfigError, match=r"experiments: demo; did you mean"):
        check_targets(c, ["demoo"], tmp_path / "none")                   # no presets folder
    with pytest.raises(ConfigError, match=r"experiments: demo$"):
        check_targets(c, ["zzz"], None)


def test_weights_are_checked_before_any_job(tmp_path, monkeypatch):
    """Enum weights must be in torchvision's cache, a weights path must exist (unless the
    workflow trains it), for the models of the experiments that run; errors name the key."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"

    def with_weights(weights):
        return cfg(models__net={"arch": "resnet18", "weights": weights, "dataset": "shapes"},
                   experiments__f={"models": ["net"], "methods": ["saliency"]})
    prepare(with_weights("IMAGENET1K_V1"), targets=["demo"])          # f does not run
    with pytest.raises(ConfigError, match=rf"^models.net.weights: model 'resnet18': weights "
                                          rf"ResNet18_Weights.IMAGENET1K_V1 are not available "
                                          rf"locally and are never downloaded. Searched: "
                                          rf"{cached}\. "):
        prepare(with_weights("IMAGENET1K_V1"), targets=["f"])
    with pytest.raises(ConfigError, match=r"^models.net.weights: model 'resnet18': unknown "
                                          r"weights 'IMAGENET1K_V9'"):
        prepare(with_weights("IMAGENET1K_V9"), targets=["f"])
    missing = str(tmp_path / "w.pth")
    with pytest.raises(ConfigError, match=rf"^models.net.weights: weights file '{missing}' "
                                          rf"does not exist$"):
        prepare(with_weights(missing), targets=["f"])
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    prepare(with_weights("IMAGENET1K_V1"), targets=["f"])
    prepare(with_weights("random"), targets=["f"])
    # the demo model's trained weights (an output of the workflow) are not looked for
    prepare(with_weights("results/models/shapes_resnet18/weights.pt"), targets=["f"])
    with pytest.raises(ConfigError, match=r"weights file 'results/models/other/weights.pt'"):
        prepare(with_weights("results/models/other/weights.pt"), targets=["f"])


def test_hf_vit_weights_are_a_save_pretrained_folder(tmp_path):
    """A transformers checkpoint folder is the weights of hf_vit: checked for its config.json
    before anything runs, and GradMask, which needs a vision transformer, is accepted on it
    (and refused on a CNN, naming the run and the model)."""
    from helpers.vit import tiny_vit_folder
    folder = tiny_vit_folder(tmp_path / "vit")

    def with_vit(weights, methods=("gradmask", "attention_rollout")):
        return cfg(models__vit={"arch": "hf_vit", "weights": weights, "dataset": "shapes"},
                   methods__gradmask={}, methods__attention_rollout={},
                   experiments__f={"models": ["vit"], "methods": list(methods)})
    prepare(with_vit(str(folder)), targets=["f"])
    with pytest.raises(ConfigError, match=r"^models.vit.weights: '.*nothing' is not a "
                                          r"save_pretrained folder"):
        prepare(with_vit(str(tmp_path / "nothing")), targets=["f"])
    cnn = cfg(methods__gradmask={}, experiments__f={"models": ["shapes_resnet18"],
                                                    "methods": ["gradmask"]})
    with pytest.raises(ConfigError, match=r"method 'gradmask' on model 'shapes_resnet18'.*"
                                          r"not a vision transformer"):
        prepare(cnn, targets=["f"])


def test_same_name_twice_with_different_contents_names_both_files(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("methods: {ig: {method: integrated_gradients, steps: 8}}\n")
    b.write_text("methods: {ig: {method: integrated_gradients, steps: 16}}\n")
    with pytest.raises(ConfigError, match=rf"methods.ig is defined differently in {a} and {b}"):
        check_overlays([a, b])
    b.write_text("methods: {ig: {method: integrated_gradients, steps: 8, rule: right}}\n")
    check_overlays([a, b])                     # same contents once defaults are filled in


def test_overlays_plan_only_their_experiment():
    plan = Plan(load_config(ROOT / "config.yaml", TINY))
    assert plan.run == ["tiny"]
    assert all(t.startswith("results/papers/tiny/") for t in plan.all_targets())
    # the default experiment is still defined (it can be built by name) but not run
    assert "demo" in plan.experiments


def test_two_experiments_share_stores_with_the_union_of_their_images():
    c = cfg(experiments__more={"models": ["shapes_resnet18"], "methods": ["gradcam"],
                               "metrics": ["insertion"], "max_images": 300})
    plan = Plan(check(c))
    job = plan.explain_job("shapes", "shapes_resnet18", "gradcam", "original")
    assert job.max_images == (300,)
    c["experiments"]["more"]["target"] = "pred"
    with pytest.raises(ConfigError, match=r"experiments 'demo' and 'more' both need the maps"):
        Plan(check(c))


def test_two_models_with_different_input_sizes_in_one_experiment(tmp_path):
    (tmp_path / "val" / "n01").mkdir(parents=True)
    c = cfg(datasets__folder={"kind": "imagefolder", "root": str(tmp_path)},
            preprocess__r232_c224={"resize": 232, "crop": 224},
            preprocess__r342_c299={"resize": 342, "crop": 299},
            models__resnet={"arch": "resnet18", "weights": "random", "dataset": "folder",
                            "preprocess": "r232_c224"},
            models__inception={"arch": "inception_v3", "weights": "random", "dataset": "folder",
                               "preprocess": "r342_c299"},
            experiments__two={"models": ["resnet", "inception"], "methods": ["gradcam"],
                              "metrics": ["insertion"]})
    plan = Plan(check(c))
    assert plan.model_images("resnet", "original") == "results/data/folder/r232_c224/original.zarr"
    assert plan.model_images("inception", "original") == \
        "results/data/folder/r342_c299/original.zarr"
    assert plan.image_store_job("folder", "r342_c299", "original").preprocess["crop"] == 299
    keys = {k[:2] for k in plan.explain_keys()}
    assert {("folder", "resnet"), ("folder", "inception")} <= keys
    # a run is what the experiment lists, not the cartesian product of the catalogs
    assert not [k for k in plan.explain_keys() if k[1] == "resnet" and k[2] != "gradcam"]


# -- step sweeps and per-metric variants (IDGI study) ------------------------------------------
def sweep_cfg():
    c = cfg()
    c["methods"]["ig_sweep"] = {"method": "integrated_gradients", "steps": [32, 8, 16],
                                "idgi": True}
    c["methods"]["ig_mid"] = {"method": "integrated_gradients", "steps": [4, 8],
                              "rule": "middle"}
    c["experiments"]["demo"].update(methods=["ig_sweep", "ig_mid", "random"],
                                    metrics=["insertion", "stability"],
                                    metric_variants={"insertion": ["original"]})
    return c


def test_a_sweep_is_one_job_writing_one_store_per_step_count():
    plan = Plan(check(sweep_cfg()))
    stores = {k[2] for k in plan.explain_keys("demo")}
    assert {"ig_sweep@8", "ig_sweep@16", "ig_sweep@32", "ig_mid@4", "ig_mid@8",
            "random"} == stores
    assert plan.sweeps == {"ig_sweep": (8, 16, 32)}          # middle has no nested grid
    assert "ig_sweep@8" not in plan.explained_alone() and "ig_mid@4" in plan.explained_alone()
    job = plan.explain_job("shapes", "shapes_resnet18", "ig_sweep", "original")
    assert job.sweep == (8, 16, 32) and job.params.steps == 32 and job.params.idgi
    assert plan.sweep_stores("ig_sweep", dataset="shapes", model="m", variant="jpeg") == [
        f"results/saliency/shapes/m/ig_sweep@{n}/jpeg.zarr" for n in (8, 16, 32)]
    assert plan.sweep_stores("ig_sweep")[0] == \
        "results/saliency/{dataset}/{model}/ig_sweep@8/{variant}.zarr"
    alone = plan.explain_job("shapes", "shapes_resnet18", "ig_mid@4", "original")
    assert alone.sweep is None and alone.params.steps == 4
    # summaries know the method run and the step count of each store (and, IG having the
    # option, its re-calibration estimator: the re-calibration table pairs runs by it)
    info = plan.method_info("ig_sweep@16")
    assert info == {"method_run": "ig_sweep", "method_name": "integrated_gradients",
                    "steps": 16, "idgi": True, "recalibrate": "none"}
    # insertion only on original; stability (jpeg vs original) on jpeg
    keys = plan.score_keys("demo")
    assert ("shapes", "shapes_resnet18", "insertion", "ig_sweep@8", "jpeg") not in keys
    assert ("shapes", "shapes_resnet18", "insertion", "ig_sweep@8", "original") in keys
    assert ("shapes", "shapes_resnet18", "stability", "ig_sweep@8", "jpeg") in keys
    # changing the sweep changes the job's signature; the order of the list does not
    c = sweep_cfg()
    c["methods"]["ig_sweep"]["steps"] = [8, 32, 16]
    assert signature(Plan(check(c)).explain_job("shapes", "shapes_resnet18", "ig_sweep",
                                                "original")) == signature(job)


@pytest.mark.parametrize("steps,match", [([], "non-empty list"), ([8, 0], "positive"),
                                         ([8, "x"], "positive integers")])
def test_bad_sweeps_are_named(steps, match):
    c = sweep_cfg()
    c["methods"]["ig_sweep"]["steps"] = steps
    with pytest.raises(ConfigError, match=f"methods.ig_sweep.steps.*{match}"):
        check(c)
    c = sweep_cfg()
    c["methods"]["gradcam"] = {"steps": [4, 8]}
    with pytest.raises(ConfigError, match="methods.gradcam.steps: method 'gradcam' has no steps"):
        check(c)
    c = sweep_cfg()
    c["experiments"]["demo"]["metric_variants"] = {"insertion": ["blur"]}
    with pytest.raises(ConfigError, match="metric_variants.insertion.*'blur'"):
        check(c)


def test_command_line_strings_are_read_as_the_schema_types():
    """Snakemake passes nested --config values as strings ("20", "true")."""
    c = cfg()
    c["experiments"]["demo"]["max_images"] = "20"
    c["score"] = {"bootstrap": "100"}
    c["methods"]["integrated_gradients"] = {"steps": "16", "rule": "left"}
    c["methods"]["ig_sweep"] = {"method": "integrated_gradients", "steps": ["8", "16"]}
    c = check(c)
    assert c["experiments"]["demo"]["max_images"] == 20 and c["score"]["bootstrap"] == 100
    plan = Plan(c)
    assert plan.methods["integrated_gradients"][1].steps == 16
    assert plan.sweeps == {"ig_sweep": (8, 16)} or "ig_sweep@8" in plan.methods


def test_metrics_that_need_histories_skip_methods_without_them():
    """presets/startgrad.yaml on the demo: convergence scores the nine mask runs (they record
    histories), faithfulness all eleven methods, IG and GradCAM included."""
    cfg = load_config(ROOT / "config.yaml", ROOT / "presets" / "startgrad.yaml", overrides={
        "experiments": {"startgrad": {"models": ["shapes_resnet18"], "max_images": 8}}})
    keys = Plan(cfg).score_keys("startgrad")
    by_metric = {}
    for _, _, metric, method, _ in keys:
        by_metric.setdefault(metric, set()).add(method)
    assert len(by_metric["faithfulness"]) == 11
    assert by_metric["convergence"] == by_metric["faithfulness"] - {"sg_ig", "sg_gradcam"}
    cfg["methods"]["sg_pixel_ones"]["history_every"] = 0
    keys = Plan(cfg).score_keys("startgrad")
    assert ("convergence", "sg_pixel_ones") not in {(k[2], k[3]) for k in keys}


def test_keepbits_needs_float16_and_enters_the_signature_only_when_set():
    with pytest.raises(ConfigError, match=r"explain\.keepbits.*explain\.dtype: float16"):
        check(cfg(explain__keepbits=8))
    key = Plan(check(cfg())).explain_keys(BASE["run"][0])[0]
    plain = signature(Plan(check(cfg(explain__dtype="float16"))).explain_job(*key))
    assert "keepbits" not in plain            # stores written before the option keep theirs
    eight = signature(Plan(check(cfg(explain__dtype="float16", explain__keepbits=8)))
                      .explain_job(*key))
    assert eight["keepbits"] == 8 and {k: v for k, v in eight.items() if k != "keepbits"} == plain


def test_startgrad_lambda_grid_plans_one_setting_per_lambda_pair():
    """presets/startgrad.yaml's startgrad_lambda: 22 λ settings (9 ShearletX, 9 WaveletX, 4
    pixel) x 3 inits; the three inits of a pair share a setting (the main experiment's runs
    at the centre pair too, whose recorded faithfulness is no part of it), and every setting
    differs from the others only in its λs; no run is shared with the main experiment."""
    import json
    cfg = load_config(ROOT / "config.yaml", ROOT / "presets" / "startgrad.yaml", overrides={
        "experiments": {"startgrad_lambda": {"models": ["shapes_resnet18"], "max_images": 8},
                        "startgrad": {"models": ["shapes_resnet18"]}}})
    plan = Plan(cfg)
    runs = plan.experiments["startgrad_lambda"].methods
    assert len(runs) == 66 and len(set(runs)) == 66
    assert not set(runs) & set(plan.experiments["startgrad"].methods)
    info = {r: plan.method_info(r) for r in runs}
    by_setting = {}
    for r, i in info.items():
        by_setting.setdefault((i["method_name"], i["setting"]), set()).add(i["init"])
    assert len(by_setting) == 22
    assert all(v == {"ones", "uniform", "startgrad"} for v in by_setting.values())
    for host, n in (("shearletx", 9), ("waveletx", 9), ("pixel_mask", 4)):
        settings = [json.loads(s) for h, s in by_setting if h == host]
        assert len(settings) == n
        varying = {k for k in settings[0] if len({json.dumps(s[k]) for s in settings}) > 1}
        assert varying == ({"lambda_1"} if host == "pixel_mask" else {"lambda_1", "lambda_2"})
    # the faithfulness the centre runs record does not make them another setting
    assert plan.method_info("sg_shearletx_ones")["setting"] == \
        info["sgl_shearletx_1_2_ones"]["setting"]


def test_init_labels_name_startgrad_variants():
    from xaipipe.explain import get_method
    from xaipipe.explain.masks.params import init_label, run_setting
    declared = get_method("pixel_mask").params
    assert init_label({"init": "ones"}, declared) == "ones"
    assert init_label({"init": "startgrad"}, declared) == "startgrad"
    assert init_label({"init": "startgrad", "startgrad_ablation": "noisy",
                       "startgrad_noise": 0.2}, declared) == \
        "startgrad[ablation=noisy, noise=0.2]"
    assert init_label({"init": "startgrad", "rescaling_gradient": True,
                       "startgrad_score": "logit"}, declared) == \
        "startgrad[score=logit, rescaling=true]"
    assert run_setting({"init": "ones", "lambda_1": 1.0}, declared) == \
        run_setting({"init": "startgrad", "startgrad_ablation": "shuffle",
                     "history_every": 5}, declared)
    assert run_setting({"lambda_1": 2.0}, declared) != run_setting({}, declared)



def _doc_block(page: str, marker: str) -> list[list[str]]:
    """The shell words of each command of the bash block that follows ``marker`` in the
    documentation page ``page`` (relative to the repository root)."""
    import shlex
    text = (ROOT / page).read_text()
    assert marker in text, f"{page} no longer holds {marker!r}"
    block = text[text.index(marker):]
    block = block[block.index("```bash\n") + 8:]
    words = shlex.split(block[:block.index("```")].replace("\\\n", " "), comments=True)
    starts = [i for i, w in enumerate(words) if w.endswith("snakemake")] or [0]
    return [words[a:b] for a, b in zip(starts, [*starts[1:], len(words)])]


def _overrides(words: list[str]) -> dict:
    """What Snakemake makes of ``--config k=v ...``: each value read as YAML, merged."""
    from xaipipe.config import deep_update
    out: dict = {}
    for w in words[words.index("--config") + 1:]:
        key, value = w.split("=", 1)
        out = deep_update(out, {key: yaml.safe_load(value)})
    return out


def test_the_documented_demo_overrides_of_the_presets_plan_on_the_demo_model():
    """The one documented override per preset (and the λ grid's), read from the study
    pages themselves, plan the demo model only (the demo ViT for gradmask), 8 images; the
    compat recipe's override on top of the shearletx one plans the reference's settings."""
    from xaipipe.config import deep_update
    cmds = [(w[1], w[w.index("--configfile") + 1], _overrides(w))
            for page in ("docs/studies/shearletx.md", "docs/studies/startgrad.md",
                         "docs/studies/recal_lpi.md", "docs/studies/gradmask.md")
            for w in _doc_block(page, "On the offline demo")
            if w[0].endswith("snakemake")]
    assert [c[0] for c in cmds] == ["shearletx", "startgrad", "startgrad_lambda", "recal_lpi",
                                    "gradmask"]
    (compat_words,) = _doc_block("docs/studies/shearletx.md",
                                 "The closest reproduction of the ShearletX")
    compat = _overrides(compat_words)
    for target, preset, overrides in cmds:
        for extra in ([{}, compat] if target == "shearletx" else [{}]):
            c = load_config(ROOT / "config.yaml", ROOT / preset,
                            overrides=deep_update(overrides, extra), targets=[target])
            exp = c["experiments"][target]
            demo = "shapes_vit" if target == "gradmask" else "shapes_resnet18"
            assert exp["models"] == [demo] and exp["max_images"] == 8
            plan = Plan(c)
            keys = plan.explain_keys(target)
            assert keys and {k[1] for k in keys} == {demo}
            if target == "gradmask":        # every run of the preset, on the trained demo ViT
                assert {k[2] for k in keys} == set(exp["methods"])
                assert plan.train_job("shapes_vit").params["optimizer"] == "adamw"
            if target == "recal_lpi":       # references: the demo's training split
                assert plan.reference_sets() == ["lpi_r20_c1"]
                assert plan.explain_references("shapes", "shapes_resnet18", "eg_recal",
                                               "original") == \
                    [plan.model_images("shapes_resnet18", "original")]
            if extra:
                assert all(c["methods"][m]["compat"] == "shearletx" for m in extra["methods"])
                assert c["metrics"]["hallucination_score"]["compat"] == "shearletx"


def test_reference_sets_are_shared_by_settings_and_need_a_training_split():
    """LPI runs with the same R, clusters and compat share one reference set (the compat one
    offset by 200 images); methods drawing references stop on a data set without training
    images, naming the run, model and data set."""
    from xaipipe.config import deep_update
    preset = ROOT / "presets" / "recal_lpi.yaml"
    demo = {"experiments": {"recal_lpi": {"models": ["shapes_resnet18"], "max_images": 8}}}
    over = deep_update(demo, {"methods": {"lpi_recal": {"compat": "ypeiyu_lpi"},
                                          "lpi_k5": {"samples": 12}}})
    c = load_config(ROOT / "config.yaml", preset, overrides=over, targets=["recal_lpi"])
    plan = Plan(c)
    assert plan.reference_sets() == ["lpi_r12_c1", "lpi_r20_c1_ypeiyu"]
    job = plan.reference_set_job("shapes", "shapes_resnet18", "lpi_r20_c1_ypeiyu")
    assert (job.n_references, job.n_clusters, job.offset) == (20, 1, 200)
    assert plan.reference_set_job("shapes", "shapes_resnet18", "lpi_r12_c1").offset == 0
    assert plan.explain_references("shapes", "shapes_resnet18", "lpi_k5", "original") == \
        [f"{c['results']}/references/shapes/shapes_resnet18/lpi_r12_c1.zarr"]
    assert plan.explain_references("shapes", "shapes_resnet18", "ig_k5", "original") == []
    no_train = deep_update(demo, {"datasets": {"shapes": {"train": 0}}})
    with pytest.raises(ConfigError, match=r"method 'eg_k5' draws its references from the "
                                          r"training images, which data set 'shapes'"):
        load_config(ROOT / "config.yaml", preset, overrides=no_train, targets=["recal_lpi"])
