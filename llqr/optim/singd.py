"""SINGD (structured inverse-free natural gradient), its IKFAC special case and a KFAC baseline.

All three are ``optax.GradientTransformationExtraArgs`` that return the final parameter update
(learning rate, momentum and weight decay included), so they are used alone, not chained before SGD.

How a runner drives them: every ``update_every`` (T) steps, compute
``llqr.optim.capture.kronecker_factors(apply_fn, params, x, y, loss_fn)`` on the current batch and
call ``tx.update(grads, state, params, factors=factors)``; on the other steps pass
``factors=None`` (or leave it out). Factors given at a step with ``state.count % T != 0`` are
ignored (computed, then discarded by a select: inside ``lax.cond`` XLA:CPU ran the Cholesky
solves ~10x slower), so always passing them is correct, only wasteful.

Layers. A leaf named ``kernel`` of rank >= 2 is a layer, viewed as a (d_in, d_out) matrix exactly
like ``structures.as_matrix_shape`` (Dense (in, out), Conv (kh*kw*cin, cout)); a sibling ``bias``
of shape (d_out,) is its last row, so the preconditioned matrix is (d_in+1, d_out) and the factor
A from the capture carries the matching ones column. A layer with no factors ever passed keeps
K = C = I. Every other leaf (BatchNorm scales, embeddings, unattached biases) gets plain momentum
SGD with the same learning rate, momentum and weight decay.

Notation, in our (d_in, d_out) view (the paper's W is (d_out, d_in): its K sits on the input side
and C on the output side, so KKᵀ ≈ A⁻¹ is d_in x d_in and CCᵀ ≈ G⁻¹ is d_out x d_out):

    H_K = Π̂(Kᵀ A K),  H_C = Π̂(Cᵀ G C)
    m_K ← α1 m_K + ½[(tr H_C / d_o) H_K + λ (tr CᵀC / d_o) Π̂(KᵀK) − I]     (m_C symmetric)
    K ← K (I − β1 m_K),  C ← C (I − β1 m_C)
    μ ← α2 μ + (K Kᵀ ∇W C Cᵀ + γ W),  W ← W − β2 μ

IKFAC (``kfac_like=True``): α1 = 0 and no trace couplings, m_K = ½(H_K + λ Π̂(KᵀK) − I), whose
fixed point is K Kᵀ = (A + λI)⁻¹ (and C Cᵀ = (G + λI)⁻¹).

Π̂ is SINGD's subspace map: the orthogonal projection onto the structure's pattern (``project``:
keep the pattern's entries; Toeplitz: average each diagonal), except that entries whose mirror
position is outside the pattern (the strips of ``hierarchical``, the off-diagonals of the
triangular Toeplitz) are doubled. Then m + mᵀ equals the dense symmetric update projected onto
the symmetrised pattern, i.e. the structured K moves like the dense one to first order; the fixed
points do not depend on the doubling.

Every structure is a group under multiplication, so K (I − β1 m_K) stays in it; the storage is
compact for all of them (hierarchical: its five blocks), while the generic products go through the
dense view and cut the result back (exact, the pattern being closed).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .structures import as_matrix_shape, path_names

STRUCTURES = ("dense", "diagonal", "block_diagonal", "hierarchical", "tril_toeplitz", "triu_toeplitz")


def _select(keep, new, old):
    """``new`` where ``keep`` (a traced bool) else ``old``, leaf by leaf."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new, old)


def _tmap(f, *trees):
    return jax.tree_util.tree_map(f, *trees)


# ---------------------------------------------------------------------------------------------
# structured square matrices: storage is a pytree of arrays; the object only knows n and options
# ---------------------------------------------------------------------------------------------


class Structure:
    """An n x n matrix class closed under products; methods act on its compact storage."""

    name = "base"

    def __init__(self, n: int):
        self.n = int(n)

    # --- to implement
    def to_dense(self, s):
        raise NotImplementedError

    def extract(self, D):
        """Storage of a dense matrix that already has the pattern."""
        raise NotImplementedError

    def project(self, X):
        """Orthogonal projection of a square matrix onto the pattern (idempotent)."""
        return self.extract(X)

    # --- generic (overridden where cheaper)
    def project_hat(self, X):
        """SINGD's Π̂ for a symmetric X (module docstring): ``project`` for symmetric patterns."""
        return self.project(X)

    def eye(self, dtype=jnp.float32):
        return self.extract(jnp.eye(self.n, dtype=dtype))

    def mul(self, s, t):
        return self.extract(self.to_dense(s) @ self.to_dense(t))

    def matmul(self, s, X):
        """K @ X for a dense X with n rows."""
        return self.to_dense(s) @ X

    def tmatmul(self, s, X):
        """Kᵀ @ X."""
        return self.to_dense(s).T @ X

    def sandwich(self, s, A=None):
        """Π̂(Kᵀ A K); A = None means the identity (Π̂(KᵀK))."""
        K = self.to_dense(s)
        return self.project_hat(K.T @ K if A is None else K.T @ (A @ K))

    def trace(self, s):
        return jnp.trace(self.to_dense(s))

    def sq_norm(self, s):
        """tr(KᵀK)."""
        return jnp.sum(jnp.square(self.to_dense(s)))

    def max_abs(self, s):
        return jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in jax.tree_util.tree_leaves(s) if x.size]))

    def mask(self) -> np.ndarray:
        """Boolean n x n pattern (tests, docs)."""
        probe = np.arange(1, self.n * self.n + 1, dtype=np.float64).reshape(self.n, self.n)
        return np.asarray(self.to_dense(self.project(jnp.asarray(probe, jnp.float32)))) != 0


class Dense(Structure):
    name = "dense"

    def to_dense(self, s):
        return s

    def extract(self, D):
        return D

    def mul(self, s, t):
        return s @ t

    def matmul(self, s, X):
        return s @ X

    def tmatmul(self, s, X):
        return s.T @ X


class Diagonal(Structure):
    name = "diagonal"

    def to_dense(self, s):
        return jnp.diag(s)

    def extract(self, D):
        return jnp.diagonal(D)

    def eye(self, dtype=jnp.float32):
        return jnp.ones((self.n,), dtype)

    def mul(self, s, t):
        return s * t

    def matmul(self, s, X):
        return s[:, None] * X

    tmatmul = matmul

    def sandwich(self, s, A=None):
        return s * s if A is None else s * s * jnp.diagonal(A)

    def trace(self, s):
        return jnp.sum(s)

    def sq_norm(self, s):
        return jnp.sum(s * s)


class BlockDiagonal(Structure):
    """``n // b`` blocks of size b, then one of size ``n % b`` (stored separately, maybe empty)."""

    name = "block_diagonal"

    def __init__(self, n: int, block_size: int = 30):
        super().__init__(n)
        self.b = int(block_size)
        self.nb, self.r = divmod(self.n, self.b)

    def _split(self, X):
        m = self.nb * self.b
        return X[:m].reshape((self.nb, self.b) + X.shape[1:]), X[m:]

    def to_dense(self, s):
        blocks, last = s["blocks"], s["last"]
        m = self.nb * self.b
        main = jnp.einsum("ij,iab->iajb", jnp.eye(self.nb, dtype=blocks.dtype), blocks).reshape(m, m)
        return jnp.zeros((self.n, self.n), blocks.dtype).at[:m, :m].set(main).at[m:, m:].set(last)

    def extract(self, D):
        m = self.nb * self.b
        main = D[:m, :m].reshape(self.nb, self.b, self.nb, self.b)
        return {"blocks": jnp.einsum("iaib->iab", main), "last": D[m:, m:]}

    def mul(self, s, t):
        return {"blocks": jnp.einsum("iab,ibc->iac", s["blocks"], t["blocks"]), "last": s["last"] @ t["last"]}

    def _apply(self, blocks, last, X):
        top, bottom = self._split(X)
        top = jnp.einsum("iab,ib...->ia...", blocks, top).reshape((self.nb * self.b,) + X.shape[1:])
        return jnp.concatenate([top, last @ bottom], axis=0)

    def matmul(self, s, X):
        return self._apply(s["blocks"], s["last"], X)

    def tmatmul(self, s, X):
        return self._apply(jnp.swapaxes(s["blocks"], 1, 2), s["last"].T, X)

    def sandwich(self, s, A=None):
        blocks, last = s["blocks"], s["last"]
        if A is None:
            return {"blocks": jnp.einsum("iba,ibc->iac", blocks, blocks), "last": last.T @ last}
        Ab = self.extract(A)
        return {"blocks": jnp.einsum("iba,ibc,icd->iad", blocks, Ab["blocks"], blocks),
                "last": last.T @ Ab["last"] @ last}

    def trace(self, s):
        return jnp.trace(s["blocks"], axis1=1, axis2=2).sum() + jnp.trace(s["last"])

    def sq_norm(self, s):
        return jnp.sum(jnp.square(s["blocks"])) + jnp.sum(jnp.square(s["last"]))


class Hierarchical(Structure):
    """SINGD's hierarchical matrix ``[[A, B], [0, C, 0], [0, D, E]]``: A (k1 x k1) and E (k2 x k2)
    dense, C diagonal, B the dense top strip (k1 x (n-k1)), D the dense strip under C (k2 x m).
    A small n fills A first, then E (and B), then C. Products go through the dense view."""

    name = "hierarchical"

    def __init__(self, n: int, k1: int = 15, k2: int = 15):
        super().__init__(n)
        if self.n <= k1:
            self.k1, self.m, self.k2 = self.n, 0, 0
        elif self.n <= k1 + k2:
            self.k1, self.m, self.k2 = k1, 0, self.n - k1
        else:
            self.k1, self.m, self.k2 = k1, self.n - k1 - k2, k2

    def to_dense(self, s):
        k1, m = self.k1, self.m
        idx = jnp.arange(k1, k1 + m)
        D = jnp.zeros((self.n, self.n), s["A"].dtype)
        D = D.at[:k1, :k1].set(s["A"]).at[:k1, k1:].set(s["B"]).at[idx, idx].set(s["C"])
        return D.at[k1 + m:, k1:k1 + m].set(s["D"]).at[k1 + m:, k1 + m:].set(s["E"])

    def extract(self, X):
        k1, m = self.k1, self.m
        return {"A": X[:k1, :k1], "B": X[:k1, k1:], "C": jnp.diagonal(X)[k1:k1 + m],
                "D": X[k1 + m:, k1:k1 + m], "E": X[k1 + m:, k1 + m:]}

    def project_hat(self, X):
        s = self.extract(X)
        return {**s, "B": 2 * s["B"], "D": 2 * s["D"]}

    def trace(self, s):
        return jnp.trace(s["A"]) + jnp.sum(s["C"]) + jnp.trace(s["E"])

    def sq_norm(self, s):
        return sum(jnp.sum(jnp.square(x)) for x in s.values())


class TriangularToeplitz(Structure):
    """Lower (``upper=False``) or upper triangular Toeplitz, stored as its n diagonal values t_k
    (t_0 the main diagonal, t_k the k-th diagonal below/above). Products are truncated
    convolutions of the t vectors (such matrices commute)."""

    def __init__(self, n: int, upper: bool = False):
        super().__init__(n)
        self.upper = upper
        self.name = "triu_toeplitz" if upper else "tril_toeplitz"
        i, j = np.indices((self.n, self.n))
        self._offset = (j - i) if upper else (i - j)  # which diagonal each entry is on

    def to_dense(self, s):
        off = self._offset
        return jnp.where(off >= 0, s[np.clip(off, 0, None)], jnp.zeros((), s.dtype))

    def extract(self, D):
        return D[0, :] if self.upper else D[:, 0]

    def project(self, X):
        off = self._offset
        sums = jax.ops.segment_sum(jnp.where(off >= 0, X, 0).ravel(), np.clip(off, 0, None).ravel(),
                                   num_segments=self.n)
        return sums / jnp.asarray(self.n - np.arange(self.n), X.dtype)

    def project_hat(self, X):
        t = self.project(X)
        return t.at[1:].multiply(2)

    def eye(self, dtype=jnp.float32):
        return jnp.zeros((self.n,), dtype).at[0].set(1)

    def mul(self, s, t):
        return jnp.convolve(s, t)[: self.n]

    def trace(self, s):
        return self.n * s[0]

    def sq_norm(self, s):
        return jnp.sum(jnp.square(s) * jnp.asarray(self.n - np.arange(self.n), s.dtype))


def make_structure(name: str, n: int, *, block_size: int = 30, k1: int = 15, k2: int = 15) -> Structure:
    if name == "dense":
        return Dense(n)
    if name == "diagonal":
        return Diagonal(n)
    if name == "block_diagonal":
        return BlockDiagonal(n, block_size)
    if name == "hierarchical":
        return Hierarchical(n, k1, k2)
    if name in ("tril_toeplitz", "triu_toeplitz"):
        return TriangularToeplitz(n, upper=name == "triu_toeplitz")
    raise ValueError(f"unknown SINGD structure {name!r}; expected one of {STRUCTURES}")


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


def _momentum_step(pre, mu, params, lr, momentum, weight_decay):
    if weight_decay:
        if params is None:
            raise ValueError("weight_decay needs params in update()")
        pre = _tmap(lambda u, w: u + weight_decay * w.astype(u.dtype), pre, params)
    mu = _tmap(lambda m, u: (momentum * m + u).astype(m.dtype), mu, pre)
    return _tmap(lambda m: (-lr * m).astype(m.dtype), mu), mu


def _lr(learning_rate, count):
    return learning_rate(count) if callable(learning_rate) else learning_rate


def state_bytes(state) -> int:
    """Total bytes of the arrays in an optimizer state (structured storage, momenta, counters)."""
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(state)
                   if hasattr(x, "dtype")))


# ---------------------------------------------------------------------------------------------
# SINGD / IKFAC
# ---------------------------------------------------------------------------------------------


class SINGDState(NamedTuple):
    count: jnp.ndarray
    layers: dict  # {"path/to/kernel": SINGDLayer}
    mu: Any  # parameter momentum, like params


def singd(learning_rate: float | Callable = 1e-3, *, momentum: float = 0.9, damping: float = 1e-3,
          alpha1: float = 0.5, weight_decay: float = 0.0, update_every: int = 10, lr_cov: float = 1e-2,
          structure: str = "dense", kfac_like: bool = False, normalize_lr_cov: bool = False,
          block_size: int = 30, k1: int = 15, k2: int = 15) -> optax.GradientTransformationExtraArgs:
    """SINGD (module docstring): β2 = learning_rate, α2 = momentum, λ = damping, α1 = alpha1,
    γ = weight_decay, T = update_every, β1 = lr_cov. ``kfac_like`` gives IKFAC (α1 is ignored).
    K, C and the momenta are kept in each kernel's dtype (bfloat16-safe: only matmuls)."""
    if structure not in STRUCTURES:
        raise ValueError(f"unknown SINGD structure {structure!r}; expected one of {STRUCTURES}")
    opts = dict(block_size=block_size, k1=k1, k2=k2)

    def structs(lay: _Layer):
        return make_structure(structure, lay.d_in, **opts), make_structure(structure, lay.d_out, **opts)

    def init(params):
        flat = _flat(params)
        layers = {}
        for k, lay in _layers(params).items():
            sk, sc = structs(lay)
            dtype = flat[lay.kernel].dtype
            IK, IC = sk.eye(dtype), sc.eye(dtype)
            layers[k] = SINGDLayer(IK, IC, _tmap(jnp.zeros_like, IK), _tmap(jnp.zeros_like, IC))
        return SINGDState(jnp.zeros([], jnp.int32), layers, _tmap(jnp.zeros_like, params))

    def refresh(layer_states, lays, factors):
        out = dict(layer_states)
        for k, (A, G) in factors.items():
            sk, sc = structs(lays[k])
            out[k] = update_preconditioner(sk, sc, layer_states[k], A, G, damping=damping, alpha1=alpha1,
                                           lr_cov=lr_cov, kfac_like=kfac_like, normalize_lr_cov=normalize_lr_cov)
        return out

    def update(updates, state, params=None, *, factors=None, **extra):
        del extra
        lays = _layers(updates)
        layer_states = state.layers
        if factors is not None:
            fs = _layer_factors(lays, factors)
            if fs:
                layer_states = _select(state.count % update_every == 0, refresh(layer_states, lays, fs),
                                       dict(layer_states))
        flat = _flat(updates)
        mats = _matrix_grads(lays, flat)
        pre = {k: precondition_layer(*structs(lays[k]), layer_states[k], X) for k, X in mats.items()}
        pre_tree = _unroute(lays, flat, pre, updates)
        out, mu = _momentum_step(pre_tree, state.mu, params, _lr(learning_rate, state.count), momentum, weight_decay)
        return out, SINGDState(state.count + 1, layer_states, mu)

    return optax.GradientTransformationExtraArgs(init, update)


def ikfac(learning_rate: float | Callable = 1e-3, **kwargs) -> optax.GradientTransformationExtraArgs:
    """IKFAC: ``singd(kfac_like=True)`` (dense structure unless given)."""
    return singd(learning_rate, kfac_like=True, **kwargs)


# ---------------------------------------------------------------------------------------------
# KFAC baseline
# ---------------------------------------------------------------------------------------------


class KFACState(NamedTuple):
    count: jnp.ndarray
    refreshes: jnp.ndarray  # how many factor updates so far (the first one replaces the EMA)
    factors: dict  # {"path/to/kernel": (A, G)} running averages, float32
    inverses: dict  # {"path/to/kernel": (A_inv, G_inv)}, float32
    mu: Any


def kfac(learning_rate: float | Callable = 1e-3, *, momentum: float = 0.9, damping: float = 1e-3,
         ema_decay: float = 0.95, update_every: int = 10, weight_decay: float = 0.0,
         damping_mode: str = "sqrt") -> optax.GradientTransformationExtraArgs:
    """KFAC with EMA factors and inverses refreshed every T steps, step A⁻¹ ∇W G⁻¹ in the (in, out) view.

    ``damping_mode="sqrt"`` (default) inverts (A + √λ I) and (G + √λ I): the product's damping is
    ≈ λ plus √λ-weighted cross terms, the usual split of one λ across two factors (without the π
    rescaling). ``"plain"`` inverts (A + λI) and (G + λI): IKFAC's fixed point, so with
    ``ema_decay=0`` the two directions coincide. The first refresh takes the factors as they come;
    later ones average with ``ema_decay``. Inverses are Cholesky solves in float32 (KFAC is the
    baseline that is *not* low-precision-safe), cast back to the gradient dtype when applied.
    """
    if damping_mode not in ("sqrt", "plain"):
        raise ValueError(f"damping_mode must be 'sqrt' or 'plain', got {damping_mode!r}")
    eps = float(np.sqrt(damping)) if damping_mode == "sqrt" else float(damping)

    def init(params):
        fs, inv = {}, {}
        for k, lay in _layers(params).items():
            ident = (jnp.eye(lay.d_in, dtype=jnp.float32), jnp.eye(lay.d_out, dtype=jnp.float32))
            fs[k], inv[k] = ident, ident
        return KFACState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32), fs, inv, _tmap(jnp.zeros_like, params))

    def inverse(M):
        L = jax.scipy.linalg.cho_factor(M + eps * jnp.eye(M.shape[0], dtype=M.dtype), lower=True)
        return jax.scipy.linalg.cho_solve(L, jnp.eye(M.shape[0], dtype=M.dtype))

    def refresh(carry, new):
        fs, inv, n = carry
        decay = jnp.where(n == 0, 0.0, ema_decay).astype(jnp.float32)
        fs, inv = dict(fs), dict(inv)
        for k, (A, G) in new.items():
            A0, G0 = fs[k]
            A = decay * A0 + (1 - decay) * A.astype(jnp.float32)
            G = decay * G0 + (1 - decay) * G.astype(jnp.float32)
            fs[k], inv[k] = (A, G), (inverse(A), inverse(G))
        return fs, inv, n + 1

    def update(updates, state, params=None, *, factors=None, **extra):
        del extra
        lays = _layers(updates)
        fs, inv, n = state.factors, state.inverses, state.refreshes
        if factors is not None:
            new = _layer_factors(lays, factors)
            if new:
                fs, inv, n = _select(state.count % update_every == 0, refresh((fs, inv, n), new),
                                     (dict(fs), dict(inv), n))
        flat = _flat(updates)
        pre = {}
        for k, X in _matrix_grads(lays, flat).items():
            Ai, Gi = inv[k]
            pre[k] = (Ai.astype(X.dtype) @ X) @ Gi.astype(X.dtype)
        pre_tree = _unroute(lays, flat, pre, updates)
        out, mu = _momentum_step(pre_tree, state.mu, params, _lr(learning_rate, state.count), momentum, weight_decay)
        return out, KFACState(state.count + 1, n, fs, inv, mu)

    return optax.GradientTransformationExtraArgs(init, update)
