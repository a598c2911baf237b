"""The typed run configuration: every key a training run reads, with the reference defaults.

Each key is one field of ``RunConfig``, and the field carries everything the project knows about
the key (``llqr.config.keyspec.opt``): its type, choices and range (validation and error
messages), its doc (``python -m llqr.train --list-keys``, docs/configuration.md), *when it is read*
(``read_when``), whether it is bookkeeping, whether it is inert, and whether it appears in a cell's
rule params at its default. The tables other modules use (PRECOND_KEYS, SAM_KEYS, MODEL_ONLY_KEYS,
BOOKKEEPING_KEYS, ...) are derived from the fields at the end of this module
(``llqr.config.keyspec.derive``), so adding a key means adding one field. The names a key chooses
from (models, datasets, optimizers, structures, ...) are ``llqr.config.families``.

Keys and defaults follow the original runner's ``default.yaml`` (see specs); keys we add are
marked "ours" in their doc string. A key added after cells were first run keeps every existing cell
(id and rule params) unchanged when its default is the behaviour those cells had and it is declared
with ``params_at_default=False`` (tests/test_config_fields.py adds one to check this).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .families import (
    CROP_MODES,
    CROP_PADDINGS,
    DATASETS,
    KRONECKER_OPTIMIZERS,
    LOSSES,
    MODELS,
    MODULAR_DATASETS,
    NORMALIZATIONS,
    OPERATOR_MODELS,
    OPTIMIZERS,
    OSC_VARIANTS,
    SINGD_STRUCTURES,
    TRANSLATION_DATASETS,
)
from .keyspec import derive, field_default, opt, sched
from .method_fields import PreconditionerFields, SamFields

_TRANSFORMER = {"model": ("transformer_iwslt",)}
_TRANSLATION = {"dataset": TRANSLATION_DATASETS}
_CIFAR = {"dataset": ("cifar10", "cifar100")}  # read only by the CIFAR loader (llqr/data/cifar.py)


@dataclass(frozen=True)
class CoreFields:
    """The keys every training run reads (model, data, loop, optimizer, study keys, seeds, evaluation)."""

    # --- what to train ----------------------------------------------------------------
    preset: str = opt("", "str", doc="Name of the preset this config was resolved from (preset=NAME; the workflow "
                                     "sets it): the first component of the cell id.")
    model: str = opt("mlp", "str", choices=MODELS,
                     doc="Architecture (llqr/models). It must suit the dataset: transformer_iwslt the translation "
                         "corpora, grok_transformer mod_sum, and vgg16bn, vgg16, vgg19, svag_vgg16, svag_vgg19, "
                         "wide_resnet28x10 and "
                         "pyramidnet110 images of at least 32x32 (not digits or mnist).")
    mlp_hidden: list = opt([100, 300], "list[int]", read_when={"model": ("mlp", "si_mlp")},
                           doc="Hidden widths of the MLP (ours; reference: 100, 300); si_mlp needs at least one.")
    wrn_layout: str = opt("reference", "str", choices=("reference", "standard"),
                          read_when={"model": ("wide_resnet28x10",)},
                          doc="Ours: wide_resnet28x10 units per group: reference = 5 as the original code "
                              "(46.2M params, really WRN-34-10), standard = 4 (WRN-28-10, 36.5M).")
    dataset: str = opt("digits", "str", choices=DATASETS,
                       doc="Dataset, prepared by the workflow under data_dir/<dataset> (digits and mod_sum are "
                           "generated, the others fetched).")
    dataset_dir: str = opt(None, "str", nullable=True, path=True,
                           doc="Where the prepared dataset lives if not data_dir/<dataset>: a path the run reads "
                               "(absolute, or relative to the working directory; no '..' component, no shell "
                               "metacharacters); the workflow neither prepares nor tracks data there. "
                               "null = data_dir/<dataset>.")
    train_fraction: float = opt(1.0, "float", gt=0, maximum=1.0, params_at_default=False,
                                doc="Ours: train on a fixed random subset of this fraction of the train split "
                                    "(seeded by data_seed; the HyperbolicLR study's SimpleCNN uses 10% of CIFAR-10); "
                                    "in-memory datasets only (digits, mnist, cifar10, cifar100, svhn).")
    test_fraction: float = opt(1.0, "float", gt=0, maximum=1.0, params_at_default=False,
                               doc="Ours: evaluate on a fixed random subset of this fraction of the test split "
                                   "(seeded by data_seed; the HyperbolicLR study's subset_ratio cuts the test split "
                                   "as the train split: 10% for its SimpleCNN); in-memory datasets only.")
    crop_mode: str = opt("batch", "str", choices=CROP_MODES, read_when={"dataset": ("cifar10", "cifar100")},
                         doc="CIFAR random crop: one offset per batch (the reference) or per image.")
    augment: bool = opt(True, "bool", read_when=_CIFAR, params_at_default=False,
                        doc="Ours: CIFAR training augmentation (crop, flip, Cutout); false = the normalised "
                            "originals, as the SVAG study's noisy-GD runs (crop_mode, crop_padding and cutout are "
                            "then unused). svhn is never augmented (the study's SVHN module).")
    crop_padding: str = opt("reflect", "str", choices=CROP_PADDINGS, read_when=_CIFAR, params_at_default=False,
                            doc="Ours: what the CIFAR random crop pads the 4-pixel border with: reflect (the "
                                "reference) or zero (torchvision's RandomCrop, the SVAG study).")
    cutout: bool = opt(True, "bool", read_when=_CIFAR, params_at_default=False,
                       doc="Ours: the reference's 16x16 Cutout (p = 1/2) after crop and flip; false = none (the "
                           "SVAG study).")
    normalization: str = opt("reference", "str", choices=NORMALIZATIONS, read_when=_CIFAR, params_at_default=False,
                             doc="Ours: CIFAR mean/std: reference = the LLQR reference's per dataset; svag = the SVAG "
                                 "study's mean (0.4914, 0.4822, 0.4465) and std (0.2023, 0.1994, 0.2010), for "
                                 "cifar100 too. svhn always uses the study's mean = std = 0.5.")
    modulus: int = opt(97, "int", minimum=2, read_when={"dataset": MODULAR_DATASETS},
                       doc="p of the modular-arithmetic data (reference: 97; smaller ones are ours, for the demo): "
                           "also grok_transformer's number of classes.")
    # the HyperbolicLR study's oscillation data (llqr/data/oscillation.py): ours
    osc_variant: str = opt("simple", "str", choices=OSC_VARIANTS, read_when={"dataset": ("oscillation",)},
                           doc="Ours: which of the study's oscillators (damping ratio zeta) the windows come from: "
                               "simple = 0, damped = 0.01, total = all three (0, 0.01, 0.02); the study's runs use "
                               "simple.")
    osc_history: int = opt(50, "int", gt=0, read_when={"dataset": ("oscillation",)},
                           doc="Ours: positions an oscillation example sees (the study: 50).")
    osc_horizon: int = opt(50, "int", gt=0, read_when={"dataset": ("oscillation",)},
                           doc="Ours: positions after them it predicts (the study: 50); lstm_seq2seq's decoder steps.")
    dropout_rate: float = opt(0.0, "float", minimum=0.0, maximum=1.0,
                              doc="Model dropout where the model has it: mlp, wide_resnet28x10, vit_ti16 (all four "
                                  "of its dropouts) and transformer_iwslt. vgg16bn's two dropouts are fixed at the "
                                  "reference's 0.5 (a non-zero value is refused); the other models have none.")
    norm: str = opt("bn", "str", choices=("bn", "gn", "none"),
                    read_when={"model": ("preresnet32", "vgg16", "vgg19", "svag_preresnet32", "svag_vgg16",
                                         "svag_vgg19")},
                    doc="Ours: normalisation of preresnet32 (bn or gn), vgg16/vgg19 and the SVAG study's own "
                        "svag_preresnet32, svag_vgg16, svag_vgg19 (bn, gn or none; theirs is affine-free with "
                        "eps 0 and GroupNorm(8)).")
    width: int = opt(1, "int", gt=0, read_when={"model": ("preresnet32", "svag_preresnet32")},
                     doc="Ours: preresnet32 and svag_preresnet32 width multiplier (4 = the SVAG study's PRN32-4x).")
    scale_invariant: bool = opt(False, "bool", read_when={"model": ("preresnet32",)},
                                doc="Ours: preresnet32 with non-affine norms after every conv and a fixed head.")
    # transformer_iwslt sizes (reference: fairseq transformer_iwslt_de_en); smaller ones are ours, for the demo
    embed_dim: int = opt(512, "int", gt=0, read_when=_TRANSFORMER, doc="Transformer model width.")
    ffn_dim: int = opt(1024, "int", gt=0, read_when=_TRANSFORMER, doc="Transformer feed-forward width.")
    attention_heads: int = opt(4, "int", gt=0, read_when=_TRANSFORMER,
                               doc="Transformer attention heads (must divide embed_dim).")
    encoder_layers: int = opt(6, "int", gt=0, read_when=_TRANSFORMER, doc="Transformer encoder layers.")
    decoder_layers: int = opt(6, "int", gt=0, read_when=_TRANSFORMER, doc="Transformer decoder layers.")
    # grok_transformer sizes (reference: width 128, depth 2; 4 heads, MLP 4x width); smaller ones are ours
    grok_dim: int = opt(128, "int", gt=0, read_when={"model": ("grok_transformer",)},
                        doc="grok_transformer width (a multiple of its 4 heads).")
    grok_depth: int = opt(2, "int", gt=0, read_when={"model": ("grok_transformer",)}, doc="grok_transformer blocks.")
    # lstm_seq2seq sizes (the HyperbolicLR study's LSTM_Seq2Seq defaults: 128, 3); smaller ones are ours
    lstm_hidden: int = opt(128, "int", gt=0, read_when={"model": ("lstm_seq2seq",)},
                           doc="Ours: lstm_seq2seq's hidden size (encoder and decoder).")
    lstm_layers: int = opt(3, "int", gt=0, read_when={"model": ("lstm_seq2seq",)},
                           doc="Ours: lstm_seq2seq's stacked LSTM layers (encoder and decoder each).")
    # the integral-operator networks' sizes (null: the HyperbolicLR study's defaults); smaller ones are ours
    operator_width: int = opt(None, "int", gt=0, nullable=True, params_at_default=False,
                              read_when={"model": OPERATOR_MODELS},
                              doc="deeponet's hidden width (null: the study's 1024) or tfonet's d_model (null: 128, "
                                  "a multiple of its 2 heads).")
    operator_depth: int = opt(None, "int", gt=0, nullable=True, params_at_default=False,
                              read_when={"model": OPERATOR_MODELS},
                              doc="deeponet's num_layers, Linear layers per branch and trunk net (null: the study's "
                                  "6), or tfonet's encoder and decoder layers each (null: 3).")
    # --- loop ------------------------------------------------------------------------
    batch_size: int = opt(128, "int", gt=0,
                          doc="Examples per micro-batch (an update averages grad_acc_steps of them); translation "
                              "batches by max_tokens instead.")
    eval_batch_size: int = opt(None, "int", gt=0, nullable=True,
                               doc="Examples per evaluation batch; null = batch_size (translation: 128).")
    total_epochs: float = opt(250.0, "float", gt=0,
                              doc="Epoch budget: floor(batches per epoch x total_epochs / grad_acc_steps) updates; "
                                  "epoch-valued schedule parameters and the HyperbolicLR schedules follow it.")
    max_steps: int = opt(
        None, "int", gt=0, nullable=True, doc="Ours: cap on updates (for smoke runs); schedules keep the epoch budget."
    )
    grad_acc_steps: int = opt(1, "int", gt=0,
                              doc="Micro-batches whose mean gradient makes one update (must be 1 with translation, "
                                  "the noise studies and the Kronecker optimizers).")
    max_tokens: int = opt(None, "int", gt=0, nullable=True, read_when=_TRANSLATION,
                          doc="Token budget per batch (translation; required there, the reference uses 16384).")
    num_buckets: int = opt(8, "int", gt=0, read_when=_TRANSLATION,
                           doc="Ours: length buckets (= compiled batch shapes) of translation batching.")
    # --- optimizer -------------------------------------------------------------------
    optimizer: str = opt("sgd", "str", choices=OPTIMIZERS,
                         doc="Main optimizer: sgd has no momentum; polyak = heavy-ball sgd; adamw_b2-98/-95 fix "
                             "AdamW's beta2; singd, ingd, ikfac, kfac are Kronecker-factored (ours; with "
                             "use_preconditioner=false; ingd is singd with dense factors); prodigy and "
                             "dadapt_adamw are learning-rate free (ours).")
    learning_rate: float = opt(0.1, "float", gt=0,
                               doc="Base learning rate of the main optimizer, shaped by lr_scheduler (a multiplier "
                                   "on the estimated step for prodigy and dadapt_adamw).")
    momentum: float = opt(0.9, "float", minimum=0.0, maximum=1.0,
                          doc="Momentum of polyak and of the Kronecker optimizers (alpha2), and of the LLQR inner "
                              "solver when precond_solver=momentum.")
    adam_betas: list = opt([0.9, 0.999], "list[float]",
                           doc="(beta1, beta2) of adam, adamw, prodigy and dadapt_adamw (adamw_b2-* use beta1 only); "
                               "two values in [0, 1).")
    weight_decay: float = opt(None, "float", minimum=0.0, nullable=True,
                              doc="null = 0. Coupled L2 added to the (preconditioned) gradient for sgd, polyak and "
                                  "adam; decoupled for the adamw variants, prodigy and dadapt_adamw; inside SINGD, "
                                  "IKFAC and KFAC.")
    wd_mask: list = opt(None, "list[str]", nullable=True,
                        doc="Parameter-path substrings excluded from weight decay (e.g. [Norm, bias]); honoured by "
                            "sgd, polyak, adam and adamw.")
    loss: str = opt("cross_entropy", "str", choices=LOSSES, params_at_default=False,
                    doc="Ours: training and evaluation loss: cross_entropy on class labels (every classification "
                        "dataset), or on float targets (regression datasets: oscillation) mse or huber "
                        "(PyTorch's HuberLoss, delta 1, the HyperbolicLR study's); a regression run evaluates "
                        "test_loss (its summary metric, lower is better) and logs no accuracy.")
    label_smoothing: float = opt(0.0, "float", minimum=0.0, maximum=1.0,
                                 doc="Label smoothing of the training loss (also in the LLQR fit's gradient); "
                                     "evaluation losses are unsmoothed unless eval_label_smoothing.")
    eval_label_smoothing: bool = opt(False, "bool", params_at_default=False,
                                     doc="Ours: the test loss is the cross-entropy against the label_smoothing "
                                         "targets too (the HyperbolicLR study evaluates with its training "
                                         "criterion); false = the unsmoothed NLL. Accuracy is unaffected.")
    # SINGD / IKFAC / KFAC (ours; defaults from the SINGD paper): momentum is the key above
    singd_structure: str = opt("dense", "str", choices=SINGD_STRUCTURES, read_when={"optimizer": ("singd",)},
                               doc="Structure of SINGD's factors K, C.")
    factor_update_every: int = opt(10, "int", gt=0, read_when={"optimizer": KRONECKER_OPTIMIZERS},
                                   doc="T: steps between Kronecker-factor updates (SINGD/KFAC).")
    factor_damping: float = opt(1.0e-3, "float", minimum=0.0, read_when={"optimizer": KRONECKER_OPTIMIZERS},
                                doc="λ of SINGD/IKFAC/KFAC.")
    lr_cov: float = opt(1.0e-2, "float", gt=0, read_when={"optimizer": ("singd", "ingd", "ikfac")},
                        doc="β1: SINGD's (and IKFAC's) factor step size.")
    singd_alpha1: float = opt(0.5, "float", minimum=0.0, maximum=1.0, read_when={"optimizer": ("singd", "ingd")},
                              doc="α1: SINGD's factor momentum (IKFAC: 0).")
    kfac_ema: float = opt(0.95, "float", minimum=0.0, maximum=1.0, read_when={"optimizer": ("kfac",)},
                          doc="KFAC's factor moving-average decay.")
    kfac_precision: str = opt("run", "str", choices=("run", "fp32"), params_at_default=False,
                              read_when={"optimizer": ("kfac",), "precision": ("bf16",)},
                              doc="Ours: where KFAC averages and inverts its factors under precision=bf16: run = in "
                                  "bf16 (Gauss-Jordan, no bf16 Cholesky exists), as a KFAC whose factors live in the "
                                  "training precision does (the SINGD study's unstable baseline; a non-finite inverse "
                                  "ends the run as diverged); fp32 = float32 Cholesky inverses.")
    measure_kfac_agreement: bool = opt(
        False, "bool", params_at_default=False, read_when={"optimizer": ("ikfac",)},
        doc="Ours: at every evaluation, log how close IKFAC's direction K Kᵀ ∇ C Cᵀ is to the KFAC direction "
            "(A + λI)⁻¹ ∇ (G + λI)⁻¹ that it approximates (its fixed point), both on the step's batch factors: "
            "kfac_agreement_cos (all layers), kfac_agreement_cos_min (worst layer), kfac_agreement_rel "
            "(‖d_ikfac − d_kfac‖/‖d_kfac‖); the final values go to the summary. Training is unchanged.")
    prodigy_d_coef: float = opt(1.0, "float", gt=0, read_when={"optimizer": ("prodigy",)},
                                doc="Ours: Prodigy's d_coef (optax estim_lr_coef).")
    # gradient-noise study (SVAG, Li, Malladi & Arora 2021): ours
    noise: str = opt("minibatch", "str", choices=("minibatch", "svag", "noisy_gd"), params_at_default=False,
                     doc="Ours: minibatch = plain SGD noise; svag = SVAG with svag_l; noisy_gd = noisy gradient "
                         "descent (full batch + Gaussian noise of SGD's covariance; not natural gradient). svag and "
                         "noisy_gd need sgd or polyak, no preconditioner, no SAM, grad_acc_steps=1, image data.")
    svag_l: int = opt(1, "int", gt=0, read_when={"noise": ("svag",)},
                      doc="SVAG's l: noise l·Σ/B, LR/l, steps ×l (l=1: plain SGD).")
    svag_variant: str = opt("sde1", "str", choices=("sde1", "sde2"), read_when={"noise": ("svag",)},
                            doc="SVAG: sde1 = two reweighted halves (two batches per step); sde2 = one batch whose "
                                "loss is scaled by 1 + √(l−1)·r, r a random sign.")
    noisy_gd_examples: int = opt(None, "int", gt=0, nullable=True, read_when={"noise": ("noisy_gd",)},
                                 doc="Noisy gradient descent: the fixed subset size N (null = the whole train split; "
                                     "at most the train split).")
    noisy_gd_chunk: int = opt(None, "int", gt=0, nullable=True, read_when={"noise": ("noisy_gd",)},
                              params_at_default=False,
                              doc="Ours: noisy GD accumulates the step's weighted gradient over chunks of this many "
                                  "subset examples (one set of weights per step; memory bounded by the chunk; with "
                                  "data_parallel each chunk is sharded). Must divide the subset; not with BatchNorm "
                                  "models (per-chunk batch statistics). null = the whole subset in one pass.")
    noise_stats_from_epoch: float = opt(None, "float", minimum=0.0, nullable=True, params_at_default=False,
                                        doc="Ours: log G_t=|∇L|² and the minibatch noise trace N_t at evaluations "
                                            "from this epoch on (not for translation); null = off.")
    noise_stats_to_epoch: float = opt(None, "float", gt=0.0, nullable=True, params_at_default=False,
                                      doc="Ours: end of the averaging window [noise_stats_from_epoch, this epoch): the "
                                          "summary's noise_G, noise_N are the means of the measurements in it and "
                                          "noise_ratio = mean N/(B·mean G) (the SVAG study averages epochs 200-250); "
                                          "null = the summary holds the final measurement.")
    noise_stats_batches: int = opt(16, "int", minimum=2, params_at_default=False,
                                   doc="Ours: M minibatch gradients per noise estimate (noise_stats_from_epoch).")
    noise_stats_every: float = opt(None, "float", gt=0.0, nullable=True, params_at_default=False,
                                   doc="Ours: measure the noise statistics at the first step of every this many "
                                       "epochs (from noise_stats_from_epoch; the SVAG study: 1, at each epoch's "
                                       "start), in 'noise' events of metrics.jsonl; null = at evaluations.")
    noise_stats_examples: int = opt(None, "int", gt=0, nullable=True, params_at_default=False,
                                    doc="At least this many examples per noise estimate: M = max(noise_stats_batches, "
                                        "noise_stats_examples // batch_size) (the SVAG study: 200 and 12800); null = "
                                        "noise_stats_batches.")
    noise_stats_full_grad_examples: int = opt(4096, "int", minimum=0, params_at_default=False,
                                              doc="Ours: G_t from a large-sample gradient over a fixed subset of this "
                                                  "many training examples (at most the split); 0 = from the M "
                                                  "minibatch gradients themselves, bias-corrected (the SVAG study's "
                                                  "estimator).")
    data_parallel: bool = opt(False, "bool", params_at_default=False,
                              doc="Ours: shard each batch over all local devices (the job's GPUs), state replicated; "
                                  "batch_size and precond_batch_size (noisy GD: noisy_gd_chunk, or the subset) must "
                                  "divide by the preset's gpu count. Not for translation, SVAG or Kronecker "
                                  "optimizers.")
    precision: str = opt("fp32", "str", choices=("fp32", "bf16"), params_at_default=False,
                         doc="Ours: bf16 keeps params, activations and optimizer state in bfloat16 (loss in fp32).")
    normalize_conv_params: bool = opt(False, "bool",
                                      doc="Rescale every rank-4 (conv) kernel to L2 norm sqrt(size) before each "
                                          "update is added (the reference's trick; off in every preset).")
    lr_scheduler: dict = sched("constant", "Learning-rate schedule: a family name or {name, <param>: ...} "
                                           "(llqr/config/schedule_families.py); <schedule>.<param>=v edits one.")
    # --- seeds -----------------------------------------------------------------------
    init_key: int = opt(42, "int", minimum=0, doc="Parameter-init seed; the seed varied across cells (a surface's "
                                                  "seeds set it).")
    rng_seed: int = opt(123, "int", minimum=0, doc="Dropout stream seed.")
    data_seed: int = opt(0, "int", minimum=0,
                         doc="Ours: shuffle, augmentation, train_fraction subset and noise-study seed (the reference "
                             "is unseeded).")
    # --- evaluation / logging / checkpoints -----------------------------------------
    test_eval_freq: int = opt(2000, "int", gt=0,
                              doc="Loop steps between evaluations: test accuracy and loss (translation: valid token "
                                  "metrics); every run also ends with one.")
    logging_freq: int = opt(50, "int", gt=0,
                            doc="Loop steps between train events (loss and accuracy of the step's last micro-batch) "
                                "in metrics.jsonl.")
    log_step_accuracy: bool = opt(False, "bool", params_at_default=False,
                                  doc="Ours: train events also carry step_accuracy, the mean over the steps since the "
                                      "previous train event of each step's training-mode accuracy (%) on its own "
                                      "batch before the update (the SVAG study's per-step accuracy/train, which it "
                                      "smooths over 100-step intervals), and step_accuracy_steps, their count.")
    report_freq: int = opt(None, "int", gt=0, nullable=True, bookkeeping=True,
                           doc="Console progress period; null = logging_freq.")
    checkpoint_freq: int = opt(1000, "int", gt=0, bookkeeping=True,
                               doc="Loop steps between checkpoints (with preempt_handling).")
    preempt_handling: bool = opt(True, "bool", bookkeeping=True,
                                 doc="Checkpoint and resume: on SIGTERM/SIGUSR1 save and exit 75, rerun to resume "
                                     "(ours: on by default).")
    keep_checkpoints: int = opt(2, "int", gt=0, bookkeeping=True, doc="Ours: checkpoints kept per cell.")
    full_eval_freq: int = opt(None, "int", gt=0, nullable=True, read_when=_TRANSLATION,
                              doc="Loop steps between full valid BLEU evaluations (translation); null = only at the "
                                  "end (full_eval_at_end).")
    full_eval_at_end: bool = opt(True, "bool", read_when=_TRANSLATION,
                                 doc="Full valid BLEU at the last step's evaluation (translation); the final "
                                     "evaluation scores valid and test BLEU either way.")
    bleu_sampled_freq: int = opt(None, "int", minimum=0, nullable=True, read_when=_TRANSLATION,
                                 doc="Loop steps between sampled BLEU (first bleu_max_examples valid sentences; "
                                     "translation); null = test_eval_freq; 0 = off.")
    bleu_max_examples: int = opt(256, "int", gt=0, read_when=_TRANSLATION,
                                 doc="Valid sentences scored by the sampled BLEU (translation).")
    beam_size: int = opt(5, "int", gt=0, read_when=_TRANSLATION, doc="Beam width of BLEU decoding (translation).")


@dataclass(frozen=True)
class RunConfig(SamFields, PreconditionerFields, CoreFields):
    """Every key of a run: the core keys, then the LLQR preconditioner's, then SAM's (a dataclass
    collects base-class fields from the last base to the first)."""

    def to_dict(self) -> dict:
        return {f.name: _fresh_copy(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _fresh_copy(value):
    if isinstance(value, dict):
        return {k: _fresh_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fresh_copy(v) for v in value]
    return value


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def is_read(key: str, config: dict, fields: dict | None = None) -> bool:
    """Whether a run with ``config`` reads ``key`` (its field's ``read_when``)."""
    alternatives = (fields or FIELDS)[key].metadata["read_when"]
    return not alternatives or any(all(config.get(k) in cond for k, cond in alt.items()) for alt in alternatives)


def omitted_at_default(fields: dict | None = None) -> dict:
    """{key: default} of the keys left out of rule params at their default (``params_at_default=False``)."""
    return {k: field_default(f) for k, f in (fields or FIELDS).items() if not f.metadata["params_at_default"]}


TABLES = derive(FIELDS)
# The derived tables under their historical names.
# Keys that only matter when the preconditioner is fitted; inert when use_preconditioner=false
# (P then stays at its identity init; block_structure is inert only while the identity scaling is 1).
PRECOND_KEYS = TABLES.precond
# Keys that only matter when a SAM mode is on; inert when sam_mode is null.
SAM_KEYS = TABLES.sam
# Keys accepted for the reference's configs that cannot change a run here (llqr.workflow.cells.normalise
# resets them, so they never split cells).
INERT_KEYS = TABLES.inert
# How a run is looked after, never what it computes (a resumed run is bit-exact): not part of a
# cell's id, its rule params or its checkpoint key.
BOOKKEEPING_KEYS = TABLES.bookkeeping
# Keys read only by some models, datasets, optimizers or noise modes (see llqr.workflow.cells.rule_params).
MODEL_ONLY_KEYS = TABLES.owned["model"]
DATASET_ONLY_KEYS = TABLES.owned["dataset"]
OPTIMIZER_ONLY_KEYS = TABLES.owned["optimizer"]
NOISE_KEYS = TABLES.owned["noise"]
TRANSFORMER_KEYS = frozenset(k for k, models in MODEL_ONLY_KEYS.items() if models == ("transformer_iwslt",))
TRANSLATION_KEYS = frozenset(k for k, datasets in DATASET_ONLY_KEYS.items() if datasets == TRANSLATION_DATASETS)
