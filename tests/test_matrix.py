"""Surface expansion: cell counts of the paper matrix, shared cells, stable ids, config errors."""

import copy

import pytest

from conftest import REPO, run_snakemake, write_yaml
from llqr.config import ConfigError
from llqr.workflow.matrix import expand, load_workflow_config

# Per seed: llqr_cifar 8 presets x (baseline, ngd, newton); SAM surfaces per preset: LLQR-on
# base_sam/base_fsam x 2 pairs (4) + LLQR-off base_sam/base_fsam (pairs inert: 2) + fisher_sam (1).
PAPER_COUNTS = {
    "llqr_cifar": 8 * 3 * 3,
    "llqr_imagenet": 2 * 3,
    "llqr_iwslt": 2 * 3,
    "llqr_sam_cifar": 8 * 7 * 3,
    "llqr_sam_imagenet": 2 * 7,
    "llqr_sam_iwslt": (2 + 2 + 1) * 3,
    "llqr_large_batch": 2,
}


# The companion studies (target "studies"). SINGD: 11 optimizers x 2 precisions per model and dataset
# (the GCN fp32 only), each position tuned; memory/speed share seed 42's untuned CIFAR-100 positions.
# SVAG: l in 1..32 per network, the linear scaling rule at B = 2..2048 on three networks each (lsr_noise
# reads lsr's cells), SGD vs noisy GD.
SVAG_L, LSR_B = 6, 11
HLR_MODELS = ("cnn", "resnet18", "resnet34", "resnet50", "vit")  # CIFAR-10
HLR_CIFAR100 = ("cnn", "resnet18")
HLR_TASKS = ("osc_lstm", "integral_deeponet", "integral_tfonet")  # oscillation, integral-operator learning
HLR_CELLS = {"compare": 28 * 5, "budget": 2 * 13 * 4 * 5, "curves": 2 * 13 * 4 * 5, "slcd": 2 * 13 * 4 * 5}
SINGD_OPT = 11  # SGD, AdamW, KFAC, IKFAC, INGD, SINGD x 6 structures
SINGD_C100, SINGD_WOOF = 7, 6  # VGG-16-BN, ConvMixer, RepViT, CCT, Swin, GC-ViT, HDVT; CCT not at 224
STUDY_COUNTS = {"singd_cifar100": SINGD_C100 * SINGD_OPT * 2 * 3, "singd_imagewoof": SINGD_WOOF * SINGD_OPT * 2,
                "singd_cora": SINGD_OPT * 3, "singd_imagenet100": SINGD_OPT * 2,
                "singd_memory": SINGD_C100 * SINGD_OPT * 2, "singd_speed": SINGD_C100 * SINGD_OPT * 2,
                "singd_kfac_ikfac": SINGD_C100 * 2,
                "svag_convergence_b64": SVAG_L, "svag_convergence_b1024": SVAG_L, "svag_baselines": 3 * SVAG_L,
                "svag_architectures": 3 * SVAG_L, "svag_unnormalized": SVAG_L, "svag_triangle": 2 * SVAG_L,
                "svag_cosine": 2 * SVAG_L, "lsr": 3 * LSR_B, "lsr_further": 3 * LSR_B, "lsr_noise": 3 * LSR_B,
                "noisy_gd": 2, "noisy_gd_wide": 2, "noisy_gd_small_batch": 2,
                # HyperbolicLR, per CIFAR-10 model: Compare 28 runs x 5 seeds; Optimize-Compare 2 optimizers x
                # 13 schedules x 4 budgets x 5 seeds (budget, curves and slcd read the same runs); LR-free 3 x 4 x 5
                **{f"hlr_cifar10_{m}_{kind}": HLR_CELLS[kind] for m in HLR_MODELS for kind in HLR_CELLS},
                **{f"hlr_cifar100_{m}_{kind}": HLR_CELLS[kind] for m in HLR_CIFAR100 for kind in HLR_CELLS},
                **{f"hlr_{t}_{kind}": HLR_CELLS[kind] for t in HLR_TASKS for kind in HLR_CELLS},
                "hlr_schedules": 0, "hlr_bars": len(HLR_MODELS) * HLR_CELLS["budget"],
                "lr_free": len(HLR_MODELS) * 3 * 4 * 5}
# svag_baselines' B = 1024 cells are svag_convergence_b1024's
SVAG_UNIQUE = 2 * SVAG_L + 2 * SVAG_L + 3 * SVAG_L + SVAG_L + 4 * SVAG_L + 2 * 3 * LSR_B + 3 * 2


@pytest.fixture(scope="module")
def paper():
    return expand(load_workflow_config(REPO / "config/config.yaml", REPO / "config/paper.yaml"))


def test_paper_cell_count_per_surface(paper):
    counts = {name: len(s.cell_ids) for name, s in paper.surfaces.items() if s.group == "paper"}
    assert counts == PAPER_COUNTS
    assert len({c for n in PAPER_COUNTS for c in paper.surfaces[n].cell_ids}) == sum(PAPER_COUNTS.values())


def test_study_cell_counts_and_shared_cells(paper):
    counts = {name: len(paper.surfaces[name].cell_ids) for name in paper.group("studies")}
    assert counts == STUDY_COUNTS
    studies = {c for n in STUDY_COUNTS for c in paper.surfaces[n].cell_ids}
    # memory and speed share untuned cells; budget, curves and slcd share their runs; lr_free's AdamW + H cells
    # are the budget surface's (same config, same tuning study) and its untuned D-Adapt at 50 epochs the
    # Compare surface's
    runs = len(HLR_MODELS) + len(HLR_CIFAR100) + len(HLR_TASKS)  # hlr_bars reads the CIFAR-10 budget runs
    hlr = runs * (HLR_CELLS["compare"] + HLR_CELLS["budget"]) + len(HLR_MODELS) * (3 * 4 * 5 - 4 * 5 - 5)
    singd = (SINGD_C100 * SINGD_OPT * 2 * 3 + SINGD_WOOF * SINGD_OPT * 2 + SINGD_OPT * 3 + SINGD_OPT * 2
             + SINGD_C100 * SINGD_OPT * 2 + SINGD_C100 * 2)
    assert len(studies) == singd + SVAG_UNIQUE + hlr
    for m in HLR_MODELS:
        budget = set(paper.surfaces[f"hlr_cifar10_{m}_budget"].cell_ids)
        assert budget == set(paper.surfaces[f"hlr_cifar10_{m}_slcd"].cell_ids) == set(
            paper.surfaces[f"hlr_cifar10_{m}_curves"].cell_ids)
        assert len(set(paper.surfaces["lr_free"].cell_ids) & budget) == 4 * 5
        lrs = {e.labels["run"]: paper.cells[e.cell_id].config["learning_rate"]
               for e in paper.surfaces[f"hlr_cifar10_{m}_compare"].entries}
        for opt in ("adam", "adamw"):  # Compare mode: N is a constant lr/10
            assert lrs[f"{opt}-N"] == pytest.approx(lrs[f"{opt}-C"] / 10)
    tuned = [s for s in paper.studies.values() if s.preset.endswith("-hlr")]  # the demo's are digits studies
    assert len(tuned) == runs * 2 * 13 + len(HLR_MODELS)  # + Prodigy's d_coef on the CIFAR-10 models
    assert all(s.trials == 25 and s.config["total_epochs"] == 50 for s in tuned)
    assert set(paper.surfaces["lsr_noise"].cell_ids) == set(paper.surfaces["lsr"].cell_ids)
    assert set(paper.surfaces["svag_convergence_b1024"].cell_ids) < set(paper.surfaces["svag_baselines"].cell_ids)
    svag = [n for n in paper.group("svag_study")]
    for cid in {c for n in svag for c in paper.surfaces[n].cell_ids}:
        c = paper.cells[cid].config
        assert c["optimizer"] == "sgd" and not c["use_preconditioner"], cid  # sgd: no momentum
        # the study's pipeline: per-image crop of the zero-padded image, flip, no Cutout (noisy-GD pairs: none)
        assert not c["cutout"] and c["normalization"] == "svag", cid
        assert (c["crop_mode"], c["crop_padding"]) == ("image", "zero") or not c["augment"], cid
        assert (c["noise"], c["svag_l"]) == ("minibatch", 1) or (c["noise"] == "svag" and c["svag_l"] > 1) or (
            c["noise"] == "noisy_gd" and c["noisy_gd_examples"] == 50000), cid


def test_design_conventions_hold_in_every_paper_cell(paper):
    for name in ("llqr_sam_cifar", "llqr_sam_imagenet", "llqr_sam_iwslt"):
        for e in paper.surfaces[name].entries:
            c = paper.cells[e.cell_id].config
            if c["sam_mode"] == "fisher_sam":
                assert c["perturbation_rho"] == 0.1 and c["perturb_mode"] == "ema_grad" and not c["use_preconditioner"]
            elif e.labels["llqr"] == "on":
                assert c["use_preconditioner"] and c["sam_use_preconditioner_on_update"]
                assert c["perturb_mode"] == "ema_precond_grad"
            else:
                assert not c["use_preconditioner"] and not c["sam_use_preconditioner_on_update"]
            if name == "llqr_sam_imagenet" and c["sam_mode"] != "fisher_sam":
                # the guide's ImageNet ablation: rho/gbar_beta the same with LLQR on and off
                assert c["perturbation_rho"] == 0.075
                # gbar_beta is read by base_fsam only; elsewhere it is inert and normalised away
                assert c["gbar_beta"] == (0.6 if c["sam_mode"] == "base_fsam" else 0.9)
    for cid in paper.surfaces["llqr_large_batch"].cell_ids:
        c = paper.cells[cid].config
        assert c["llqr_batch_update_mode"] == "chunked_lqr_segment" and c["llqr_batch_update_chunk_size"] == 128


def test_imagenet_sam_ablation_toggles_the_preconditioner_alone(paper):
    surf = paper.surfaces["llqr_sam_imagenet"]
    pairs = {}
    for e in surf.entries:
        if e.labels["sam"] != "fisher_sam":
            c = paper.cells[e.cell_id].config
            pairs.setdefault((e.preset, e.labels["sam"], e.labels["pair"]), {})[e.labels["llqr"]] = c
    assert len(pairs) == 2 * 2 * 2
    toggle = {"use_preconditioner", "sam_use_preconditioner_on_update", "perturb_mode",
              "divergence", "ema_decay"}  # the LLQR block (the pair's keys are inert with LLQR off)
    for both in pairs.values():
        on, off = both["on"], both["off"]
        assert {k for k in on if on[k] != off.get(k)} <= toggle


def test_inert_toggle_collapses_to_one_trained_cell(paper):
    surf = paper.surfaces["llqr_sam_cifar"]
    fisher = {e.cell_id for e in surf.entries if e.labels["sam"] == "fisher_sam" and e.preset == "resnet18-cifar10"
              and e.seed == 42}
    assert len(fisher) == 1  # on/off x both pairs: one run


def test_ids_are_readable_and_stable(paper):
    ids = paper.surfaces["llqr_cifar"].cell_ids
    assert "resnet18-cifar10/llqr=off/seed42" in ids
    assert "resnet18-cifar10/div=newton__ema=0.9/seed43" in ids
    again = expand(load_workflow_config(REPO / "config/config.yaml", REPO / "config/paper.yaml"))
    assert again.cells.keys() == paper.cells.keys()


def test_rule_params_leave_out_keys_the_cell_never_reads(paper):
    """Retuning a Transformer-only or translation-only key must not make image cells stale."""
    import json

    from llqr.config.fields import TRANSFORMER_KEYS, TRANSLATION_KEYS

    image = paper.cells["resnet18-cifar10/llqr=off/seed42"]
    params = json.loads(image.config_json)
    assert not (TRANSFORMER_KEYS | TRANSLATION_KEYS | {"mlp_hidden", "wrn_layout"}) & params.keys()
    assert params["crop_mode"] == "batch" and params == {k: v for k, v in image.config.items() if k in params}
    iwslt = next(c for c in paper.cells.values() if c.preset == "transformer-iwslt14-de-en")
    params = json.loads(iwslt.config_json)
    assert params["max_tokens"] == 16384 and params["embed_dim"] == 512 and "crop_mode" not in params
    changed = dict(image.config, embed_dim=256, beam_size=4)  # as if the default changed
    assert type(image)(image.id, image.preset, image.seed, changed).config_json == image.config_json


def _demo():
    return copy.deepcopy(load_workflow_config(REPO / "config/config.yaml"))


def _surface(cfg):
    return cfg["surfaces"]["demo_optimizers"]


def _mutations():
    def unknown_preset(c):
        _surface(c)["presets"] = ["digits-mlpp"]

    def empty_sweep(c):
        _surface(c)["axes"]["optimizer"] = []

    def empty_presets(c):
        _surface(c)["presets"] = []

    def empty_seeds(c):
        _surface(c)["seeds"] = []

    def duplicate_seed(c):
        _surface(c)["seeds"] = [42, 42]

    def duplicate_label(c):
        _surface(c)["axes"]["optimizer"][1]["label"] = "sgd"

    def duplicate_cells(c):
        _surface(c)["axes"]["optimizer"].append({"label": "sgd-again", "set": {"optimizer": "sgd"}})

    def bad_override_key(c):
        _surface(c)["axes"]["optimizer"][0]["set"]["learning_rat"] = 0.1

    def bad_override_value(c):
        _surface(c)["axes"]["optimizer"][0]["set"]["learning_rate"] = -1

    def rule_on_unknown_axis(c):
        _surface(c)["rules"] = [{"when": {"optimiser": "sgd"}, "set": {"momentum": 0.5}}]

    def rule_on_unknown_label(c):
        _surface(c)["rules"] = [{"when": {"optimizer": "sdg"}, "set": {"momentum": 0.5}}]

    def table_misses_axis(c):
        _surface(c)["table"] = {"rows": ["preset"], "columns": ["optimizer"]}

    def reserved_axis(c):
        _surface(c)["axes"]["seed"] = [{"label": "x", "set": {}}]

    def no_surfaces(c):
        c["surfaces"] = {"demo_optimizers": None}

    return {
        "unknown preset": (unknown_preset, r"unknown preset 'digits-mlpp'.*did you mean 'digits-mlp'"),
        "empty sweep": (empty_sweep, r"axis 'optimizer' is an empty sweep"),
        "empty presets": (empty_presets, r"'presets' is empty"),
        "empty seeds": (empty_seeds, r"'seeds' is empty"),
        "duplicate seed": (duplicate_seed, r"duplicate seed 42"),
        "duplicate label": (duplicate_label, r"duplicate label in axis 'optimizer': 'sgd'"),
        "duplicate cell ids": (duplicate_cells, r"duplicate cell ids: variants 'sgd' and 'sgd-again'"),
        "bad override key": (bad_override_key, r"unknown key 'learning_rat'.*did you mean 'learning_rate'"),
        "bad override value": (bad_override_value, r"optimizer=sgd.*'learning_rate': bad value -1"),
        "rule on unknown axis": (rule_on_unknown_axis, r"rule condition on unknown axis 'optimiser'"),
        "rule on unknown label": (rule_on_unknown_label, r"rule condition optimizer='sdg' matches no variant"),
        "table misses axis": (table_misses_axis, r"table rows \+ columns .* must name 'preset' and every axis"),
        "reserved axis": (reserved_axis, r"axis name 'seed' is reserved"),
        "no surfaces": (no_surfaces, r"defines no surfaces"),
    }


@pytest.mark.parametrize("case", list(_mutations()))
def test_bad_workflow_config_is_rejected(case):
    mutate, message = _mutations()[case]
    cfg = _demo()
    mutate(cfg)
    with pytest.raises(ConfigError, match=message):
        expand(cfg)


@pytest.mark.parametrize(
    "mutation,message",
    [
        ({"surfaces": {"demo_optimizers": {"metric": "accuracy"}}}, "accuracy"),
        ({"resutls_dir": "x"}, "resutls_dir"),
        ({"surfaces": {"demo_optimizers": {"axes": {"optimizer": [{"label": "a", "set": {"learning_rat": 1}}]}}}},
         "unknown key 'learning_rat'"),
    ],
    ids=["bad metric (schema)", "unknown top-level key (schema)", "bad key (matrix)"],
)
def test_snakemake_reports_config_errors_before_any_job(tmp_path, mutation, message):
    extra = write_yaml(tmp_path / "bad.yaml", mutation)
    proc = run_snakemake(["-n", "--cores", "1", "--configfile", str(extra)], tmp_path, check=False, timeout=120)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert message in out and "rule train" not in out


def test_every_id_survives_snakemakes_target_jobs_parsing(paper):
    """Cluster jobs re-select their job with --target-jobs rule:wildcard=value, which splits on ','
    (a cell id with a comma made every SLURM job of such a cell fail): ids must round-trip."""
    from snakemake.target_jobs import parse_target_jobs_cli_args

    for rule, wildcard, ids in (("train", "cell", paper.cells), ("tune", "study", paper.studies)):
        for name in ids:
            (spec,) = parse_target_jobs_cli_args([f"{rule}:{wildcard}={name}"])
            assert spec.wildcards_dict == {wildcard: name}
