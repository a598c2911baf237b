"""Each run-config key is owned by its field: the derived tables, the generated key reference, and a
new key that changes no existing cell."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from conftest import REPO
from llqr.config import fields, presets
from llqr.config.fields import FIELDS, RunConfig, derive, opt
from llqr.config.keydoc import render_markdown, render_text
from llqr.workflow.matrix import expand, load_workflow_config

CONFIGS = {"demo": ["config/config.yaml"], "paper": ["config/config.yaml", "config/paper.yaml"],
           "golden": ["tests/golden/cells.yaml"]}


def test_every_field_documents_itself():
    for name, f in FIELDS.items():
        meta = f.metadata
        assert meta["doc"].strip(), name
        assert {"read_when", "bookkeeping", "inert", "params_at_default"} <= set(meta), name
    with pytest.raises(ValueError, match="needs a doc"):
        opt(1, "int", doc=" ")


def test_the_derived_tables_are_the_historical_ones():
    """The tables other modules used to keep by hand, now derived from the fields, as they were."""
    precond = {k for k in FIELDS if (k.startswith(("precond", "llqr_", "update_preconditioner"))
                                     and k != "precond_identity_scaling")} | {
        "block_structure", "divergence", "divergence_order_param", "ema_decay", "ema_scheduler",
        "warm_start_precond", "damping", "normalize_grad_for_lqr", "allow_grad_inversion", "measure_asymmetry"}
    assert fields.PRECOND_KEYS == precond
    assert fields.SAM_KEYS == {k for k in FIELDS if k.startswith(("sam_research", "gbar_", "perturb"))} | {
        "norm_mode", "asam_eta", "fisher_sam_eta", "start_sam_after_step", "sam_use_preconditioner_on_update"}
    base = ("base_sam", "base_fsam", "past_fsam")
    assert fields.TABLES.sam_modes == {
        "gbar_beta": ("base_fsam", "past_fsam"), "gbar_eps": base, "norm_mode": base, "asam_eta": ("asam",),
        "fisher_sam_eta": ("fisher_sam",), "sam_use_preconditioner_on_update": (*base, "asam"),
        "sam_research_base_vector_source": base, "sam_research_perturb_sign": base}
    assert fields.INERT_KEYS == {"llqr_use_fast_paths"}
    assert set(fields.BOOKKEEPING_KEYS) == {"checkpoint_freq", "keep_checkpoints", "report_freq", "preempt_handling"}
    assert fields.omitted_at_default() == {"precision": "fp32", "noise": "minibatch", "noise_stats_from_epoch": None,
                                           "noise_stats_batches": 16, "train_fraction": 1.0, "data_parallel": False,
                                           "augment": True, "crop_padding": "reflect", "cutout": True,
                                           "normalization": "reference", "noisy_gd_chunk": None,
                                           "noise_stats_to_epoch": None, "noise_stats_examples": None,
                                           "noise_stats_full_grad_examples": 4096, "noise_stats_every": None,
                                           "log_step_accuracy": False, "kfac_precision": "run",
                                           "operator_width": None, "operator_depth": None, "loss": "cross_entropy",
                                           "measure_kfac_agreement": False, "test_fraction": 1.0,
                                           "eval_label_smoothing": False}
    assert fields.TRANSFORMER_KEYS == {"embed_dim", "ffn_dim", "attention_heads", "encoder_layers", "decoder_layers"}
    assert fields.TRANSLATION_KEYS == {"max_tokens", "num_buckets", "full_eval_freq", "full_eval_at_end",
                                       "bleu_sampled_freq", "bleu_max_examples", "beam_size"}
    assert fields.MODEL_ONLY_KEYS == {
        "mlp_hidden": ("mlp", "si_mlp"), "wrn_layout": ("wide_resnet28x10",),
        "norm": ("preresnet32", "vgg16", "vgg19", "svag_preresnet32", "svag_vgg16", "svag_vgg19"),
        "width": ("preresnet32", "svag_preresnet32"), "scale_invariant": ("preresnet32",),
        "grok_dim": ("grok_transformer",),
        "grok_depth": ("grok_transformer",), **{k: ("transformer_iwslt",) for k in fields.TRANSFORMER_KEYS},
        **dict.fromkeys(("operator_width", "operator_depth"), ("deeponet", "tfonet")),
        **dict.fromkeys(("lstm_hidden", "lstm_layers"), ("lstm_seq2seq",))}
    assert fields.NOISE_KEYS == {"svag_l": ("svag",), "svag_variant": ("svag",), "noisy_gd_examples": ("noisy_gd",),
                                 "noisy_gd_chunk": ("noisy_gd",)}
    assert fields.OPTIMIZER_ONLY_KEYS == {
        "singd_structure": ("singd",), "lr_cov": ("singd", "ingd", "ikfac"), "singd_alpha1": ("singd", "ingd"),
        "kfac_ema": ("kfac",),
        "prodigy_d_coef": ("prodigy",), "factor_update_every": fields.KRONECKER_OPTIMIZERS,
        "factor_damping": fields.KRONECKER_OPTIMIZERS, "measure_kfac_agreement": ("ikfac",)}
    cifar = ("cifar10", "cifar100")
    assert fields.DATASET_ONLY_KEYS == {"crop_mode": cifar, "modulus": ("mod_sum",),
                                        **dict.fromkeys(("osc_variant", "osc_history", "osc_horizon"),
                                                        ("oscillation",)),
                                        **dict.fromkeys(("augment", "crop_padding", "cutout", "normalization"), cifar),
                                        **{k: fields.TRANSLATION_DATASETS for k in fields.TRANSLATION_KEYS}}


def test_a_new_fields_read_when_lands_in_the_derived_tables():
    tables = derive({**FIELDS, "knob": opt(1, "int", doc="x", read_when={"model": ("mlp",)})})
    assert tables.owned["model"]["knob"] == ("mlp",) and "knob" in tables.conditional


def test_the_configuration_reference_is_generated_and_current():
    """docs/configuration.md is `python -m llqr.train --list-keys --markdown`: regenerate it with that
    command after editing llqr/config/fields.py."""
    text = (REPO / "docs" / "configuration.md").read_text()
    assert text == render_markdown(), "docs/configuration.md is stale: python -m llqr.train --list-keys --markdown " \
                                      "> docs/configuration.md"
    for name in FIELDS:
        assert f"| `{name}` |" in text


def test_list_keys_prints_every_key_with_type_default_choices_and_when_read():
    proc = subprocess.run([sys.executable, "-m", "llqr.train", "--list-keys"], capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == render_text()
    assert "divergence: str = ngd  [ngd, newton, reverse_kl" in proc.stdout
    assert "    read: use_preconditioner = true or precond_identity_scaling != 1.0" in proc.stdout
    assert "    read: sam_mode in {base_fsam, past_fsam}" in proc.stdout
    for name in FIELDS:
        assert f"\n{name}: " in "\n" + proc.stdout
    md = subprocess.run([sys.executable, "-m", "llqr.train", "--list-keys", "--markdown"], capture_output=True,
                        text=True, cwd=REPO, timeout=120, check=False)
    assert md.returncode == 0 and md.stdout == (REPO / "docs" / "configuration.md").read_text()


# --- a key added later changes no existing cell ---------------------------------------------------------


def _cells() -> dict:
    """{config: {cell id: (rule params, settings)}} plus the study specs, for every shipped config."""
    out = {}
    for name, paths in CONFIGS.items():
        matrix = expand(load_workflow_config(*(REPO / p for p in paths)))
        out[name] = {cid: (c.config_json, json.dumps(c.settings, sort_keys=True)) for cid, c in matrix.cells.items()}
        out[name].update({f"study {sid}": (s.spec_json, "") for sid, s in matrix.studies.items()})
    return out


@pytest.fixture(scope="module")
def before():
    return _cells()


def _add_key(monkeypatch, **spec):
    """Add a field ``new_knob`` (default 0.25) as if it were written into RunConfig."""
    plus = dataclasses.make_dataclass("RunConfigPlus", [("new_knob", float, opt(0.25, "float", minimum=0.0, **spec))],
                                      bases=(RunConfig,), frozen=True)
    monkeypatch.setitem(FIELDS, "new_knob", dataclasses.fields(plus)[-1])
    monkeypatch.setattr(presets, "RunConfig", plus)


def test_a_new_key_with_its_default_changes_no_cell_id_or_params(monkeypatch, before):
    _add_key(monkeypatch, doc="A knob added after the cells ran; 0.25 is what they did.", params_at_default=False)
    assert presets.build_config({}).to_dict()["new_knob"] == 0.25
    assert _cells() == before
    # set away from its default, it splits a cell and enters its params
    config = load_workflow_config(REPO / "config/config.yaml")
    config["surfaces"]["demo_llqr"]["rules"].append({"when": {"method": "baseline"}, "set": {"new_knob": 0.5}})
    changed = expand(config)
    baseline = [cid for cid in changed.surfaces["demo_llqr"].cell_ids if "new_knob=0.5" in cid]
    assert baseline and all('"new_knob":0.5' in changed.cells[c].config_json for c in baseline)


def test_without_params_at_default_false_a_new_key_would_stale_every_cell(monkeypatch, before):
    """The control: the test above can fail, so the field's flag is what keeps the cells."""
    _add_key(monkeypatch, doc="A knob that forgot params_at_default=False.")
    after = _cells()
    assert after["demo"].keys() == before["demo"].keys()  # ids are diffs against the preset: unchanged
    assert all(after["demo"][cid] != before["demo"][cid] for cid in before["demo"])  # params: every cell stale
