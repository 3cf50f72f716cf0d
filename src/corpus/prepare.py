"""Turn a speech corpus into the competition layout, with the same features as the sample.

    python -m src.corpus.prepare FORMAT SRC OUT [--n-mels 28] [--workers N] [--dtype float32|float16]
                               [--max-seconds 40] [--augment N [--noise-dir DIR]]

FORMAT and SRC:

- ``librispeech``: a split folder (``LibriSpeech/dev-clean``: SPEAKER/CHAPTER/*.flac and
  ``*.trans.txt``) -> ``OUT/dev-clean``; or a folder holding several split folders
  (``LibriSpeech/``) -> one OUT folder per split.
- ``ljspeech``: ``LJSpeech-1.1/`` with ``wavs/ID.wav`` and ``metadata.csv`` (``id|raw|normalised``;
  the normalised column is used). Split by a hash of the id: 90% train-clean-100, 5% dev-clean,
  5% test-clean.
- ``commonvoice``: a language folder with ``clips/*.mp3`` and ``train.tsv``/``dev.tsv``/``test.tsv``
  (columns ``path`` and ``sentence``) -> train-clean-100, dev-clean, test-clean.
- ``manifest``: a CSV file ``path,text[,split]`` (header optional; paths relative to the CSV's
  folder). Without a split column, split by a hash of the path as for ljspeech.

Output, per utterance (NAME = the corpus' utterance id):

    OUT/SPLIT/mfcc/NAME.npy          (T, D) src.data.features.log_mel, float32 (or --dtype float16)
    OUT/SPLIT/transcripts/NAME.npy   np.array(['<sos>', 'H', 'I', '<eos>'])

``--augment N`` also writes N degraded copies of each training utterance (a room, a line or noise:
:mod:`src.corpus.degrade`) into ``OUT/SPLIT-augmented/`` as NAME-a1 ... NAME-aN, with the same
transcript; ``data.train_partition=train-clean-100+augmented`` trains on both.

test-clean keeps its transcripts too (the competition's test-clean has none), so a
submission made on a prepared corpus can be scored.

Transcripts go through :func:`src.corpus.text.normalize_text`. Utterances that cannot be
used are skipped and counted by reason (unmappable text, missing audio, unreadable audio,
empty audio, too long); a corrupt file never stops the run; ``OUT/prepare_skipped.tsv``
lists them. Files are written atomically and existing outputs are kept, so an
interrupted run continues where it stopped when started again.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import re
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.data.features import N_MELS, load_audio, log_mel, save_npy_atomic
from src.corpus.degrade import augment_options, augmented_name, degrade
from src.corpus.pool import run_jobs
from src.corpus.text import UNMAPPABLE, normalize_text
from src.atomic import write_text_atomic
from src.errors import UserError, run_cli

FORMATS = ("librispeech", "ljspeech", "commonvoice", "manifest")
MISSING_AUDIO = "missing audio"
UNREADABLE_AUDIO = "unreadable audio"
EMPTY_AUDIO = "empty audio"
TOO_LONG = "too long"
HASH_SPLITS = ((90, "train-clean-100"), (95, "dev-clean"), (100, "test-clean"))  # cumulative percent
COMMONVOICE_SPLITS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
MANIFEST_SPLIT_ALIASES = {"train": "train-clean-100", "dev": "dev-clean", "valid": "dev-clean",
                          "validation": "dev-clean", "test": "test-clean"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Item:
    """One utterance found in the source corpus."""

    split: str  # output split folder, e.g. dev-clean
    name: str  # output file stem
    audio: str  # path of the audio file
    text: str | None  # normalised transcript; None if unmappable


def hash_split(key: str) -> str:
    """Deterministic 90/5/5 split of an utterance id into train-clean-100/dev-clean/test-clean."""
    bucket = zlib.crc32(key.encode("utf-8")) % 100
    return next(split for limit, split in HASH_SPLITS if bucket < limit)


# --------------------------------------------------------------------------
# Finding utterances, per format


def _librispeech_split(split_dir: Path, split: str) -> list[Item]:
    items = []
    for trans in sorted(split_dir.glob("*/*/*.trans.txt")):
        for line in trans.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            utt_id, _, raw = line.strip().partition(" ")
            audio = trans.parent / f"{utt_id}.flac"
            if not audio.exists() and (trans.parent / f"{utt_id}.wav").exists():
                audio = trans.parent / f"{utt_id}.wav"
            items.append(Item(split, utt_id, str(audio), normalize_text(raw)))
    return items


def find_librispeech(src: Path) -> list[Item]:
    if any(src.glob("*/*/*.trans.txt")):
        return _librispeech_split(src, src.name)
    items = []
    for sub in sorted(p for p in src.iterdir() if p.is_dir()):
        if any(sub.glob("*/*/*.trans.txt")):
            items += _librispeech_split(sub, sub.name)
    if not items:
        raise UserError(f"{src}: no SPEAKER/CHAPTER/*.trans.txt found; pass a LibriSpeech split folder "
                        "(e.g. LibriSpeech/dev-clean) or the folder holding the splits")
    return items


def find_ljspeech(src: Path) -> list[Item]:
    meta = src / "metadata.csv"
    if not meta.is_file():
        raise UserError(f"{meta}: not found; pass the LJSpeech-1.1 folder (with metadata.csv and wavs/)")
    items = []
    for line in meta.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        cols = line.split("|")
        utt_id = cols[0].strip()
        raw = cols[2] if len(cols) > 2 and cols[2].strip() else (cols[1] if len(cols) > 1 else "")
        items.append(Item(hash_split(utt_id), utt_id, str(src / "wavs" / f"{utt_id}.wav"), normalize_text(raw)))
    return items


def find_commonvoice(src: Path) -> list[Item]:
    items = []
    for tsv_name, split in COMMONVOICE_SPLITS.items():
        tsv = src / f"{tsv_name}.tsv"
        if not tsv.is_file():
            continue
        with open(tsv, encoding="utf-8", errors="replace", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if reader.fieldnames is None or not {"path", "sentence"} <= set(reader.fieldnames):
                raise UserError(f"{tsv}: expected a header with the columns 'path' and 'sentence'")
            for row in reader:
                rel = (row["path"] or "").strip()
                if not rel:
                    continue
                name = Path(rel).name.rsplit(".", 1)[0]
                items.append(Item(split, name, str(src / "clips" / rel), normalize_text(row["sentence"] or "")))
    if not items:
        raise UserError(f"{src}: no train.tsv, dev.tsv or test.tsv with rows; pass a Common Voice language folder")
    return items


def find_manifest(src: Path) -> list[Item]:
    if not src.is_file():
        raise UserError(f"{src}: the manifest format takes a CSV file (path,text[,split]), not a folder")
    with open(src, encoding="utf-8", errors="replace", newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "text"]:
        rows = rows[1:]
    items, stems = [], Counter()
    parsed = []
    for line_no, row in enumerate(rows, 1):
        if len(row) < 2:
            raise UserError(f"{src}: row {line_no} has {len(row)} column(s); expected path,text[,split]")
        rel, raw = row[0].strip(), row[1]
        if len(row) > 2 and row[2].strip():
            split = MANIFEST_SPLIT_ALIASES.get(row[2].strip().lower(), row[2].strip())
            if not _SAFE_NAME.match(split):
                raise UserError(f"{src}: row {line_no}: split '{split}' is not a folder name")
        else:
            split = hash_split(rel)
        stem = Path(rel).name.rsplit(".", 1)[0] if "." in Path(rel).name else Path(rel).name
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "utt"
        stems[(split, stem)] += 1
        parsed.append((split, stem, rel, raw))
    for split, stem, rel, raw in parsed:
        if stems[(split, stem)] > 1:  # the same file name in two folders: keep both, apart
            stem = f"{stem}-{zlib.crc32(rel.encode('utf-8')):08x}"
        audio = Path(rel) if Path(rel).is_absolute() else src.parent / rel
        items.append(Item(split, stem, str(audio), normalize_text(raw)))
    return items


FINDERS = {"librispeech": find_librispeech, "ljspeech": find_ljspeech,
           "commonvoice": find_commonvoice, "manifest": find_manifest}


def find_items(fmt: str, src: str | Path) -> list[Item]:
    """The utterances of ``src`` in ``fmt``, each with its output split and name."""
    if fmt not in FINDERS:
        raise UserError(f"unknown FORMAT '{fmt}'; use one of {', '.join(FORMATS)}")
    src = Path(src)
    if not src.exists():
        raise UserError(f"{src}: not found; give the {fmt} corpus' path as SRC")
    items = FINDERS[fmt](src)
    if not items:
        raise UserError(f"{src}: no utterances found for format {fmt}")
    seen: dict[tuple[str, str], str] = {}
    for item in items:
        key = (item.split, item.name)
        if key in seen and seen[key] != item.audio:
            raise UserError(f"{src}: utterance name '{item.name}' occurs twice in {item.split} "
                            f"({seen[key]} and {item.audio}); names must be unique")
        seen[key] = item.audio
    return items


# --------------------------------------------------------------------------
# Doing one utterance (runs in worker processes)


@dataclass(frozen=True)
class Settings:
    out: str
    n_mels: int
    dtype: str
    max_seconds: float  # 0 = no limit
    augment: int = 0  # training splits: this many degraded copies of each utterance (src.corpus.degrade)
    noise_files: tuple[str, ...] = ()  # recordings the copies may draw their noise from


def output_paths(out: str | Path, item: Item) -> tuple[Path, Path]:
    """(features path, transcript path) of ``item`` under ``out``."""
    split_dir = Path(out) / item.split
    return split_dir / "mfcc" / f"{item.name}.npy", split_dir / "transcripts" / f"{item.name}.npy"


def augmented_items(item: Item, augment: int) -> list[Item]:
    """The ``augment`` degraded copies of a training utterance, as items of SPLIT-augmented named
    NAME-aK (none for dev and test splits)."""
    if not item.split.startswith("train-"):
        return []
    return [Item(f"{item.split}-augmented", augmented_name(item.name, k), item.audio, item.text)
            for k in range(1, augment + 1)]


def is_done(out: str | Path, item: Item, augment: int = 0) -> bool:
    """Both files exist, for the utterance and each of its ``augment`` copies (features are written
    last, atomically, so they mean 'complete')."""
    return all(feats.is_file() and trans.is_file()
               for feats, trans in (output_paths(out, it) for it in [item, *augmented_items(item, augment)]))


def prepare_one(item: Item, settings: Settings) -> tuple[str, float, str | None]:
    """Features and transcript of one utterance: (split, seconds, skip reason or None)."""
    if item.text is None:
        return item.split, 0.0, UNMAPPABLE
    if not os.path.isfile(item.audio):
        return item.split, 0.0, MISSING_AUDIO
    try:
        wave, sr = load_audio(item.audio)
    except Exception:  # noqa: BLE001 - any decoder failure is a skip, never fatal
        return item.split, 0.0, UNREADABLE_AUDIO
    if wave.size == 0 or sr <= 0:
        return item.split, 0.0, EMPTY_AUDIO
    if not np.isfinite(wave).all():
        return item.split, 0.0, UNREADABLE_AUDIO
    seconds = wave.size / sr
    if settings.max_seconds > 0 and seconds > settings.max_seconds:
        return item.split, 0.0, TOO_LONG
    for k, it in enumerate([item, *augmented_items(item, settings.augment)]):
        if k:  # a copy: degraded by a generator seeded by its name, so a rerun makes the same copy
            rng = np.random.default_rng([zlib.crc32(it.name.encode("utf-8")), 2])
            wave_k, _ = degrade(wave, sr, rng, settings.noise_files)
        else:
            wave_k = wave
        feats = log_mel(wave_k, sr, settings.n_mels).astype(settings.dtype)  # (T, D)
        feats_path, trans_path = output_paths(settings.out, it)
        save_npy_atomic(trans_path, np.array(["<sos>", *it.text, "<eos>"]))  # (U,)
        save_npy_atomic(feats_path, feats)  # last: its presence means done
    return item.split, seconds, None



def _run(args: tuple[Item, Settings]) -> tuple[str, float, str | None, Item]:
    split, seconds, reason = prepare_one(*args)
    return split, seconds, reason, args[0]


# --------------------------------------------------------------------------
# The corpus


@dataclass
class Summary:
    written: Counter  # split -> utterances written now
    seconds: float  # audio written now
    already_done: int
    skipped: Counter  # reason -> count

    def line(self, out: str | Path) -> str:
        splits = ", ".join(f"{s} {n}" for s, n in sorted(self.written.items())) or "none"
        skips = ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items())) or "none"
        return (f"prepare: {sum(self.written.values())} utt {self.seconds / 3600:.2f} h written ({splits}) "
                f"| {self.already_done} already done | skipped {sum(self.skipped.values())}: {skips} -> {out}")


def prepare(fmt: str, src: str | Path, out: str | Path, *, n_mels: int = N_MELS, workers: int = 1,
            dtype: str = "float32", max_seconds: float = 40.0, progress: bool = True, augment: int = 0,
            noise_dir: str | Path | None = None) -> Summary:
    """Prepare every utterance of ``src`` into ``out``; keeps what is already there. ``augment``: also
    that many degraded copies of each training utterance (:mod:`src.corpus.degrade`) into
    SPLIT-augmented, mixed with noise from ``noise_dir``'s recordings among other sources."""
    if dtype not in ("float16", "float32"):
        raise UserError(f"--dtype: expected float16 or float32, got '{dtype}'")
    if n_mels < 1:
        raise UserError(f"--n-mels: expected a positive number, got {n_mels}")
    noise_files = augment_options(augment, noise_dir)
    items = find_items(fmt, src)
    out = Path(out)
    splits = {it.split for it in items} | {c.split for it in items for c in augmented_items(it, min(augment, 1))}
    for split in sorted(splits):
        for sub in ("mfcc", "transcripts"):
            folder = out / split / sub
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob("*.tmp"):  # left by an interrupted run
                stale.unlink()
    todo = [it for it in items if not is_done(out, it, augment)]
    summary = Summary(written=Counter(), seconds=0.0, already_done=len(items) - len(todo), skipped=Counter())
    skipped_items: list[tuple[Item, str]] = []
    settings = Settings(out=str(out), n_mels=n_mels, dtype=dtype, max_seconds=max_seconds, augment=augment,
                        noise_files=noise_files)
    tasks = [(it, settings) for it in todo]
    with run_jobs(_run, tasks, workers=workers, chunksize=8, desc="prepare", progress=progress) as results:
        for split, seconds, reason, item in results:
            if reason is None:
                summary.written[split] += 1
                summary.seconds += seconds
                for copy in augmented_items(item, augment):
                    summary.written[copy.split] += 1
                    summary.seconds += seconds
            else:
                summary.skipped[reason] += 1
                skipped_items.append((item, reason))
    _write_skipped(out, skipped_items)
    return summary


def _write_skipped(out: Path, skipped: list[tuple[Item, str]]) -> None:
    """OUT/prepare_skipped.tsv: split, name, reason, audio path of this run's skips."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["split", "name", "reason", "audio"])
    for item, reason in sorted(skipped, key=lambda x: (x[0].split, x[0].name)):
        writer.writerow([item.split, item.name, reason, item.audio])
    write_text_atomic(out / "prepare_skipped.tsv", buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.corpus.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("format", metavar="FORMAT", help=" | ".join(FORMATS))
    parser.add_argument("src", metavar="SRC", help="the corpus folder (manifest: the CSV file)")
    parser.add_argument("out", metavar="OUT", help="output folder (competition layout)")
    parser.add_argument("--n-mels", type=int, default=N_MELS, help=f"feature dimension D (default {N_MELS})")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--dtype", default="float32", help="float32 (default) or float16 (half the disk)")
    parser.add_argument("--max-seconds", type=float, default=40.0,
                        help="skip longer recordings as 'too long' (default 40; 0 = no limit)")
    parser.add_argument("--augment", type=int, default=0, metavar="N",
                        help="also N degraded copies of each training utterance (a room, a line or noise; "
                             "src/corpus/degrade.py) into SPLIT-augmented; train on both with "
                             "data.train_partition=train-clean-100+augmented (default 0: none)")
    parser.add_argument("--noise-dir", default=None, metavar="DIR",
                        help="with --augment: noise recordings (wav, flac, ogg, mp3; e.g. MUSAN's noise/) "
                             "the copies may be mixed with")
    args = parser.parse_args(argv)
    summary = prepare(args.format, args.src, args.out, n_mels=args.n_mels, workers=args.workers,
                      dtype=args.dtype, max_seconds=args.max_seconds, augment=args.augment, noise_dir=args.noise_dir,
                      progress=sys.stderr.isatty())  # off a terminal: no bar, so an error stays one line
    print(summary.line(args.out))
    if not summary.written and not summary.already_done:
        raise UserError(nothing_written(summary, args.src, args.out))
    return 0


def nothing_written(summary: Summary, src: str | Path, out: str | Path) -> str:
    """Why a run that wrote no utterance (and found none already done) failed, and what to do."""
    reasons = ", ".join(f"{r} {n}" for r, n in summary.skipped.most_common())
    fix = {MISSING_AUDIO: f"check that the audio paths in {src} exist (relative to its folder)",
           UNREADABLE_AUDIO: "check that the audio files are sound files this libsndfile reads (wav, flac, ogg, mp3)",
           EMPTY_AUDIO: "check the audio files, they hold no samples",
           TOO_LONG: "raise --max-seconds (0 = no limit)",
           UNMAPPABLE: "the transcripts need letters A-Z, apostrophes and spaces (digits and symbols cannot be mapped)"}
    top = summary.skipped.most_common(1)[0][0] if summary.skipped else None
    return (f"{out}: no utterance written, all {sum(summary.skipped.values())} skipped ({reasons}; listed in "
            f"{Path(out) / 'prepare_skipped.tsv'}); {fix.get(top, 'see that list')}")


if __name__ == "__main__":
    run_cli(main)
