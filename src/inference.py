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
import dataclasses
import time
from pathlib import Path

import numpy as np

from src.config import add_config_args, load_config, load_decoding_config
from src.errors import UserError
from src.submission import DEFAULT_SUBMISSION, check_submission, score_against_reference, write_scores, write_submission


def first_feature_dim(root: Path, partition: str) -> tuple[Path, int] | None:
    """(file, D) of the first feature file of ``partition``, from its header only."""
    from src.data import list_utterances

    utts = list_utterances(root, partition, False)
    if not utts:
        return None
    arr = np.load(utts[0].features, mmap_mode="r")
    return utts[0].features, (arr.shape[1] if arr.ndim == 2 else -1)


def check_features_fit(n_mels: int, ckpt_path: Path, root: Path, partition: str) -> None:
    """UserError (one line) when the model's feature dimension does not fit this data."""
    found = first_feature_dim(root, partition)
    if found is not None and found[1] != n_mels:
        raise UserError(
            f"{ckpt_path}: the model expects {n_mels}-dimensional features but {found[0]} has "
            f"{found[1]}; use a checkpoint trained on this data or point data.root at matching data"
        )


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
    add_config_args(parser, presets="decoding")
    return parser.parse_args(argv)


LM_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5)
LENGTH_PENALTIES = (0.5, 1.0, 1.5)  # attention beam: rank by score / length ** penalty
LM_WEIGHTS_CTC = (0.0, 0.25, 0.5, 0.75, 1.0)  # CTC prefix beam: the LM competes with a frame-level score
LENGTH_BONUSES = (0.0, 0.5, 1.0, 2.0)  # CTC prefix beam: + bonus per character


def tune_lm(model, dataset, cfg, split: str) -> int:
    """Decode ``split`` over a grid of lm_weight x (length_penalty for attention models, length_bonus
    for CTC-only ones); print a table and the best pair."""
    from src.decoding import decode_dataset
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
    from src.checkpoint import load_for_decoding
    from src.data import SpeechDataset, check_data, resolve_data_root
    from src.decoding import decode_dataset, decoding_description
    from src.decoding.lm import check_decoding_lm
    from src.distributed import choose_device
    from src.metrics import cer, levenshtein_batch, wer

    cfg = load_config(args.config, args.overrides)
    if args.tune_lm and (args.split is None or not cfg.decoding.lm):
        raise UserError("--tune-lm needs --split (e.g. dev-clean) and decoding.lm=PATH (python -m src.lm build)")
    check_decoding_lm(cfg.decoding, warn_unused=not args.tune_lm)  # --tune-lm tries weight 0 too
    device = choose_device(args.device, source="--device")
    ckpt_path = Path(args.checkpoint) if args.checkpoint else Path(cfg.logging.run_dir) / "best.pt"
    scoring = args.split is not None
    split = args.split if scoring else cfg.data.test_partition

    model, (n_mels, normalize) = load_for_decoding(ckpt_path, device)  # features as the model was trained
    # the decoding: section of the preset training would pick for this family and hardware (as train.py
    # applies the whole preset), under the command line's overrides
    cfg, said = load_decoding_config(args.config, args.overrides, args.preset, getattr(model, "family", None))
    if said:
        print(said, flush=True)
    root = resolve_data_root(cfg.data)
    check_features_fit(n_mels, ckpt_path, root, split)
    if cfg.data.check:
        check_data(root, [split], n_mels=n_mels)
    print(f"test: {ckpt_path} on {root}/{split} ({device}); decoding: {decoding_description(cfg.decoding)}", flush=True)

    dataset = SpeechDataset(root, split, n_mels=n_mels, normalize=normalize, in_memory=False,
                            with_transcripts=scoring)
    if scoring and not dataset.has_transcripts:
        raise UserError(f"{root}/{split}: no transcripts to score against; drop --split to write a submission")
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
