"""The typed run configuration: every key a training run reads, with the reference defaults.

Each field carries its constraints in ``metadata`` so that one table drives validation,
error messages (allowed values, close-match suggestions) and the documentation in README.
Keys and defaults follow the original runner's ``default.yaml`` (see specs); keys we add are
marked "ours" in their doc string.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .schedule_families import default_schedule

MODELS = ("mlp", "resnet18", "resnet50", "vgg16bn", "wide_resnet28x10", "pyramidnet110", "transformer_iwslt",
          # the companion studies' models (SVAG, SINGD): ours
          "preresnet32", "vgg16", "vgg19", "si_mlp",
          # the HyperbolicLR study's CIFAR-10 models: ours
          "simple_cnn", "simple_vit")
TRANSLATION_DATASETS = ("iwslt14_de_en", "synth_de_en")  # synth_de_en: ours, the demo's shipped corpus
DATASETS = ("digits", "mnist", "cifar10", "cifar100", "imagenet") + TRANSLATION_DATASETS
KRONECKER_OPTIMIZERS = ("singd", "ikfac", "kfac")  # ours: the SINGD study's optimizers (llqr.optim.singd)
LR_FREE_OPTIMIZERS = ("prodigy", "dadapt_adamw")  # ours: optax.contrib's, for the HyperbolicLR study (lr 1)
OPTIMIZERS = ("sgd", "polyak", "adam", "adamw", "adamw_b2-98", "adamw_b2-95") + KRONECKER_OPTIMIZERS + LR_FREE_OPTIMIZERS
SINGD_STRUCTURES = ("dense", "diagonal", "block_diagonal", "hierarchical", "tril_toeplitz", "triu_toeplitz")
DIVERGENCES = (
    "ngd",
    "newton",
    "reverse_kl",
    "renyi",
    "stable_renyi",
    "renyi_half",
    "renyi_zero",
    "renyi_inf",
    "renyi_2",
)
BLOCK_STRUCTURES = (
    "scalar",
    "diagonal",
    "dense",
    "kfac",
    "diag-kfac",
    "e-kfac",
    "sep-e-kfac",
    "psd-e-kfac",
    "psd-sep-e-kfac",
    "exact",  # ours: the dense (H_D + λI)^-1 over all parameters, for tiny models (exact vs relaxed)
)
SAM_MODES = (None, "base_sam", "base_fsam", "past_fsam", "asam", "fisher_sam")


def opt(default, kind: str, *, choices=None, minimum=None, maximum=None, gt=None, nullable=False, doc=""):
    """A config field with its validation metadata."""
    meta = dict(kind=kind, choices=choices, minimum=minimum, maximum=maximum, gt=gt, nullable=nullable, doc=doc)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: _fresh(d), metadata=meta)
    return field(default=default, metadata=meta)


def _fresh(value):
    return default_schedule(value["name"]) if isinstance(value, dict) and "name" in value else type(value)(value)


def sched(name: str, doc: str):
    return field(default_factory=lambda: default_schedule(name), metadata=dict(kind="schedule", doc=doc))


@dataclass(frozen=True)
class RunConfig:
    # --- what to train ----------------------------------------------------------------
    preset: str = opt("", "str", doc="Name of the preset this config was resolved from.")
    model: str = opt("mlp", "str", choices=MODELS, doc="Architecture.")
    mlp_hidden: list = opt([100, 300], "list[int]", doc="Hidden widths of the MLP (ours; reference: 100, 300).")
    wrn_layout: str = opt("reference", "str", choices=("reference", "standard"),
                          doc="Ours: wide_resnet28x10 units per group: reference = 5 as the original code "
                              "(46.2M params, really WRN-34-10), standard = 4 (WRN-28-10, 36.5M).")
    dataset: str = opt("digits", "str", choices=DATASETS, doc="Dataset.")
    dataset_dir: str = opt(None, "str", nullable=True, doc="Where the prepared dataset lives; null = data/<dataset>.")
    train_fraction: float = opt(1.0, "float", gt=0, maximum=1.0,
                                doc="Ours: train on a fixed random subset of this fraction of the train split "
                                    "(seeded by data_seed; the HyperbolicLR study's SimpleCNN uses 10% of CIFAR-10).")
    crop_mode: str = opt("batch", "str", choices=("batch", "image"),
                         doc="CIFAR random crop: one offset per batch (the reference) or per image.")
    dropout_rate: float = opt(0.0, "float", minimum=0.0, maximum=1.0, doc="Model dropout where the model has it.")
    norm: str = opt("bn", "str", choices=("bn", "gn", "none"),
                    doc="Ours: normalisation of preresnet32 (bn|gn) and vgg16/vgg19 (bn|gn|none).")
    width: int = opt(1, "int", gt=0, doc="Ours: preresnet32 width multiplier (4 = the SVAG study's PRN32-4x).")
    scale_invariant: bool = opt(False, "bool",
                                doc="Ours: preresnet32 with non-affine norms after every conv and a fixed head.")
    # transformer_iwslt sizes (reference: fairseq transformer_iwslt_de_en); smaller ones are ours, for the demo
    embed_dim: int = opt(512, "int", gt=0, doc="Transformer model width.")
    ffn_dim: int = opt(1024, "int", gt=0, doc="Transformer feed-forward width.")
    attention_heads: int = opt(4, "int", gt=0, doc="Transformer attention heads (must divide embed_dim).")
    encoder_layers: int = opt(6, "int", gt=0)
    decoder_layers: int = opt(6, "int", gt=0)
    # --- loop ------------------------------------------------------------------------
    batch_size: int = opt(128, "int", gt=0)
    eval_batch_size: int = opt(None, "int", gt=0, nullable=True, doc="null = batch_size.")
    total_epochs: float = opt(250.0, "float", gt=0)
    max_steps: int = opt(
        None, "int", gt=0, nullable=True, doc="Ours: cap on updates (for smoke runs); schedules keep the epoch budget."
    )
    grad_acc_steps: int = opt(1, "int", gt=0)
    max_tokens: int = opt(None, "int", gt=0, nullable=True, doc="Token budget per batch (translation).")
    num_buckets: int = opt(8, "int", gt=0, doc="Ours: length buckets (= compiled batch shapes) of translation batching.")
    # --- optimizer -------------------------------------------------------------------
    optimizer: str = opt("sgd", "str", choices=OPTIMIZERS, doc="sgd has no momentum; polyak = heavy-ball sgd.")
    learning_rate: float = opt(0.1, "float", gt=0)
    momentum: float = opt(0.9, "float", minimum=0.0, maximum=1.0)
    adam_betas: list = opt([0.9, 0.999], "list[float]")
    weight_decay: float = opt(None, "float", minimum=0.0, nullable=True, doc="Coupled L2 unless an adamw optimizer.")
    wd_mask: list = opt(None, "list[str]", nullable=True, doc="Key substrings excluded from weight decay.")
    label_smoothing: float = opt(0.0, "float", minimum=0.0, maximum=1.0)
    # SINGD / IKFAC / KFAC (ours; defaults from the SINGD paper): momentum is the key above
    singd_structure: str = opt("dense", "str", choices=SINGD_STRUCTURES, doc="Structure of SINGD's factors K, C.")
    factor_update_every: int = opt(10, "int", gt=0, doc="T: steps between Kronecker-factor updates (SINGD/KFAC).")
    factor_damping: float = opt(1.0e-3, "float", minimum=0.0, doc="λ of SINGD/IKFAC/KFAC.")
    lr_cov: float = opt(1.0e-2, "float", gt=0, doc="β1: SINGD's factor step size.")
    singd_alpha1: float = opt(0.5, "float", minimum=0.0, maximum=1.0, doc="α1: SINGD's factor momentum (IKFAC: 0).")
    kfac_ema: float = opt(0.95, "float", minimum=0.0, maximum=1.0, doc="KFAC's factor moving-average decay.")
    prodigy_d_coef: float = opt(1.0, "float", gt=0, doc="Ours: Prodigy's d_coef (optax estim_lr_coef).")
    # gradient-noise study (SVAG, Li, Malladi & Arora 2021): ours
    noise: str = opt("minibatch", "str", choices=("minibatch", "svag", "noisy_gd"),
                     doc="minibatch = plain SGD noise; svag = SVAG with svag_l; noisy_gd = noisy gradient descent "
                         "(full batch + Gaussian noise of SGD's covariance; not natural gradient).")
    svag_l: int = opt(1, "int", gt=0, doc="SVAG's l: noise l·Σ/B, LR/l, steps ×l (l=1: plain SGD).")
    svag_variant: str = opt("sde1", "str", choices=("sde1", "sde2"), doc="SVAG: two reweighted halves or sde2.")
    noisy_gd_examples: int = opt(None, "int", gt=0, nullable=True,
                                 doc="Noisy gradient descent: the fixed subset size N (null = the whole train split).")
    noise_stats_from_epoch: float = opt(None, "float", minimum=0.0, nullable=True,
                                        doc="Log G_t=|∇L|² and the minibatch noise trace N_t at evals from this epoch.")
    noise_stats_batches: int = opt(16, "int", minimum=2, doc="M minibatch gradients per noise estimate.")
    data_parallel: bool = opt(False, "bool",
                              doc="Ours: shard each batch over all local devices (the job's GPUs), state replicated.")
    precision: str = opt("fp32", "str", choices=("fp32", "bf16"),
                         doc="Ours: bf16 keeps params, activations and optimizer state in bfloat16 (loss in fp32).")
    normalize_conv_params: bool = opt(False, "bool",
                                      doc="Rescale every rank-4 (conv) kernel to L2 norm sqrt(size) before each "
                                          "update is added (the reference's trick; off in every preset).")
    lr_scheduler: dict = sched("constant", "Learning-rate schedule.")
    # --- seeds -----------------------------------------------------------------------
    init_key: int = opt(42, "int", minimum=0, doc="Parameter-init seed; the seed varied across cells.")
    rng_seed: int = opt(123, "int", minimum=0, doc="Dropout stream seed.")
    data_seed: int = opt(0, "int", minimum=0, doc="Ours: shuffle and augmentation seed (the reference is unseeded).")
    # --- evaluation / logging / checkpoints -----------------------------------------
    test_eval_freq: int = opt(2000, "int", gt=0)
    logging_freq: int = opt(50, "int", gt=0)
    report_freq: int = opt(None, "int", gt=0, nullable=True, doc="Console progress period; null = logging_freq.")
    checkpoint_freq: int = opt(1000, "int", gt=0)
    preempt_handling: bool = opt(True, "bool", doc="Checkpoint and resume (ours: on by default).")
    keep_checkpoints: int = opt(2, "int", gt=0, doc="Ours: checkpoints kept per cell.")
    full_eval_freq: int = opt(None, "int", gt=0, nullable=True, doc="Full BLEU period (translation).")
    full_eval_at_end: bool = opt(True, "bool")
    bleu_sampled_freq: int = opt(None, "int", minimum=0, nullable=True, doc="null = test_eval_freq; 0 = off.")
    bleu_max_examples: int = opt(256, "int", gt=0)
    beam_size: int = opt(5, "int", gt=0)
    # --- LLQR preconditioner --------------------------------------------------------
    use_preconditioner: bool = opt(True, "bool")
    precond_on_update: bool = opt(False, "bool")
    update_preconditioner_every: int = opt(1000, "int", gt=0)
    update_preconditioner_until: int = opt(None, "int", minimum=0, nullable=True)
    precond_steps: int = opt(50, "int", minimum=0)
    precond_batch_size: int = opt(64, "int", gt=0)
    precond_lr: float = opt(1e-3, "float", minimum=0.0)
    precond_solver: str = opt("momentum", "str", choices=("momentum", "sgd", "adam"))
    precond_clip_norm: float = opt(5.0, "float", gt=0)
    block_structure: str = opt("diagonal", "str", choices=BLOCK_STRUCTURES)
    divergence: str = opt("ngd", "str", choices=DIVERGENCES)
    divergence_order_param: float = opt(0.5, "float", gt=0)
    ema_decay: float = opt(0.0, "float", minimum=0.0, maximum=1.0)
    warm_start_precond: bool = opt(True, "bool")
    damping: float = opt(0.0, "float", minimum=0.0)
    precond_identity_scaling: float = opt(1.0, "float", gt=0)
    normalize_grad_for_lqr: bool = opt(False, "bool")
    allow_grad_inversion: bool = opt(False, "bool")
    llqr_operator_mode: str = opt("cached_exact", "str", choices=("cached_exact", "lowmem_exact_k", "lowmem_exact_full"))
    llqr_batch_update_mode: str = opt("full_batch", "str", choices=("full_batch", "chunked_lqr_segment"))
    llqr_batch_update_chunk_size: int = opt(None, "int", gt=0, nullable=True)
    llqr_second_order_mode: str = opt("batched_exact", "str", choices=("batched_exact", "sample_separable_exact"))
    llqr_second_order_chunk_size: int = opt(None, "int", gt=0, nullable=True)
    llqr_use_fast_paths: bool = opt(
        True, "bool", doc="Accepted for the reference's configs and inert here (it never splits cells): the "
                          "reference's exact shortcut for stages with zero Hessian blocks; our one global "
                          "curvature product never forms those blocks, so there is nothing to skip.")
    measure_asymmetry: bool = opt(False, "bool",
                                  doc="Log, at every fit, how far P's square block matrices are from symmetric "
                                      "(Frobenius and spectral skew ratios, per layer and averaged).")
    precond_lr_scheduler: dict = sched("constant", "Multiplier on the preconditioner solver's lr.")
    ema_scheduler: dict = sched("constant", "Schedule of ema_decay.")
    precond_update_scheduler: dict = sched("constant", "Schedule of update_preconditioner_every.")
    # --- SAM --------------------------------------------------------------------------
    sam_mode: str = opt(None, "str", choices=SAM_MODES, nullable=True)
    perturbation_rho: float = opt(0.1, "float", minimum=0.0)
    perturb_mode: str = opt("ema_grad", "str", choices=("ema_grad", "ema_precond_grad", "ema_direction"))
    norm_mode: str = opt(
        "euclidean", "str", choices=("euclidean", "matrix_norm", "layer_euclidean", "layer_matrix_norm")
    )
    gbar_beta: float = opt(0.9, "float", minimum=0.0, maximum=1.0)
    gbar_eps: float = opt(1e-12, "float", gt=0)
    asam_eta: float = opt(0.01, "float", minimum=0.0)
    fisher_sam_eta: float = opt(0.1, "float", gt=0)
    start_sam_after_step: int = opt(None, "int", minimum=0, nullable=True)
    sam_use_preconditioner_on_update: bool = opt(True, "bool")
    sam_research_base_vector_source: str = opt(
        "current_gradient", "str", choices=("current_gradient", "main_optimizer_momentum", "random_direction")
    )
    sam_research_perturb_sign: str = opt("ascent", "str", choices=("ascent", "descent"))
    perturbation_rho_scheduler: dict = sched("constant", "Schedule of perturbation_rho.")

    def to_dict(self) -> dict:
        return {f.name: _fresh_copy(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _fresh_copy(value):
    if isinstance(value, dict):
        return {k: _fresh_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fresh_copy(v) for v in value]
    return value


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}

# Keys that only matter when the preconditioner is fitted; inert when use_preconditioner=false
# (P then stays at its identity init; the identity scaling still applies, so it is not listed,
# and block_structure is inert only while that scaling is 1).
PRECOND_KEYS = frozenset(
    k
    for k in FIELDS
    if (k.startswith(("precond", "llqr_", "update_preconditioner")) and k != "precond_identity_scaling")
    or k
    in {
        "block_structure",
        "divergence",
        "divergence_order_param",
        "ema_decay",
        "ema_scheduler",
        "warm_start_precond",
        "damping",
        "normalize_grad_for_lqr",
        "allow_grad_inversion",
        "measure_asymmetry",
    }
)
# Keys that only matter when a SAM mode is on; inert when sam_mode is null.
SAM_KEYS = frozenset(
    k
    for k in FIELDS
    if k.startswith(("sam_research", "gbar_", "perturb"))
    or k in {"norm_mode", "asam_eta", "fisher_sam_eta", "start_sam_after_step", "sam_use_preconditioner_on_update"}
)
# Keys read only by some models or datasets (see llqr.matrix.rule_params).
TRANSFORMER_KEYS = frozenset({"embed_dim", "ffn_dim", "attention_heads", "encoder_layers", "decoder_layers"})
TRANSLATION_KEYS = frozenset({"max_tokens", "num_buckets", "full_eval_freq", "full_eval_at_end", "bleu_sampled_freq",
                              "bleu_max_examples", "beam_size"})
MODEL_ONLY_KEYS = {"mlp_hidden": ("mlp", "si_mlp"), "wrn_layout": ("wide_resnet28x10",),
                   "norm": ("preresnet32", "vgg16", "vgg19"), "width": ("preresnet32",),
                   "scale_invariant": ("preresnet32",),
                   **{k: ("transformer_iwslt",) for k in TRANSFORMER_KEYS}}
NOISE_KEYS = {"svag_l": ("svag",), "svag_variant": ("svag",), "noisy_gd_examples": ("noisy_gd",)}
OPTIMIZER_ONLY_KEYS = {"singd_structure": ("singd",), "lr_cov": ("singd", "ikfac"), "singd_alpha1": ("singd",),
# Keys accepted for the reference's configs that cannot change a run here (llqr.matrix.normalise
# resets them, so they never split cells).
INERT_KEYS = frozenset({"llqr_use_fast_paths"})
                       "kfac_ema": ("kfac",), "prodigy_d_coef": ("prodigy",),
                       **{k: KRONECKER_OPTIMIZERS for k in ("factor_update_every",
                                                                               "factor_damping")}}
DATASET_ONLY_KEYS = {"crop_mode": ("cifar10", "cifar100"), **{k: TRANSLATION_DATASETS for k in TRANSLATION_KEYS}}

