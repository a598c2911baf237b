"""LLQR preconditioning: structures, the LQR problem and fit, the optax transformation, exact references."""

from . import sam
from .fit import make_llqr_fit
from .lqr import Problem, fit_blocks, lqr_cost, make_problem, precond_cost_and_grad
from .singd import refresh as refresh_kronecker
from .structures import FAMILIES, apply_blocks, block_skews, block_stats, init_blocks
from .transform import LLQRState, get_blocks, precondition, scale_by_llqr, set_blocks

__all__ = [
    "FAMILIES",
    "LLQRState",
    "Problem",
    "apply_blocks",
    "block_skews",
    "block_stats",
    "fit_blocks",
    "get_blocks",
    "init_blocks",
    "lqr_cost",
    "make_llqr_fit",
    "make_problem",
    "precond_cost_and_grad",
    "precondition",
    "refresh_kronecker",
    "sam",
    "scale_by_llqr",
    "set_blocks",
]
