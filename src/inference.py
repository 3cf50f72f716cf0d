"""Decode a split with a checkpoint: the Kaggle submission, or scores against references.

    python test.py                                   # runs/las/best.pt -> submission/submission.csv
    python test.py decoding.beam_size=5              # config overrides, as in train.py
    python test.py --checkpoint runs/las/last.pt --split dev-clean    # score instead

The model is rebuilt from the checkpoint alone (its model_config, n_mels,
vocab); the data root and the decoding settings come from the config. A
checkpoint that does not fit the data (feature dimension, vocabulary) stops
with one line before anything is decoded.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from src.atomic import atomic_write
from src.config import add_config_args, load_config
from src.errors import UserError
from src.vocab import ALLOWED_CHARACTERS
from src.vocab import decode as ids_to_text

DEFAULT_SUBMISSION = "submission/submission.csv"
SUBMISSION_HEADER = ["index", "label"]


# --------------------------------------------------------------------------
# Submission file


def write_submission(path: str | Path, labels: Sequence[str]) -> Path:
    """Write ``index,label`` rows (index 0..N-1 in the given order) atomically."""
    path = Path(path)
    with atomic_write(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(SUBMISSION_HEADER)
        writer.writerows((i, label) for i, label in enumerate(labels))
    return path


def check_submission(path: str | Path, n_expected: int | None = None) -> int:
    """Re-read a submission and check it as Kaggle would; returns the row count.

    Header ``index,label``; indices 0..N-1 in order; N == ``n_expected`` (the
    number of test files) when given; labels use only A-Z, apostrophe, space.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise UserError(f"{path}: submission file is missing or empty; run python test.py")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != SUBMISSION_HEADER:
        raise UserError(f"{path}: first line must be 'index,label', got {','.join(rows[0]) if rows else 'nothing'!r}")
    body = rows[1:]
    if n_expected is not None and len(body) != n_expected:
        raise UserError(f"{path}: {len(body)} rows but the test split has {n_expected} files; decode again")
    for line, row in enumerate(body, start=2):
        if len(row) != 2:
            raise UserError(f"{path}:{line}: expected 2 columns (index,label), got {len(row)}")
        if row[0] != str(line - 2):
            raise UserError(f"{path}:{line}: index {row[0]!r} out of order; expected {line - 2}")
        bad = set(row[1]) - ALLOWED_CHARACTERS
        if bad:
            raise UserError(f"{path}:{line}: characters {''.join(sorted(bad))!r} not allowed (A-Z, apostrophe, space)")
    return len(body)


def write_scores(path: str | Path, names: Sequence[str], refs: Sequence[str], hyps: Sequence[str],
                 distances: np.ndarray) -> Path:
    """Per-utterance TSV (name, distance, reference, hypothesis), worst first, atomically."""
    path = Path(path)
    order = sorted(range(len(names)), key=lambda i: (-int(distances[i]), names[i]))
    with atomic_write(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["name", "distance", "reference", "hypothesis"])
        writer.writerows((names[i], int(distances[i]), refs[i], hyps[i]) for i in order)
    return path


# --------------------------------------------------------------------------
# Checkpoint against data


def first_feature_dim(root: Path, partition: str) -> tuple[Path, int] | None:
    """(file, D) of the first feature file of ``partition``, from its header only."""
    from src.data import list_utterances

    utts = list_utterances(root, partition, False)
    if not utts:
        return None
    arr = np.load(utts[0].features, mmap_mode="r")
    return utts[0].features, (arr.shape[1] if arr.ndim == 2 else -1)


def check_checkpoint_fits(ckpt: dict[str, Any], ckpt_path: Path, root: Path, partition: str) -> None:
    """UserError (one line) when the checkpoint's vocabulary or n_mels do not fit this data."""
    from src.checkpoint import check_vocabulary, front_end

    check_vocabulary(ckpt)
    found = first_feature_dim(root, partition)
    n_mels = front_end(ckpt).n_mels
    if found is not None and found[1] != n_mels:
        raise UserError(
            f"{ckpt_path}: the model expects {n_mels}-dimensional features but {found[0]} has "
            f"{found[1]}; use a checkpoint trained on this data or point data.root at matching data"
        )


# --------------------------------------------------------------------------
# Decoding a split


def decode_dataset(model, dataset, data_cfg, decoding_cfg, desc: str = "decode"
                   ) -> tuple[list[str], list[str] | None]:
    """Hypotheses (and references when the dataset has transcripts) in dataset order."""
    from src.data import make_decoding_loader
    from src.decoding import decode_batch

    loader = make_decoding_loader(dataset, data_cfg, decoding_cfg.batch_size)
    hyps: list[str | None] = [None] * len(dataset)
    refs: list[str | None] | None = [None] * len(dataset) if dataset.has_transcripts else None
    with tqdm(total=len(dataset), desc=desc, unit="utt", dynamic_ncols=True) as bar:
        for batch in loader:
            texts = decode_batch(model, batch, decoding_cfg)
            for j, idx in enumerate(batch.indices.tolist()):
                hyps[idx] = texts[j]
                if refs is not None and batch.tokens is not None:
                    refs[idx] = ids_to_text(batch.tokens[j].tolist())
            bar.update(len(texts))
    missing = sum(h is None for h in hyps)
    if missing:
        raise RuntimeError(f"decode_dataset: {missing} utterances were never decoded (sampler bug)")
    return hyps, refs  # type: ignore[return-value]


def decoding_description(decoding_cfg) -> str:
    if decoding_cfg.method == "greedy":
        return "greedy"
    desc = f"beam {decoding_cfg.beam_size}, length_penalty {decoding_cfg.length_penalty}"
    if decoding_cfg.ctc_weight > 0:
        desc += f", ctc_weight {decoding_cfg.ctc_weight}"
    if decoding_cfg.lm_weight > 0:
        desc += f", lm {decoding_cfg.lm} x {decoding_cfg.lm_weight}"
    if decoding_cfg.length_bonus:
        desc += f", length_bonus {decoding_cfg.length_bonus}"
    return desc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python test.py",
        description="Decode test-clean into a Kaggle submission, or score a split with --split.",
    )
    parser.add_argument("--checkpoint", default=None, help="checkpoint to use (default: <logging.run_dir>/best.pt)")
    parser.add_argument("--split", default=None,
                        help="score this partition (e.g. dev-clean) against its transcripts instead of "
                             "writing a submission")
    parser.add_argument("--output", default=DEFAULT_SUBMISSION, help=f"submission path (default {DEFAULT_SUBMISSION})")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--tune-lm", action="store_true",
                        help="with --split and decoding.lm: decode the split over a grid of decoding.lm_weight x "
                             "decoding.length_penalty (attention) or decoding.length_bonus (CTC) and print the "
                             "best pair")
    add_config_args(parser)
    return parser.parse_args(argv)


LM_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5)
LENGTH_PENALTIES = (0.5, 1.0, 1.5)  # attention beam: rank by score / length ** penalty
LM_WEIGHTS_CTC = (0.0, 0.25, 0.5, 0.75, 1.0)  # CTC prefix beam: the LM competes with a frame-level score
LENGTH_BONUSES = (0.0, 0.5, 1.0, 2.0)  # CTC prefix beam: + bonus per character


def tune_lm(model, dataset, cfg, split: str) -> int:
    """Decode ``split`` over a grid of lm_weight x (length_penalty for attention models, length_bonus
    for CTC-only ones); print a table and the best pair."""
    from src.metrics import cer, mean_levenshtein
    from src.models.interface import is_step_decoder

    key, weights, values = (("length_penalty", LM_WEIGHTS, LENGTH_PENALTIES) if is_step_decoder(model)
                            else ("length_bonus", LM_WEIGHTS_CTC, LENGTH_BONUSES))
    results = []
    for lm_weight in weights:
        for value in values:
            decoding = dataclasses.replace(cfg.decoding, method="beam", lm_weight=lm_weight, **{key: value})
            hyps, refs = decode_dataset(model, dataset, cfg.data, decoding, desc=f"lm {lm_weight} {key} {value}")
            results.append((mean_levenshtein(hyps, refs), cer(hyps, refs), lm_weight, value))
            print(f"lm_weight {lm_weight:<4} {key} {value:<4} mean Levenshtein {results[-1][0]:.3f} "
                  f"CER {results[-1][1]:.4f}", flush=True)
    lev, rate, lm_weight, value = min(results)
    print(f"best on {split}: decoding.lm_weight={lm_weight} decoding.{key}={value} "
          f"(mean Levenshtein {lev:.3f}, CER {rate:.4f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # before the heavy imports: --help stays instant
    from src.checkpoint import front_end, load_checkpoint, model_from_checkpoint
    from src.data import SpeechDataset, check_data, resolve_data_root
    from src.distributed import choose_device
    from src.metrics import cer, levenshtein_batch, wer

    cfg = load_config(args.config, args.overrides)
    if args.tune_lm and (args.split is None or not cfg.decoding.lm):
        raise UserError("--tune-lm needs --split (e.g. dev-clean) and decoding.lm=PATH (python -m src.lm build)")
    from src.lm import check_decoding_lm, load_lm

    check_decoding_lm(cfg.decoding)
    if args.tune_lm:
        load_lm(cfg.decoding.lm)
    device = choose_device(args.device, source="--device")
    ckpt_path = Path(args.checkpoint) if args.checkpoint else Path(cfg.logging.run_dir) / "best.pt"
    scoring = args.split is not None
    split = args.split if scoring else cfg.data.test_partition

    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    root = resolve_data_root(cfg.data)
    check_checkpoint_fits(ckpt, ckpt_path, root, split)
    n_mels, normalize = front_end(ckpt)  # as the model was trained
    if cfg.data.check:
        check_data(root, [split], n_mels=n_mels)
    print(f"test: {ckpt_path} on {root}/{split} ({device}); decoding: {decoding_description(cfg.decoding)}", flush=True)

    dataset = SpeechDataset(root, split, n_mels=n_mels, normalize=normalize, in_memory=False,
                            with_transcripts=scoring)
    if scoring and not dataset.has_transcripts:
        raise UserError(f"{root}/{split}: no transcripts to score against; drop --split to write a submission")
    model = model_from_checkpoint(ckpt, device)
    del ckpt
    if args.tune_lm:
        return tune_lm(model, dataset, cfg, split)
    start = time.perf_counter()
    hyps, refs = decode_dataset(model, dataset, cfg.data, cfg.decoding, desc=split)
    seconds = time.perf_counter() - start
    speed = f"{len(hyps) / max(seconds, 1e-9):.1f} utt/s"

    if scoring:
        distances = levenshtein_batch(hyps, refs)
        out = write_scores(ckpt_path.parent / f"scores_{split}.tsv", dataset.names, refs, hyps, distances)
        print(f"{split}: {len(hyps)} utterances, mean Levenshtein {distances.mean():.3f}, "
              f"CER {cer(hyps, refs):.4f}, WER {wer(hyps, refs):.4f} ({speed}); per utterance, worst first: {out}")
        return 0

    out = write_submission(args.output, hyps)
    n_rows = check_submission(out, n_expected=len(dataset))
    empty = sum(1 for h in hyps if not h)
    mean_chars = np.mean([len(h) for h in hyps]) if hyps else 0.0
    print(f"wrote {out}: {n_rows} rows, checked (indices 0..{n_rows - 1}, A-Z ' and space only), "
          f"mean {mean_chars:.1f} chars, {empty} empty ({speed}); submit: python -m src.kaggle submit")
    score_against_reference(root / "test_reference.csv", hyps)
    return 0


def score_against_reference(path: Path, hyps: list[str]) -> None:
    """A synthesised corpus (the bundled sample) keeps its test transcripts in test_reference.csv
    (index,label): score the submission as Kaggle would, and show a few lines."""
    if not path.is_file():
        return
    from src.metrics import cer, mean_levenshtein

    with open(path, newline="") as f:
        refs = [row["label"] for row in csv.DictReader(f)]
    if len(refs) != len(hyps):
        print(f"note: {path} has {len(refs)} rows for {len(hyps)} test files; not scored")
        return
    print(f"scored against {path}: mean Levenshtein {mean_levenshtein(hyps, refs):.2f} (the competition's metric), "
          f"CER {cer(hyps, refs):.3f}")
    for ref, hyp in list(zip(refs, hyps))[:3]:
        print(f"  ref: {ref}\n  hyp: {hyp}")
