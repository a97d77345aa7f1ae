"""Tiny randomly initialised vision transformers of the paper's classes (transformers' ViT and
DeiT-distilled), saved with save_pretrained to a folder as a user would have them."""
from pathlib import Path


def tiny_vit_folder(folder, kind: str = "vit", image_size: int = 32, patch_size: int = 8,
                    hidden: int = 32, layers: int = 3, heads: int = 4, classes: int = 5,
                    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), seed: int = 0) -> Path:
    """A ``save_pretrained`` folder (model + image processor) of a tiny random ViT
    (``kind="vit"``: ViTForImageClassification) or DeiT-distilled
    (``"deit"``: DeiTForImageClassificationWithTeacher)."""
    import torch
    import transformers as tf

    folder = Path(folder)
    torch.manual_seed(seed)
    common = dict(image_size=image_size, patch_size=patch_size, hidden_size=hidden,
                  num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=2 * hidden, num_labels=classes)
    if kind == "vit":
        model = tf.ViTForImageClassification(tf.ViTConfig(**common))
    else:
        model = tf.DeiTForImageClassificationWithTeacher(tf.DeiTConfig(**common))
    model.save_pretrained(folder)
    tf.ViTImageProcessor(image_mean=list(mean), image_std=list(std),
                         size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder
