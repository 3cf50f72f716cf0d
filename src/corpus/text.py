"""Transcript normalisation into the competition's alphabet: A-Z, apostrophe, space.

    normalize_text("Don't panic -- it's only a café/bar!")  ->  "DON'T PANIC IT'S ONLY A CAFE BAR"
    normalize_text("Call 911")                               ->  None   (digits: unmappable)

Nothing is spelled out (no number or symbol expansion): text that a reader would
say differently from how it is written (digits, ``&``, ``%``, ``@``, ``$``, letters
outside the Latin alphabet) is rejected with ``None`` so that the caller skips the
utterance and counts the reason as :data:`UNMAPPABLE`.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")  # Debian's fortunes: English sentences for synth and the LM
SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z])")  # where running text splits into sentences

UNMAPPABLE = "unmappable text"  # the skip reason callers count when normalize_text returns None

# Letters that NFKD does not decompose into ASCII.
_LETTER_FOLDS = {
    "ß": "SS", "Æ": "AE", "æ": "AE", "Œ": "OE", "œ": "OE", "Ø": "O", "ø": "O",
    "Ł": "L", "ł": "L", "Đ": "D", "đ": "D", "Ð": "D", "ð": "D", "Þ": "TH", "þ": "TH",
    "ı": "I",
}
# Apostrophe look-alikes (right single quote, modifier letters, prime, backtick, acute).
_APOSTROPHES = frozenset("'\u2019\u2018\u02bc\u02b9\u2032`\u00b4")
# Separators that become a space.
_SPACES = frozenset("-/\\_\u2010\u2011\u2012\u2013\u2014\u2015")
# Punctuation that a reader says aloud: rejecting beats a transcript that disagrees with the audio.
_SPOKEN_SYMBOLS = frozenset("&@#%§¶")


def _fold_char(ch: str) -> str | None:
    """One character -> replacement text ('' drops it, ' ' separates), or None if unmappable."""
    if "A" <= ch <= "Z":
        return ch
    if ch in _APOSTROPHES:
        return "'"
    if ch in _SPACES or ch.isspace():
        return " "
    if ch in _SPOKEN_SYMBOLS:
        return None
    if ch in _LETTER_FOLDS:
        return _LETTER_FOLDS[ch]
    category = unicodedata.category(ch)
    if category.startswith("P"):  # other punctuation: quotes, brackets, commas, stops
        return " "
    if category.startswith("M"):  # combining marks left over by NFKD (accents)
        return ""
    if category in ("Cc", "Cf", "Zs", "Zl", "Zp"):
        return " "
    # digits (N*), symbols (S*), letters of other scripts (L*)
    return None


def _tidy_apostrophes(word: str) -> str:
    """Keep apostrophes inside words (DON'T) and a possessive plural (JAMES'); drop quoting ones."""
    word = word.lstrip("'")
    stripped = word.rstrip("'")
    if stripped != word and stripped.endswith("S"):
        stripped += "'"
    while "''" in stripped:
        stripped = stripped.replace("''", "'")
    return stripped


def normalize_text(raw: str) -> str | None:
    """Raw transcript -> uppercase A-Z / apostrophe / single spaces, or None.

    Uppercases, folds accents (NFKD), maps hyphens, dashes and slashes to spaces,
    drops other punctuation, keeps in-word apostrophes, collapses spaces. Returns
    None when digits, spoken symbols or letters outside A-Z remain, or when the
    result is empty.
    """
    if not isinstance(raw, str):
        return None
    decomposed = unicodedata.normalize("NFKD", raw.upper())
    pieces = []
    for ch in decomposed:
        folded = _fold_char(ch)
        if folded is None:
            return None
        pieces.append(folded)
    words = [_tidy_apostrophes(w) for w in "".join(pieces).split()]
    text = " ".join(w for w in words if w)
    return text or None
