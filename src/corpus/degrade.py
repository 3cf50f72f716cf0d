"""Augmented training copies in the waveform domain: rooms, lines and noise unlike the evaluation's.

    wave, description = degrade(wave, sample_rate, rng, noise_files=())

``python -m src.corpus.synth OUT ... --augment N`` and ``python -m src.corpus.prepare ... --augment N``
write N copies of every training utterance, each through one degradation drawn here, into
``SPLIT-augmented`` beside the clean ``SPLIT``; ``data.train_partition=train-clean-100+augmented``
trains on both. Off by default: nothing is written unless ``--augment`` is given.

The held-out ``dev-clean-channel`` split (:mod:`src.corpus.channels`) measures robustness, so the
copies here must not be made the way that split is. Each kind below differs from its counterpart
there in family, not only in its numbers:

=============  ==========================================  ==========================================
kind           here (training copies)                      src.corpus.channels (evaluation)
=============  ==========================================  ==========================================
``noise``      speech-shaped noise (the utterance's own    white or pink Gaussian noise, stationary,
               spectrum, random phase) with a 2-6 Hz       SNR 5-20 dB
               syllable-rate envelope; or mains hum (50 or
               60 Hz and harmonics); or a recording from
               ``--noise-dir``; SNR 0-25 dB
``line``       a smooth band-pass with drawn edges         8 kHz resampling (nothing above 4 kHz),
               (high-pass 50-400 Hz, low-pass 2.5-7 kHz)   a 300 Hz high-pass, 8-bit mu-law
               and linear quantisation to 6-10 bits or     companding, hiss at 30 dB
               soft clipping; the rate stays 16 kHz
``room``       sparse early reflections (2-40 ms) and a    one exponentially decaying white tail,
               tail that dies faster at high frequencies   direct and reverberant energy equal,
               (three bands), direct-to-reverberant ratio  RT60 0.3-0.9 s
               -3 to +9 dB, RT60 0.2-1.0 s
``room+noise`` a room, then speech-shaped noise or hum at  a room, then pink noise at 10-25 dB
               5-25 dB
=============  ==========================================  ==========================================

The kinds are drawn with equal chances, one per copy. The same ``rng`` state gives the same copy.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from src.corpus.channels import convolve_at_power, mean_power, mix_at_snr
from src.data.features import load_audio, resample
from src.errors import UserError

KINDS = ("noise", "line", "room", "room+noise")
MAINS_HZ = (50.0, 60.0)
HUM_HARMONICS = 8  # the mains frequency and its overtones up to 8x
DECAY_DB = 60.0  # RT60: the time for the reverberant energy to fall by 60 dB
# the room's tail in three bands: (upper edge in Hz, share of the room's RT60 in that band);
# air and soft surfaces absorb high frequencies first, so the tail dies faster there
ROOM_BANDS = ((1000.0, 1.0), (4000.0, 0.7), (math.inf, 0.4))


def speech_shaped_noise(wave: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """(N,) noise with the long-term spectrum of ``wave`` (its magnitudes, random phases: the
    utterance made unintelligible), amplitude-modulated at a syllable rate (2-6 Hz, depth 0.3-0.9)
    as a crowd's babble is; unit mean power."""
    magnitude = np.abs(np.fft.rfft(np.asarray(wave, dtype=np.float64)))  # (N // 2 + 1,)
    phase = np.exp(2j * math.pi * rng.random(magnitude.size))
    noise = np.fft.irfft(magnitude * phase, wave.size)  # (N,)
    rate, depth = rng.uniform(2.0, 6.0), rng.uniform(0.3, 0.9)
    t = np.arange(wave.size) / sample_rate
    noise *= 1.0 + depth * np.sin(2.0 * math.pi * rate * t + rng.uniform(0.0, 2.0 * math.pi))
    return noise / math.sqrt(max(mean_power(noise), 1e-20))


def hum(n: int, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """(n,) mains hum of unit mean power: 50 or 60 Hz and its harmonics up to :data:`HUM_HARMONICS`,
    each at a random phase and an amplitude falling as 1/k; and the mains frequency."""
    mains = float(MAINS_HZ[int(rng.integers(len(MAINS_HZ)))])
    t = np.arange(n) / sample_rate
    out = np.zeros(n)
    for k in range(1, HUM_HARMONICS + 1):
        if k * mains < sample_rate / 2:
            out += np.sin(2.0 * math.pi * k * mains * t + rng.uniform(0.0, 2.0 * math.pi)) / k
    return out / math.sqrt(max(mean_power(out), 1e-20)), mains


def recorded_noise(path: str | Path, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) from the recording at ``path`` (resampled to ``sample_rate``), from a random start,
    looped when shorter than n; unit mean power."""
    noise, rate = load_audio(path)
    if rate != sample_rate:
        noise = resample(noise, rate, sample_rate)
    if noise.size == 0 or mean_power(noise) == 0.0:
        raise ValueError(f"{path}: holds no sound to use as noise")
    start = int(rng.integers(noise.size))
    reps = -(-(start + n) // noise.size)  # ceil
    out = np.tile(noise, reps)[start:start + n].astype(np.float64)  # (n,)
    return out / math.sqrt(max(mean_power(out), 1e-20))


def draw_noise(wave: np.ndarray, sample_rate: int, rng: np.random.Generator,
               noise_files: Sequence[str | Path] = ()) -> tuple[np.ndarray, str]:
    """(N,) unit-power noise of one source drawn with equal chances (speech-shaped, hum, and a
    recording when ``noise_files`` are given), and its description."""
    sources = ("speech-shaped", "hum", "recorded") if noise_files else ("speech-shaped", "hum")
    source = sources[int(rng.integers(len(sources)))]
    if source == "speech-shaped":
        return speech_shaped_noise(wave, sample_rate, rng), source
    if source == "hum":
        noise, mains = hum(wave.size, sample_rate, rng)
        return noise, f"hum {mains:.0f} Hz"
    path = noise_files[int(rng.integers(len(noise_files)))]
    return recorded_noise(path, wave.size, sample_rate, rng), f"recorded {Path(path).name}"


def band_pass(wave: np.ndarray, sample_rate: int, low_hz: float, high_hz: float) -> np.ndarray:
    """(N,) -> (N,) through a zero-phase band-pass with Butterworth magnitudes: 2nd order above
    ``low_hz`` (12 dB per octave below it), 4th order below ``high_hz`` (24 dB per octave above)."""
    spectrum = np.fft.rfft(np.asarray(wave, dtype=np.float64))  # (N // 2 + 1,)
    f = np.fft.rfftfreq(wave.size, 1.0 / sample_rate)
    f[0] = 1e-3  # DC: the high-pass takes it to (almost) nothing
    gain = 1.0 / np.sqrt(1.0 + (low_hz / f) ** 4) / np.sqrt(1.0 + (f / high_hz) ** 8)
    return np.fft.irfft(spectrum * gain, wave.size)


def quantise(wave: np.ndarray, bits: int) -> np.ndarray:
    """Linear PCM at ``bits`` bits, full scale at the wave's peak: (N,) -> (N,)."""
    peak = float(np.max(np.abs(wave))) or 1.0
    step = 2.0 / (2 ** bits - 1)
    return np.round(wave / peak / step) * step * peak


def soft_clip(wave: np.ndarray, drive: float) -> np.ndarray:
    """An overdriven amplifier: tanh of the wave driven ``drive`` times past its peak, back at the
    same peak: (N,) -> (N,)."""
    peak = float(np.max(np.abs(wave))) or 1.0
    return np.tanh(drive * wave / peak) / math.tanh(drive) * peak


def line(wave: np.ndarray, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A cheap line or codec: a drawn band-pass, then 6-10-bit PCM or soft clipping; (N,) -> (N,)."""
    low, high = rng.uniform(50.0, 400.0), min(rng.uniform(2500.0, 7000.0), 0.45 * sample_rate)
    out = band_pass(wave, sample_rate, low, high)
    if rng.random() < 0.5:
        bits = int(rng.integers(6, 11))
        out, what = quantise(out, bits), f"{bits}-bit PCM"
    else:
        drive = float(rng.uniform(1.5, 5.0))
        out, what = soft_clip(out, drive), f"soft clip x{drive:.1f}"
    return out.astype(np.float32), f"line: {low:.0f}-{high:.0f} Hz, {what}"


def room_response(rt60: float, drr_db: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """(L,) impulse response: 1 at t = 0 (the direct sound); 3-8 early reflections at 2-40 ms, of
    random sign, weaker with delay; then from the last of them a Gaussian tail whose energy falls
    60 dB in ``rt60`` s below 1 kHz and faster above (:data:`ROOM_BANDS`). Reflections and tail
    together carry ``drr_db`` dB less energy than the direct sound. L = rt60 seconds."""
    n = max(int(0.05 * sample_rate), int(rt60 * sample_rate))
    t = np.arange(n) / sample_rate  # (L,) seconds
    early = np.zeros(n)
    delays = np.sort(rng.uniform(0.002, 0.040, size=int(rng.integers(3, 9))))
    for d in delays:
        early[int(d * sample_rate)] += rng.choice((-1.0, 1.0)) * 0.002 / d  # 1/distance
    white = np.fft.rfft(rng.standard_normal(n))  # (L // 2 + 1,)
    f = np.fft.rfftfreq(n, 1.0 / sample_rate)
    tail = np.zeros(n)
    lower = 0.0
    for upper, share in ROOM_BANDS:
        band = np.fft.irfft(np.where((f >= lower) & (f < upper), white, 0.0), n)  # (L,) this band's noise
        tail += band * 10.0 ** (-DECAY_DB / 20.0 * t / (rt60 * share))
        lower = upper
    tail[: int(delays[-1] * sample_rate)] = 0.0
    reverb = early / math.sqrt(np.sum(early ** 2)) + tail / math.sqrt(max(np.sum(tail ** 2), 1e-20))
    reverb *= 10.0 ** (-drr_db / 20.0) / math.sqrt(np.sum(reverb ** 2))
    reverb[0] = 1.0
    return reverb


def room(wave: np.ndarray, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """(N,) -> (N,): the wave convolved with :func:`room_response` (RT60 0.2-1.0 s, DRR -3 to +9 dB),
    the tail past the end cut, scaled back to the wave's mean power."""
    rt60, drr = float(rng.uniform(0.2, 1.0)), float(rng.uniform(-3.0, 9.0))
    wet = convolve_at_power(wave, room_response(rt60, drr, sample_rate, rng))
    return wet, f"room: RT60 {rt60:.2f} s, DRR {drr:+.1f} dB"


def degrade(wave: np.ndarray, sample_rate: int, rng: np.random.Generator,
            noise_files: Sequence[str | Path] = ()) -> tuple[np.ndarray, str]:
    """One training copy: a kind of :data:`KINDS` drawn with ``rng`` and applied to the (N,) wave;
    returns the (N,) float32 copy at the same rate and what was done (the kind, a colon, its settings)."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.size == 0 or mean_power(wave) == 0.0:
        return wave, "none: silent"
    kind = KINDS[int(rng.integers(len(KINDS)))]
    if kind == "line":
        return line(wave, sample_rate, rng)
    if kind == "noise":
        noise, source = draw_noise(wave, sample_rate, rng, noise_files)
        snr = float(rng.uniform(0.0, 25.0))
        return mix_at_snr(wave, noise, snr), f"noise: {source}, SNR {snr:.1f} dB"
    wet, what = room(wave, sample_rate, rng)
    if kind == "room":
        return wet, what
    noise, source = draw_noise(wet, sample_rate, rng, noise_files)
    snr = float(rng.uniform(5.0, 25.0))
    return mix_at_snr(wet, noise, snr), f"room+noise: {what[6:]}, {source} SNR {snr:.1f} dB"


def augmented_name(name: str, copy: int) -> str:
    """The file stem of training copy ``copy`` (1, 2, ...) of utterance ``name``: NAME-aK."""
    return f"{name}-a{copy}"


def augment_options(augment: int, noise_dir: str | Path | None) -> tuple[str, ...]:
    """Check the command line's ``--augment N`` and ``--noise-dir DIR``; the noise files to draw from."""
    if augment < 0:
        raise UserError(f"--augment: expected a number of copies (0 = none), got {augment}")
    if noise_dir is None:
        return ()
    if not augment:
        raise UserError("--noise-dir: only used with --augment N (the noise of the augmented copies)")
    try:
        return tuple(str(p) for p in noise_files_in(noise_dir))
    except ValueError as e:
        raise UserError(f"--noise-dir {e}; give a folder of noise recordings") from None


def noise_files_in(folder: str | Path) -> list[Path]:
    """The sound files under ``folder`` (wav, flac, ogg, mp3; any depth), sorted; ValueError if none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".wav", ".flac", ".ogg", ".mp3") and p.is_file())
    if not files:
        raise ValueError(f"{folder}: no .wav, .flac, .ogg or .mp3 files in it")
    return files


__all__ = ["KINDS", "augment_options", "augmented_name", "band_pass", "degrade", "draw_noise", "hum", "line", "mix_at_snr", "noise_files_in",
           "quantise", "recorded_noise", "room", "room_response", "soft_clip", "speech_shaped_noise"]
