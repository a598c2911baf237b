"""Run-config resolution and the errors a wrong key or value gives."""

import pytest

from llqr.config import ConfigError, build_config, list_presets, parse_overrides, resolve
from llqr.config.fields import FIELDS

PAPER_PRESETS = {
    f"{a}-{d}" for a in ("resnet18", "vgg16bn", "wide-resnet28x10", "pyramidnet110") for d in ("cifar10", "cifar100")
} | {"resnet50-imagenet", "short-resnet50-imagenet", "transformer-iwslt14-de-en"}


def test_every_paper_preset_resolves():
    assert PAPER_PRESETS <= set(list_presets())
    for name in list_presets():
        cfg = resolve(name)
        assert cfg.preset == name


def test_paper_values_from_the_spec():
    c = resolve("resnet18-cifar10")
    assert (c.optimizer, c.learning_rate, c.momentum, c.weight_decay) == ("polyak", 0.05, 0.9, 5e-4)
    assert c.lr_scheduler == {"name": "cosine_annealing", "t_max": 200.0, "eta_min": 0.0, "cycle": True}
    assert (c.batch_size, c.total_epochs, c.precond_batch_size) == (128, 200.0, 128)
    i = resolve("short-resnet50-imagenet")
    assert (i.total_epochs, i.precond_batch_size, i.update_preconditioner_every) == (50.0, 128, 1500)
    assert i.lr_scheduler["boundaries"] == [30.0, 70.0, 90.0] and i.label_smoothing == 0.1
    t = resolve("transformer-iwslt14-de-en")
    assert (t.optimizer, t.adam_betas, t.start_sam_after_step, t.precond_batch_size) == ("adamw", [0.9, 0.98], 4000, 48)
    assert t.lr_scheduler["name"] == "inverse_sqrt" and t.dropout_rate == 0.3


def test_defaults_match_reference():
    c = build_config({})
    assert (c.batch_size, c.learning_rate, c.optimizer, c.total_epochs) == (128, 0.1, "sgd", 250.0)
    assert (c.init_key, c.rng_seed, c.precond_steps, c.precond_lr, c.precond_clip_norm) == (42, 123, 50, 1e-3, 5.0)
    assert (c.block_structure, c.divergence, c.ema_decay, c.sam_mode, c.perturbation_rho) == (
        "diagonal", "ngd", 0.0, None, 0.1)


def test_overrides_are_parsed_as_yaml_and_coerced():
    o = parse_overrides(["learning_rate=1e-3", "wd_mask=[Norm,bias]", "sam_mode=null", "lr_scheduler=cosine_annealing",
                         "lr_scheduler.t_max=12"])
    cfg = resolve("digits-mlp", o)
    assert cfg.learning_rate == 1e-3 and cfg.wd_mask == ["Norm", "bias"] and cfg.sam_mode is None
    assert cfg.lr_scheduler == {"name": "cosine_annealing", "t_max": 12.0, "eta_min": 0.0, "cycle": True}


def test_schedule_parameter_of_another_family_is_rejected():
    with pytest.raises(ConfigError, match="unknown key 'lr_scheduler.t_max' for schedule 'constant'"):
        resolve("digits-mlp", parse_overrides(["lr_scheduler.t_max=12"]))


def test_schedule_switch_resets_parameters():
    cfg = resolve("resnet18-cifar10", {"lr_scheduler": "inverse_sqrt", "lr_scheduler.warmup_steps": 10})
    assert cfg.lr_scheduler == {"name": "inverse_sqrt", "warmup_steps": 10, "init_value": 0.0}


BAD = [
    ({"ema_decy": 0.9}, r"unknown key 'ema_decy'.*did you mean 'ema_decay'"),
    ({"ema_decay": 1.5}, r"key 'ema_decay': bad value 1.5: must be <= 1"),
    ({"learning_rate": -0.1}, r"key 'learning_rate': bad value -0.1: must be > 0"),
    ({"batch_size": "big"}, r"key 'batch_size': bad value 'big': expected an integer"),
    ({"batch_size": 12.5}, r"key 'batch_size'.*expected an integer"),
    ({"use_preconditioner": "maybe"}, r"key 'use_preconditioner'.*expected true or false"),
    ({"divergence": "ngdd"}, r"key 'divergence'.*allowed values are ngd, newton.*did you mean 'ngd'"),
    ({"optimizer": "adamw2"}, r"key 'optimizer'.*allowed values.*sgd, polyak, adam, adamw"),
    ({"sam_mode": "sam"}, r"key 'sam_mode'.*allowed values are null, base_sam"),
    ({"lr_scheduler": "cosine_anealing"}, r"key 'lr_scheduler.name'.*did you mean 'cosine_annealing'"),
    ({"lr_scheduler": {"name": "hyperbolic", "upper_bound": 10}, "total_epochs": 20},
     r"upper_bound=10 must be >= total_epochs=20"),
    ({"lr_scheduler": {"name": "exp_hyperbolic", "eta_min": 0.5}, "learning_rate": 0.1},
     r"eta_min=0.5 must be below learning_rate=0.1"),
    ({"lr_scheduler": {"name": "exponential", "gamma": 1.5}}, r"gamma.*must be in \(0, 1\]"),
    ({"train_fraction": 0.5, "dataset": "imagenet"}, r"train_fraction=0.5 subsets in-memory datasets only"),
    ({"lr_scheduler": {"name": "cosine_annealing", "tmax": 3}},
     r"unknown key 'lr_scheduler.tmax'.*did you mean 't_max'"),
    ({"lr_scheduler": {"name": "warmup_piecewise_decay", "boundaries": [70, 30]}}, r"boundaries.*must be increasing"),
    ({"total_epochs": float("nan")}, r"key 'total_epochs'.*must be finite"),
    ({"adam_betas": [0.9]}, r"key 'adam_betas'.*two values"),
    ({"mlp_hidden": "wide"}, r"key 'mlp_hidden'.*expected a list"),
    ({"label_smoothing": None}, r"key 'label_smoothing'.*may not be null"),
    ({"sam_mode": "base_sam", "use_preconditioner": False}, r"needs use_preconditioner=true"),
    ({"sam_mode": "asam", "perturb_mode": "ema_precond_grad", "use_preconditioner": True},
     r"sam_mode=asam requires perturb_mode=ema_grad"),
    ({"llqr_batch_update_mode": "chunked_lqr_segment"}, r"needs llqr_batch_update_chunk_size"),
    ({"model": "transformer_iwslt"},
     r"model transformer_iwslt needs a translation dataset \(iwslt14_de_en, synth_de_en; got digits\)"),
    ({"model": "transformer_iwslt", "dataset": "synth_de_en"},
     r"dataset synth_de_en is batched by tokens: set max_tokens"),
    ({"model": "transformer_iwslt", "dataset": "synth_de_en", "max_tokens": 64, "grad_acc_steps": 2},
     "grad_acc_steps must be 1"),
    ({"embed_dim": 10, "attention_heads": 4}, "attention_heads=4 must divide embed_dim=10"),
]


@pytest.mark.parametrize("values,message", BAD, ids=[next(iter(v)) + f"-{i}" for i, (v, _) in enumerate(BAD)])
def test_bad_run_config_is_rejected_with_a_clear_message(values, message):
    with pytest.raises(ConfigError, match=message):
        build_config(values)


def test_unknown_preset_suggests_a_close_one():
    with pytest.raises(ConfigError, match=r"unknown preset 'resnet18-cifar'.*did you mean 'resnet18-cifar10'"):
        resolve("resnet18-cifar")


def test_bad_key_inside_a_preset_names_the_file(presets_copy):
    (presets_copy / "broken.yaml").write_text("learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'learning_rat' in preset 'broken'.*learning_rate"):
        resolve("broken")


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["learning_rate"])


def test_every_field_documents_its_kind():
    for name, f in FIELDS.items():
        kinds = {"int", "float", "bool", "str", "list[int]", "list[float]", "list[str]", "schedule"}
        assert f.metadata["kind"] in kinds, name
