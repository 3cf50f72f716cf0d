"""A multi-speaker synthetic corpus in the competition layout, spoken by espeak-ng, flite and festival.

    python -m src.corpus.synth OUT [--hours H | --counts train-clean-100=300,dev-clean=50,test-clean=50]
                             [--seed S] [--workers N] [--noise SNR_DB] [--dtype float16|float32]
                             [--preset sample | heldout | paragraphs] [--channel dev-clean]
                             [--augment N [--noise-dir DIR]]

The bundled sample ``data/sample`` is exactly::

    rm -rf data/sample && python -m src.corpus.synth data/sample --preset sample --workers 2

(``--preset sample``: 1,000 + 40 train, 50 dev and 50 test utterances of sentences of at most
12 words, all spoken by the same 12 English voices, float16. ``--preset heldout``: the harder
sample bundled before, 320 + 40 train utterances, dev and test by voices never heard in training.)

The accuracy benchmark's corpus (``bench/bench_accuracy.py``) is::

    python -m src.corpus.synth bench/out/corpus-paragraphs --preset paragraphs --workers 2

``--preset paragraphs``: utterances as long as LibriSpeech's (:data:`PARAGRAPH_CHARS`: consecutive
sentences of a shuffled pool joined into a paragraph of a drawn length, training 187 characters
on average, dev and test 109 with a tail to 520), each speaker's engine drawn by
:data:`ENGINE_SHARES` (espeak-ng half, flite and festival a quarter each), one flite and one
festival voice kept for dev and test (:data:`HELD_OUT_VOICES`). Without ``--preset paragraphs``
festival is never used, so the older corpora come out as they always did.

Output (the layout of ``data/11-785-f23-hw4p2``)::

    OUT/SPLIT/mfcc/NAME.npy          (T, D) log-mel features, src.data.features.log_mel
    OUT/SPLIT/transcripts/NAME.npy   np.array(['<sos>', 'H', 'I', '<eos>'])  (not for test-clean)
    OUT/speakers.tsv                 speaker id, split, engine, voice, variant, speed, pitch
    OUT/test_reference.csv           index,label for test-clean in sorted(os.listdir) order,
                                     so a submission made on the sample can be scored

NAME is LibriSpeech-like ``SPEAKER-CHAPTER-UTT`` (``103-1240-0000``).

``--channel dev-clean``, with the options that made OUT, writes only ``OUT/dev-clean-channel``: the
same utterances spoken again, each through a room, a telephone line or noise drawn by
:mod:`src.corpus.channels` (which ones: ``OUT/dev-clean-channel.tsv``)::

    python -m src.corpus.synth bench/out/corpus-paragraphs --preset paragraphs --channel dev-clean --workers 2

``--augment N``, likewise, writes only ``OUT/train-clean-100-augmented``: N copies of each training
utterance, each through a room, a line or noise drawn by :mod:`src.corpus.degrade` (unlike the
channels above; which ones: ``OUT/train-clean-100-augmented.tsv``), for
``data.train_partition=train-clean-100+augmented``.

Speakers: an espeak-ng voice (English accents, and other languages' voices reading
English) with a variant (``+m3``, ``+f2``, ``+klatt`` ...), a speed (``-s`` 130..200)
and a pitch (``-p`` 20..80); or a flite voice (kal16, awb, rms, slt), or a festival voice
(kal and ked diphones, the slt HTS voice), with a duration stretch (a speed rate) and a
mean f0 (a shift in semitones) derived from the same speed and pitch. Every split has its own
sentences, and (unless a preset shares voices) its own speakers (engine + voice +
variant combinations), so dev-clean and test-clean are spoken by voices, and say
sentences, never heard in training.

Sentences come from the Debian fortunes (``/usr/share/games/fortunes``), split into
sentences and normalised by :func:`src.corpus.text.normalize_text`; sentences a
synthesiser would read differently from how they are written (digits, acronyms,
abbreviations) are left out.

The same seed gives byte-identical files (espeak-ng and flite are deterministic)
on a machine with the same espeak-ng, flite and fortunes installed.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import re
import shutil
import subprocess
import tempfile
import zlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.data.features import N_MELS, log_mel, save_npy_atomic
from src.corpus.channels import add_noise, through_channel
from src.corpus.degrade import augment_options, augmented_name, degrade
from src.corpus.pool import run_jobs
from src.corpus.text import FORTUNES_DIR, SENTENCE_END, normalize_text
from src.atomic import write_text_atomic
from src.errors import UserError, run_cli

SPLITS = ("train-clean-100", "train-clean-360", "dev-clean", "test-clean")
EVAL_SPLITS = ("dev-clean", "test-clean")
NO_TRANSCRIPTS = ("test-clean",)  # as in the competition: test-clean has mfcc/ only
DEFAULT_SEED = 11785

PRESETS = {
    # the bundled data/sample, for the first run: 12 English voices shared by every split, new (short)
    # sentences in dev and test, so that 8 minutes of CPU training show a model that learns
    "sample": dict(
        counts={"train-clean-100": 1000, "train-clean-360": 40, "dev-clean": 50, "test-clean": 50},
        seed=DEFAULT_SEED,
        dtype="float16",
        shared_voices=12,
        english_only=True,
        max_words=12,
    ),
    # the harder sample bundled before: dev and test voices and sentences never heard in 0.33 h of training
    "heldout": dict(
        counts={"train-clean-100": 320, "train-clean-360": 40, "dev-clean": 50, "test-clean": 50},
        seed=DEFAULT_SEED,
        dtype="float16",
    ),
    # the accuracy benchmark's corpus (bench/bench_accuracy.py): LibriSpeech-length paragraphs read by
    # espeak-ng, flite and festival voices, 240 training speakers (train-clean-100 has 251), 7.75 h;
    # dev and test: voices and text never heard in training
    "paragraphs": dict(
        counts={"train-clean-100": 2400, "dev-clean": 150, "test-clean": 150},
        seed=2026,
        dtype="float32",
        paragraphs=True,
    ),
}
# --hours H: the share of H each split gets, and the mean utterance length used to estimate counts
HOURS_SHARE = {"train-clean-100": 0.8, "dev-clean": 0.1, "test-clean": 0.1}
MEAN_UTTERANCE_SECONDS = 4.0
UTTERANCES_PER_SPEAKER = {"train-clean-100": 10, "train-clean-360": 10, "dev-clean": 5, "test-clean": 5}
UTTERANCES_PER_CHAPTER = 20

# fortune files that are pictures, code or other languages; and those of other packages than fortunes and
# fortunes-min (fortune-anarchism: text for the general-English LM), so that installing them changes no corpus
FORTUNE_FILES_SKIPPED = frozenset({"art", "ascii-art", "translate-me", "perl", "linux", "debian", "computers",
                                   "anarchism"})
MIN_WORDS, MAX_WORDS, MAX_CHARS = 3, 25, 250

# espeak-ng voices: English accents, then other languages' voices reading English (Latin script).
ESPEAK_ENGLISH = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
)
ESPEAK_ACCENTED = ("cmn", "de", "fr-fr", "es", "it", "nl", "pl", "sv", "pt-br", "hu", "ro", "cs", "da", "id")
ESPEAK_VARIANTS = (
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "Alex", "Andy", "Annie", "belinda", "benjamin",
    "david", "ed", "edward", "john", "linda", "max", "michel", "norbert", "paul",
)
FLITE_VOICES = {"kal16": 100.0, "awb": 110.0, "rms": 105.0, "slt": 170.0}  # voice -> base mean f0 (Hz)
# festival voices (Debian festvox-kallpc16k, festvox-kdlpc16k, festvox-us-slt-hts) -> base mean f0 (Hz);
# the diphone voices take a mean f0 and a duration stretch, the HTS voice a speed rate and a shift in semitones
FESTIVAL_VOICES = {"kal_diphone": 105.0, "ked_diphone": 105.0, "cmu_us_slt_arctic_hts": 170.0}
FESTIVAL_DIRS = (Path("/usr/share/festival/voices"),)
ENGLISH_WEIGHT = 3.0  # an English-accent espeak combination is this much likelier to be drawn
FLITE_WEIGHT = 20.0  # flite has 4 voices against hundreds of espeak combinations: about 6% of speakers
SPEED_RANGE = (130, 200)  # espeak words per minute
PITCH_RANGE = (20, 80)  # espeak pitch 0..99, 50 default


@dataclass(frozen=True)
class Speaker:
    speaker_id: int
    split: str
    engine: str  # espeak | flite | festival
    voice: str
    variant: str  # espeak variant ('' = none); '' for flite
    speed: int  # espeak -s (words per minute); flite, festival: duration stretch 165 / speed
    pitch: int  # espeak -p; flite, festival: mean f0 scaled by 2 ** ((pitch - 50) / 100)

    @property
    def combo(self) -> tuple[str, str, str]:
        """What makes a voice: dev/test combos never occur in training."""
        return (self.engine, self.voice, self.variant)


@dataclass(frozen=True)
class Job:
    """One utterance to synthesise: everything the worker needs, nothing random left."""

    split: str
    name: str  # SPEAKER-CHAPTER-UTT
    text: str  # normalised transcript (A-Z, ', space)
    spoken: str  # what the synthesiser reads: the transcript in lower case with clause commas
    speaker: Speaker


# --------------------------------------------------------------------------
# Sentences


_ABBREVIATIONS = frozenset("MR MRS MS DR ST JR SR VS ETC EG IE AM PM CO INC LTD NO VOL FIG PP".split())


def _speakable(raw: str) -> tuple[str, str] | None:
    """A raw sentence -> (transcript, text for the synthesiser), or None if unsuitable."""
    raw = raw.strip()
    if not re.search(r"[.!?][\"')\]]*$", raw) or not re.match(r"[\"'(\[]?[A-Z]", raw):
        return None
    if "\b" in raw or "://" in raw or re.match(r"[\"'(\[]?[A-Za-z][:.)]", raw):
        return None  # overstrikes, addresses, list labels such as "A: " or "b) "
    for word in re.findall(r"[A-Za-z]+", raw):
        if len(word) >= 2 and word.isupper():  # acronyms are spelled out, shouting is rare
            return None
        if word.upper() in _ABBREVIATIONS and word != "no":
            return None
    clauses = []
    for part in re.split(r"[,;:]", raw):
        if not part.strip() or not re.search(r"[A-Za-z]", part):
            continue
        norm = normalize_text(part)
        if norm is None:
            return None
        clauses.append(norm)
    if not clauses:
        return None
    text = " ".join(clauses)
    if text != normalize_text(raw):
        return None
    n_words = len(text.split())
    if not (MIN_WORDS <= n_words <= MAX_WORDS) or len(text) > MAX_CHARS:
        return None
    return text, ", ".join(clauses).lower() + "."


def load_sentences(fortunes_dir: Path = FORTUNES_DIR) -> list[tuple[str, str]]:
    """Every usable fortune sentence as (transcript, spoken text), deduplicated, in a fixed order."""
    if not fortunes_dir.is_dir():
        raise UserError(f"{fortunes_dir}: fortunes not found; install them (apt-get install fortunes fortunes-min)")
    seen: set[str] = set()
    sentences = []
    for path in sorted(fortunes_dir.iterdir()):
        if path.suffix or path.name in FORTUNE_FILES_SKIPPED or not path.is_file():
            continue  # .dat indexes, .u8 links, pictures, code
        content = path.read_bytes().decode("utf-8", errors="replace")
        for fortune in re.split(r"^%\s*$", content, flags=re.M):
            lines = [ln.strip() for ln in fortune.splitlines() if not ln.lstrip().startswith("--")]
            for raw in SENTENCE_END.split(" ".join(ln for ln in lines if ln)):
                pair = _speakable(raw)
                if pair is not None and pair[0] not in seen:
                    seen.add(pair[0])
                    sentences.append(pair)
    if not sentences:
        raise UserError(f"{fortunes_dir}: no usable sentences found; install the fortunes package")
    return sentences


# --------------------------------------------------------------------------
# Speakers and the plan


def _installed_espeak() -> tuple[set[str], set[str]]:
    """(voice language codes, variant file names) that this espeak-ng has."""
    def listing(*args: str) -> list[list[str]]:
        result = subprocess.run(["espeak-ng", *args], capture_output=True, text=True, check=True)
        return [line.split() for line in result.stdout.splitlines()[1:] if line.strip()]

    voices = {cols[1] for cols in listing("--voices") if len(cols) > 1}
    variants = {cols[-1].split("/")[-1] for cols in listing("--voices=variant") if cols}
    return voices, variants | {""}


def festival_voices() -> list[str]:
    """The FESTIVAL_VOICES this machine has (text2wave on the PATH and the voice's folder installed)."""
    if not shutil.which("text2wave"):
        return []
    installed = {p.name for d in FESTIVAL_DIRS if d.is_dir() for p in d.glob("*/*") if p.is_dir()}
    return [v for v in FESTIVAL_VOICES if v in installed]


def available_combos(engines: tuple[str, ...] = ("espeak", "flite")) -> list[tuple[str, str, str]]:
    """All (engine, voice, variant) combinations this machine can speak, in a fixed order.

    An espeak-ng without a voice or variant of the lists (older releases) just gets fewer
    combinations: espeak-ng would fall back to its default variant silently. festival is
    asked for only by the paragraph corpus, so that the older corpora (and the bundled
    sample) draw the same voices whether or not festival is installed.
    """
    combos = []
    if shutil.which("espeak-ng"):
        voices, variants = _installed_espeak()
        combos += [("espeak", v, var) for v in ESPEAK_ENGLISH + ESPEAK_ACCENTED if v in voices
                   for var in ESPEAK_VARIANTS if var in variants]
    if "flite" in engines and shutil.which("flite"):
        listed = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout.split()
        combos += [("flite", v, "") for v in FLITE_VOICES if v in listed]
    if "festival" in engines:
        combos += [("festival", v, "") for v in festival_voices()]
    if not combos:
        raise UserError("espeak-ng not found; install it (apt-get install espeak-ng) and optionally flite")
    return combos


def _split_speaker_counts(counts: dict[str, int], n_combos: int) -> dict[str, int]:
    """Speakers per split: counts / utterances-per-speaker, scaled down to fit the combos."""
    wanted = {s: max(1, math.ceil(n / UTTERANCES_PER_SPEAKER[s])) for s, n in counts.items() if n > 0}
    total = sum(wanted.values())
    if total <= n_combos:
        return wanted
    scaled = {s: max(1, int(w * n_combos / total)) for s, w in wanted.items()}
    if sum(scaled.values()) > n_combos:
        raise UserError(f"too many splits for {n_combos} voices; install espeak-ng voices or ask for fewer splits")
    return scaled


def _sentence_pools(n_sentences: int, counts: dict[str, int]) -> dict[str, range]:
    """Disjoint index ranges into the shuffled sentences, one per split."""
    need = {s: n for s, n in counts.items() if n > 0}
    if sum(need.values()) > n_sentences:  # reuse within a split; evaluation splits stay small
        eval_cap = n_sentences // 10
        sizes = {s: min(n, eval_cap) for s, n in need.items() if s in EVAL_SPLITS}
        rest = n_sentences - sum(sizes.values())
        train_need = {s: n for s, n in need.items() if s not in EVAL_SPLITS}
        train_total = sum(train_need.values())
        for s, n in train_need.items():
            sizes[s] = max(1, rest * n // train_total)
    else:
        sizes = need
    pools, start = {}, 0
    for split in SPLITS:
        if split in sizes:
            pools[split] = range(start, start + sizes[split])
            start += sizes[split]
    return pools


def plan_corpus(counts: dict[str, int], seed: int, sentences: list[tuple[str, str]] | None = None,
                combos: list[tuple[str, str, str]] | None = None, *, shared_voices: int = 0,
                english_only: bool = False, max_words: int = MAX_WORDS, paragraphs: bool = False) -> list[Job]:
    """Every utterance of the corpus: speakers, names and sentences; a pure function of the seed.

    By default every split has its own voices. ``shared_voices`` > 0 draws that many
    voices once and gives each split's utterances to all of them (every voice speaks
    in train, dev and test; the sentences stay disjoint). ``english_only`` keeps
    the English espeak accents and flite; ``max_words`` keeps shorter sentences.
    ``paragraphs`` reads LibriSpeech-length paragraphs with festival's voices as well
    (:func:`_plan_paragraphs`).
    """
    unknown = set(counts) - set(SPLITS)
    if unknown:
        raise UserError(f"--counts: unknown split '{sorted(unknown)[0]}'; use {', '.join(SPLITS)}")
    sentences = load_sentences() if sentences is None else sentences
    sentences = [pair for pair in sentences if len(pair[0].split()) <= max_words]
    if paragraphs:
        combos = available_combos(tuple(ENGINE_SHARES)) if combos is None else combos
        return _plan_paragraphs(counts, seed, sentences, combos)
    combos = available_combos() if combos is None else combos
    if english_only:
        combos = [c for c in combos if c[0] == "flite" or c[1] in ESPEAK_ENGLISH]
    if shared_voices:
        return _plan_shared_voices(counts, seed, sentences, combos, shared_voices)
    rng = np.random.default_rng(seed)

    order = rng.permutation(len(sentences))
    pools = _sentence_pools(len(sentences), counts)

    n_speakers = _split_speaker_counts(counts, len(combos))
    weights = np.array([FLITE_WEIGHT if c[0] == "flite" else ENGLISH_WEIGHT if c[1] in ESPEAK_ENGLISH else 1.0
                        for c in combos])
    drawn = rng.choice(len(combos), size=sum(n_speakers.values()), replace=False, p=weights / weights.sum())
    ids = rng.choice(np.arange(19, 9000), size=len(drawn), replace=False)
    chapters = iter(rng.choice(np.arange(1000, 99999), size=sum(counts.values()) + 1, replace=False))

    jobs: list[Job] = []
    k = 0
    for split in SPLITS:  # a fixed order, whatever the order of ``counts``
        if split not in n_speakers:
            continue
        pool = pools[split]
        pool_order = [order[i] for i in pool]
        per_speaker = np.array_split(np.arange(counts[split]), n_speakers[split])
        for utt_indices in per_speaker:
            engine, voice, variant = combos[drawn[k]]
            speaker = Speaker(
                speaker_id=int(ids[k]), split=split, engine=engine, voice=voice, variant=variant,
                speed=int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1)),
                pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
            )
            k += 1
            chapter, in_chapter = int(next(chapters)), 0
            for i in utt_indices:
                if in_chapter == UTTERANCES_PER_CHAPTER:
                    chapter, in_chapter = int(next(chapters)), 0
                text, spoken = sentences[pool_order[int(i) % len(pool_order)]]
                name = f"{speaker.speaker_id}-{chapter}-{in_chapter:04d}"
                jobs.append(Job(split=split, name=name, text=text, spoken=spoken, speaker=speaker))
                in_chapter += 1
    return jobs


def _draw_speakers(rng: np.random.Generator, combos: list[tuple[str, str, str]], n: int, split: str) -> list[Speaker]:
    """``n`` speakers of distinct combinations, English accents and flite drawn more often."""
    weights = np.array([FLITE_WEIGHT if c[0] == "flite" else ENGLISH_WEIGHT if c[1] in ESPEAK_ENGLISH else 1.0
                        for c in combos])
    drawn = rng.choice(len(combos), size=n, replace=False, p=weights / weights.sum())
    ids = rng.choice(np.arange(19, 9000), size=n, replace=False)
    return [Speaker(speaker_id=int(i), split=split, engine=combos[d][0], voice=combos[d][1], variant=combos[d][2],
                    speed=int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1)),
                    pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)))
            for d, i in zip(drawn, ids)]


def _plan_shared_voices(counts: dict[str, int], seed: int, sentences: list[tuple[str, str]],
                        combos: list[tuple[str, str, str]], n_voices: int) -> list[Job]:
    """The plan when every split shares the same ``n_voices`` speakers (disjoint sentences)."""
    if n_voices > len(combos):
        raise UserError(f"--preset: {n_voices} shared voices asked for, this machine has {len(combos)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sentences))
    pools = _sentence_pools(len(sentences), counts)
    voices = _draw_speakers(rng, combos, n_voices, "all")
    jobs: list[Job] = []
    for split in SPLITS:
        if counts.get(split, 0) <= 0:
            continue
        pool_order = [order[i] for i in pools[split]]
        for k in range(counts[split]):
            speaker = dataclasses.replace(voices[k % n_voices], split=split)
            text, spoken = sentences[pool_order[k % len(pool_order)]]
            # one "chapter" per speaker and split, as LibriSpeech names its files
            name = f"{speaker.speaker_id}-{SPLITS.index(split) + 1}{speaker.speaker_id:04d}-{k // n_voices:04d}"
            jobs.append(Job(split=split, name=name, text=text, spoken=spoken, speaker=speaker))
    return jobs


# --------------------------------------------------------------------------
# Paragraphs: a corpus shaped like LibriSpeech


# Characters per utterance (../shared/competition-data.md): train-clean-100 averages 187 (12.6 s, at most
# 400), dev-clean and test-clean 109 (7.1-7.4 s) with a tail to 518 (35 s). Drawn from a log-normal
# of that mean and spread, clipped: split kind -> (mean, sigma, min, max).
PARAGRAPH_CHARS = {"train": (187.0, 0.30, 30, 400), "eval": (109.0, 0.75, 12, 520)}
# Each speaker's engine is drawn with these shares (renormalised over the engines installed), so that
# espeak-ng's hundreds of voice/variant combinations do not make it nearly every speaker.
ENGINE_SHARES = {"espeak": 0.5, "flite": 0.25, "festival": 0.25}
# flite and festival have few voices: these speak only in dev and test, so that every engine has a voice
# that training never hears (espeak-ng's dev and test voice/variant combinations are their own as well)
HELD_OUT_VOICES = frozenset({("flite", "rms", ""), ("festival", "ked_diphone", "")})


def paragraph_length(rng: np.random.Generator, split: str) -> int:
    """A target transcript length in characters for one utterance of ``split``."""
    mean, sigma, low, high = PARAGRAPH_CHARS["eval" if split in EVAL_SPLITS else "train"]
    mu = math.log(mean) - sigma**2 / 2  # the log-normal's mean is exp(mu + sigma^2 / 2)
    return int(np.clip(round(rng.lognormal(mu, sigma)), low, high))


def _paragraph(sentences: list[tuple[str, str]], pool: list[int], cursor: int, target: int,
               max_chars: int) -> tuple[str, str, int]:
    """Consecutive sentences of ``pool`` from ``cursor`` while each brings the length nearer ``target``:
    (transcript, spoken text, the next cursor). A pool used up starts again (training reuses text)."""
    texts, spoken, n = [], [], 0
    while True:
        text, said = sentences[pool[cursor % len(pool)]]
        grown = n + len(text) + (1 if texts else 0)
        if texts and (grown > max_chars or abs(grown - target) > abs(n - target)):
            return " ".join(texts), " ".join(spoken), cursor
        texts.append(text)
        spoken.append(said)
        n, cursor = grown, cursor + 1


def _plan_paragraphs(counts: dict[str, int], seed: int, sentences: list[tuple[str, str]],
                     combos: list[tuple[str, str, str]]) -> list[Job]:
    """The plan of the paragraph corpus: speakers of every engine, LibriSpeech-length utterances."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sentences))
    mean_sentence = sum(len(text) + 1 for text, _ in sentences) / len(sentences)
    need = {s: math.ceil(1.2 * n * PARAGRAPH_CHARS["eval" if s in EVAL_SPLITS else "train"][0] / mean_sentence)
            for s, n in counts.items() if n > 0}  # sentences each split will read, with a margin
    pools = _sentence_pools(len(sentences), need)

    engines = [e for e in ENGINE_SHARES if any(c[0] == e for c in combos)]
    n_speakers = {s: math.ceil(n / UTTERANCES_PER_SPEAKER[s]) for s, n in counts.items() if n > 0}
    espeak = [c for c in combos if c[0] == "espeak"]
    weights = np.array([ENGLISH_WEIGHT if c[1] in ESPEAK_ENGLISH else 1.0 for c in espeak])
    n_espeak = min(len(espeak), sum(n_speakers.values()))
    unused_espeak = iter([espeak[i] for i in rng.choice(len(espeak), size=n_espeak, replace=False,
                                                        p=weights / weights.sum())] if espeak else [])
    ids = iter(rng.choice(np.arange(19, 9000), size=sum(n_speakers.values()), replace=False))
    chapters = iter(rng.choice(np.arange(1000, 99999), size=sum(counts.values()) + 1, replace=False))

    jobs: list[Job] = []
    for split in SPLITS:  # a fixed order, whatever the order of ``counts``
        if split not in n_speakers:
            continue
        heard = split not in EVAL_SPLITS
        voices = {e: [c for c in combos if c[0] == e and (e == "espeak" or (c in HELD_OUT_VOICES) != heard)]
                  for e in engines}  # espeak-ng: every split draws its own combinations below
        usable = [e for e in engines if voices[e]]
        shares = np.array([ENGINE_SHARES[e] for e in usable])
        pool, cursor = [int(order[i]) for i in pools[split]], 0
        for utt_indices in np.array_split(np.arange(counts[split]), n_speakers[split]):
            engine = usable[rng.choice(len(usable), p=shares / shares.sum())]
            if engine == "espeak":
                combo = next(unused_espeak, None)
                if combo is None:
                    raise UserError(f"{split}: espeak-ng has too few voice/variant combinations for "
                                    f"{sum(n_speakers.values())} speakers; ask for fewer utterances")
            else:
                combo = voices[engine][rng.integers(len(voices[engine]))]
            speaker = Speaker(speaker_id=int(next(ids)), split=split, engine=combo[0], voice=combo[1],
                              variant=combo[2], speed=int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1)),
                              pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)))
            chapter = int(next(chapters))
            for k in range(len(utt_indices)):
                target = paragraph_length(rng, split)
                text, spoken, cursor = _paragraph(sentences, pool, cursor, target,
                                                  PARAGRAPH_CHARS["eval" if split in EVAL_SPLITS else "train"][3])
                jobs.append(Job(split=split, name=f"{speaker.speaker_id}-{chapter}-{k:04d}", text=text,
                                spoken=spoken, speaker=speaker))
    return jobs


# --------------------------------------------------------------------------
# Synthesis (runs in worker processes)


def speak(job: Job) -> tuple[np.ndarray, int]:
    """Synthesise ``job.spoken`` with its speaker: (N,) float32 wave and its sample rate."""
    import soundfile as sf

    spk = job.speaker
    if spk.engine == "espeak":
        voice = spk.voice + (f"+{spk.variant}" if spk.variant else "")
        cmd = ["espeak-ng", "-v", voice, "-s", str(spk.speed), "-p", str(spk.pitch), "--stdout", job.spoken]
        result = subprocess.run(cmd, capture_output=True, check=True)
        wave, sr = sf.read(io.BytesIO(result.stdout), dtype="float32")
        return wave, sr
    stretch = 165.0 / spk.speed
    if spk.engine == "festival":
        return _speak_festival(job.spoken, spk, stretch)
    f0 = FLITE_VOICES[spk.voice] * 2.0 ** ((spk.pitch - 50) / 100.0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "utt.wav")
        cmd = ["flite", "-voice", spk.voice, "--setf", f"duration_stretch={stretch:.4f}",
               "--setf", f"int_f0_target_mean={f0:.2f}", "-t", job.spoken, "-o", path]
        subprocess.run(cmd, capture_output=True, check=True)
        wave, sr = sf.read(path, dtype="float32")
    return wave, sr


def _speak_festival(text: str, spk: Speaker, stretch: float) -> tuple[np.ndarray, int]:
    """festival's text2wave: a diphone voice gets a duration stretch and a mean f0; the HTS voice
    (which ignores both) a speed rate and a shift in semitones, from the same speed and pitch."""
    import soundfile as sf

    settings = [f"(voice_{spk.voice})"]
    if spk.voice.endswith("_hts"):
        semitones = 12.0 * (spk.pitch - 50) / 100.0
        settings.append(f'(set! hts_engine_params (append hts_engine_params (list (list "-r" {1 / stretch:.4f}) '
                        f'(list "-fm" {semitones:.3f}))))')
    else:
        f0 = FESTIVAL_VOICES[spk.voice] * 2.0 ** ((spk.pitch - 50) / 100.0)
        settings.append(f"(Parameter.set 'Duration_Stretch {stretch:.4f})")
        settings.append(f"(set! int_lr_params '((target_f0_mean {f0:.2f}) (target_f0_std {0.15 * f0:.2f}) "
                        "(model_f0_mean 170) (model_f0_std 34)))")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "utt.wav")
        cmd = ["text2wave", *(arg for setting in settings for arg in ("-eval", setting)), "-o", path]
        subprocess.run(cmd, input=text.encode(), capture_output=True, check=True)
        wave, sr = sf.read(path, dtype="float32")
    return wave, sr


@dataclass(frozen=True)
class Settings:
    out: str
    seed: int
    dtype: str
    noise_snr: float | None
    n_mels: int
    channel: bool = False  # each utterance through a channel of src.corpus.channels
    augment: int = 0  # instead: this many copies of each utterance, each degraded by src.corpus.degrade
    noise_files: tuple[str, ...] = ()  # recordings src.corpus.degrade may draw its noise from


def write_utterance(out: str | Path, split: str, name: str, text: str | None, feats: np.ndarray) -> None:
    """OUT/SPLIT/mfcc/NAME.npy and, unless ``text`` is None, OUT/SPLIT/transcripts/NAME.npy (atomically)."""
    split_dir = Path(out) / split
    if text is not None:
        tokens = np.array(["<sos>", *text, "<eos>"])  # (U,) single characters
        save_npy_atomic(split_dir / "transcripts" / f"{name}.npy", tokens)
    save_npy_atomic(split_dir / "mfcc" / f"{name}.npy", feats)  # last: its presence means done


def synthesize_one(job: Job, settings: Settings) -> tuple[str, float, list[tuple[str, str]]]:
    """Synthesise, featurise and write one utterance (or its ``settings.augment`` degraded copies, into
    ``job.split``-augmented): (split written, seconds of audio written, [(name, what was done or '')])."""
    wave, sr = speak(job)
    if settings.noise_snr is not None:
        rng = np.random.default_rng([settings.seed, zlib.crc32(job.name.encode())])
        wave = add_noise(wave, settings.noise_snr, rng)
    text = None if job.split in NO_TRANSCRIPTS else job.text
    if settings.augment:
        split, written = f"{job.split}-augmented", []
        for copy in range(1, settings.augment + 1):
            rng = np.random.default_rng([settings.seed, zlib.crc32(job.name.encode()), 2, copy])
            degraded, drawn = degrade(wave, sr, rng, settings.noise_files)
            name = augmented_name(job.name, copy)
            write_utterance(settings.out, split, name, text, log_mel(degraded, sr, settings.n_mels).astype(settings.dtype))
            written.append((name, drawn))
        return split, settings.augment * wave.size / sr, written
    channel = ""
    if settings.channel:
        rng = np.random.default_rng([settings.seed, zlib.crc32(job.name.encode()), 1])
        wave, sr, channel = through_channel(wave, sr, rng)
    feats = log_mel(wave, sr, settings.n_mels).astype(settings.dtype)  # (T, D)
    write_utterance(settings.out, job.split, job.name, text, feats)
    return job.split, wave.size / sr, [(job.name, channel)]


def _run_job(args: tuple[Job, Settings]) -> tuple[str, float, list[tuple[str, str]]]:
    return synthesize_one(*args)


# --------------------------------------------------------------------------
# The corpus


def write_metadata(out: Path, jobs: list[Job]) -> None:
    """speakers.tsv (who speaks which split) and test_reference.csv (index,label of test-clean)."""
    speakers = {}
    for job in jobs:
        speakers.setdefault(job.speaker, 0)
        speakers[job.speaker] += 1
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["speaker", "split", "engine", "voice", "variant", "speed", "pitch", "utterances"])
    for spk, n in speakers.items():
        writer.writerow([spk.speaker_id, spk.split, spk.engine, spk.voice, spk.variant, spk.speed, spk.pitch, n])
    write_text_atomic(out / "speakers.tsv", buf.getvalue())
    tests = sorted((f"{j.name}.npy", j.text) for j in jobs if j.split == "test-clean")
    if tests:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["index", "label"])
        for i, (_, text) in enumerate(tests):
            writer.writerow([i, text])
        write_text_atomic(out / "test_reference.csv", buf.getvalue())


def synthesize_corpus(out: str | Path, counts: dict[str, int], *, seed: int = DEFAULT_SEED, workers: int = 1,
                      noise_snr: float | None = None, dtype: str = "float32", n_mels: int = N_MELS,
                      progress: bool = True, channel: str | None = None, augment: int = 0,
                      noise_dir: str | Path | None = None, **plan_options) -> dict[str, tuple[int, float]]:
    """Write the corpus; returns {split: (utterances, hours)}. Refuses to write into existing splits.

    ``channel``: write only that split's utterances again, each through a channel of
    :mod:`src.corpus.channels`, as ``<channel>-channel`` (the channels drawn: ``<channel>-channel.tsv``).
    ``augment``: write only ``augment`` degraded copies (:mod:`src.corpus.degrade`) of each training
    utterance, as ``<split>-augmented`` (what was done: ``<split>-augmented.tsv``); ``noise_dir``: a
    folder of noise recordings the copies may also draw from.
    """
    out = Path(out)
    if dtype not in ("float16", "float32"):
        raise UserError(f"--dtype: expected float16 or float32, got '{dtype}'")
    if augment and channel is not None:
        raise UserError("--augment and --channel: give one of them; each writes a split of its own")
    noise_files = augment_options(augment, noise_dir)
    jobs = plan_corpus(counts, seed, **plan_options)
    if channel is not None:
        jobs = [dataclasses.replace(j, split=f"{channel}-channel") for j in jobs if j.split == channel]
        if not jobs:
            raise UserError(f"--channel {channel}: no such split in the corpus planned; use one of {', '.join(counts)}")
        _check_same_plan(out / channel, jobs)
    written = {j.split for j in jobs}
    if augment:
        jobs = [j for j in jobs if j.split.startswith("train-")]
        if not jobs:
            raise UserError(f"--augment: no training split in the corpus planned ({', '.join(counts)}); "
                            "add train-clean-100=N to --counts")
        for split in {j.split for j in jobs}:
            _check_same_plan(out / split, [j for j in jobs if j.split == split])
        written = {f"{j.split}-augmented" for j in jobs}
    for split in written:
        mfcc = out / split / "mfcc"
        if mfcc.is_dir() and any(mfcc.iterdir()):
            remove = out if channel is None and not augment else out / split
            raise UserError(f"{mfcc}: already has files; remove {remove} first or choose another OUT")
    for split in written:
        (out / split / "mfcc").mkdir(parents=True, exist_ok=True)
        if split not in NO_TRANSCRIPTS:
            (out / split / "transcripts").mkdir(parents=True, exist_ok=True)
    settings = Settings(out=str(out), seed=seed, dtype=dtype, noise_snr=noise_snr, n_mels=n_mels,
                        channel=channel is not None, augment=augment, noise_files=noise_files)
    tasks = [(job, settings) for job in jobs]
    totals: dict[str, list] = {}
    drawn: dict[str, dict[str, str]] = {}  # split -> name -> what was done to it
    with run_jobs(_run_job, tasks, workers=workers, chunksize=4, desc="synth", progress=progress) as results:
        for split, seconds, names in results:
            total = totals.setdefault(split, [0, 0.0])
            total[0] += len(names)
            total[1] += seconds / 3600.0
            drawn.setdefault(split, {}).update(names)
    if channel is None and not augment:
        write_metadata(out, jobs)
    else:
        column = "channel" if channel is not None else "augmentation"
        for split, names in drawn.items():
            write_text_atomic(out / f"{split}.tsv",
                              f"name\t{column}\n" + "".join(f"{n}\t{names[n]}\n" for n in sorted(names)))
    order = [*SPLITS, *(f"{s}-augmented" for s in SPLITS)]
    return {s: tuple(totals[s]) for s in sorted(totals, key=lambda s: order.index(s) if s in order else len(order))}


def _check_same_plan(split_dir: Path, jobs: list[Job]) -> None:
    """The channel copy must say what the clean split says, when it is there: the same names and transcripts."""
    transcripts = split_dir / "transcripts"
    if not transcripts.is_dir():
        return
    mismatch = sorted(p.stem for p in transcripts.glob("*.npy")) != sorted(j.name for j in jobs) or any(
        "".join(np.load(transcripts / f"{j.name}.npy")[1:-1]) != j.text for j in jobs)
    if mismatch:
        raise UserError(f"{transcripts}: not the utterances this plan makes; give --channel the --preset, "
                        f"--counts and --seed that made {split_dir.parent}")


def _parse_counts(text: str) -> dict[str, int]:
    counts = {}
    for item in text.split(","):
        if "=" not in item:
            raise UserError(f"--counts: '{item}' is not SPLIT=N (e.g. train-clean-100=300,dev-clean=50)")
        split, n = item.split("=", 1)
        try:
            counts[split.strip()] = int(n)
        except ValueError:
            raise UserError(f"--counts: '{n}' is not a whole number") from None
    return counts


def counts_for_hours(hours: float) -> dict[str, int]:
    """--hours H -> utterances per split (estimated from MEAN_UTTERANCE_SECONDS)."""
    return {s: max(1, round(hours * share * 3600 / MEAN_UTTERANCE_SECONDS)) for s, share in HOURS_SHARE.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.corpus.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output folder (competition layout)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--hours", type=float,
                      help="about this many hours in all (80%% train-clean-100, 10%% dev, 10%% test)")
    size.add_argument("--counts", help="utterances per split, e.g. train-clean-100=300,dev-clean=50,test-clean=50")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="sample: the bundled data/sample (voices shared by all splits); heldout: unseen dev/test "
                             "voices; paragraphs: the benchmark's LibriSpeech-length corpus (--counts or --hours "
                             "change its size)")
    parser.add_argument("--seed", type=int, default=None, help=f"random seed (default {DEFAULT_SEED})")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--noise", type=float, default=None, metavar="SNR_DB", help="add white noise at this SNR (dB)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default=None, help="feature dtype (default float32)")
    parser.add_argument("--n-mels", type=int, default=N_MELS, help=f"feature dimension D (default {N_MELS})")
    parser.add_argument("--channel", choices=EVAL_SPLITS, default=None,
                        help="write only SPLIT-channel: the same corpus' SPLIT utterances again, each through a "
                             "room, a telephone line or noise (src/corpus/channels.py); give the options that "
                             "made OUT")
    parser.add_argument("--augment", type=int, default=0, metavar="N",
                        help="write only TRAIN-augmented: N copies of each training utterance, each through a "
                             "room, a line or noise unlike the evaluation channels (src/corpus/degrade.py); "
                             "give the options that made OUT, then train with "
                             "data.train_partition=train-clean-100+augmented")
    parser.add_argument("--noise-dir", default=None, metavar="DIR",
                        help="with --augment: noise recordings (wav, flac, ogg, mp3) the copies may be mixed with")
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset] if args.preset else {}
    if args.counts:
        counts = _parse_counts(args.counts)
    elif args.hours is not None:
        if args.hours <= 0:
            raise UserError(f"--hours: expected a positive number, got {args.hours}")
        counts = counts_for_hours(args.hours)
    elif preset:
        counts = dict(preset["counts"])
    else:
        counts = {"train-clean-100": 300, "dev-clean": 50, "test-clean": 50}
    seed = args.seed if args.seed is not None else preset.get("seed", DEFAULT_SEED)
    dtype = args.dtype or preset.get("dtype", "float32")
    plan_options = {k: preset[k] for k in ("shared_voices", "english_only", "max_words", "paragraphs") if k in preset}
    totals = synthesize_corpus(args.out, counts, seed=seed, workers=args.workers, noise_snr=args.noise,
                               dtype=dtype, n_mels=args.n_mels, channel=args.channel, augment=args.augment,
                               noise_dir=args.noise_dir, **plan_options)
    parts = [f"{s} {n} utt {h:.2f} h" for s, (n, h) in totals.items()]
    n_all = sum(n for n, _ in totals.values())
    h_all = sum(h for _, h in totals.values())
    print(f"synth: {' | '.join(parts)} | total {n_all} utt {h_all:.2f} h -> {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
