"""Model zoo: ``load_model(name, weights=...)`` -> eval-mode model taking [0, 1] pixels."""
from .wrapper import IMAGENET_MEAN, IMAGENET_STD, Normalize, NormalizedModel
from .zoo import available_models, cache_dir, load_model, register_model, resolve_weights

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Normalize", "NormalizedModel", "available_models",
           "cache_dir", "load_model", "register_model", "resolve_weights"]
