"""Transcribe audio files with a trained checkpoint.

    python transcribe.py runs/las/best.pt speech.wav more.flac [decoding.beam_size=5]

Any audio soundfile reads goes through the project's one feature definition
(:func:`src.data.features.log_mel`, at the checkpoint's ``n_mels``), the
normalisation the model was trained with, and the configured decoder.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from src.checkpoint import check_vocabulary, front_end, load_checkpoint, model_from_checkpoint
from src.config import DecodingConfig, add_config_args, load_config
from src.data.dataset import collate, normalize_utterance
from src.data.features import load_audio, log_mel
from src.decoding import decode_batch
from src.distributed import choose_device
from src.errors import UserError, run_cli


def features_for(path: Path, n_mels: int, normalize: str) -> torch.Tensor:
    """(T, D) float32 features of one audio file, as the model saw them in training."""
    if not path.is_file():
        raise UserError(f"{path}: audio file not found")
    try:
        wave, sample_rate = load_audio(path)
        feats = log_mel(wave, sample_rate, n_mels)  # (T, D)
    except Exception as err:  # soundfile's errors, an empty file ...
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path}: cannot read audio ({first}); convert it to wav or flac") from None
    if normalize == "utterance":
        feats = normalize_utterance(feats)
    return torch.from_numpy(feats)


def transcribe(checkpoint: str | Path, paths: list[Path], decoding: DecodingConfig, device: str = "cpu") -> list[str]:
    """One transcript per audio file, in order."""
    ckpt = load_checkpoint(checkpoint, map_location=device)
    check_vocabulary(ckpt)
    model = model_from_checkpoint(ckpt, device)
    n_mels, normalize = front_end(ckpt)
    texts: list[str] = []
    for start in range(0, len(paths), decoding.batch_size):
        chunk = paths[start : start + decoding.batch_size]
        items = [
            {"features": features_for(p, n_mels, normalize), "tokens": None, "name": p.name, "index": i}
            for i, p in enumerate(chunk)
        ]
        texts.extend(decode_batch(model, collate(items), decoding))
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Transcribe audio files with a trained checkpoint.")
    parser.add_argument("checkpoint", help="a checkpoint written by train.py (e.g. runs/las/best.pt)")
    parser.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg, mp3 ...); key=value overrides may follow")
    add_config_args(parser)
    args = parser.parse_args(argv)
    # argparse cannot tell trailing key=value overrides from audio paths: split them here
    overrides = [a for a in args.audio if "=" in a and not Path(a).exists()] + args.overrides
    audio = [Path(a) for a in args.audio if a not in overrides]
    if not audio:
        raise UserError("no audio files given; usage: python transcribe.py CHECKPOINT audio.wav [more ...]")
    cfg = load_config(args.config, overrides)
    device = choose_device("auto", source="device")
    for path, text in zip(audio, transcribe(args.checkpoint, audio, cfg.decoding, device)):
        print(f"{path}\t{text}")
    return 0


if __name__ == "__main__":
    run_cli(main)
