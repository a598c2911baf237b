"""SINGD (structured inverse-free natural gradient), its IKFAC special case and a KFAC baseline,
as optax transformations in the style of ``scale_by_llqr``.

``scale_by_singd`` / ``scale_by_kfac`` only precondition: they map each layer's gradient to
K Kᵀ ∇W C Cᵀ (SINGD, IKFAC) or A⁻¹ ∇W G⁻¹ (KFAC) and pass every other leaf through. The factories
``singd``, ``ikfac`` and ``kfac`` chain them with optax's stock coupled weight decay, heavy-ball
momentum (``optax.trace``) and learning rate, which is the paper's
μ ← α2 μ + (P∇W + γW), W ← W − β2 μ.

The preconditioner state is refreshed outside ``update``, like LLQR's blocks: every T steps the
runner captures the layers' Kronecker factors (``llqr.optim.capture.kronecker_factors``) and calls
``refresh(opt_state, factors)``, which finds the SINGD/KFAC state anywhere in a chain's state and
advances it. The states carry their settings as static (non-array) fields, so ``refresh`` needs
nothing else.

Layers. A leaf named ``kernel`` of rank >= 2 is a layer, viewed as a (d_in, d_out) matrix exactly
like ``structures.as_matrix_shape`` (Dense (in, out), Conv (kh*kw*cin, cout)); a sibling ``bias``
of shape (d_out,) is its last row, so the preconditioned matrix is (d_in+1, d_out) and the factor
A from the capture carries the matching ones column. A layer never refreshed keeps K = C = I.

Notation, in our (d_in, d_out) view (the paper's W is (d_out, d_in): its K sits on the input side
and C on the output side, so KKᵀ ≈ A⁻¹ is d_in x d_in and CCᵀ ≈ G⁻¹ is d_out x d_out):

    H_K = Π̂(Kᵀ A K),  H_C = Π̂(Cᵀ G C)
    m_K ← α1 m_K + ½[(tr H_C / d_o) H_K + λ (tr CᵀC / d_o) Π̂(KᵀK) − I]     (m_C symmetric)
    K ← K (I − β1 m_K),  C ← C (I − β1 m_C)

IKFAC (``kfac_like=True``): α1 = 0 and no trace couplings, m_K = ½(H_K + λ Π̂(KᵀK) − I), whose
fixed point is K Kᵀ = (A + λI)⁻¹ (and C Cᵀ = (G + λI)⁻¹).

Π̂ is SINGD's subspace map: the orthogonal projection onto the structure's pattern (``project``:
keep the pattern's entries; Toeplitz: average each diagonal), except that entries whose mirror
position is outside the pattern (the strips of ``hierarchical``, the off-diagonals of the
triangular Toeplitz) are doubled. Then m + mᵀ equals the dense symmetric update projected onto
the symmetrised pattern, i.e. the structured K moves like the dense one to first order; the fixed
points do not depend on the doubling. The structures are in ``llqr.optim.singd_structures``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from .singd_structures import STRUCTURES, Structure, make_structure
from .structures import as_matrix_shape, path_names


def _tmap(f, *trees):
    return jax.tree_util.tree_map(f, *trees)


# ---------------------------------------------------------------------------------------------
# the per-layer preconditioner update (pure; the transformations below only route leaves to it)
# ---------------------------------------------------------------------------------------------


class SINGDLayer(NamedTuple):
    K: Any  # input side, d_in (+1 with bias)
    C: Any  # output side, d_out
    mK: Any
    mC: Any


def _comb(a, s, b, t):
    """a*s + b*t on storages (a, b scalars)."""
    return _tmap(lambda x, y: a * x + b * y, s, t)


def update_preconditioner(sk: Structure, sc: Structure, layer: SINGDLayer, A, G, *, damping: float,
                          alpha1: float, lr_cov: float, kfac_like: bool = False,
                          normalize_lr_cov: bool = False) -> SINGDLayer:
    """One SINGD (or IKFAC) step of K, C, m_K, m_C on the factors A (d_in²) and G (d_out²)."""
    K, C = layer.K, layer.C
    dtype = jax.tree_util.tree_leaves(K)[0].dtype
    A, G = A.astype(dtype), G.astype(dtype)
    di, do = sk.n, sc.n
    HK, HC = sk.sandwich(K, A), sc.sandwich(C, G)
    KK, CC = sk.sandwich(K), sc.sandwich(C)
    IK, IC = sk.eye(dtype), sc.eye(dtype)
    lam = jnp.asarray(damping, dtype)
    if kfac_like:
        gK = _comb(0.5, _comb(1.0, HK, lam, KK), -0.5, IK)
        gC = _comb(0.5, _comb(1.0, HC, lam, CC), -0.5, IC)
        mK, mC = gK, gC
    else:
        cK = sc.trace(HC) / do  # the trace couplings use the other factor's traces
        cC = sk.trace(HK) / di
        dK = lam * sc.sq_norm(C) / do
        dC = lam * sk.sq_norm(K) / di
        gK = _comb(0.5, _comb(cK, HK, dK, KK), -0.5, IK)
        gC = _comb(0.5, _comb(cC, HC, dC, CC), -0.5, IC)
        mK = _comb(jnp.asarray(alpha1, dtype), layer.mK, 1.0, gK)
        mC = _comb(jnp.asarray(alpha1, dtype), layer.mC, 1.0, gC)

    def step(struct, M, m):
        beta = jnp.asarray(lr_cov, dtype)
        if normalize_lr_cov:
            beta = beta / jnp.maximum(1.0, struct.max_abs(m)).astype(dtype)
        return struct.mul(M, _comb(1.0, struct.eye(dtype), -beta, m))

    return SINGDLayer(step(sk, K, mK), step(sc, C, mC), mK, mC)


def precondition_layer(sk: Structure, sc: Structure, layer: SINGDLayer, X):
    """K Kᵀ X C Cᵀ for the (d_in, d_out) matrix X."""
    Y = sk.matmul(layer.K, sk.tmatmul(layer.K, X))
    return sc.matmul(layer.C, sc.tmatmul(layer.C, Y.T)).T


# ---------------------------------------------------------------------------------------------
# leaf routing shared by SINGD and KFAC
# ---------------------------------------------------------------------------------------------


class _Layer(NamedTuple):
    kernel: tuple  # path names
    bias: tuple | None
    d_in: int  # including the bias row
    d_out: int


def _flat(tree) -> dict[tuple, Any]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {tuple(path_names(p)): x for p, x in leaves}


def _layers(params) -> dict[str, _Layer]:
    flat = _flat(params)
    out = {}
    for path, leaf in flat.items():
        if path and path[-1] == "kernel" and leaf.ndim >= 2:
            di, do = as_matrix_shape(leaf.shape, path)
            bpath = path[:-1] + ("bias",)
            has_bias = bpath in flat and tuple(flat[bpath].shape) == (do,)
            out["/".join(path)] = _Layer(path, bpath if has_bias else None, di + has_bias, do)
    return out


def _key(k) -> str:
    return k if isinstance(k, str) else "/".join(str(p) for p in k)


def _layer_factors(layers: dict[str, _Layer], factors) -> dict[str, tuple]:
    """The given factors keyed like the state, shape-checked; layers without factors are left out."""
    out = {}
    for k, (A, G) in ((_key(k), v) for k, v in factors.items()):
        if k not in layers:
            continue  # a captured layer that this transformation does not precondition
        lay = layers[k]
        if A.shape != (lay.d_in, lay.d_in) or G.shape != (lay.d_out, lay.d_out):
            raise ValueError(f"factors for {k}: A {A.shape}, G {G.shape}; expected ({lay.d_in},)*2 and "
                             f"({lay.d_out},)*2 (a bias needs the ones column in A)")
        out[k] = (A, G)
    return out


def _matrix_grads(layers: dict[str, _Layer], flat: dict) -> dict[str, jnp.ndarray]:
    out = {}
    for k, lay in layers.items():
        g = flat[lay.kernel]
        X = g.reshape(lay.d_in - (lay.bias is not None), lay.d_out)
        if lay.bias is not None:
            X = jnp.concatenate([X, flat[lay.bias][None, :].astype(X.dtype)], axis=0)
        out[k] = X
    return out


def _unroute(layers: dict[str, _Layer], flat: dict, pre: dict[str, jnp.ndarray], updates):
    """``updates`` with every layer's leaves replaced by the rows of its preconditioned matrix."""
    new = dict(flat)
    for k, lay in layers.items():
        P = pre[k]
        kernel = flat[lay.kernel]
        if lay.bias is not None:
            new[lay.bias] = P[-1].astype(flat[lay.bias].dtype)
            P = P[:-1]
        new[lay.kernel] = P.reshape(kernel.shape).astype(kernel.dtype)
    return jax.tree_util.tree_map_with_path(lambda p, _: new[tuple(path_names(p))], updates)


def state_bytes(state) -> int:
    """Total bytes of the arrays in an optimizer state (structured storage, momenta, counters)."""
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(state)
                   if hasattr(x, "dtype")))


def _precondition_tree(updates, layer_fn):
    """``updates`` with every layer's (d_in[+1], d_out) gradient matrix X replaced by layer_fn(k, X)."""
    lays = _layers(updates)
    flat = _flat(updates)
    pre = {k: layer_fn(k, X) for k, X in _matrix_grads(lays, flat).items()}
    return _unroute(lays, flat, pre, updates)


def momentum_sgd(transformation, learning_rate, *, momentum: float, weight_decay: float):
    """``transformation`` then optax's coupled weight decay, heavy-ball momentum and learning rate."""
    parts = [transformation]
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts += [optax.trace(decay=momentum, nesterov=False), optax.scale_by_learning_rate(learning_rate)]
    return optax.chain(*parts)


# ---------------------------------------------------------------------------------------------
# SINGD / IKFAC
# ---------------------------------------------------------------------------------------------


class SINGDSpec(NamedTuple):
    structure: str
    damping: float
    alpha1: float
    lr_cov: float
    kfac_like: bool
    normalize_lr_cov: bool
    block_size: int
    k1: int
    k2: int

    def structs(self, lay: _Layer) -> tuple[Structure, Structure]:
        opts = dict(block_size=self.block_size, k1=self.k1, k2=self.k2)
        return make_structure(self.structure, lay.d_in, **opts), make_structure(self.structure, lay.d_out, **opts)


@struct.dataclass
class ScaleBySINGDState:
    layers: dict  # {"path/to/kernel": SINGDLayer}
    spec: SINGDSpec = struct.field(pytree_node=False)

    def refresh(self, layer_paths: dict, factors) -> ScaleBySINGDState:
        out = dict(self.layers)
        for k, (A, G) in _layer_factors(layer_paths, factors).items():
            s = self.spec
            out[k] = update_preconditioner(*s.structs(layer_paths[k]), self.layers[k], A, G, damping=s.damping,
                                           alpha1=s.alpha1, lr_cov=s.lr_cov, kfac_like=s.kfac_like,
                                           normalize_lr_cov=s.normalize_lr_cov)
        return self.replace(layers=out)


def scale_by_singd(*, damping: float = 1e-3, alpha1: float = 0.5, lr_cov: float = 1e-2, structure: str = "dense",
                   kfac_like: bool = False, normalize_lr_cov: bool = False, block_size: int = 30, k1: int = 15,
                   k2: int = 15) -> optax.GradientTransformation:
    """Each layer's gradient X to K Kᵀ X C Cᵀ (module docstring): λ = damping, α1 = alpha1,
    β1 = lr_cov; ``kfac_like`` gives IKFAC (α1 ignored). K, C and their momenta are kept in each
    kernel's dtype (bfloat16-safe: only matmuls)."""
    if structure not in STRUCTURES:
        raise ValueError(f"unknown SINGD structure {structure!r}; expected one of {STRUCTURES}")
    spec = SINGDSpec(structure, damping, alpha1, lr_cov, kfac_like, normalize_lr_cov, block_size, k1, k2)

    def init(params):
        flat = _flat(params)
        layers = {}
        for k, lay in _layers(params).items():
            sk, sc = spec.structs(lay)
            dtype = flat[lay.kernel].dtype
            IK, IC = sk.eye(dtype), sc.eye(dtype)
            layers[k] = SINGDLayer(IK, IC, _tmap(jnp.zeros_like, IK), _tmap(jnp.zeros_like, IC))
        return ScaleBySINGDState(layers, spec)

    def update(updates, state, params=None):
        del params
        lays = _layers(updates)
        return _precondition_tree(updates, lambda k, X: precondition_layer(*spec.structs(lays[k]), state.layers[k],
                                                                          X)), state

    return optax.GradientTransformation(init, update)


def singd(learning_rate: float | Callable = 1e-3, *, momentum: float = 0.9, weight_decay: float = 0.0,
          **kwargs) -> optax.GradientTransformation:
    """SINGD with β2 = learning_rate, α2 = momentum, γ = weight_decay (``scale_by_singd`` for the rest)."""
    return momentum_sgd(scale_by_singd(**kwargs), learning_rate, momentum=momentum, weight_decay=weight_decay)


def ikfac(learning_rate: float | Callable = 1e-3, **kwargs) -> optax.GradientTransformation:
    """IKFAC: ``singd(kfac_like=True)`` (dense structure unless given)."""
    return singd(learning_rate, kfac_like=True, **kwargs)


# ---------------------------------------------------------------------------------------------
# KFAC baseline
# ---------------------------------------------------------------------------------------------


def gauss_jordan_inverse(M):
    """M⁻¹ by in-place Gauss-Jordan elimination without pivoting, every operation in M's dtype.

    LAPACK and cuSOLVER have no bfloat16 factorisations (``jnp.linalg.inv`` and ``cho_factor``
    refuse bf16), so this is how KFAC inverts a factor in bf16; a damped factor is symmetric
    positive definite, which needs no pivoting in exact arithmetic. A vanishing or non-finite pivot
    (what bf16 rounding of an ill-conditioned factor produces) yields inf/NaN entries, never an
    exception: the run's loss turns non-finite and the loop records ``diverged``."""
    n = M.shape[0]
    idx = jnp.arange(n)

    def sweep(k, A):
        p = 1 / A[k, k]
        row = jnp.where(idx == k, p, A[k] * p)  # a_kj <- a_kj / a_kk, a_kk <- 1 / a_kk
        col = jnp.where(idx == k, 0, A[:, k])
        A = A - jnp.outer(col, row)  # a_ij <- a_ij - a_ik a_kj (i != k)
        A = A.at[k].set(row)
        return A.at[:, k].set(jnp.where(idx == k, p, -col * p))  # a_ik <- -a_ik / a_kk

    return jax.lax.fori_loop(0, n, sweep, M)


@struct.dataclass
class ScaleByKFACState:
    refreshes: jnp.ndarray  # how many factor refreshes so far (the first one replaces the EMA)
    factors: dict  # {"path/to/kernel": (A, G)} running averages, in ``dtype``
    inverses: dict  # {"path/to/kernel": (A_inv, G_inv)}, in ``dtype``
    ema_decay: float = struct.field(pytree_node=False)
    eps: float = struct.field(pytree_node=False)  # the damping added to each factor before inversion
    dtype: Any = struct.field(pytree_node=False, default=jnp.float32)  # factors' and inverses' dtype

    def refresh(self, layer_paths: dict, factors) -> ScaleByKFACState:
        new = _layer_factors(layer_paths, factors)
        if not new:
            return self
        decay = jnp.where(self.refreshes == 0, 0.0, self.ema_decay).astype(self.dtype)
        fs, inv = dict(self.factors), dict(self.inverses)
        for k, (A, G) in new.items():
            A0, G0 = fs[k]
            A = decay * A0 + (1 - decay) * A.astype(self.dtype)
            G = decay * G0 + (1 - decay) * G.astype(self.dtype)
            fs[k], inv[k] = (A, G), (self._inverse(A), self._inverse(G))
        # committed through a select (its condition always holds): the recorded KFAC results were
        # computed that way, and XLA:CPU compiles the moving average 1 ulp differently without it
        keep = self.refreshes >= 0
        fs, inv, n = _tmap(lambda a, b: jnp.where(keep, a, b), (fs, inv, self.refreshes + 1),
                           (dict(self.factors), dict(self.inverses), self.refreshes))
        return self.replace(refreshes=n, factors=fs, inverses=inv)

    def _inverse(self, M):
        if M.dtype != jnp.float32:  # no low-precision Cholesky: eliminate in the factor's own dtype
            return gauss_jordan_inverse(M + jnp.asarray(self.eps, M.dtype) * jnp.eye(M.shape[0], dtype=M.dtype))
        L = jax.scipy.linalg.cho_factor(M + self.eps * jnp.eye(M.shape[0], dtype=M.dtype), lower=True)
        return jax.scipy.linalg.cho_solve(L, jnp.eye(M.shape[0], dtype=M.dtype))


def scale_by_kfac(*, damping: float = 1e-3, ema_decay: float = 0.95, damping_mode: str = "sqrt",
                  dtype=jnp.float32) -> optax.GradientTransformation:
    """Each layer's gradient X to A⁻¹ X G⁻¹ with EMA factors, inverted at every refresh.

    ``damping_mode="sqrt"`` (default) inverts (A + √λ I) and (G + √λ I): the product's damping is
    ≈ λ plus √λ-weighted cross terms, the usual split of one λ across two factors (without the π
    rescaling). ``"plain"`` inverts (A + λI) and (G + λI): IKFAC's fixed point, so with
    ``ema_decay=0`` the two directions coincide. The first refresh takes the factors as they come;
    later ones average with ``ema_decay``.

    ``dtype`` is where the factors are averaged and inverted. float32 (default): Cholesky solves.
    bfloat16: the moving averages and a Gauss-Jordan inverse in bf16 (``gauss_jordan_inverse``), as
    a KFAC whose factors live in the training precision computes them; this is the baseline that is
    *not* low-precision-safe, and its NaNs end the run as diverged. Inverses are cast to the
    gradient dtype when applied.
    """
    if damping_mode not in ("sqrt", "plain"):
        raise ValueError(f"damping_mode must be 'sqrt' or 'plain', got {damping_mode!r}")
    eps = float(np.sqrt(damping)) if damping_mode == "sqrt" else float(damping)
    dtype = jnp.dtype(dtype)

    def init(params):
        fs = {}
        for k, lay in _layers(params).items():
            fs[k] = (jnp.eye(lay.d_in, dtype=dtype), jnp.eye(lay.d_out, dtype=dtype))
        return ScaleByKFACState(jnp.zeros([], jnp.int32), fs, dict(fs), ema_decay, eps, dtype)

    def update(updates, state, params=None):
        del params

        def layer(k, X):
            Ai, Gi = state.inverses[k]
            return (Ai.astype(X.dtype) @ X) @ Gi.astype(X.dtype)

        return _precondition_tree(updates, layer), state

    return optax.GradientTransformation(init, update)


def kfac(learning_rate: float | Callable = 1e-3, *, momentum: float = 0.9, weight_decay: float = 0.0,
         **kwargs) -> optax.GradientTransformation:
    """KFAC (``scale_by_kfac``) with optax's weight decay, momentum and learning rate."""
    return momentum_sgd(scale_by_kfac(**kwargs), learning_rate, momentum=momentum, weight_decay=weight_decay)


# ---------------------------------------------------------------------------------------------
# the refresh, for any chain that contains SINGD or KFAC
# ---------------------------------------------------------------------------------------------


def _is_kronecker(x) -> bool:
    return isinstance(x, (ScaleBySINGDState, ScaleByKFACState))


def refresh(opt_state, factors, params):
    """``opt_state`` with every SINGD/KFAC state in it refreshed on ``factors`` ({kernel path:
    (A, G)} from ``capture.kronecker_factors``, taken at ``params``)."""
    layers = _layers(params)
    return jax.tree_util.tree_map(lambda s: s.refresh(layers, factors) if _is_kronecker(s) else s, opt_state,
                                  is_leaf=_is_kronecker)
