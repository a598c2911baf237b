# Snakemake `script:` for the iwslt_* rules (rules/iwslt.smk): one preparation step per rule,
# chosen by params.step; the work is in llqr/data/iwslt_prep.py and llqr/data/iwslt_cache.py.
# Everything runs under the __main__ guard: the tokenizer's worker processes (forkserver) import
# this file again as their main module, where `snakemake` does not exist.
import json
import sys
from pathlib import Path


def run(sm, prep):
    step = sm.params.step
    if step == "extract":
        return prep.extract(sm.input[0], Path(sm.output[0]).parent)
    if step == "tokenize":
        lang = sm.wildcards.lang
        counts = prep.tokenize_train(sm.input.train, sm.output.train, lang, workers=sm.threads)
        for src, dest in zip(sm.input.xml, sm.output.xml):
            counts[Path(dest).name] = prep.tokenize_xml(src, dest, lang, workers=sm.threads)
        return counts
    if step == "clean":
        return prep.clean_pair({"de": sm.input.de, "en": sm.input.en}, {"de": sm.output.de, "en": sm.output.en})
    if step == "split":
        return prep.split({"de": sm.input.de, "en": sm.input.en},
                          {"de": list(sm.input.test_de), "en": list(sm.input.test_en)}, Path(sm.output[0]).parent)
    if step == "bpe":
        return prep.bpe(Path(sm.input[0]).parent, Path(sm.output[0]).parent, int(sm.params.merges))
    if step == "pack":
        prep.pack(Path(sm.input.bpe[0]).parent, sm.output.archive)
        stages = {stage: {Path(p).parent.name + "/" + Path(p).name: p for p in getattr(sm.input, stage)}
                  for stage in ("extracted", "tok", "tok_test", "clean", "splits", "bpe")}
        return prep.report(stages, sm.output.report)
    if step == "cache":
        from llqr.data.iwslt_cache import build_cache_from_archive

        return build_cache_from_archive(sm.input[0], Path(sm.output[0]).parent)
    raise ValueError(f"unknown iwslt step {step!r}")


def main(sm):
    sys.path.insert(0, str(Path(sm.scriptdir).parent))
    from llqr.data import iwslt_prep as prep
    from llqr.data.errors import DataError

    log_path = Path(sm.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        log_path.write_text(json.dumps({"step": sm.params.step, "counts": run(sm, prep)}, indent=2) + "\n")
    except DataError as exc:
        log_path.write_text(f"error: {exc}\n")
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main(snakemake)
