"""IWSLT14 preparation throughput and beam-search decoding speed on CPU, side by side in one run.

Preparation: the chain's own functions (llqr/data/iwslt_prep.py) on a synthetic corpus with
IWSLT-like sentence lengths (log-normal, median about 17 tokens, the two sides of a pair of
related length), a Zipf-distributed vocabulary of 400k word types (so the number of types grows
with the corpus, as in real text), punctuation and apostrophes for the Moses rules to work on:

- Moses tokenization of both languages with 1 and 2 worker processes (sentence pairs/s);
- joint BPE: learning ``--merges`` codes on the train pairs, and applying them to both sides;
- cleaning and splitting.

Each throughput is extrapolated linearly to the real corpus (160,239 train + 7,283 valid pairs
before the split, plus 6,750 test pairs), which gives the whole chain's expected time on 2 cores
(goal: 10 minutes). Learning BPE grows more slowly than linearly with the corpus (its cost follows
the number of word types), so it is timed on half and all of the corpus and extrapolated along the
power law through the two points (exponent capped at 1).

Decoding: beam search (beam 5) and greedy decoding of the tiny demo Transformer and, with
``--full-model``, of the paper-size one, in sentences/s on batches of ``--decode-batch`` sources.

    python benchmarks/iwslt_prep.py [--pairs 40000] [--merges 10000] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from llqr.data import iwslt_prep as prep

REAL_PAIRS = 160_239 + 7_283  # cleaned train pairs before the valid split
REAL_TEST = 6_750
VOCAB = 400_000
REAL_RAW_LINES = 174_443  # train tag-file lines per language (before tag filtering and cleaning)
GOAL_S = 600.0


def synthetic_corpus(pairs: int, seed: int = 0) -> dict[str, list[str]]:
    """Raw (untokenized, cased) sentence pairs with IWSLT-like lengths and punctuation."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzäöü"))
    # a large Zipf vocabulary, so new word types keep appearing as the corpus grows (Heaps' law),
    # as in real text: the cost of learning BPE follows the number of types
    codes = rng.integers(0, len(letters), size=(VOCAB, 12))
    sizes = rng.integers(2, 12, size=VOCAB)
    vocab = ["".join(letters[c[:n]]) for c, n in zip(codes, sizes)]
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    zipf /= zipf.sum()
    out = {"de": [], "en": []}
    base = rng.lognormal(np.log(17), 0.6, size=pairs)  # a pair's two sides have related lengths
    for lang, shift in (("de", 0), ("en", 7)):
        lrng = np.random.default_rng([seed, shift])
        lengths = np.clip(base * lrng.lognormal(0.0, 0.12, size=pairs), 1, 120).astype(int)
        tokens = lrng.choice(len(vocab), size=int(lengths.sum()), p=zipf)  # one draw: p has 400k entries
        ends = np.cumsum(lengths)
        for n, end in zip(lengths, ends):
            words = [vocab[(i + shift) % len(vocab)] for i in tokens[end - n:end]]
            words[0] = words[0].capitalize()
            if n > 6:
                words[n // 2] += ","
            if lrng.random() < 0.15:
                words[-1] = words[-1] + "'s"
            out[lang].append(" ".join(words) + ("?" if lrng.random() < 0.1 else "."))
    return out


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0


def bench_prep(pairs: int, merges: int) -> dict:
    corpus = synthetic_corpus(pairs)
    rows = {}
    tokenized = {}
    for workers in (1, 2):
        seconds = 0.0
        for lang in prep.LANGS:
            tokenized[lang], s = timed(prep.tokenize, corpus[lang], lang, workers)
            seconds += s
        rows[f"tokenize_{workers}p"] = {"seconds": seconds, "pairs_per_s": pairs / seconds}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for lang in prep.LANGS:
            prep.write_lines(tmp / f"tok.{lang}", tokenized[lang])
        clean_dir = tmp / "clean"
        _, s_clean = timed(prep.clean_pair, {lang: tmp / f"tok.{lang}" for lang in prep.LANGS},
                           {lang: clean_dir / f"train.{lang}" for lang in prep.LANGS})
        rows["clean"] = {"seconds": s_clean, "pairs_per_s": pairs / s_clean}
        kept = prep.count_lines(clean_dir / "train.de")
        code = tmp / "code"
        half_dir = tmp / "half"
        for lang in prep.LANGS:
            prep.write_lines(half_dir / f"train.{lang}", prep.read_lines(clean_dir / f"train.{lang}")[: kept // 2])
        half = {lang: half_dir / f"train.{lang}" for lang in prep.LANGS}
        _, s_half = timed(prep.learn_codes, half, tmp / "c2", merges)
        _, s_learn = timed(prep.learn_codes, {lang: clean_dir / f"train.{lang}" for lang in prep.LANGS}, code, merges)
        rows["bpe_learn_half"] = {"seconds": s_half, "pairs_per_s": (kept // 2) / s_half}
        rows["bpe_learn"] = {"seconds": s_learn, "pairs_per_s": kept / s_learn}
        s_apply = 0.0
        for lang in prep.LANGS:
            _, s = timed(prep.apply_codes, code, clean_dir / f"train.{lang}", tmp / f"bpe.{lang}")
            s_apply += s
        rows["bpe_apply"] = {"seconds": s_apply, "pairs_per_s": kept / s_apply}
    for name in ("tokenize_1p", "tokenize_2p"):
        combined = rows[name]["seconds"] + rows["bpe_learn"]["seconds"] + rows["bpe_apply"]["seconds"]
        rows[f"{name}+bpe"] = {"seconds": combined, "pairs_per_s": pairs / combined}
    # extrapolation to the real corpus, 2 cores: both languages tokenized with 2 workers each
    scale_tok = (REAL_RAW_LINES + REAL_TEST) / pairs
    scale_pairs = (REAL_PAIRS + REAL_TEST) / kept
    # learning BPE: a power law through the half- and full-corpus times (exponent capped at 1)
    exponent = min(1.0, max(0.0, float(np.log(rows["bpe_learn"]["seconds"] / rows["bpe_learn_half"]["seconds"])
                                       / np.log(kept / (kept // 2)))))
    full = {"tokenize": rows["tokenize_2p"]["seconds"] * scale_tok,
            "clean": rows["clean"]["seconds"] * REAL_RAW_LINES / pairs,
            "bpe_learn": rows["bpe_learn"]["seconds"] * (REAL_PAIRS / kept) ** exponent,
            "bpe_apply": rows["bpe_apply"]["seconds"] * scale_pairs}
    full["total"] = sum(full.values())
    return {"pairs": pairs, "kept_after_clean": kept, "merges": merges, "rows": rows,
            "bpe_learn_exponent": exponent, "extrapolated_s": full}


def bench_decode(batch: int, full_model: bool, repeats: int = 3) -> dict:
    import jax

    from llqr.config import resolve
    from llqr.decode.beam import beam_search, greedy_decode
    from llqr.models import build_model

    out = {}
    sizes = [("demo", resolve("synth-transformer-tiny"), 200)]
    if full_model:
        sizes.append(("full", resolve("transformer-iwslt14-de-en"), 8848))
    rng = np.random.default_rng(0)
    for name, cfg, vocab in sizes:
        model = build_model(cfg, vocab=(vocab, vocab))
        width = 24
        src = rng.integers(4, vocab, size=(batch, width)).astype(np.int32)
        src[:, -1] = 2
        variables = jax.jit(model.init, static_argnames="train")(jax.random.PRNGKey(0), (src[:1], src[:1]), train=False)
        for label, fn, kw in (("beam5", beam_search, {"beam_size": 5}), ("greedy", greedy_decode, {})):
            jax.block_until_ready(fn(model, variables, src, **kw))  # compile
            t0 = time.perf_counter()
            for _ in range(repeats):
                jax.block_until_ready(fn(model, variables, src, **kw))
            seconds = (time.perf_counter() - t0) / repeats
            params = sum(x.size for x in jax.tree_util.tree_leaves(variables))
            out[f"{name}_{label}"] = {"sentences_per_s": batch / seconds, "batch": batch, "src_width": width,
                                      "params": int(params)}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=40_000, help="synthetic sentence pairs")
    parser.add_argument("--merges", type=int, default=10_000, help="BPE merge operations (the reference: 10000)")
    parser.add_argument("--decode-batch", type=int, default=64)
    parser.add_argument("--full-model", action="store_true", help="also decode with the paper-size Transformer")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    result = {"prep": bench_prep(args.pairs, args.merges), "decode": bench_decode(args.decode_batch, args.full_model)}
    p = result["prep"]
    print(f"preparation on {p['pairs']} synthetic pairs ({p['kept_after_clean']} after cleaning), {p['merges']} merges")
    print(f"{'step':<18} {'seconds':>9} {'pairs/s':>10}")
    for name, row in p["rows"].items():
        print(f"{name:<18} {row['seconds']:>9.2f} {row['pairs_per_s']:>10.0f}")
    speedup = p["rows"]["tokenize_1p"]["seconds"] / p["rows"]["tokenize_2p"]["seconds"]
    print(f"tokenize speed-up 2 vs 1 process: {speedup:.2f}x")
    ex = p["extrapolated_s"]
    print(f"BPE learning time grows as corpus^{p['bpe_learn_exponent']:.2f} (half vs full corpus)")
    print("extrapolated to the real corpus (2 cores): " + ", ".join(f"{k} {v:.0f} s" for k, v in ex.items()))
    print(f"goal: whole chain <= {GOAL_S:.0f} s -> {'met' if ex['total'] <= GOAL_S else 'NOT met'}")
    print(f"\n{'decoder':<14} {'sentences/s':>12} {'params':>12}")
    for name, row in result["decode"].items():
        print(f"{name:<14} {row['sentences_per_s']:>12.1f} {row['params']:>12,}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
