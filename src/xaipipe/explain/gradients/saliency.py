"""InputGrad / vanilla gradient (Simonyan et al. 2014): φ = ∇f(x̃), raw and signed
(σ_c·∇f with ``grad_space="normalized"``)."""
from ..base import GRAD_SPACE_PARAM, OBJECTIVE_PARAM, Attribution, Method, register_method


@register_method
class Saliency(Method):
    name = "saliency"
    params = {"objective": OBJECTIVE_PARAM, "grad_space": GRAD_SPACE_PARAM}

    def attribute(self, images, target, image_ids=None):
        return Attribution(self.input_gradient(images, target, self.hparams.grad_space))
