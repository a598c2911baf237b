"""The demo's German-English corpus: synthetic sentence pairs in the raw IWSLT14 archive layout.

A small grammar with the parts of German that make translation more than word substitution:
gender and case on articles and adjectives, plural agreement, verb-second order after a fronted
adverb, verb-final subordinate clauses, modal verbs with the infinitive at the end, ``nicht`` after
a definite object and yes/no questions (English ``does`` support). Every sentence is generated
here, so the corpus has no licence or provenance questions; it is written byte-reproducibly
(fixed seed, tar and gzip timestamps 0) and shipped as ``demo/synth-de-en.tgz``::

    python -m llqr.data.synth_corpus demo/synth-de-en.tgz

The layout matches the official ``de-en.tgz``: ``de-en/train.tags.de-en.{de,en}`` (talk header tag
lines between blocks of sentences) and the five ``IWSLT14.TED*.de-en.{de,en}.xml`` files with
``<seg id="N">`` lines, so the demo runs through exactly the same preparation rules.
"""

from __future__ import annotations

import argparse
import gzip
import io
import random
import tarfile
from pathlib import Path

from .iwslt_prep import LANGS, XML_SETS, train_member, xml_member

DEFAULT_TRAIN_PAIRS = 3000
DEFAULT_SEGS_PER_XML = 40
TALK_SIZE = 60  # sentences between two talk headers

# gender, German singular, German plural, English singular, English plural
NOUNS = [
    ("m", "Hund", "Hunde", "dog", "dogs"), ("f", "Katze", "Katzen", "cat", "cats"),
    ("n", "Kind", "Kinder", "child", "children"), ("m", "Mann", "Männer", "man", "men"),
    ("f", "Frau", "Frauen", "woman", "women"), ("n", "Buch", "Bücher", "book", "books"),
    ("m", "Lehrer", "Lehrer", "teacher", "teachers"), ("f", "Stadt", "Städte", "city", "cities"),
    ("n", "Haus", "Häuser", "house", "houses"), ("m", "Apfel", "Äpfel", "apple", "apples"),
    ("f", "Blume", "Blumen", "flower", "flowers"), ("n", "Auto", "Autos", "car", "cars"),
    ("m", "Vogel", "Vögel", "bird", "birds"), ("f", "Schule", "Schulen", "school", "schools"),
    ("n", "Bild", "Bilder", "picture", "pictures"), ("m", "Freund", "Freunde", "friend", "friends"),
    ("f", "Lampe", "Lampen", "lamp", "lamps"), ("m", "Tisch", "Tische", "table", "tables"),
    ("n", "Lied", "Lieder", "song", "songs"), ("f", "Tür", "Türen", "door", "doors"),
]
ANIMATE = {"Hund", "Katze", "Kind", "Mann", "Frau", "Lehrer", "Vogel", "Freund"}
# German stem, English
ADJECTIVES = [("groß", "big"), ("klein", "small"), ("alt", "old"), ("neu", "new"), ("rot", "red"),
              ("schön", "beautiful"), ("jung", "young"), ("müde", "tired"), ("laut", "loud"), ("still", "quiet")]
# German 3sg, German 3pl / infinitive, English 3sg, English base
VERBS = [("sieht", "sehen", "sees", "see"), ("mag", "mögen", "likes", "like"), ("findet", "finden", "finds", "find"),
         ("kauft", "kaufen", "buys", "buy"), ("malt", "malen", "paints", "paint"),
         ("hört", "hören", "hears", "hear"), ("braucht", "brauchen", "needs", "need"),
         ("kennt", "kennen", "knows", "know"), ("sucht", "suchen", "looks for", "look for"),
         ("trägt", "tragen", "carries", "carry")]
# German 3sg, German 3pl, English 3sg, English plural
MODALS = [("kann", "können", "can", "can"), ("muss", "müssen", "must", "must"),
          ("will", "wollen", "wants to", "want to")]
# German, English, English position: "front" (Today the dog ...) or "mid" (The dog often ...)
ADVERBS = [("heute", "today", "front"), ("morgen", "tomorrow", "front"), ("oft", "often", "mid"),
           ("manchmal", "sometimes", "front"), ("jetzt", "now", "front"), ("immer", "always", "mid")]
FRAMES = [("ich glaube", "i think"), ("wir wissen", "we know"), ("sie sagt", "she says"), ("er hofft", "he hopes")]

_DEF = {"nom": {"m": "der", "f": "die", "n": "das", "pl": "die"},
        "acc": {"m": "den", "f": "die", "n": "das", "pl": "die"}}
_INDEF = {"nom": {"m": "ein", "f": "eine", "n": "ein"}, "acc": {"m": "einen", "f": "eine", "n": "ein"}}
# adjective endings after the definite / indefinite article
_WEAK = {"nom": {"m": "e", "f": "e", "n": "e", "pl": "en"}, "acc": {"m": "en", "f": "e", "n": "e", "pl": "en"}}
_MIXED = {"nom": {"m": "er", "f": "e", "n": "es"}, "acc": {"m": "en", "f": "e", "n": "es"}}


def _adj_form(stem: str, ending: str) -> str:
    return stem[:-1] + ending if stem.endswith("e") and ending.startswith("e") else stem + ending


def _noun_phrase(rng: random.Random, case: str, *, animate: bool = False) -> tuple[str, str, bool]:
    """(German, English, plural) of a noun phrase in ``case``."""
    gender, sg, pl, en_sg, en_pl = rng.choice([n for n in NOUNS if not animate or n[1] in ANIMATE])
    plural = rng.random() < 0.25
    definite = plural or rng.random() < 0.7
    adjective = rng.choice(ADJECTIVES) if rng.random() < 0.4 else None
    key = "pl" if plural else gender
    de = [_DEF[case][key] if definite else _INDEF[case][key]]
    en_noun = en_pl if plural else en_sg
    en_head = "the" if definite else ("an" if (adjective[1] if adjective else en_noun)[0] in "aeiou" else "a")
    en = [en_head] if not plural or definite else []
    if adjective:
        ending = (_WEAK if definite else _MIXED)[case][key]
        de.append(_adj_form(adjective[0], ending))
        en.append(adjective[1])
    de.append(pl if plural else sg)
    en.append(en_noun)
    return " ".join(de), " ".join(en), plural


def _clause(rng: random.Random) -> dict:
    subj_de, subj_en, plural = _noun_phrase(rng, "nom", animate=True)
    obj_de, obj_en, _ = _noun_phrase(rng, "acc")
    verb = rng.choice(VERBS)
    return {"subj": (subj_de, subj_en), "obj": (obj_de, obj_en), "plural": plural, "verb": verb,
            "definite_obj": obj_de.split()[0] in ("der", "die", "das", "den")}


def _finite(c: dict) -> tuple[str, str]:
    de3, de_pl, en3, en_base = c["verb"]
    return (de_pl if c["plural"] else de3), (en_base if c["plural"] else en3)


def sentence_pair(rng: random.Random) -> tuple[str, str]:
    """One German-English pair (cased, with final punctuation, not tokenized)."""
    c = _clause(rng)
    (sd, se), (od, oe) = c["subj"], c["obj"]
    vd, ve = _finite(c)
    kind = rng.choices(["plain", "adverb", "subordinate", "modal", "negation", "question", "and"],
                       weights=[4, 3, 2, 2, 2, 1, 1])[0]
    if kind == "adverb":
        ad, ae, pos = rng.choice(ADVERBS)
        de = f"{ad} {vd} {sd} {od} ."
        en = f"{ae} , {se} {ve} {oe} ." if pos == "front" else f"{se} {ae} {ve} {oe} ."
    elif kind == "subordinate":
        fd, fe = rng.choice(FRAMES)
        de, en = f"{fd} , dass {sd} {od} {vd} .", f"{fe} that {se} {ve} {oe} ."
    elif kind == "modal":
        modal = rng.choice(MODALS)
        md = modal[1] if c["plural"] else modal[0]
        me = modal[3] if c["plural"] else modal[2]
        de, en = f"{sd} {md} {od} {c['verb'][1]} .", f"{se} {me} {c['verb'][3]} {oe} ."
    elif kind == "negation" and c["definite_obj"]:
        aux = "do" if c["plural"] else "does"
        de, en = f"{sd} {vd} {od} nicht .", f"{se} {aux} not {c['verb'][3]} {oe} ."
    elif kind == "question":
        aux = "do" if c["plural"] else "does"
        de, en = f"{vd} {sd} {od} ?", f"{aux} {se} {c['verb'][3]} {oe} ?"
    elif kind == "and":
        c2 = _clause(rng)
        vd2, ve2 = _finite(c2)
        de = f"{sd} {vd} {od} und {c2['subj'][0]} {vd2} {c2['obj'][0]} ."
        en = f"{se} {ve} {oe} and {c2['subj'][1]} {ve2} {c2['obj'][1]} ."
    else:
        de, en = f"{sd} {vd} {od} .", f"{se} {ve} {oe} ."
    return _surface(de), _surface(en)


def _surface(text: str) -> str:
    """Capitalise, attach punctuation, capitalise German nouns: the raw, untokenized form."""
    nouns = {n[1] for n in NOUNS} | {n[2] for n in NOUNS}
    words = [w.capitalize() if w.capitalize() in nouns else w for w in text.split()]
    out = " ".join(words).replace(" ,", ",").replace(" .", ".").replace(" ?", "?")
    return out[0].upper() + out[1:]


def _talk_header(talk: int, lang: str) -> list[str]:
    title = {"de": f"Sprecherin {talk}: Ein Vortrag über Tiere", "en": f"Speaker {talk}: A talk about animals"}[lang]
    desc = {"de": "Kurze Sätze über Hunde, Katzen und Bücher.",
            "en": "Short sentences about dogs, cats and books."}[lang]
    return [f"<url>http://example.org/talks/synthetic_{talk}.html</url>", "<keywords>synthetic, demo</keywords>",
            f"<speaker>Speaker {talk}</speaker>", f"<talkid>{talk}</talkid>", f"<title>{title}</title>",
            f"<description>{desc}</description>"]


def _xml(name: str, lang: str, segments: list[str]) -> str:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<mteval>",
             f'<srcset setid="iwslt2014-{name}" srclang="{"german" if lang == "de" else "english"}">',
             f'<doc docid="{name}" genre="lectures">', "<url>http://example.org/talks/synthetic.html</url>",
             "<description>Synthetic demo talk.</description>", "<talkid>0</talkid>", "<title>Synthetic</title>"]
    lines += [f'<seg id="{k}"> {text} </seg>' for k, text in enumerate(segments, start=1)]
    return "\n".join(lines + ["</doc>", "</srcset>", "</mteval>"]) + "\n"


def corpus_files(*, pairs: int = DEFAULT_TRAIN_PAIRS, segs: int = DEFAULT_SEGS_PER_XML,
                 seed: int = 0) -> dict[str, str]:
    """Member name (inside ``de-en/``) -> file text."""
    rng = random.Random(seed)
    train = {lang: [] for lang in LANGS}
    for i in range(pairs):
        if i % TALK_SIZE == 0:
            for lang in LANGS:
                train[lang] += _talk_header(i // TALK_SIZE + 1, lang)
        de, en = sentence_pair(rng)
        train["de"].append(de)
        train["en"].append(en)
    files = {train_member(lang): "\n".join(train[lang]) + "\n" for lang in LANGS}
    for name in XML_SETS:
        pairs_xml = [sentence_pair(rng) for _ in range(segs)]
        for i, lang in enumerate(LANGS):
            files[xml_member(name, lang)] = _xml(name, lang, [p[i] for p in pairs_xml])
    return files


def write_archive(path, **kwargs) -> Path:
    """The corpus as ``de-en.tgz``, byte-identical for the same arguments."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, text in sorted(corpus_files(**kwargs).items()):
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"de-en/{name}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", help="archive to write, e.g. demo/synth-de-en.tgz")
    parser.add_argument("--pairs", type=int, default=DEFAULT_TRAIN_PAIRS, help="training sentence pairs")
    parser.add_argument("--segs", type=int, default=DEFAULT_SEGS_PER_XML, help="segments per evaluation XML file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_archive(args.output, pairs=args.pairs, segs=args.segs, seed=args.seed)
    print(f"wrote {path} ({path.stat().st_size} bytes, {args.pairs} train pairs, {args.segs * len(XML_SETS)} test)")


if __name__ == "__main__":
    main()
