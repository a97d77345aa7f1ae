import os

import pytest
import torch
from torch import nn

from helpers.models import Linear
from xaipipe.models import NormalizedModel, load_model

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def linear_model():
    return NormalizedModel(Linear(), name="linear").eval()


@pytest.fixture(scope="session")
def cnn():
    """A random demo ResNet-18 (width 4, 4 classes) in eval mode."""
    torch.manual_seed(0)
    return load_model("demo_resnet18", weights="random", num_classes=4, width=4)


@pytest.fixture(scope="session")
def smooth_cnn():
    """The demo ResNet-18 layout with SiLU instead of ReLU: smooth along any path, so Riemann
    sums of IG converge fast (ReLU nets have kinks everywhere; see docs/methods.md for their gaps)."""
    torch.manual_seed(0)
    model = load_model("demo_resnet18", weights="random", num_classes=4, width=4)
    for mod in list(model.modules()):
        if hasattr(mod, "relu"):
            mod.relu = nn.SiLU()
    return model


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 3, 32, 32, generator=g)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny workflow run once per session, locally with 2 cores, shared by the workflow
    tests and the SLURM comparison: (folder, wall seconds)."""
    import time

    from helpers.workflow import TINY, snakemake, workdir
    d = workdir(tmp_path_factory.mktemp("wf"))
    t = time.monotonic()
    snakemake("--configfile", str(TINY), "--cores", "2", "tiny", cwd=d)
    return d, time.monotonic() - t


#: test files whose tests share an expensive module or session fixture (the tiny workflow run,
#: the SLURM cluster): `make test` keeps each in one xdist process
SHARED_FIXTURE_FILES = ("workflow/test_workflow.py", "workflow/test_slurm.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`make test` (`-n 2 --dist loadgroup`): every test is its own unit of work, except the
    files of :data:`SHARED_FIXTURE_FILES`, one unit each. Units with more tests go first, so
    those two start at once in the two processes. (xdist's own loadgroup reads
    ``xdist_group`` marks through ``item._nodeid``, which pytest 9 no longer uses for the
    node id, so its groups never form; ``--dist loadfile`` queued the long files behind each
    other.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path.endswith(SHARED_FIXTURE_FILES) else nodeid

    return SharedFixtureScheduling(config, log)
