"""Transcribe audio files with a trained checkpoint.

    python transcribe.py runs/las/best.pt speech.wav more.flac [decoding.beam_size=5]

Any audio soundfile reads goes through the project's one feature definition
(:func:`src.data.features.log_mel`, at the checkpoint's ``n_mels``), the
normalisation the model was trained with, and the configured decoder. Output:
one ``path<TAB>transcript`` line per file, in the order given.

Audio without speech is not decoded. A file that
:func:`src.data.features.speech_activity` finds silent, steady noise, or
shorter than 0.1 s gets an empty transcript and one warning line on stderr,
``<file>: no speech found (<what was measured>); nothing transcribed``. A
model asked to transcribe silence invents text (an untrained or barely trained
one fills the whole length limit), so the empty line is the honest answer.

Every transcript is also bounded by what its audio can hold:
``max(decoding.max_length_min, ceil(decoding.max_chars_per_frame * T))``
characters for T 10 ms frames (25 characters per second by default; LibriSpeech
speakers say about 15): src/decoding's one length policy, which bounds whatever
decoder runs.

Exit codes: 0 when at least one file held speech and was transcribed; 1 when
every file was skipped for holding no speech (each has its warning, and stdout
still has one empty line per file), so a script notices that nothing was
transcribed, as ``grep`` exits 1 when nothing matched; 2 with one ``error:``
line for bad input (a missing, empty, unreadable or non-audio file, a bad
checkpoint), before anything is decoded.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from src.config import DecodingConfig, add_config_args, load_decoding_config
from src.data.features import load_audio, log_mel, speech_activity
from src.errors import UserError, first_line, run_cli

# torch and everything that imports it load inside the functions below: --help stays instant

EXIT_NO_SPEECH = 1  # every file was silent: nothing transcribed

# suffixes libsndfile reads (soundfile.available_formats() names, plus common aliases)
_SOUNDFILE_SUFFIXES = frozenset(
    "wav wave flac ogg oga opus mp3 aiff aif aifc au snd caf w64 rf64 voc sph nist htk".split()
)


def _first_line(err: BaseException) -> str:
    """The cause of ``err`` in a few words, without the path soundfile repeats."""
    text = first_line(err)
    if text.startswith("Error opening") and "': " in text:  # "Error opening 'x.wav': Format not recognised."
        text = text.split("': ", 1)[1]
    return text.rstrip(".") or type(err).__name__


def read_wave(path: Path) -> tuple[np.ndarray, int]:
    """(N,) float32 mono wave and its sample rate; UserError (one line, file, fix) if unreadable."""
    if not path.exists():
        raise UserError(f"{path}: audio file not found; check the path")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an audio file; give the audio files inside it")
    try:
        with open(path, "rb") as f:
            head = f.read(1)
    except OSError as err:
        raise UserError(f"{path}: cannot open the file ({err.strerror}); check its permissions") from None
    if not head:
        raise UserError(f"{path}: empty file (0 bytes), it holds no audio; re-export or re-record it")
    try:
        wave, sample_rate = load_audio(path)
    except Exception as err:  # soundfile's LibsndfileError (a RuntimeError), a broken header ...
        cause = _first_line(err)
        suffix = path.suffix.lower().lstrip(".")
        if suffix in _SOUNDFILE_SUFFIXES:
            raise UserError(
                f"{path}: cannot read audio ({cause}): the file is damaged or is not really .{suffix}; "
                "re-export it, or convert it to wav or flac (e.g. ffmpeg -i IN OUT.wav)"
            ) from None
        raise UserError(
            f"{path}: cannot read audio ({cause}): .{suffix or '(no suffix)'} is not a format soundfile reads; "
            "convert it to wav or flac (e.g. ffmpeg -i IN OUT.wav)"
        ) from None
    if sample_rate <= 0:
        raise UserError(f"{path}: sample rate {sample_rate} Hz in the header; re-export the file")
    if not np.isfinite(wave).all():
        raise UserError(f"{path}: {int((~np.isfinite(wave)).sum())} NaN or Inf samples; re-export the file")
    return wave, sample_rate


@dataclass
class _Prepared:
    path: Path
    features: Any  # torch.Tensor (T, D), or None: no speech
    frames: int
    reason: str  # why there is no speech ("" when there is)


def _prepare(path: Path, n_mels: int, normalize: str) -> _Prepared:
    wave, sample_rate = read_wave(path)
    activity = speech_activity(wave, sample_rate)
    if not activity.has_speech:
        return _Prepared(path, None, 0, activity.reason)
    import torch

    from src.data.dataset import normalize_utterance

    feats = log_mel(wave, sample_rate, n_mels)  # (T, D)
    if normalize == "utterance":
        feats = normalize_utterance(feats)
    return _Prepared(path, torch.from_numpy(feats), feats.shape[0], "")


def warn_no_speech(path: Path, reason: str) -> None:
    print(f"{path}: no speech found ({reason}); nothing transcribed", file=sys.stderr, flush=True)


def transcribe(
    checkpoint: str | Path,
    paths: list[Path],
    decoding: DecodingConfig,
    device: str = "cpu",
    on_no_speech: Callable[[Path, str], None] | None = warn_no_speech,
) -> list[str]:
    """One transcript per audio file, in order; "" for a file without speech.

    The model is built first (a broken checkpoint is the first error), then every
    file is read and checked before anything is decoded (UserError on the first unreadable one). ``on_no_speech(path, reason)`` is called for each
    file skipped for holding no speech (default: a warning line on stderr).
    """
    from src.checkpoint import load_for_decoding
    from src.data.dataset import collate
    from src.decoding import decode_batch

    model, (n_mels, normalize) = load_for_decoding(checkpoint, device)  # a broken file stops before any audio
    prepared = [_prepare(path, n_mels, normalize) for path in paths]
    for p in prepared:  # only once every file has been read: an error stays the only line
        if p.features is None and on_no_speech is not None:
            on_no_speech(p.path, p.reason)
    texts = ["" for _ in paths]
    speech = [i for i, p in enumerate(prepared) if p.features is not None]
    for start in range(0, len(speech), decoding.batch_size):
        chunk = speech[start : start + decoding.batch_size]
        items = [
            {"features": prepared[i].features, "tokens": None, "name": prepared[i].path.name, "index": k}
            for k, i in enumerate(chunk)
        ]
        for i, text in zip(chunk, decode_batch(model, collate(items), decoding)):
            texts[i] = text
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Transcribe audio files with a trained checkpoint.")
    parser.add_argument("checkpoint", help="a checkpoint written by train.py (e.g. runs/las/best.pt)")
    parser.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg, mp3 ...); key=value overrides may follow")
    add_config_args(parser, presets="decoding")
    args = parser.parse_args(argv)
    # argparse cannot tell trailing key=value overrides from audio paths: split them here
    overrides = [a for a in args.audio if "=" in a and not Path(a).exists()] + args.overrides
    audio = [Path(a) for a in args.audio if a not in overrides]
    if not audio:
        raise UserError("no audio files given; usage: python transcribe.py CHECKPOINT audio.wav [more ...]")
    from src.checkpoint import load_checkpoint, model_spec

    family, _ = model_spec(load_checkpoint(args.checkpoint), args.checkpoint)  # a broken file: the first error
    cfg, _ = load_decoding_config(args.config, overrides, args.preset, family)  # test.py's decoding settings
    from src.distributed import choose_device
    from src.decoding.lm import check_decoding_lm

    check_decoding_lm(cfg.decoding)

    device = choose_device("auto", source="device")
    skipped: list[Path] = []

    def no_speech(path: Path, reason: str) -> None:
        skipped.append(path)
        warn_no_speech(path, reason)

    texts = transcribe(args.checkpoint, audio, cfg.decoding, device, on_no_speech=no_speech)
    for path, text in zip(audio, texts):
        print(f"{path}\t{text}")
    return EXIT_NO_SPEECH if len(skipped) == len(audio) else 0


if __name__ == "__main__":
    run_cli(main)
