"""Translation end to end: the shipped demo corpus, BLEU text processing, the LLQR problem under
padding, and a real (tiny) training run with valid/test BLEU and a best-BLEU checkpoint."""

from __future__ import annotations

import functools
import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from conftest import REPO
from fixtures.iwslt import prepare_translation_data
from llqr.config import resolve
from llqr.data import synth_corpus
from llqr.decode.beam import EOS, _beam_core, max_decode_len
from llqr.decode.bleu import corpus_bleu, detokenize, remove_bpe
from llqr.models.transformer import TransformerMT
from llqr.optim.lqr import make_problem
from llqr.train.loop import run

TINY = {"embed_dim": 16, "ffn_dim": 32, "attention_heads": 2, "encoder_layers": 1, "decoder_layers": 1,
        "max_tokens": 512, "num_buckets": 1, "eval_batch_size": 16, "beam_size": 2, "logging_freq": 4,
        "report_freq": 1000}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("translation")
    raw = synth_corpus.write_archive(root / "raw" / "de-en.tgz", pairs=240, segs=4)
    prepare_translation_data(raw, root / "data" / "synth_de_en", merges=60)
    return root / "data"


def test_shipped_demo_corpus_is_what_the_generator_writes(tmp_path):
    shipped = REPO / "demo" / "synth-de-en.tgz"
    assert synth_corpus.write_archive(tmp_path / "x.tgz").read_bytes() == shipped.read_bytes()
    source = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["data_sources"]["synth_de_en"]
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == source["sha256"]


def test_synthetic_grammar_agrees_in_case_and_number():
    import random

    rng = random.Random(3)
    pairs = [synth_corpus.sentence_pair(rng) for _ in range(400)]
    for de, en in pairs:
        assert de[0].isupper() and en[0].isupper() and de[-1] in ".?" and de[-1] == en[-1]
        assert " einen " not in f" {de} " or "Einen" not in de.split()[0]  # einen is accusative only
        if " dass " in de:  # verb-final subordinate clause: the last word before '.' is a verb
            assert de.split()[-1].rstrip(".") in {v[0] for v in synth_corpus.VERBS} | {v[1] for v in synth_corpus.VERBS}
    assert any(de.startswith(("Heute", "Morgen", "Oft", "Manchmal", "Jetzt", "Immer")) for de, _ in pairs)


@pytest.mark.parametrize("text", [
    "It's the dog's \"big\" idea, isn't it? Yes -- 3.5 km & more.",
    "The teachers (and the children) paint 12 red doors; nobody knows why!",
])
def test_moses_detokenization_round_trips(text):
    from sacremoses import MosesTokenizer

    tokenized = MosesTokenizer("en").tokenize(text, return_str=True, escape=True)
    assert tokenized != text and detokenize(tokenized) == text


def test_bpe_removal_and_bleu_of_identical_text():
    assert remove_bpe("the d@@ og sees the c@@ at .") == "the dog sees the cat ."
    assert remove_bpe("a cut off hypo@@") == "a cut off hypo"
    result = corpus_bleu(["the d@@ og sees the c@@ at ."], ["the dog sees the cat ."])
    assert result["bleu"] == pytest.approx(100.0) and result["sys_len"] == result["ref_len"] == 6
    assert corpus_bleu(["a cat ."], ["the dog sees the cat ."])["bleu"] < 10
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        corpus_bleu(["a", "b"], ["a"])


def test_a_model_that_copies_its_input_scores_bleu_100(data_root):
    """Beam search over an oracle that copies the reference ids, then the real dictionary decode,
    BPE removal and detokenization: BLEU 100 on the whole valid split."""
    from llqr.data import iwslt

    corpus = data_root / "synth_de_en"
    data = iwslt.load(corpus / "iwslt14.tokenized.de-en.tar.gz", corpus / "numeric")
    hyps, refs = [], []
    for (_src, _prev), tgt, ids in data.eval_batches("valid", 8):
        rows, width = tgt.shape
        max_len = max_decode_len(width, 1.2, 10, 1024)
        target = np.full((rows, max_len + 1), EOS, np.int32)
        target[:, :width] = np.where(tgt == data.pad_id, EOS, tgt)
        target = jnp.asarray(target)
        vocab, beam = data.tgt_vocab, 3

        def step(state, last, t, target=target, beam=beam, vocab=vocab):
            row = jnp.arange(target.shape[0] * beam) // beam
            want = target[row, t][:, None]
            # the copied token is certain; an early eos is the least likely alternative
            logits = jnp.where(jnp.arange(vocab) == want, 10.0, jnp.where(jnp.arange(vocab) == EOS, -30.0, 0.0))
            return jax.nn.log_softmax(logits, axis=-1), state

        tokens, _ = jax.jit(functools.partial(_beam_core, step, (), rows, beam_size=beam, max_len=max_len))()
        tokens = np.asarray(tokens)
        hyps += [data.decode(tokens[i]) for i in range(len(ids))]
        refs += data.references("valid", ids)
    assert len(hyps) == data.split_size("valid")
    assert hyps == refs and corpus_bleu(hyps, refs)["bleu"] == pytest.approx(100.0)


@pytest.mark.slow
def test_padding_does_not_change_the_llqr_problem():
    """Extra left padding of the source, right padding of the target and all-pad rows leave the
    P-fit's gradient and curvature unchanged: pad positions leave the loss and add no curvature."""
    model = TransformerMT(src_vocab=12, tgt_vocab=12, embed_dim=16, ffn_dim=32, heads=2, encoder_layers=1,
                          decoder_layers=1, dropout_rate=0.0)
    src = np.array([[5, 6, 7, 2], [1, 8, 9, 2]], np.int32)
    prev = np.array([[2, 4, 5, 6], [2, 7, 1, 1]], np.int32)
    tgt = np.array([[4, 5, 6, 2], [7, 2, 1, 1]], np.int32)
    pad_rows = lambda a, w_left=0, w_right=0: np.pad(  # noqa: E731
        np.pad(a, ((0, 1), (0, 0)), constant_values=1), ((0, 0), (w_left, w_right)), constant_values=1)
    big = (pad_rows(src, w_left=3), pad_rows(prev, w_right=2)), pad_rows(tgt, w_right=2)
    params = model.init(jax.random.PRNGKey(0), (src, prev), train=False)["params"]

    def log_probs(p, x):
        out = model.apply({"params": p}, x, train=False)
        return jnp.where((x[1] != 1)[..., None], out, 0.0)

    v = jax.tree_util.tree_map(lambda a: jax.random.normal(jax.random.PRNGKey(1), a.shape), params)

    @functools.partial(jax.jit, static_argnames="divergence")
    def grad_and_curvature(x, y, divergence):
        problem = make_problem(log_probs, params, x, y, divergence=divergence, ignore_index=1, label_smoothing=0.1)
        return problem.grad, problem.curvature(v)

    for divergence in ("ngd",):  # newton's curvature is the loss's, whose masking the gradient check covers
        small = grad_and_curvature((src, prev), tgt, divergence)
        padded = grad_and_curvature(big[0], big[1], divergence)
        for a, b in zip(jax.tree_util.tree_leaves(small[0]), jax.tree_util.tree_leaves(padded[0])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        for a, b in zip(jax.tree_util.tree_leaves(small[1]), jax.tree_util.tree_leaves(padded[1])):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def _events(results, cell):
    lines = (results / "cells" / cell / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow  # ~1 min; the workflow test below trains and scores a translation cell in the default run
def test_translation_run_with_llqr_and_sam_reports_valid_and_test_bleu_and_keeps_the_best(tmp_path, data_root):
    cfg = resolve("synth-transformer-tiny", {**TINY, "max_steps": 12, "test_eval_freq": 6, "full_eval_freq": 6,
                                             "use_preconditioner": True, "divergence": "ngd", "ema_decay": 0.925,
                                             "update_preconditioner_every": 5, "precond_steps": 3,
                                             # the llqr_sam_iwslt path: SAM with P from step 4 on
                                             "sam_mode": "base_fsam", "start_sam_after_step": 4,
                                             "perturbation_rho": 0.05, "perturb_mode": "ema_precond_grad"})
    cell = "t/llqr/seed42"
    summary = run(cfg, cell_id=cell, results_dir=tmp_path / "r", checkpoints_dir=tmp_path / "c", data_root=data_root)
    assert summary["status"] == "ok" and summary["metric"] == "valid_bleu"
    final = summary["final_metrics"]
    for key in ("valid_bleu", "test_bleu", "valid_token_accuracy", "test_token_accuracy", "valid_ppl",
                "valid_bleu_counts_3", "test_bleu_ref_len"):
        assert key in final, key
    assert 0.0 <= final["test_bleu"] <= 100.0 and final["valid_bleu_examples"] == 10  # every 23rd of 240
    events = _events(tmp_path / "r", cell)
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [6, 12]
    assert all("valid_token_accuracy" in e and "valid_bleu" in e for e in evals)
    assert [e["step"] for e in events if e["event"] == "precond"] == [0, 5, 10]
    best = max(evals, key=lambda e: (e["valid_bleu"], -e["step"]))
    assert summary["best"] == {"value": best["valid_bleu"], "step": best["step"]}
    best_dir = next((tmp_path / "c").glob(f"{cell}/*/best"))
    assert [p.name for p in best_dir.iterdir() if p.name.isdigit()] == [str(best["step"])]
    train = [e for e in events if e["event"] == "train"]
    assert train and all(np.isfinite(e["train_loss"]) for e in train)


def test_missing_numeric_cache_names_the_rule(tmp_path, data_root):
    (tmp_path / "synth_de_en").mkdir()
    archive = data_root / "synth_de_en" / "iwslt14.tokenized.de-en.tar.gz"
    (tmp_path / "synth_de_en" / archive.name).write_bytes(archive.read_bytes())
    summary = run(resolve("synth-transformer-tiny", TINY), cell_id="t/x/seed42", results_dir=tmp_path / "r",
                  checkpoints_dir=tmp_path / "c", data_root=tmp_path)
    assert summary["status"] == "failed-data" and "iwslt_cache" in summary["message"]


@pytest.mark.workflow
def test_translation_surface_through_the_workflow(tmp_path):
    """The demo's path through Snakemake: shipped-layout raw archive -> preparation rules ->
    numeric cache -> one training job per cell -> a BLEU table."""
    from conftest import run_snakemake, write_yaml

    raw = synth_corpus.write_archive(tmp_path / "mirror" / "de-en.tgz", pairs=240, segs=4)
    tiny = {k: v for k, v in TINY.items() if k != "report_freq"}
    surface = {"group": "demo", "title": "tiny translation", "caption": "tiny", "metric": "test_bleu",
               "presets": ["synth-transformer-tiny"], "seeds": [1],
               "axes": {"method": [{"label": "adamw", "set": {**tiny, "max_steps": 6, "test_eval_freq": 3}}]},
               "table": {"rows": ["preset"], "columns": ["method"]}}
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config = write_yaml(tmp_path / "t.yaml", {
        "surfaces": {**{name: None for name in base["surfaces"]}, "tiny_translation": surface},
        "data_sources": {"synth_de_en": {"local": str(raw), "file": "de-en.tgz", "bpe_merges": 60,
                                         "sha256": hashlib.sha256(raw.read_bytes()).hexdigest()}}})
    work = tmp_path / "work"
    work.mkdir()
    proc = run_snakemake(["--cores", "2", "--configfile", str(config)], work)
    for rule in ("iwslt_extract", "iwslt_tokenize", "iwslt_bpe", "iwslt_pack", "iwslt_cache", "train", "aggregate"):
        assert f"rule {rule}:" in proc.stdout + proc.stderr, rule
    table = (work / "results" / "surfaces" / "tiny_translation" / "table.csv").read_text()
    assert "synth-transformer-tiny" in table and ",ok," in table
