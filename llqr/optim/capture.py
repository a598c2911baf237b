"""Per-layer capture of layer inputs and output gradients: the raw material of Kronecker factors.

Every ``nn.Dense`` and ``nn.Conv`` call is intercepted (``flax.linen.intercept_methods``), so no
model needs to be rewritten. The interceptor records the layer input and adds a zero
"perturbation" to the output; the gradient of the loss w.r.t. that perturbation is the gradient
w.r.t. the layer output. Layers are keyed by the parameter path of their kernel, e.g.
``("Dense_0", "kernel")`` or ``("layers_3", "Conv_0", "kernel")`` for a stage network.

Matrix views (rows: samples, or samples x positions):

- ``a`` (R, d_in [+1]): Dense inputs with all leading axes flattened into rows; Conv inputs as
  patches whose columns are ordered (kh, kw, cin), i.e. like the kernel reshaped to
  (kh*kw*cin, cout) — the view of ``structures._as_matrix_shape``. A trailing column of ones when
  the layer has a bias, so the bias is the last row of the augmented (d_in+1, d_out) weight.
- ``g`` (R, d_out): dL/d(layer output) for the loss as given, so that kernel grad = aᵀg exactly.

A grouped conv (``feature_group_count`` G > 1, e.g. depthwise: G = cin) is captured as the SINGD
code captures a grouped Conv2d: the patch columns are those of the input averaged over the G
channel groups, (R, kh*kw*cin/G), matching the kernel's (kh*kw*cin/G, cout) view. A is then an
approximation (aᵀg is the kernel gradient only where the groups' inputs coincide); the update
still preconditions the exact autodiff gradient.

Factor convention (KFAC-"expand", as in SINGD with U = aᵀ/√B and V = √B·gᵀ), for a loss that is
the mean over B = x.shape[0] samples and R = B·P rows (P = positions per sample, 1 for a plain
Dense layer):

    A = aᵀa / R          G = B · gᵀg

so A ⊗ G is the empirical Fisher of the per-sample losses for a Dense layer (exactly when B = 1).
KFAC and SINGD both consume these same factors. Pass sampled labels y ~ p(y|x) instead of the
true ones to get the Monte-Carlo Fisher rather than the empirical one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.linear import canonicalize_padding

Path = tuple  # tuple[str, ...]: the kernel's parameter path


def layer_path(module: nn.Module) -> Path:
    """Parameter path of the layer's kernel."""
    return tuple(str(p) for p in module.path) + ("kernel",)


def _is_captured(module) -> bool:
    return isinstance(module, (nn.Dense, nn.Conv))


def _bcast(v, n):
    if v is None:
        return (1,) * n
    return (int(v),) * n if isinstance(v, int) else tuple(int(i) for i in v)


def _compute_dtype(module, x):
    return module.dtype or jnp.result_type(x.dtype, module.param_dtype)


def group_mean(x, groups: int):
    """The channel axis (last) of ``x`` averaged over ``groups`` consecutive channel groups:
    (..., groups*c) -> (..., c). SINGD's treatment of a grouped (e.g. depthwise) Conv2d: its
    kernel (kh, kw, c, cout) is preconditioned like a plain conv whose input is the group mean."""
    if groups == 1:
        return x
    return x.reshape(x.shape[:-1] + (groups, x.shape[-1] // groups)).mean(axis=-2)


def conv_patches(module: nn.Conv, x) -> jnp.ndarray:
    """(R, kh*kw*cin/groups) patches of the conv input, R = batch x output positions, ordered so that
    patches @ kernel.reshape(-1, cout) equals the conv output (without bias) of an ungrouped conv;
    with ``feature_group_count`` > 1 the patches are those of the input averaged over the channel
    groups (``group_mean``), as the SINGD code does for a grouped Conv2d."""
    ks = _bcast(module.kernel_size, 1)
    nd = len(ks)
    if module.mask is not None:
        raise NotImplementedError("capture supports unmasked convolutions only")
    x = x.reshape((-1,) + x.shape[x.ndim - nd - 1:])  # flatten batch dims like nn.Conv does
    x = group_mean(x, module.feature_group_count)
    kdil = _bcast(module.kernel_dilation, nd)
    pad = canonicalize_padding(module.padding, nd)
    if pad in ("CIRCULAR", "REFLECT"):  # nn.Conv pads explicitly, then runs VALID
        eff = [(k - 1) * d + 1 for k, d in zip(ks, kdil)]
        mode = {"CIRCULAR": "wrap", "REFLECT": "reflect"}[pad]
        x = jnp.pad(x, [(0, 0)] + [((k - 1) // 2, k // 2) for k in eff] + [(0, 0)], mode=mode)
        pad = "VALID"
    elif pad == "CAUSAL":
        x = jnp.pad(x, [(0, 0), (kdil[0] * (ks[0] - 1), 0), (0, 0)])
        pad = "VALID"
    spec = (0, nd + 1) + tuple(range(1, nd + 1))
    dn = jax.lax.ConvDimensionNumbers(lhs_spec=spec, rhs_spec=(nd + 1, nd) + tuple(range(nd)), out_spec=spec)
    p = jax.lax.conv_general_dilated_patches(
        x, ks, _bcast(module.strides, nd), pad, lhs_dilation=_bcast(module.input_dilation, nd),
        rhs_dilation=kdil, dimension_numbers=dn)
    cin = x.shape[-1]
    # the patch feature axis is (cin, *kernel) with cin slowest; the kernel view has cin fastest
    p = p.reshape(p.shape[:-1] + (cin,) + ks)
    p = jnp.moveaxis(p, nd + 1, -1)
    return p.reshape(-1, int(np.prod(ks)) * cin)


def _input_matrix(module, x):
    x = x.astype(_compute_dtype(module, x))
    a = conv_patches(module, x) if isinstance(module, nn.Conv) else x.reshape(-1, x.shape[-1])
    if module.use_bias:
        a = jnp.concatenate([a, jnp.ones((a.shape[0], 1), a.dtype)], axis=1)
    return a


def capture(apply_fn: Callable, variables, x, y, loss_fn: Callable) -> tuple[jnp.ndarray, dict[Path, tuple]]:
    """(loss, {kernel path: (a, g)}) for every Dense/Conv call of ``apply_fn(variables, x)``.

    ``apply_fn(variables, x)`` must return the model output fed to ``loss_fn(output, y)`` (wrap
    ``model.apply`` for ``train=True``/``mutable``). A layer called more than once (weight sharing)
    is refused: its rows would need a per-call convention that this capture does not define.
    """

    def run(perturb):
        inputs, modules, outs = {}, {}, {}

        def interceptor(next_fun, args, kwargs, context):
            module = context.module
            if context.method_name != "__call__" or not _is_captured(module):
                return next_fun(*args, **kwargs)
            key = layer_path(module)
            if key in inputs:
                raise ValueError(f"layer {'/'.join(key[:-1])} is called more than once; shared layers are "
                                 f"not supported by the factor capture")
            out = next_fun(*args, **kwargs)
            inputs[key], modules[key] = args[0] if args else kwargs["inputs"], module
            if perturb is not None:
                out = out + perturb[key].astype(out.dtype)
            outs[key] = out
            return out

        with nn.intercept_methods(interceptor):
            output = apply_fn(variables, x)
        return output, inputs, modules, outs

    shapes = jax.eval_shape(lambda v: run(None)[3], variables)
    zeros = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}
    found: dict[Path, Any] = {}

    def loss_of(perturb):
        output, inputs, modules, _ = run(perturb)
        found.update(modules)
        return loss_fn(output, y), inputs

    (loss, inputs), grads = jax.value_and_grad(loss_of, has_aux=True)(zeros)
    out = {}
    for key, module in found.items():
        a = _input_matrix(module, inputs[key])
        g = grads[key].reshape(-1, grads[key].shape[-1]).astype(a.dtype)
        out[key] = (a, g)
    return loss, out


def factors_from_capture(a, g, batch_size: int):
    """(A, G) = (aᵀa / R, B · gᵀg): the convention of the module docstring."""
    rows = a.shape[0]
    A = (a.T @ a) / jnp.asarray(rows, a.dtype)
    G = (g.T @ g) * jnp.asarray(batch_size, g.dtype)
    return A, G


def kronecker_factors(apply_fn: Callable, params, x, y, loss_fn: Callable, *, batch_stats=None) -> dict[Path, tuple]:
    """{kernel path: (A, G)} for every Dense/Conv layer, on the batch (x, y); see the module docstring.

    ``apply_fn(variables, x)`` with variables = {"params": params[, "batch_stats": batch_stats]}.
    """
    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats is not None else {})}
    _, captured = capture(apply_fn, variables, x, y, loss_fn)
    batch = x.shape[0]
    return {k: factors_from_capture(a, g, batch) for k, (a, g) in captured.items()}
