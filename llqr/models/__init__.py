"""Model registry: config model name -> Flax module.

Every model maps NHWC (or flat, for the MLP) inputs to (N, K) log-probabilities, is called as
``model.apply(variables, x, train=...)`` and keeps BatchNorm running averages in ``batch_stats``.
The vision models are flat stage lists (``llqr.models.stages``): each Conv, BatchNorm and Dense is
one top-level parameter group ``layers_i``, the preconditioner's controlled layer.

The model names are ``llqr.config.families.MODELS``: the config layer owns the list and
``build_model`` dispatches on it (tests/test_families.py: every name builds, no other is built).
"""

from __future__ import annotations

from ..config.families import MODELS


class ModelNotAvailable(RuntimeError):
    """The config names a model this version of llqr cannot build yet."""


def layer_of(name: str):
    """How model ``name`` names each parameter's controlled layer for the LLQR preconditioner
    (``llqr.optim.structures.layer_labels``), or None where its top-level groups are its layers."""
    if name == "transformer_iwslt":
        from .transformer import controlled_layer

        return controlled_layer
    if name in ("convmixer", "cct", "swin", "gcvit", "repvit", "hdvt"):
        return module_layer
    return None


def module_layer(names: tuple[str, ...]) -> str:
    """The module owning a parameter (its path without the leaf name), or the leaf itself for a
    top-level parameter (a position table): the layers of the nested (non-stage) models."""
    return "/".join(names[:-1]) or names[0]


def operator_sizes(cfg, **study) -> dict:
    """The study's sizes of an integral-operator model (width key first, then layers), with
    operator_width / operator_depth overriding them where set (smaller ones are ours)."""
    (width_key, width), (depth_key, depth) = study.items()
    return {width_key: cfg.operator_width or width, depth_key: cfg.operator_depth or depth}


def build_model(cfg, num_classes: int = 10, vocab: tuple[int, int] = (8, 8)):
    """The model ``cfg.model`` with ``num_classes`` outputs (``vocab``: source and target
    dictionary sizes of a translation model).

    ``dropout_rate`` reaches the MLP, the wide ResNet (reference: 0) and ViT-Ti/16 (all four of its
    dropouts, attention included; reference: 0.1); resnet18, resnet50 and
    pyramidnet110 have no dropout layer; vgg16bn's two dropouts are fixed at the reference's 0.5,
    so a non-zero ``dropout_rate`` there is a ConfigError rather than silently ignored.
    """
    name = cfg.model
    if name == "mlp":
        from .mlp import MLP

        return MLP(hidden=tuple(cfg.mlp_hidden), num_classes=num_classes, dropout_rate=cfg.dropout_rate)
    if name in ("resnet18", "resnet34"):
        from .resnet18 import ResNet18

        return ResNet18(num_classes=num_classes, blocks=(2, 2, 2, 2) if name == "resnet18" else (3, 4, 6, 3))
    if name in ("resnet50", "resnet50_cifar"):
        from .resnet50 import ResNet50

        return ResNet50(num_classes=num_classes, stem="cifar" if name == "resnet50_cifar" else "imagenet")
    if name == "vgg16bn":
        from .vgg import DROPOUT, VGG16BN

        if cfg.dropout_rate:
            from ..config import ConfigError

            raise ConfigError(f"dropout_rate={cfg.dropout_rate}: vgg16bn's two dropouts are fixed at the "
                             f"reference's {DROPOUT}; leave dropout_rate at 0")
        return VGG16BN(num_classes=num_classes)
    if name == "wide_resnet28x10":
        from .wide_resnet import LAYOUTS, WideResNet

        return WideResNet(num_classes=num_classes, units_per_group=LAYOUTS[cfg.wrn_layout],
                          dropout_rate=cfg.dropout_rate)
    if name == "pyramidnet110":
        from .pyramidnet import PyramidNet

        return PyramidNet(num_classes=num_classes)
    if name == "transformer_iwslt":
        from .transformer import TransformerMT

        return TransformerMT(src_vocab=vocab[0], tgt_vocab=vocab[1], embed_dim=cfg.embed_dim, ffn_dim=cfg.ffn_dim,
                             heads=cfg.attention_heads, encoder_layers=cfg.encoder_layers,
                             decoder_layers=cfg.decoder_layers, dropout_rate=cfg.dropout_rate)
    if name == "preresnet32":
        from .preresnet import PreResNet

        if cfg.norm == "none":
            from ..config import ConfigError

            raise ConfigError("preresnet32 needs norm=bn or norm=gn (norm=none is for vgg16/vgg19)")
        return PreResNet(num_classes=num_classes, width=cfg.width, norm=cfg.norm, scale_invariant=cfg.scale_invariant)
    if name in ("vgg16", "vgg19"):
        from .study_vgg import StudyVGG

        return StudyVGG(depth=int(name[3:]), norm=cfg.norm, num_classes=num_classes)
    if name == "svag_preresnet32":
        from .svag_preresnet import SvagPreResNet

        return SvagPreResNet(num_classes=num_classes, width=cfg.width, norm=cfg.norm)
    if name in ("svag_vgg16", "svag_vgg19"):
        from .svag_vgg import SvagVGG

        return SvagVGG(depth=int(name[-2:]), norm=cfg.norm, num_classes=num_classes)
    if name == "resnet32":
        from .resnet32 import ResNet32

        return ResNet32(num_classes=num_classes)
    if name == "si_mlp":
        from .study_mlp import ScaleInvariantMLP

        return ScaleInvariantMLP(hidden=tuple(cfg.mlp_hidden), num_classes=num_classes)
    if name == "simple_cnn":
        from .study_cnn import SimpleCNN

        return SimpleCNN(num_classes=num_classes)
    if name == "simple_vit":
        from .study_vit import SimpleViT

        return SimpleViT(num_classes=num_classes)
    if name == "vit_ti16":
        from .vit import ViT

        # the reference's patch choice: 4x4 on CIFAR (10 or 100 classes), 16x16 on ImageNet
        return ViT(num_classes=num_classes, patch=16 if num_classes == 1000 else 4, dropout_rate=cfg.dropout_rate,
                   attention_dropout_rate=cfg.dropout_rate)
    if name == "grok_transformer":
        from .grok_transformer import GrokTransformer

        # the vocabulary is the K residues plus the op and = tokens
        return GrokTransformer(num_classes=num_classes, vocab=num_classes + 2, dim=cfg.grok_dim, depth=cfg.grok_depth,
                               heads=4, head_dim=cfg.grok_dim // 4, mlp_dim=4 * cfg.grok_dim)
    if name == "convmixer":
        from .convmixer import ConvMixer

        return ConvMixer(num_classes=num_classes)
    if name == "cct":
        from .cct import CCT

        return CCT(num_classes=num_classes)
    if name == "swin":
        from .swin import Swin

        # patch and windows follow the image size (llqr/models/swin.py: 32x32 and 224x224)
        return Swin(num_classes=num_classes)
    if name == "gcvit":
        from .gcvit import GCViT

        # stem stride and windows follow the image size (llqr/models/gcvit.py: 32x32 and 224x224)
        return GCViT(num_classes=num_classes)
    if name == "repvit":
        from .repvit import RepViT

        # the stem's stride follows the image size (llqr/models/repvit.py: 32x32 and 224x224)
        return RepViT(num_classes=num_classes)
    if name == "hdvt":
        from .hdvt import DHVT

        # the patch follows the image size (llqr/models/hdvt.py: 4 at 32x32, 16 at 224x224)
        return DHVT(num_classes=num_classes)
    if name == "gcn":
        from .gcn import GCN

        return GCN(num_classes=num_classes)
    if name == "singd_vit":
        from .vit import ViT

        # the SINGD study's ImageNet-100 ViT (sizes [not retrieved]: ViT-Ti/16 at 224x224, see llqr/models/vit.py)
        return ViT(num_classes=num_classes, patch=16, dropout_rate=cfg.dropout_rate,
                   attention_dropout_rate=cfg.dropout_rate)
    if name == "lstm_seq2seq":  # num_classes: the features predicted per step
        from .lstm_seq2seq import LSTMSeq2Seq

        return LSTMSeq2Seq(hidden=cfg.lstm_hidden, layers=cfg.lstm_layers, horizon=cfg.osc_horizon)
    if name == "deeponet":  # outputs: one per query point of the input (num_classes unused)
        from .deeponet import DeepONet

        return DeepONet(**operator_sizes(cfg, hidden=1024, layers=6))
    if name == "tfonet":
        from .tfonet import TFONet

        return TFONet(**operator_sizes(cfg, d_model=128, layers=3))
    raise ModelNotAvailable(
        f"model '{name}' (preset '{cfg.preset}') is not implemented in this version of llqr; "
        f"available models: {', '.join(MODELS)}. The workflow still lists its cells (snakemake -n)."
    )
