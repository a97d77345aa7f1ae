"""Expected Gradients against Captum's ``GradientShap`` (an independent implementation of the
same estimator) given the same references and coefficients.

``GradientShap.attribute(x, baselines=pool, n_samples=S, stdevs=0)`` draws, for the S samples
of every input (inputs repeated S times, input-major), a pool row with ``np.random.choice``
and a coefficient with ``np.random.uniform``, and averages (x − r_s) ⊙ ∇f(α_s x + (1 − α_s) r_s)
over s. xaipipe's vanilla estimator is
(1/(Bk)) Σ_{b,j} (x − r_b) ⊙ ∇f(α_{b,j} x + (1 − α_{b,j}) r_b), so with S = B·k and sample
s = b·k + j given reference r_b and α_{b,j} the two must agree. The test hands Captum
xaipipe's draws by replacing those two NumPy calls inside Captum's modules for the duration of
the call.
"""
import types

import numpy as np
import pytest
import torch

from helpers import oracles
from xaipipe.explain import get_method

captum_attr = oracles.require("captum.attr", "Captum 0.9.0, the oracle of IG, Grad-CAM, "
                              "Expected Gradients and StartGrad's IG baseline "
                              "(pip install captum==0.9.0)")


def gradient_shap_with(monkeypatch, model, x, t, pool, rows, alphas):
    """Captum's GradientShap on ``x`` with pool rows ``rows`` (N, S) and coefficients
    ``alphas`` (N, S) as its random draws."""
    import captum._utils.common as common
    import captum.attr._core.gradient_shap as gshap

    n, s = rows.shape
    calls = []

    def choice(size, count):
        assert size == pool.shape[0] and count == n * s
        calls.append("choice")
        return np.asarray(rows.reshape(-1).tolist())

    def uniform(low, high, count):
        assert (low, high, count) == (0.0, 1.0, n * s)
        calls.append("uniform")
        return alphas.reshape(-1).double().numpy()

    fake = types.SimpleNamespace(random=types.SimpleNamespace(choice=choice, uniform=uniform))
    monkeypatch.setattr(common, "np", fake)
    monkeypatch.setattr(gshap, "np", fake)
    out = captum_attr.GradientShap(model).attribute(x, baselines=pool, target=t, n_samples=s,
                                                    stdevs=0.0)
    assert calls == ["choice", "uniform"]
    return out


@pytest.mark.parametrize("samples,steps", [(10, 5), (3, 4)])
def test_expected_gradients_equals_captum_gradient_shap(cnn, images, monkeypatch, samples,
                                                        steps):
    t = torch.tensor([0, 3, 1])
    ids = torch.tensor([11, 12, 13])
    pool = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    method = get_method("expected_gradients")(cnn, samples=samples, steps=steps,
                                              references=pool, recalibrate="none")
    ours = method.run(images, t, ids).maps
    # xaipipe's draws: B pool rows per image (without replacement), α per (b, j)
    rows = torch.stack([method.pool_indices(int(i), 16) for i in ids])          # (N, B)
    alphas = method.alpha_grid(images, ids)                                     # (N, B, k)
    refs = method.references(images, ids)
    assert torch.equal(refs, pool[rows])
    theirs = gradient_shap_with(monkeypatch, cnn, images, t, pool,
                                rows.repeat_interleave(steps, dim=1), alphas.flatten(1))
    scale = theirs.abs().max()
    assert (ours - theirs).abs().max() <= 1e-5 * scale


def test_expected_gradients_with_given_references_and_alphas_equals_captum(cnn, images,
                                                                         monkeypatch):
    """References (N, B, …) and α (N, B, k) given explicitly, the compat pairing off."""
    g = torch.Generator().manual_seed(4)
    big_b, k = 4, 3
    refs = torch.rand(3, big_b, 3, 32, 32, generator=g)
    alphas = torch.rand(3, big_b, k, generator=g)
    t = torch.tensor([2, 2, 0])
    ours = get_method("expected_gradients")(cnn, samples=big_b, steps=k, references=refs,
                                            alphas=alphas, recalibrate="none").run(
        images, t).maps
    pool = refs.flatten(0, 1)                                       # row n·B + b
    rows = (torch.arange(3).view(-1, 1) * big_b + torch.arange(big_b)).repeat_interleave(k, 1)
    theirs = gradient_shap_with(monkeypatch, cnn, images, t, pool, rows, alphas.flatten(1))
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()
