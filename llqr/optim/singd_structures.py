"""SINGD's structured square matrices: a storage pytree per matrix, an object that knows n.

Every structure is a group under multiplication, so SINGD's multiplicative update K (I − β1 m)
stays in it; the storage is compact for all of them (hierarchical: its five blocks), while the
generic products go through the dense view and cut the result back (exact, the pattern being
closed). ``STRUCTURES`` is the config's ``llqr.config.families.SINGD_STRUCTURES`` (the config layer owns
the list; ``make_structure`` dispatches on it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..config.families import SINGD_STRUCTURES as STRUCTURES


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
