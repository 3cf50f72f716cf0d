"""Recording channels in the waveform domain, for a held-out evaluation split.

    wave, sample_rate, description = through_channel(wave, sample_rate, rng)

``python -m src.corpus.synth ROOT --preset paragraphs --channel dev-clean`` speaks a corpus' dev
utterances again and passes each through one channel drawn here, into ``ROOT/dev-clean-channel``:
the same voices and text as ``dev-clean``, heard through a room, a telephone line or noise. It asks
whether a model trained on clean synthetic speech holds up on other channels.

These work on the wave, before the features, and share no code with ``training.channel``
(``src/data/augment.py``), which imitates channels on log-mel features during training: a model
trained with that augmentation is measured here on channels it has not seen simulated this way.

The channels (:data:`KINDS`, one per utterance, drawn with equal chances):

- ``noise``: white or pink (equal power per octave) Gaussian noise, SNR 5-20 dB;
- ``telephone``: down to 8 kHz (so nothing above 4 kHz), a 300 Hz high-pass, 8-bit mu-law
  (G.711's companding) and back up, with white noise at 30 dB SNR (a line's hiss);
- ``reverb``: a room of reverberation time (RT60) 0.3-0.9 s: the direct sound, then an
  exponentially decaying Gaussian tail (:func:`room_impulse_response`);
- ``reverb+noise``: a room of RT60 0.3-0.9 s, then pink noise at 10-25 dB SNR.
"""
from __future__ import annotations

import math

import numpy as np

from src.data.features import resample

KINDS = ("noise", "telephone", "reverb", "reverb+noise")
TELEPHONE_RATE = 8000  # Hz: a narrowband line
TELEPHONE_LOW_HZ = 300.0  # the line's high-pass
MU = 255  # G.711 mu-law: 8 bits a sample
DECAY_DB = 60.0  # RT60: the time for the reverberant energy to fall by 60 dB


def mean_power(x: np.ndarray) -> float:
    return float(np.mean(np.asarray(x, dtype=np.float64) ** 2))


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) Gaussian noise of unit mean power whose power spectrum falls as 1/f (equal power per octave):
    white noise shaped in the frequency domain by 1/sqrt(f), the DC bin dropped."""
    spectrum = np.fft.rfft(rng.standard_normal(n))  # (n // 2 + 1,)
    k = np.arange(spectrum.size, dtype=np.float64)
    spectrum[1:] /= np.sqrt(k[1:])
    spectrum[0] = 0.0
    noise = np.fft.irfft(spectrum, n)  # (n,)
    return noise / math.sqrt(mean_power(noise))


def add_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator, colour: str = "white") -> np.ndarray:
    """Gaussian noise (``white`` or ``pink``) at ``snr_db`` relative to the wave's mean power: (N,) -> (N,)."""
    if colour == "white":
        noise = rng.standard_normal(wave.shape)
    elif colour == "pink":
        noise = pink_noise(wave.size, rng)
    else:
        raise ValueError(f"add_noise: colour must be white or pink, got {colour!r}")
    return mix_at_snr(wave, noise, snr_db)


def mix_at_snr(wave: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """(N,) wave plus (N,) noise scaled so that mean power(wave) / mean power(noise) is ``snr_db``."""
    scale = math.sqrt(mean_power(wave) / 10.0 ** (snr_db / 10.0) / max(mean_power(noise), 1e-20))
    return (wave + scale * noise).astype(np.float32)


def mu_law(x: np.ndarray, mu: int = MU) -> np.ndarray:
    """Compand samples in [-1, 1] to mu-law, quantise to mu + 1 levels and expand back: (N,) -> (N,)."""
    companded = np.sign(x) * np.log1p(mu * np.abs(x)) / math.log1p(mu)  # (N,) in [-1, 1]
    levels = np.round((companded + 1.0) / 2.0 * mu) / mu * 2.0 - 1.0  # mu + 1 levels
    return np.sign(levels) * np.expm1(np.abs(levels) * math.log1p(mu)) / mu


def telephone(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """A narrowband line: (N,) at ``sample_rate`` -> (N',) at the same rate, band 300-4000 Hz, 8-bit mu-law."""
    narrow = resample(wave, sample_rate, TELEPHONE_RATE).astype(np.float64)  # (M,) at 8 kHz
    spectrum = np.fft.rfft(narrow)  # (M // 2 + 1,)
    spectrum[np.fft.rfftfreq(narrow.size, 1.0 / TELEPHONE_RATE) < TELEPHONE_LOW_HZ] = 0.0
    narrow = np.fft.irfft(spectrum, narrow.size)
    peak = float(np.max(np.abs(narrow))) or 1.0
    narrow = mu_law(narrow / peak) * peak  # the line's companding, at full scale
    return resample(narrow, TELEPHONE_RATE, sample_rate)


def room_impulse_response(rt60: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """(L,) impulse response of a room: 1 at t = 0 (the direct sound), then from 2 ms Gaussian noise
    whose energy falls by 60 dB in ``rt60`` seconds, L covering that fall; the tail carries as much
    energy as the direct sound (a listener a few metres from the speaker)."""
    n = max(2, int(rt60 * sample_rate))
    t = np.arange(n) / sample_rate  # (L,) seconds
    envelope = 10.0 ** (-DECAY_DB / 20.0 * t / rt60)  # amplitude: energy falls 60 dB at rt60
    tail = rng.standard_normal(n) * envelope
    tail[: int(0.002 * sample_rate)] = 0.0
    tail /= math.sqrt(float(np.sum(tail ** 2)))
    tail[0] = 1.0
    return tail


def reverberate(wave: np.ndarray, sample_rate: int, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """(N,) -> (N,): the wave convolved with a room's response (:func:`room_impulse_response`), the
    tail past the end cut, scaled back to the wave's mean power."""
    return convolve_at_power(wave, room_impulse_response(rt60, sample_rate, rng))


def convolve_at_power(wave: np.ndarray, response: np.ndarray) -> np.ndarray:
    """(N,) wave convolved with an (L,) impulse response by FFT, the tail past the end cut, scaled
    back to the wave's mean power: (N,) float32."""
    size = wave.size + response.size - 1
    n_fft = 1 << (size - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(wave, n_fft) * np.fft.rfft(response, n_fft), n_fft)[: wave.size]  # (N,)
    return (wet * math.sqrt(mean_power(wave) / max(mean_power(wet), 1e-20))).astype(np.float32)


def through_channel(wave: np.ndarray, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, int, str]:
    """One channel of :data:`KINDS` drawn with ``rng`` and applied: (wave (N,), its rate, what was done:
    the kind, a colon, its settings)."""
    kind = KINDS[int(rng.integers(len(KINDS)))]
    wave = np.asarray(wave, dtype=np.float32)
    if kind == "noise":
        colour, snr = ("white", "pink")[int(rng.integers(2))], float(rng.uniform(5.0, 20.0))
        return add_noise(wave, snr, rng, colour), sample_rate, f"noise: {colour}, SNR {snr:.1f} dB"
    if kind == "telephone":
        return add_noise(telephone(wave, sample_rate), 30.0, rng), sample_rate, "telephone: 300-4000 Hz, mu-law, white SNR 30 dB"
    rt60 = float(rng.uniform(0.3, 0.9))
    wet = reverberate(wave, sample_rate, rt60, rng)
    if kind == "reverb":
        return wet, sample_rate, f"reverb: RT60 {rt60:.2f} s"
    snr = float(rng.uniform(10.0, 25.0))
    return add_noise(wet, snr, rng, "pink"), sample_rate, f"reverb+noise: RT60 {rt60:.2f} s, pink SNR {snr:.1f} dB"


__all__ = ["KINDS", "add_noise", "convolve_at_power", "mix_at_snr", "mu_law", "pink_noise", "reverberate",
           "room_impulse_response", "telephone", "through_channel"]
