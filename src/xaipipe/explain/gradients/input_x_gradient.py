"""Input × Gradient (Shrikumar et al.): φ = x̃ ⊙ ∇f(x̃) in pixel space, or
x ⊙ ∇_x f = (x̃ − μ) ⊙ ∇_x̃ f with ``grad_space="normalized"``."""
from ..base import GRAD_SPACE_PARAM, OBJECTIVE_PARAM, Attribution, Method, register_method


@register_method
class InputXGradient(Method):
    name = "input_x_gradient"
    params = {"objective": OBJECTIVE_PARAM, "grad_space": GRAD_SPACE_PARAM}

    def attribute(self, images, target, image_ids=None):
        space = self.hparams.grad_space
        grads = self.input_gradient(images, target, space)
        x = self.model.normalize(images) if space == "normalized" else images
        return Attribution(x * grads)
