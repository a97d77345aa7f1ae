"""The typed parameter trail: a method's or metric's parameters travel from the config to the
kernel as one frozen object built from its ``Param`` declarations."""
import dataclasses
import pickle

import pytest
import torch

from helpers.configs import cfg
from xaipipe.config import Plan, check_config, validate_schema
from xaipipe.errors import ConfigError
from xaipipe.explain import get_method
from xaipipe.explain.paths.integrated_gradients import IntegratedGradients
from xaipipe.metrics import get_metric
from xaipipe.params import Param, ParamSet, params_class


def test_every_method_and_metric_has_params_built_from_its_declarations():
    from xaipipe.explain.base import METHODS
    from xaipipe.metrics.base import METRICS
    for name, cls in [*METHODS.items(), *METRICS.items()]:
        fields = {f.name: f for f in dataclasses.fields(cls.Params)}
        assert list(fields) == list(cls.params), name
        p = cls.check({})
        assert isinstance(p, cls.Params) and isinstance(p, ParamSet)
        defaults = {k: d.default for k, d in cls.params.items()}
        if hasattr(cls, "validate"):                      # methods may normalise values
            defaults = cls.validate(defaults, name)
        assert p.as_dict() == defaults, name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(p, next(iter(fields)), None) if fields else \
                setattr(p, "x", None)  # noqa: B010


def test_params_class_types_defaults_and_docs():
    class Owner:
        pass
    P = params_class(Owner, {"steps": Param(8, int, min=1, doc="points"),
                             "baseline": Param("black", (str, type(None))),
                             "grid": Param([1, 2], list)})
    p, q = P(), P()
    assert (p.steps, p.baseline, p.grid) == (8, "black", [1, 2])
    assert p.grid is not q.grid                        # a mutable default is not shared
    assert P.__qualname__.endswith("Owner.Params") and "steps" in P.__doc__ and "points" in P.__doc__
    assert dataclasses.fields(P)[0].type == int
    assert p.replace(steps=4).steps == 4 and p.steps == 8


def test_check_returns_the_typed_object_and_names_bad_keys():
    p = IntegratedGradients.check({"steps": 16}, "methods.ig")
    assert isinstance(p, IntegratedGradients.Params) and p.steps == 16
    assert IntegratedGradients.check(p) is p           # checked once, carried as it is
    with pytest.raises(ConfigError, match=r"methods.ig.steps: 0 is below the minimum 1"):
        IntegratedGradients.check({"steps": 0}, "methods.ig")
    with pytest.raises(ConfigError, match=r"methods.ig: unknown parameter\(s\) 'stepz'"):
        IntegratedGradients.check({"stepz": 3}, "methods.ig")


def test_steps_from_the_config_reach_the_ig_kernel_as_one_object(linear_model):
    """config.yaml -> Plan -> ExplainJob.params -> the method's hparams -> the Riemann sum:
    the same typed object all the way, surviving the pickling of a Snakemake job."""
    c = check_config(validate_schema(cfg(methods__integrated_gradients={"steps": 5})))
    job = Plan(c).explain_job("shapes", "shapes_resnet18", "integrated_gradients", "original")
    assert isinstance(job.params, IntegratedGradients.Params) and job.params.steps == 5
    job = pickle.loads(pickle.dumps(job))             # what a Snakemake script receives
    ig = get_method(job.method)(linear_model, params=job.params)
    assert ig.hparams == job.params and ig.hparams.steps == 5
    x = torch.rand(2, 3, 8, 8)
    seen = []
    real = ig.gradient

    def spy(points, target, grad_space="pixel"):
        seen.append(points.shape[0])
        return real(points, target, grad_space)
    ig.gradient = spy
    ig.run(x, 0)
    assert sum(seen) == 2 * 5                          # 5 points per image, as configured


def test_metric_params_are_typed_too():
    m = get_metric("insertion")({"steps": 11, "fill": "black"})
    assert m.hparams.steps == 11 and type(m.hparams).__qualname__ == "Insertion.Params"
    with pytest.raises(TypeError, match="not both"):
        get_metric("insertion")({"steps": 11}, fill="black")


def test_a_parameter_added_later_is_left_out_of_seeds_and_signatures_at_its_default():
    from xaipipe.jobs import signature
    from helpers.jobs import explain_job

    class Owner:
        pass
    P = params_class(Owner, {"steps": Param(8, int), "extra": Param("none", str, omit_default=True)})
    assert P().signature() == {"steps": 8}
    assert P(extra="x").signature() == {"steps": 8, "extra": "x"}
    assert P().as_dict() == {"steps": 8, "extra": "none"}          # provenance keeps it all
    job = explain_job(params=P())
    assert signature(job)["params"] == {"steps": 8}
    assert signature(explain_job(params=P(extra="x")))["params"] == {"steps": 8, "extra": "x"}
