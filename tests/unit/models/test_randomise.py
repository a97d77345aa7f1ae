"""The model-randomisation sanity check (`metrics.md` §4.3): the cascade re-initialises exactly
the listed layers, in order, cumulatively, with draws from N(mean, std) of each original
tensor, and keeps everything else; the Inception-v3 list names torchvision's modules; the
similarity measures agree with SciPy and scikit-image."""
import numpy as np
import pytest
import torch
from torch import nn

from xaipipe.models import NormalizedModel
from xaipipe.models.randomise import (DEFAULT_KINDS, INCEPTION_V3_CASCADE, cascade,
                                      randomisation_similarity)


class Net(nn.Module):
    """conv1 (with a bias) → bn1 → block (conv, bn) → fc, plus an unlisted head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 5)
        self.aux = nn.Linear(16, 5)

    def forward(self, x):
        h = self.block(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(h.mean((2, 3)))


def model():
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():                     # non-trivial BN parameters and statistics
        for bn in (net.bn1, net.block[1]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    return NormalizedModel(net).eval()


LAYERS = ("fc", "block", "bn1", "conv1")
#: what each listed layer re-samples with the default kinds (conv weights, BN biases, linear
#: weights and biases)
RESAMPLED = {"fc": {"net.fc.weight", "net.fc.bias"},
             "block": {"net.block.0.weight", "net.block.1.bias"},
             "bn1": {"net.bn1.bias"},
             "conv1": {"net.conv1.weight"}}


def test_cascade_reinitialises_exactly_the_listed_layers_in_order():
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    stages = list(cascade(m, LAYERS, seed=3))
    assert [name for name, _ in stages] == ["original", *LAYERS]
    for k, v in m.state_dict().items():                       # the model is left alone
        assert torch.equal(v, before[k]), k
    assert torch.equal(m.net.fc.weight, before["net.fc.weight"])
    for step, (name, copy) in enumerate(stages):
        assert copy is not m and not copy.training
        changed = set().union(*(RESAMPLED[n] for n in LAYERS[:step]))
        state = copy.state_dict()
        for k, v in state.items():
            if k in changed:
                assert not torch.equal(v, before[k]), (name, k)
            else:                # BN weights and running statistics, conv1's bias, aux, ...
                assert torch.equal(v, before[k]), (name, k)
    # cumulative: a layer keeps its random values in every later stage
    for later in stages[2:]:
        assert torch.equal(later[1].net.fc.weight, stages[1][1].net.fc.weight)
    # stages are separate copies
    assert stages[1][1].net.fc.weight.data_ptr() != stages[2][1].net.fc.weight.data_ptr()


def test_resampled_values_follow_the_original_mean_and_std():
    m = model()
    big = nn.Linear(256, 128)
    with torch.no_grad():
        big.weight.normal_(0.3, 2.0)
    m.net.fc = big
    (_, orig), (_, rand) = cascade(m, ["fc"], seed=0)
    w0, w1 = orig.net.fc.weight.detach().double(), rand.net.fc.weight.detach().double()
    assert not torch.equal(w0, w1)
    std0, mean0 = torch.std_mean(w0)
    std1, mean1 = torch.std_mean(w1)
    assert abs(float(mean1 - mean0)) < 4 * float(std0) / np.sqrt(w0.numel())
    assert float(std1 / std0) == pytest.approx(1.0, abs=0.02)
    assert abs(float(torch.corrcoef(torch.stack([w0.flatten(), w1.flatten()]))[0, 1])) < 0.02


def test_seeded_and_deterministic():
    a = dict(cascade(model(), LAYERS, seed=1))
    b = dict(cascade(model(), LAYERS, seed=1))
    c = dict(cascade(model(), LAYERS, seed=2))
    for name in LAYERS:
        for k, v in a[name].state_dict().items():
            assert torch.equal(v, b[name].state_dict()[k])
    assert not torch.equal(a["fc"].net.fc.weight, c["fc"].net.fc.weight)
    # a layer's draws do not depend on the order or the other layers
    d = dict(cascade(model(), ["conv1", "fc"], seed=1, include_original=False))
    assert list(d) == ["conv1", "fc"]
    assert torch.equal(d["fc"].net.fc.weight, a["fc"].net.fc.weight)
    assert torch.equal(d["conv1"].net.conv1.weight, a["conv1"].net.conv1.weight)


def test_kinds_choose_the_tensors():
    (_, orig), (_, rand) = cascade(model(), ["bn1"], kinds=("bn.weight", "bn.bias"))
    assert not torch.equal(orig.net.bn1.weight, rand.net.bn1.weight)
    assert torch.equal(orig.net.bn1.running_var, rand.net.bn1.running_var)
    (_, orig), (_, rand) = cascade(model(), ["conv1"], kinds=("conv.bias",))
    assert torch.equal(orig.net.conv1.weight, rand.net.conv1.weight)
    assert not torch.equal(orig.net.conv1.bias, rand.net.conv1.bias)
    assert DEFAULT_KINDS == ("conv.weight", "bn.bias", "linear.weight", "linear.bias")


def test_bad_names_fail_before_anything_is_yielded():
    with pytest.raises(KeyError, match="no layer 'Mixed_9z'"):
        cascade(model(), ["fc", "Mixed_9z"])
    with pytest.raises(ValueError, match="listed twice"):
        cascade(model(), ["fc", "fc"])
    with pytest.raises(ValueError, match="unknown tensor kinds"):
        cascade(model(), ["fc"], kinds=("fc.weight",))
    # names relative to the wrapper work too, and plain modules
    assert [n for n, _ in cascade(model(), ["net.fc"])] == ["original", "net.fc"]
    assert [n for n, _ in cascade(Net(), ["block.0"], include_original=False)] == ["block.0"]


def test_inception_v3_list_names_torchvision_modules_top_first():
    from xaipipe.models.meta import meta_model
    net = meta_model("inception_v3").net
    assert len(INCEPTION_V3_CASCADE) == 17 and len(set(INCEPTION_V3_CASCADE)) == 17
    assert INCEPTION_V3_CASCADE[0] == "fc" and INCEPTION_V3_CASCADE[-1] == "Conv2d_1a_3x3"
    children = [n for n, _ in net.named_children()]
    for name in INCEPTION_V3_CASCADE:
        assert name in children
    # the listed layers run from the output down to the input (the reverse of forward order)
    order = [children.index(n) for n in INCEPTION_V3_CASCADE]
    assert order == sorted(order, reverse=True)
    left_out = set(children) - set(INCEPTION_V3_CASCADE)
    assert left_out <= {"AuxLogits", "maxpool1", "maxpool2", "avgpool", "dropout"}


# -- similarity --------------------------------------------------------------------------------
def maps(n=4, c=3, h=12, w=10, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_spearman_agrees_with_scipy():
    from scipy.stats import spearmanr
    a, b = maps(seed=0), maps(seed=1)
    b[1] = a[1] * 2                                   # monotone: 1
    b[2] = a[2].round()                               # ties (average ranks)
    got = randomisation_similarity(a, b)
    signed = randomisation_similarity(a, b, "spearman")
    for i in range(4):
        ref = spearmanr(a[i].abs().sum(0).flatten().numpy(),
                        b[i].abs().sum(0).flatten().numpy()).statistic
        assert got[i] == pytest.approx(ref, abs=1e-12)
        ref = spearmanr(a[i].sum(0).flatten().numpy(), b[i].sum(0).flatten().numpy()).statistic
        assert signed[i] == pytest.approx(ref, abs=1e-12)
    assert got[1] == pytest.approx(1.0)
    assert randomisation_similarity(a, -a, "spearman") == pytest.approx(-1.0)
    assert randomisation_similarity(a, -a) == pytest.approx(1.0)


def test_ssim_agrees_with_scikit_image():
    from skimage.metrics import structural_similarity
    a, b = maps(seed=2), maps(seed=3)
    b[0] = a[0] + 0.1 * b[0]
    got = randomisation_similarity(a, b, "ssim")

    def unit(m):
        s = m.double().abs().sum(0).numpy()
        s = s - s.min()
        return s / (s.max() + 1e-10)

    for i in range(4):
        ref = structural_similarity(unit(a[i]), unit(b[i]), data_range=1.0)
        assert got[i] == pytest.approx(ref, abs=1e-12)
    assert randomisation_similarity(a, a, "ssim") == pytest.approx(1.0)
    assert got[0] > got[1]


def test_similarity_input_checks():
    with pytest.raises(ValueError, match="unknown similarity"):
        randomisation_similarity(maps(), maps(), "pearson")
    with pytest.raises(ValueError, match="differ in shape"):
        randomisation_similarity(maps(), maps(h=10))
    with pytest.raises(ValueError, match="at least 7x7"):
        randomisation_similarity(maps(h=5, w=5), maps(h=5, w=5), "ssim")
    # (N, H, W) maps work as one channel
    a = maps()[:, 0]
    assert randomisation_similarity(a, a).tolist() == pytest.approx([1.0] * 4)
