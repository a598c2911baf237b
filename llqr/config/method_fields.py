"""The LLQR preconditioner's and SAM's run-config keys, as field groups of ``RunConfig``
(``llqr.config.fields``): the keys of the original paper's method, kept apart from the keys every
training run reads. Each is a field with everything the project knows about the key (see
``llqr.config.fields``); ``RunConfig`` inherits these groups, after its own keys, in this order.
"""

from __future__ import annotations

from dataclasses import dataclass

from .families import (
    BASE_SAM_MODES,
    BLOCK_STRUCTURES,
    DIVERGENCES,
    NORM_MODES,
    PERTURB_MODES,
    PRECOND_SOLVERS,
    SAM_MODES,
)
from .keyspec import NOT_NULL, Not, opt, sched

_LLQR = {"use_preconditioner": (True,)}  # read only while the preconditioner is fitted
_SAM = {"sam_mode": NOT_NULL}  # read only with a SAM mode


@dataclass(frozen=True)
class PreconditionerFields:
    # --- LLQR preconditioner --------------------------------------------------------
    use_preconditioner: bool = opt(True, "bool",
                                   doc="Fit the LLQR preconditioner P and apply P·g before the main optimizer; "
                                       "false: P stays the identity (scaled by precond_identity_scaling).")
    precond_on_update: bool = opt(False, "bool", read_when=_LLQR,
                                  doc="Apply P after the main optimizer instead: research-only in the reference "
                                      "(signs look inconsistent there); refused with the preconditioner on.")
    update_preconditioner_every: int = opt(1000, "int", gt=0, read_when=_LLQR,
                                           doc="Loop steps between fits of P (step 0 included), shaped by "
                                               "precond_update_scheduler.")
    update_preconditioner_until: int = opt(None, "int", minimum=0, nullable=True, read_when=_LLQR,
                                           doc="No fit at or after this loop step; null = fit until the end.")
    precond_steps: int = opt(50, "int", minimum=0, read_when=_LLQR, doc="Inner solver steps per fit of P.")
    precond_batch_size: int = opt(64, "int", gt=0, read_when=_LLQR,
                                  doc="Examples (translation: sentences) drawn from the train stream for each fit.")
    precond_lr: float = opt(1e-3, "float", minimum=0.0, read_when=_LLQR,
                            doc="Inner solver rate, shaped by precond_lr_scheduler.")
    precond_solver: str = opt("momentum", "str", choices=PRECOND_SOLVERS, read_when=_LLQR,
                              doc="Inner solver of the fit (momentum: SGD with momentum `momentum`, the paper's).")
    precond_clip_norm: float = opt(5.0, "float", gt=0, read_when=_LLQR,
                                   doc="L2 clip of each block array's gradient in the fit (a diagonal block: one "
                                       "vector per controlled layer).")
    block_structure: str = opt("diagonal", "str", choices=BLOCK_STRUCTURES,
                               read_when=(_LLQR, {"precond_identity_scaling": Not(1.0)}),
                               doc="Structure of P's blocks (docs/algorithms.md); exact (ours) is the dense "
                                   "(H_D + λI)^-1, for models of at most 4,096 parameters.")
    divergence: str = opt("ngd", "str", choices=DIVERGENCES, read_when=_LLQR,
                          doc="Terminal cost D whose curvature P approximates; renyi_zero and renyi_inf are "
                              "research-only and refused, chunked fits need ngd, reverse_kl or newton.")
    divergence_order_param: float = opt(0.5, "float", gt=0, read_when=_LLQR,
                                        doc="α of divergence=renyi (1, the KL limit, is refused: use ngd).")
    ema_decay: float = opt(0.0, "float", minimum=0.0, maximum=1.0, read_when=_LLQR,
                           doc="d in blocks ← d·old + (1−d)·fitted after each fit (0 replaces), shaped by "
                               "ema_scheduler.")
    warm_start_precond: bool = opt(True, "bool", read_when=_LLQR,
                                   doc="Start each fit from the current blocks (false: from the identity).")
    damping: float = opt(0.0, "float", minimum=0.0, read_when=_LLQR, doc="λ added to the curvature: H_D + λI.")
    precond_identity_scaling: float = opt(1.0, "float", gt=0,
                                          doc="s: the blocks start at s·I and training applies their product / s "
                                              "(with the preconditioner off the update is g/s).")
    normalize_grad_for_lqr: bool = opt(False, "bool", read_when=_LLQR,
                                       doc="Replace g by g/|g| in the fit's problem.")
    allow_grad_inversion: bool = opt(False, "bool", read_when=_LLQR,
                                     doc="Let diagonal/scalar entries go below 1e-8 (false: clamped, so P never "
                                         "flips a gradient component's sign).")
    llqr_operator_mode: str = opt("cached_exact", "str",
                                  choices=("cached_exact", "lowmem_exact_k", "lowmem_exact_full"), read_when=_LLQR,
                                  doc="Curvature-product route: linearise the fit batch once (cached_exact), or a "
                                      "fresh jvp-of-grad per product (lowmem_exact_k; _full also rematerialises).")
    llqr_batch_update_mode: str = opt("full_batch", "str", choices=("full_batch", "chunked_lqr_segment"),
                                      read_when=_LLQR,
                                      doc="chunked_lqr_segment sums g and the products over chunks of "
                                          "llqr_batch_update_chunk_size examples (needs cached_exact).")
    llqr_batch_update_chunk_size: int = opt(None, "int", gt=0, nullable=True, read_when=_LLQR,
                                            doc="Chunk size of chunked_lqr_segment (required there).")
    llqr_second_order_mode: str = opt("batched_exact", "str", choices=("batched_exact", "sample_separable_exact"),
                                      read_when=_LLQR,
                                      doc="sample_separable_exact sums the products over chunks of "
                                          "llqr_second_order_chunk_size examples (the same P).")
    llqr_second_order_chunk_size: int = opt(None, "int", gt=0, nullable=True, read_when=_LLQR,
                                            doc="Chunk size of sample_separable_exact (required there).")
    llqr_use_fast_paths: bool = opt(
        True, "bool", read_when=_LLQR, inert=True,
        doc="Accepted for the reference's configs and inert here (it never splits cells): the "
            "reference's exact shortcut for stages with zero Hessian blocks; our one global "
            "curvature product never forms those blocks, so there is nothing to skip.")
    measure_asymmetry: bool = opt(False, "bool", read_when=_LLQR,
                                  doc="Log, at every fit, how far P's square block matrices are from symmetric "
                                      "(Frobenius and spectral skew ratios, per layer and averaged).")
    precond_lr_scheduler: dict = sched("constant", "Multiplier on the preconditioner solver's lr.", read_when=_LLQR)
    ema_scheduler: dict = sched("constant", "Schedule of ema_decay.", read_when=_LLQR)
    precond_update_scheduler: dict = sched("constant", "Schedule of update_preconditioner_every.", read_when=_LLQR)


@dataclass(frozen=True)
class SamFields:
    # --- SAM --------------------------------------------------------------------------
    sam_mode: str = opt(None, "str", choices=(None, *SAM_MODES), nullable=True,
                        doc="Sharpness-aware minimisation mode (docs/algorithms.md); null = off.")
    perturbation_rho: float = opt(0.1, "float", minimum=0.0, read_when=_SAM,
                                  doc="ρ, the perturbation radius, shaped by perturbation_rho_scheduler.")
    perturb_mode: str = opt("ema_grad", "str", choices=PERTURB_MODES,
                            read_when=_SAM,
                            doc="D(v)'s transform: v, P·v or unit(P·v) (asam and fisher_sam need ema_grad).")
    norm_mode: str = opt(
        "euclidean", "str", choices=NORM_MODES,
        read_when={"sam_mode": BASE_SAM_MODES},
        doc="D(v)'s normalisation: global or per top-level group, Euclidean or P^-1 norm.")
    gbar_beta: float = opt(0.9, "float", minimum=0.0, maximum=1.0, read_when={"sam_mode": ("base_fsam", "past_fsam")},
                           doc="β of the gbar moving average of base_fsam and past_fsam.")
    gbar_eps: float = opt(1e-12, "float", gt=0, read_when={"sam_mode": BASE_SAM_MODES},
                          doc="e in D(v)'s normalisation T/√(⟨·,T⟩ + e).")
    asam_eta: float = opt(0.01, "float", minimum=0.0, read_when={"sam_mode": ("asam",)},
                          doc="η of asam's scale s = |w| + η.")
    fisher_sam_eta: float = opt(0.1, "float", gt=0, read_when={"sam_mode": ("fisher_sam",)},
                                doc="η of fisher_sam's u = g / (g² + η).")
    start_sam_after_step: int = opt(None, "int", minimum=0, nullable=True, read_when=_SAM,
                                    doc="Plain steps before this loop step, SAM steps from it; null or 0 = from "
                                        "the start.")
    sam_use_preconditioner_on_update: bool = opt(
        True, "bool", read_when={"sam_mode": (*BASE_SAM_MODES, "asam")},
        doc="The outer update applies P (the configured LLQR update) to g_p; false: the main optimizer alone. "
            "true needs use_preconditioner=true.")
    sam_research_base_vector_source: str = opt(
        "current_gradient", "str", choices=("current_gradient", "main_optimizer_momentum", "random_direction"),
        read_when={"sam_mode": BASE_SAM_MODES},
        doc="The reference's research ablation of the vector D(v) perturbs along; only current_gradient is "
            "implemented (the others are refused with a SAM mode).")
    sam_research_perturb_sign: str = opt(
        "ascent", "str", choices=("ascent", "descent"), read_when={"sam_mode": BASE_SAM_MODES},
        doc="The reference's research ablation: perturb up (ascent) or down the gradient; only ascent is "
            "implemented (descent is refused with a SAM mode).")
    perturbation_rho_scheduler: dict = sched("constant", "Schedule of perturbation_rho.", read_when=_SAM)
