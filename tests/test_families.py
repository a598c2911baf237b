"""One name list per family, owned by the config layer (llqr/config/families.py): the config's
choices are those lists, and each module that implements a family dispatches on its list,
implements every name in it and no other (the names its dispatch compares against, read from its
source, are the list's)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap

import numpy as np
import pytest

from llqr.config import families
from llqr.config.families import (
    BLOCK_STRUCTURES,
    CROP_MODES,
    DATASETS,
    DIVERGENCES,
    MODELS,
    NORM_MODES,
    PERTURB_MODES,
    PRECOND_SOLVERS,
    RESEARCH_DIVERGENCES,
    SAM_MODES,
    SEPARABLE_DIVERGENCES,
    SINGD_STRUCTURES,
)
from llqr.config.fields import FIELDS, RunConfig


def compared_names(func, subject: str) -> set[str]:
    """The strings ``func`` compares ``subject`` (an expression, e.g. ``cfg.dataset``) with:
    ``subject == "x"``, ``subject in ("x", "y")`` or ``subject in NAME`` (a tuple of its module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(func)))):
        if not (isinstance(node, ast.Compare) and ast.unparse(node.left) == subject):
            continue
        for right in node.comparators:
            if isinstance(right, ast.Name):
                values = func.__globals__.get(right.id, ())  # a local table: see dict_keys
            elif isinstance(right, (ast.Tuple, ast.List, ast.Set)):
                values = [e.value for e in right.elts if isinstance(e, ast.Constant)]
            elif isinstance(right, ast.Constant):
                values = [right.value]
            else:
                continue
            names.update(v for v in values if isinstance(v, str))
    return names


def dict_keys(func) -> set[str]:
    """The string keys of the dict literals in ``func`` (a dispatch table)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    return {k.value for node in ast.walk(tree) if isinstance(node, ast.Dict)
            for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}


def config(**values) -> RunConfig:
    return dataclasses.replace(RunConfig(), **values)


def test_the_configs_choices_are_the_family_lists():
    choices = {"model": MODELS, "dataset": DATASETS, "optimizer": families.OPTIMIZERS,
               "singd_structure": SINGD_STRUCTURES, "block_structure": BLOCK_STRUCTURES, "divergence": DIVERGENCES,
               "precond_solver": PRECOND_SOLVERS, "perturb_mode": PERTURB_MODES, "norm_mode": NORM_MODES,
               "crop_mode": CROP_MODES}
    for key, names in choices.items():
        assert FIELDS[key].metadata["choices"] is names, key
    assert FIELDS["sam_mode"].metadata["choices"] == (None, *SAM_MODES)
    assert set(RESEARCH_DIVERGENCES) <= set(DIVERGENCES) and set(SEPARABLE_DIVERGENCES) <= set(DIVERGENCES)
    assert set(families.BASE_SAM_MODES) <= set(SAM_MODES)
    assert set(families.TRANSLATION_DATASETS + families.MODULAR_DATASETS + families.IN_MEMORY_DATASETS) <= set(DATASETS)


def test_the_implementing_modules_hold_the_config_lists_not_copies():
    from llqr.data import augment
    from llqr.optim import sam, singd_structures, structures

    assert structures.FAMILIES is BLOCK_STRUCTURES and structures.EXACT_MAX_PARAMS == families.EXACT_MAX_PARAMS
    assert singd_structures.STRUCTURES is SINGD_STRUCTURES
    assert (sam.SAM_MODES, sam.PERTURB_MODES, sam.NORM_MODES) == (SAM_MODES, PERTURB_MODES, NORM_MODES)
    assert sam.SAM_MODES is SAM_MODES and sam.PERTURB_MODES is PERTURB_MODES and sam.NORM_MODES is NORM_MODES
    assert augment.CROP_MODES is CROP_MODES


# --- models --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_every_model_builds(name):
    import flax.linen as nn

    from llqr.models import build_model

    assert isinstance(build_model(config(model=name), num_classes=10), nn.Module)


def test_build_model_builds_no_other_model():
    from llqr.models import ModelNotAvailable, build_model, layer_of

    assert compared_names(build_model, "name") == set(MODELS)
    assert compared_names(layer_of, "name") <= set(MODELS)
    with pytest.raises(ModelNotAvailable, match="available models"):
        build_model(config(model="no_such_model"))


# --- datasets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_has_a_loader(name, tmp_path):
    """Each name reaches its loader, which then misses its prepared files (tests/test_data_paths.py)."""
    from llqr.data import DataError, load_dataset

    with pytest.raises(DataError) as err:
        load_dataset(config(dataset=name), tmp_path)
    assert "has no loader" not in str(err.value)


def test_load_dataset_loads_no_other_dataset(tmp_path):
    from llqr.data import DataError, _load_full, load_dataset

    assert compared_names(_load_full, "cfg.dataset") == set(DATASETS)
    with pytest.raises(DataError, match="has no loader"):
        load_dataset(config(dataset="no_such_data"), tmp_path)


# --- the preconditioner's block structures, divergences and inner solvers ------------------------


@pytest.mark.parametrize("name", BLOCK_STRUCTURES)
def test_every_block_structure_initialises_and_applies_as_the_identity(name):
    import jax.numpy as jnp

    from llqr.optim.structures import apply_blocks, init_blocks

    params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}, "head": {"kernel": jnp.ones((2, 2))}}
    grads = {"dense": {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones((2,))},
             "head": {"kernel": -jnp.ones((2, 2))}}
    out = apply_blocks(name, init_blocks(name, params), grads)
    for got, want in zip(*(map(np.asarray, _leaves(t)) for t in (out, grads))):
        np.testing.assert_allclose(got, want, atol=1e-5)


def _leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def test_the_structures_implement_no_other_structure():
    from llqr.optim import structures

    dispatched = set()
    for fn in (structures.init_blocks, structures._leaf_init, structures._leaf_apply, structures.apply_blocks,
               structures._apply_per_layer, structures.clip_groups, structures.clamp_blocks):
        assert compared_names(fn, "structure") <= set(BLOCK_STRUCTURES), fn.__name__
        dispatched |= compared_names(fn, "structure")
    assert dispatched == set(BLOCK_STRUCTURES)
    with pytest.raises(ValueError, match="unknown block structure"):
        structures.init_blocks("no_such_structure", {"w": np.ones((2, 2), np.float32)})


@pytest.mark.parametrize("name", DIVERGENCES)
def test_every_divergence_is_implemented_but_the_research_only_ones(name):
    from llqr.optim.divergences import terminal_cost

    if name in RESEARCH_DIVERGENCES:
        with pytest.raises(ValueError, match="research-only"):
            terminal_cost(name)
        return
    cost = terminal_cost(name)
    assert (cost is None) == (name == "newton")  # newton: the training loss itself
    if cost is not None:
        z = np.log(np.full((2, 3), 1 / 3, np.float32))
        assert np.isfinite(float(cost(z, z)))


def test_terminal_cost_knows_no_other_divergence():
    from llqr.optim import lqr
    from llqr.optim.divergences import terminal_cost

    assert compared_names(terminal_cost, "name") == set(DIVERGENCES)
    assert compared_names(lqr.make_problem, "divergence") <= set(DIVERGENCES)
    with pytest.raises(ValueError, match="unknown divergence"):
        terminal_cost("no_such_divergence")


def test_every_precond_solver_and_no_other():
    from llqr.optim.lqr import inner_solver

    for name in PRECOND_SOLVERS:
        inner_solver(name, 1e-3, 0.9, 5.0, {"w": "w"})
    assert compared_names(inner_solver, "name") == set(PRECOND_SOLVERS)
    with pytest.raises(ValueError, match="unknown precond_solver"):
        inner_solver("no_such_solver", 1e-3, 0.9, 5.0, {"w": "w"})


# --- SINGD ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SINGD_STRUCTURES)
def test_every_singd_structure_is_made(name):
    from llqr.optim.singd_structures import make_structure

    structure = make_structure(name, 6, block_size=2, k1=2, k2=2)
    np.testing.assert_array_equal(np.asarray(structure.to_dense(structure.eye())), np.eye(6))


def test_make_structure_makes_no_other_structure():
    from llqr.optim.singd_structures import make_structure

    assert compared_names(make_structure, "name") == set(SINGD_STRUCTURES)
    with pytest.raises(ValueError, match="unknown SINGD structure"):
        make_structure("no_such_structure", 4)


# --- SAM -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", SAM_MODES)
def test_every_sam_mode_perturbs(mode):
    import jax.numpy as jnp

    from llqr.optim import sam

    params = {"a": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
    g = {"a": {"kernel": jnp.full((2, 2), 0.5), "bias": jnp.ones((2,))}}
    eps = sam.perturbation(mode, params=params, buffers=sam.init_buffers(mode, params), g_c=g, rho=0.1,
                           precond=lambda t: t, perturb_mode="ema_grad", norm_mode="euclidean", gbar_eps=1e-12,
                           asam_eta=0.01, fisher_sam_eta=0.1)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in _leaves(eps))


def test_every_perturb_and_norm_mode_gives_a_direction():
    import jax.numpy as jnp

    from llqr.optim import sam

    v = {"a": jnp.ones((3,)), "b": jnp.arange(2.0)}
    for perturb_mode in PERTURB_MODES:
        for norm_mode in NORM_MODES:
            d = sam.direction(v, perturb_mode=perturb_mode, norm_mode=norm_mode, eps=1e-12, precond=lambda t: t)
            assert all(np.all(np.isfinite(np.asarray(x))) for x in _leaves(d))


def test_sam_implements_no_other_mode():
    from llqr.optim import sam

    assert compared_names(sam.perturbation, "mode") == set(SAM_MODES)
    assert compared_names(sam.transform, "perturb_mode") == set(PERTURB_MODES)
    assert compared_names(sam.normalize, "norm_mode") == set(NORM_MODES)
    for fn in (sam.init_buffers, sam.update_buffers):
        assert compared_names(fn, "mode") <= set(SAM_MODES)
    with pytest.raises(ValueError, match="unknown sam_mode"):
        sam.init_buffers("no_such_mode", {})


# --- crop modes ----------------------------------------------------------------------------------


def test_every_crop_mode_crops_and_no_other():
    from llqr.data.augment import random_crop

    images = np.zeros((2, 32, 32, 3), np.uint8)
    for mode in CROP_MODES:
        assert random_crop(images, np.random.default_rng(0), mode).shape == images.shape
    assert compared_names(random_crop, "mode") == set(CROP_MODES)
    with pytest.raises(ValueError, match="crop_mode"):
        random_crop(images, np.random.default_rng(0), "no_such_mode")


# --- schedule families (llqr.config.schedule_families) ---------------------------------------------


def test_every_schedule_family_builds_and_no_other():
    from llqr.config.schedule_families import SCHEDULE_FAMILIES, default_schedule
    from llqr.train.budget_schedules import build_budget_schedule
    from llqr.train.schedules import build_schedule

    for name in SCHEDULE_FAMILIES:
        fn = build_schedule(default_schedule(name), 0.1, 200.0, 10.0)  # total epochs below the default U
        assert np.isfinite(float(fn(5)))
    dispatched = (compared_names(build_schedule, "name") | compared_names(build_budget_schedule, "name")
                  | dict_keys(build_budget_schedule))
    assert dispatched == set(SCHEDULE_FAMILIES)
    with pytest.raises(ValueError, match="unknown schedule family"):
        build_schedule({"name": "no_such_schedule"}, 0.1, 3.0, 10.0)
