"""General English text for the character LM, from Debian packages that install offline.

    python -m src.lm build --english fortunes,kjv,gcide --exclude-root bench/out/corpus-paragraphs \\
        --order 6 --out bench/out/lm-english6.npz

Sources (each a Debian package; :data:`SOURCES`):

- ``fortunes``  every fortune file of ``fortunes``, ``fortunes-min`` and ``fortune-anarchism``
                (quotations, literature, essays; about 0.3M words);
- ``kjv``       the King James Bible through ``bible-kjv``'s reader (about 0.8M words: the
                older English of much of LibriSpeech's public-domain books);
- ``gcide``     the definitions of the Collaborative International Dictionary of English,
                ``dict-gcide`` (Webster 1913 and later: about 4M words of plain prose).

Text is split into sentences (and the dictionary's definitions at semicolons), and each goes
through :func:`src.corpus.text.normalize_text` (digits and symbols: dropped, as for
transcripts). :func:`decontaminate` then removes every sentence that shares a run of
``n`` words with an evaluation text (the benchmark's dev and test transcripts), or
that such a text contains whole, so the LM never saw what it is measured on.
"""
from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

from src.corpus.text import FORTUNES_DIR, SENTENCE_END, normalize_text
from src.errors import UserError

FORTUNES_SKIPPED = frozenset({"art", "ascii-art", "translate-me", "perl"})  # pictures, code, other languages
GCIDE = Path("/usr/share/dictd/gcide.dict.dz")
SOURCES = {"fortunes": "apt-get install fortunes fortunes-min fortune-anarchism",
           "kjv": "apt-get install bible-kjv",
           "gcide": "apt-get install dict-gcide"}
MIN_WORDS = 3


def _sentences(paragraph: str) -> Iterator[str]:
    for raw in SENTENCE_END.split(" ".join(paragraph.split())):
        text = normalize_text(raw)
        if not text:
            continue
        words = text.split()
        letters = sum(len(w) == 1 and w not in ("A", "I") for w in words)  # initials, abbreviations: "D D LL D"
        if len(words) >= MIN_WORDS and letters <= len(words) // 5:
            yield text


def fortunes(folder: Path = FORTUNES_DIR) -> Iterator[str]:
    """Sentences of every fortune file, attributions (lines starting '--') left out."""
    for path in sorted(folder.iterdir()):
        if path.suffix or path.name in FORTUNES_SKIPPED or not path.is_file():
            continue  # .dat indexes, .u8 links, pictures, code
        content = path.read_bytes().decode("utf-8", errors="replace")
        for fortune in re.split(r"^%\s*$", content, flags=re.M):
            lines = [ln for ln in fortune.splitlines() if not ln.lstrip().startswith("--")]
            yield from _sentences(" ".join(lines))


def kjv() -> Iterator[str]:
    """The King James Bible, verse by verse, through bible-kjv's reader."""
    result = subprocess.run(["bible", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True)
    # "Genesis 1" chapter headings, then verses "  12 And the gold ..." wrapped over lines
    lines = (line for line in result.stdout.splitlines() if not re.match(r"^\S.* \d+$", line))
    yield from _sentences(" ".join(re.sub(r"^\s*\d+\s", " ", line) for line in lines))


def gcide(path: Path = GCIDE) -> Iterator[str]:
    """The dictionary's definitions: entry text without headwords, etymologies, sources or labels."""
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        entry: list[str] = []
        started = False
        for line in f:
            started = started or "\\" in line
            if not started:
                continue  # front matter and notices until the first headword
            if not line.strip():
                if entry:
                    yield from _definition(" ".join(entry))
                entry = []
            elif line.startswith(" "):
                entry.append(line.strip())
            elif "\\" in line:  # "Abdicate \Ab"di*cate\, v. t. [L. ...]": a headword line starts an entry
                entry = [line.split("]", 1)[1] if "[" in line and "]" in line else ""]
        if entry:
            yield from _definition(" ".join(entry))


def _definition(text: str) -> Iterator[str]:
    text = re.sub(r"\[[^\]]*\]", " ", text)  # etymologies, [1913 Webster], [R.]
    text = re.sub(r"--\s*[A-Z][\w. ]*", " ", text)  # --Bailey., --Shak.: authorities
    text = re.sub(r"\([^)]*\)", " ", text)  # (Anat.), (Zool.)
    text = re.sub(r"\b\d+\.\s", " ", text)  # sense numbers
    for part in re.split(r"[;:]", text):
        yield from _sentences(part.strip().rstrip(",") + ".")


READERS = {"fortunes": fortunes, "kjv": kjv, "gcide": gcide}


def english_sentences(names: Iterable[str]) -> list[str]:
    """The sentences of the named sources, in order; UserError naming the package that is missing."""
    sentences = []
    for name in names:
        if name not in READERS:
            raise UserError(f"--english: unknown source '{name}'; use some of {', '.join(READERS)}")
        present = {"fortunes": FORTUNES_DIR.is_dir(), "kjv": shutil.which("bible") is not None,
                   "gcide": GCIDE.is_file()}[name]
        if not present:
            raise UserError(f"--english: source '{name}' is not installed; {SOURCES[name]}")
        sentences.extend(READERS[name]())
    return sentences


def decontaminate(sentences: list[str], held_out: Iterable[str], n: int = 8) -> tuple[list[str], int]:
    """``sentences`` without those that share ``n`` consecutive words with a held-out text, or that
    a held-out text contains whole; returns (kept, removed)."""
    grams: set[tuple[str, ...]] = set()
    blob = []
    for text in held_out:
        words = text.split()
        grams.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        blob.append(" " + " ".join(words) + " ")
    joined = "\n".join(blob)
    kept = []
    for sentence in sentences:
        words = sentence.split()
        if (len(words) >= n and any(tuple(words[i : i + n]) in grams for i in range(len(words) - n + 1))) \
                or (len(words) < n and f" {sentence} " in joined):
            continue
        kept.append(sentence)
    return kept, len(sentences) - len(kept)
