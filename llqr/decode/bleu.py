"""From decoded BPE token strings to detokenized SacreBLEU, as the reference scores translations.

Hypotheses and references go through the same steps: remove the ``"@@ "`` BPE joints, then Moses
detokenization (English), then ``sacrebleu.corpus_bleu`` with its defaults (13a tokenization,
exponential smoothing, cased). Scoring detokenized text keeps the number comparable with other
SacreBLEU results instead of with fairseq's tokenized BLEU.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

BPE_JOINT = "@@ "


def remove_bpe(line: str) -> str:
    """Undo subword-nmt segmentation; a trailing ``@@`` (a cut-off hypothesis) is dropped too."""
    line = (line + " ").replace(BPE_JOINT, "").rstrip()
    return line[:-2] if line.endswith("@@") else line


@lru_cache(maxsize=4)
def _detokenizer(lang: str):
    from sacremoses import MosesDetokenizer

    return MosesDetokenizer(lang=lang)


def detokenize(line: str, lang: str = "en") -> str:
    """Moses detokenization of one whitespace-tokenized line (HTML escapes undone)."""
    return _detokenizer(lang).detokenize(line.split())


def postprocess(lines: Sequence[str], lang: str = "en") -> list[str]:
    return [detokenize(remove_bpe(line), lang) for line in lines]


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], lang: str = "en") -> dict:
    """SacreBLEU of BPE'd, tokenized hypotheses against references processed the same way.

    Returns the score and the sufficient statistics (n-gram counts and totals, system and
    reference length), so corpus BLEU can be recomputed or summed across shards later.
    """
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    hyps, refs = postprocess(hypotheses, lang), postprocess(references, lang)
    bleu = sacrebleu.corpus_bleu(hyps, [refs])
    return {"bleu": float(bleu.score), "counts": [int(c) for c in bleu.counts],
            "totals": [int(t) for t in bleu.totals], "sys_len": int(bleu.sys_len), "ref_len": int(bleu.ref_len),
            "examples": len(hyps)}
