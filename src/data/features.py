"""THE feature definition: log-mel frames used by synth, prepare and transcribe.

    wave, sr = load_audio("speech.flac")          # (N,) float32 mono, its sample rate
    feats = log_mel(wave, sr)                      # (T, D) float32, T = 1 + N16 // 160
    speech_activity(wave, sr).has_speech           # False for silence, hiss, clips under 0.1 s

Definition (one place; everything else calls :func:`log_mel`):

- resample to ``SAMPLE_RATE`` = 16 kHz with :func:`resample`, a Hann-windowed sinc
  low-pass (6 zero crossings, cutoff 0.99 x the lower Nyquist frequency; the kernel
  of ``torchaudio.functional.resample``'s defaults);
- centred frames: the wave is reflect-padded by n_fft // 2 = 256 on both sides,
  so frame t is centred on sample 160 * t and T = 1 + N16 // 160;
- 25 ms periodic Hann window (400 samples) zero-padded to n_fft = 512 (centred),
  10 ms hop (160 samples), power spectrum |X|^2 (257 bins);
- HTK mel filterbank, 0..8000 Hz, triangles without area normalisation
  (the same filters as ``torchaudio.functional.melscale_fbanks(norm=None,
  mel_scale="htk")``);
- natural log of (mel power + 1e-6).

It matches ``torchaudio.transforms.MelSpectrogram(16000, n_fft=512, win_length=400,
hop_length=160, f_min=0, f_max=8000, n_mels=D, power=2, center=True,
norm=None, mel_scale="htk")`` followed by ``log(x + 1e-6)``; tests/test_features.py
checks the features against a direct DFT and the HTK mel formula written out in
the test, and the resampler against sines of known frequency. This module is
plain numpy (no torch, no torchaudio) so that worker processes stay light.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
WIN_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
N_FFT = 512
F_MIN = 0.0
F_MAX = 8000.0
LOG_EPS = 1e-6
N_MELS = 28


def num_frames(n_samples: int) -> int:
    """Frames of a 16 kHz wave of ``n_samples`` samples: ``1 + N // 160`` (centred frames)."""
    return 1 + int(n_samples) // HOP_LENGTH


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def mel_band_edges(n_mels: int = N_MELS) -> np.ndarray:
    """(n_mels + 2,) Hz: the edges and centres of the HTK mel filters; filter d spans edges d .. d + 2
    and peaks at d + 1."""
    return _mel_to_hz(np.linspace(_hz_to_mel(np.float64(F_MIN)), _hz_to_mel(np.float64(F_MAX)), n_mels + 2))


def mel_filterbank(n_mels: int = N_MELS) -> np.ndarray:
    """HTK mel filterbank, (N_FFT // 2 + 1, n_mels) float64, triangles peaking at 1."""
    fft_freqs = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)  # (257,)
    hz_points = mel_band_edges(n_mels)  # (n_mels + 2,) filter edges and centres
    widths = np.diff(hz_points)  # (n_mels + 1,)
    slopes = hz_points[None, :] - fft_freqs[:, None]  # (257, n_mels + 2)
    down = -slopes[:, :-2] / widths[:-1]  # rising edge, (257, n_mels)
    up = slopes[:, 2:] / widths[1:]  # falling edge, (257, n_mels)
    fb = np.maximum(0.0, np.minimum(down, up))
    fb.setflags(write=False)
    return fb


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    """Periodic Hann of 400 samples, zero-padded on both sides to N_FFT (as torch.stft does)."""
    n = np.arange(WIN_LENGTH)
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / WIN_LENGTH)
    left = (N_FFT - WIN_LENGTH) // 2
    window = np.zeros(N_FFT)
    window[left : left + WIN_LENGTH] = hann
    window.setflags(write=False)
    return window


# Resampling: a windowed-sinc low-pass evaluated at each output instant, with the
# kernel of torchaudio.functional.resample's defaults (the two agree to float32
# rounding, so features do not depend on which of them made them).
RESAMPLE_ZERO_CROSSINGS = 6  # the sinc is cut by a Hann window after 6 zero crossings each side
RESAMPLE_ROLLOFF = 0.99  # cutoff: 0.99 x the lower of the two Nyquist frequencies
_RESAMPLE_CHUNK = 1 << 15  # output samples per block: bounds the (chunk, taps) gather


@lru_cache(maxsize=16)
def _resample_taps(orig: int, new: int) -> tuple[np.ndarray, int]:
    """Weights of the windowed sinc for rates reduced by their gcd: ((new, taps) float64, width).

    Output sample m (time m / new, in units of the gcd period) is the weighted sum of the
    input samples n = m * orig // new - width + j, j in 0..taps-1, with weight h(t) at
    t = cutoff * (n / orig - m / new), the distance in cutoff periods; h depends on m
    only through its phase m % new, hence one row per phase.
    """
    cutoff = min(orig, new) * RESAMPLE_ROLLOFF
    width = math.ceil(RESAMPLE_ZERO_CROSSINGS * orig / cutoff)  # input samples each side
    phase = np.arange(new)[:, None]  # (new, 1)
    n = (phase * orig) // new - width + np.arange(2 * width + 2)[None, :]  # (new, taps) input index
    t = cutoff * (n * new - phase * orig) / (orig * new)  # (new, taps), exact integer numerator
    window = np.cos(np.pi * t / (2 * RESAMPLE_ZERO_CROSSINGS)) ** 2  # Hann over |t| < 6
    taps = np.where(np.abs(t) < RESAMPLE_ZERO_CROSSINGS, np.sinc(t) * window * (cutoff / orig), 0.0)
    taps.setflags(write=False)
    return taps, width


def resample(wave: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(N,) at ``sample_rate`` -> (N',) float32 at ``target_rate``, N' = ceil(N * target_rate / sample_rate).

    Band-limited interpolation: a Hann-windowed sinc low-pass with its cutoff at 0.99 x the
    lower Nyquist frequency, so downsampling removes what the new rate cannot hold instead of
    folding it back (a tone at 1.25 x the new Nyquist comes out more than 40 dB down), and
    upsampling adds no images. Samples beyond the ends count as zeros. The same wave comes
    back (as float32) when the rates are equal.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if int(sample_rate) <= 0 or int(target_rate) <= 0:
        raise ValueError(f"resample: sample rates must be positive, got {sample_rate} -> {target_rate}")
    gcd = math.gcd(int(sample_rate), int(target_rate))
    orig, new = int(sample_rate) // gcd, int(target_rate) // gcd
    if orig == new:
        return wave
    taps, width = _resample_taps(orig, new)  # (new, 2 * width + 2)
    n_out = -(-wave.size * new // orig)  # ceil(N * new / orig)
    x = np.pad(wave.astype(np.float64), (width, width + 1))  # zeros beyond both ends
    out = np.empty(n_out, dtype=np.float32)
    offsets = np.arange(taps.shape[1])  # (taps,)
    for start in range(0, n_out, _RESAMPLE_CHUNK):
        m = np.arange(start, min(start + _RESAMPLE_CHUNK, n_out))  # (M,) output indices
        first = (m * orig) // new  # (M,) x[first] is input sample m * orig // new - width
        segments = x[first[:, None] + offsets]  # (M, taps)
        out[start : start + m.size] = np.einsum("mt,mt->m", segments, taps[m % new])  # (M, taps) -> (M,)
    return out


def log_mel(wave: np.ndarray, sample_rate: int, n_mels: int = N_MELS) -> np.ndarray:
    """Log-mel features of a mono wave.

    Args:
        wave: (N,) float samples in [-1, 1] (any float or int dtype; 1-D).
        sample_rate: rate of ``wave`` in Hz; resampled to 16 kHz first if different.
        n_mels: D, the number of mel bins.
    Returns:
        (T, D) float32 with T = 1 + N16 // 160, N16 the length at 16 kHz.
    Raises:
        ValueError: ``wave`` is not 1-D or is empty.
    """
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"log_mel expects a 1-D wave (N,), got shape {wave.shape}")
    if wave.size == 0:
        raise ValueError("log_mel got an empty wave")
    x = resample(wave, sample_rate).astype(np.float64)  # (N16,)
    pad = N_FFT // 2
    # reflect padding as torch.stft(center=True); numpy repeats the reflection for very short waves
    x = np.pad(x, (pad, pad), mode="reflect")  # (N16 + 512,)
    n_frames = 1 + (x.size - N_FFT) // HOP_LENGTH
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP_LENGTH][:n_frames]  # (T, 512)
    spectrum = np.fft.rfft(frames * _window(), n=N_FFT, axis=1)  # (T, 257) complex
    power = spectrum.real**2 + spectrum.imag**2  # (T, 257)
    mel = power @ mel_filterbank(n_mels)  # (T, 257) @ (257, D) -> (T, D)
    return np.log(mel + LOG_EPS).astype(np.float32)


# --------------------------------------------------------------------------
# Speech activity: is there anything in this audio a recogniser could transcribe?

ACTIVITY_FRAME_SECONDS = 0.025  # 25 ms frames, as the features
ACTIVITY_HOP_SECONDS = 0.010  # every 10 ms
ACTIVITY_POWER_FLOOR = 1e-12  # -120 dBFS: digital silence sits here
MIN_SPEECH_SECONDS = 0.1  # shorter audio cannot hold a syllable
LOUD_FRAMES = 10  # the level is that of the 10th loudest frame: 0.1 s of sound, not one click
SPEECH_LEVEL_DB = -55.0  # quieter than this (dBFS) is silence or hiss
SPEECH_RANGE_DB = 10.0  # speech rises this far above its own quiet frames; steady noise does not


@dataclass(frozen=True)
class SpeechActivity:
    """What :func:`speech_activity` measured on one wave."""

    seconds: float  # duration
    level_db: float  # dBFS of the LOUD_FRAMES-th loudest 25 ms frame
    floor_db: float  # dBFS of the 10th percentile frame (pauses, background)
    has_speech: bool
    reason: str  # why not, e.g. "level -71.2 dBFS, below -55 dBFS"; "" when has_speech

    @property
    def range_db(self) -> float:
        return self.level_db - self.floor_db


def speech_activity(wave: np.ndarray, sample_rate: int) -> SpeechActivity:
    """Does ``wave`` (N,) at ``sample_rate`` hold speech? A level-and-modulation test on frame energies.

    Frame power is the mean square of each 25 ms frame (10 ms hop) in dB
    relative to full scale (a full-scale sine is -3 dBFS). The wave holds
    speech when all three hold:

    - it lasts at least ``MIN_SPEECH_SECONDS`` (0.1 s);
    - its level, the dB of the ``LOUD_FRAMES``-th (10th) loudest frame, is at
      least ``SPEECH_LEVEL_DB`` (-55 dBFS): digital silence, dither and faint
      hiss are quieter, and one click is not 10 frames long;
    - the level is at least ``SPEECH_RANGE_DB`` (10 dB) above the floor, the
      10th-percentile frame: speech alternates syllables with pauses and
      closures, steady noise (white, hum) stays within a few dB of itself.

    Audio shorter than 0.4 s takes the loudest quarter of its frames instead
    of 10. Measured on 336 synthesised sentences (300 espeak-ng voice/variant
    combinations, 36 flite, speed 130..200, pitch 20..80, as src/corpus/synth.py
    speaks them): level -28..-6 dBFS, range 22..114 dB, all pass; with white
    noise at 10 dB SNR the range is 14..20 dB, still all pass (at 5 dB SNR
    9..15 dB: most pass). Digital silence is -120 dBFS, 1-LSB 16-bit dither
    -92 dBFS, white noise at any level (-90..-3 dBFS) and steady tones have a
    range of at most about 1 dB: all fail. Limits: a train of clicks
    passes, and speech 30 dB quieter than a normal recording (level under
    -55 dBFS) fails.
    """
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    seconds = wave.size / float(sample_rate) if sample_rate > 0 else 0.0
    if wave.size == 0:
        return SpeechActivity(0.0, -120.0, -120.0, False, f"0.00 s of audio, shorter than {MIN_SPEECH_SECONDS:g} s")
    frame = max(1, int(round(ACTIVITY_FRAME_SECONDS * sample_rate)))
    hop = max(1, int(round(ACTIVITY_HOP_SECONDS * sample_rate)))
    if wave.size < frame:
        power = np.array([np.mean(wave**2)])
    else:
        frames = np.lib.stride_tricks.sliding_window_view(wave, frame)[::hop]  # (T, frame)
        power = np.einsum("tn,tn->t", frames, frames) / frame  # (T,) mean square
    power = np.nan_to_num(power, nan=0.0, posinf=1.0)  # non-finite samples: not evidence of speech
    db = 10.0 * np.log10(np.maximum(power, ACTIVITY_POWER_FLOOR))  # (T,) dBFS
    k = min(LOUD_FRAMES, max(1, db.size // 4))  # audio under 0.4 s: its loudest quarter
    level = float(np.partition(db, db.size - k)[db.size - k])
    floor = float(np.percentile(db, 10))
    reason = ""
    if seconds < MIN_SPEECH_SECONDS:
        reason = f"{seconds:.2f} s of audio, shorter than {MIN_SPEECH_SECONDS:g} s"
    elif level < SPEECH_LEVEL_DB:
        reason = f"level {level:.1f} dBFS, below {SPEECH_LEVEL_DB:g} dBFS"
    elif level - floor < SPEECH_RANGE_DB:
        reason = f"steady sound: level {level:.1f} dBFS only {level - floor:.1f} dB above its quietest frames"
    return SpeechActivity(seconds, level, floor, not reason, reason)


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read an audio file with soundfile: (N,) float32 mono (channels averaged), sample rate.

    Reads whatever this libsndfile reads (wav, flac, ogg, and mp3 from libsndfile 1.1).
    Raises soundfile's error (a RuntimeError / LibsndfileError) on unreadable files.
    """
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (N, channels)
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]  # (N, C) -> (N,)
    return np.ascontiguousarray(wave, dtype=np.float32), int(sr)


def save_npy_atomic(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (.npy) atomically (src/atomic.py: ``path.tmp``, then a rename).

    A crash leaves at most a stale ``.tmp`` file, never a half-written ``.npy``; a full or
    read-only disk is a one-line UserError. Not fsynced: a corpus is many small files, and one
    lost to a power cut is redone by running the preparation again.
    """
    from src.atomic import atomic_write

    with atomic_write(path, "wb", fsync=False) as f:
        np.save(f, array, allow_pickle=False)
