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


def tiny_torchvision_vit(seed: int = 0, image_size: int = 32, patch_size: int = 8,
                         num_layers: int = 2, num_heads: int = 2, hidden_dim: int = 16,
                         mlp_dim: int = 32, num_classes: int = 5):
    """A tiny random torchvision ``VisionTransformer`` as torchvision builds it (attention not
    converted), in eval mode. torchvision initialises the head, the class token and the
    attention biases to 0 (all logits 0, no gradient reaches the tokens): every parameter gets
    0.2·N(0, 1) added."""
    import torch
    from torchvision.models import VisionTransformer

    torch.manual_seed(seed)
    net = VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=num_layers,
                            num_heads=num_heads, hidden_dim=hidden_dim, mlp_dim=mlp_dim,
                            num_classes=num_classes)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net.eval()


def transformers_twin(net):
    """``transformers``' ``ViTForImageClassification`` holding the weights of torchvision
    ``VisionTransformer`` ``net`` (the same architecture: convolutional patch embedding, CLS,
    position embedding, pre-LN blocks with exact GELU, final LayerNorm, linear head on CLS;
    LayerNorm eps 1e-6 as torchvision's), as an ``HFClassifier`` in eval mode with eager
    attention. The fused input projection is split into query, key and value (rows 0:D,
    D:2D, 2D:3D). Module names of transformers 4.x and 5.x."""
    import transformers as tf

    from xaipipe.models.vit import HFClassifier

    layers = len(net.encoder.layers)
    block0 = net.encoder.layers[0]
    d = net.hidden_dim
    cfg = tf.ViTConfig(image_size=net.image_size, patch_size=net.patch_size, num_channels=3,
                       hidden_size=d, num_hidden_layers=layers,
                       num_attention_heads=block0.num_heads, intermediate_size=net.mlp_dim,
                       num_labels=net.num_classes, hidden_act="gelu", layer_norm_eps=1e-6,
                       qkv_bias=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = "eager"
    hf = tf.ViTForImageClassification(cfg)
    keys = set(hf.state_dict())
    if "vit.layers.0.attention.q_proj.weight" in keys:                  # transformers 5.x
        layer = "vit.layers.{i}."
        names = {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
                 "o": "attention.o_proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
    else:                                                               # transformers 4.x
        layer = "vit.encoder.layer.{i}."
        names = {"q": "attention.attention.query", "k": "attention.attention.key",
                 "v": "attention.attention.value", "o": "attention.output.dense",
                 "fc1": "intermediate.dense", "fc2": "output.dense"}
    sd = net.state_dict()
    out = {"vit.embeddings.cls_token": sd["class_token"],
           "vit.embeddings.position_embeddings": sd["encoder.pos_embedding"],
           "vit.embeddings.patch_embeddings.projection.weight": sd["conv_proj.weight"],
           "vit.embeddings.patch_embeddings.projection.bias": sd["conv_proj.bias"],
           "vit.layernorm.weight": sd["encoder.ln.weight"],
           "vit.layernorm.bias": sd["encoder.ln.bias"],
           "classifier.weight": sd["heads.head.weight"],
           "classifier.bias": sd["heads.head.bias"]}
    for i in range(layers):
        tv, hp = f"encoder.layers.encoder_layer_{i}.", layer.format(i=i)
        for role, part in zip("qkv", range(3)):
            rows = slice(part * d, (part + 1) * d)
            out[hp + names[role] + ".weight"] = sd[tv + "self_attention.in_proj_weight"][rows]
            out[hp + names[role] + ".bias"] = sd[tv + "self_attention.in_proj_bias"][rows]
        pairs = {"self_attention.out_proj": names["o"], "ln_1": "layernorm_before",
                 "ln_2": "layernorm_after", "mlp.0": names["fc1"], "mlp.3": names["fc2"]}
        for src, dst in pairs.items():
            for p in ("weight", "bias"):
                out[f"{hp}{dst}.{p}"] = sd[f"{tv}{src}.{p}"]
    assert set(out) == keys, sorted(keys ^ set(out))
    hf.load_state_dict(out)
    return HFClassifier(hf.eval())
