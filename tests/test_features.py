"""src.data.features against references written here from the definitions: a direct DFT of each
centred frame, the HTK mel triangles, and sines of known frequency for the resampler. Where
torchaudio is importable, one more test compares with it; nothing else needs it."""
import math
import shutil
import subprocess
from fractions import Fraction

import numpy as np
import pytest
import soundfile as sf

from src.data import features
from src.data.features import HOP_LENGTH, SAMPLE_RATE, load_audio, log_mel, num_frames, resample


def htk_triangles(n_mels: int) -> np.ndarray:
    """(257, n_mels): mel m rises linearly from edge m to 1 at edge m + 1 and falls to 0 at edge m + 2,
    the n_mels + 2 edges equally spaced on the HTK mel scale mel(f) = 2595 log10(1 + f / 700), 0..8 kHz."""
    top = 2595.0 * math.log10(1.0 + 8000.0 / 700.0)
    edges = [700.0 * (10.0 ** (top * i / (n_mels + 1) / 2595.0) - 1.0) for i in range(n_mels + 2)]  # Hz
    fb = np.zeros((257, n_mels))
    for k in range(257):
        f = k * 16000.0 / 512  # centre frequency of DFT bin k
        for m in range(n_mels):
            lo, centre, hi = edges[m], edges[m + 1], edges[m + 2]
            if lo <= f <= centre:
                fb[k, m] = (f - lo) / (centre - lo)
            elif centre < f <= hi:
                fb[k, m] = (hi - f) / (hi - centre)
    return fb


def reference_log_mel(wave16: np.ndarray, n_mels: int) -> np.ndarray:
    """The contract by its sums, for waves longer than 256 samples: (T, D), T = 1 + N // 160.

    Frame t holds samples 160 t - 256 .. 160 t + 255 (reflected at the ends, the edge sample not
    repeated), times a 400-sample periodic Hann window in the middle of the 512; bin k of its
    DFT is sum_n x[n] exp(-2 pi i k n / 512); mel = |X|^2 summed under the HTK triangles."""
    x = np.asarray(wave16, dtype=np.float64)
    n_samples = x.size
    window = np.zeros(512)
    window[56:456] = np.sin(np.pi * np.arange(400) / 400) ** 2  # = 0.5 - 0.5 cos(2 pi n / 400)
    dft = np.exp(-2j * np.pi * np.outer(np.arange(257), np.arange(512)) / 512)  # (257, 512)
    fb = htk_triangles(n_mels)
    out = []
    for t in range(1 + n_samples // 160):
        idx = np.abs(np.arange(160 * t - 256, 160 * t + 256))  # reflect at the start
        idx = np.where(idx >= n_samples, 2 * (n_samples - 1) - idx, idx)  # and at the end
        power = np.abs(dft @ (x[idx] * window)) ** 2  # (257,)
        out.append(np.log(power @ fb + 1e-6))
    return np.array(out)


@pytest.mark.parametrize("n_mels", [28, 40, 80])
def test_random_noise_matches_the_direct_dft(n_mels):
    rng = np.random.default_rng(0)
    wave = (0.3 * rng.standard_normal(16000 + 123)).astype(np.float32)
    ours = log_mel(wave, 16000, n_mels=n_mels)
    ref = reference_log_mel(wave, n_mels)
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape == (num_frames(wave.size), n_mels)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("n_mels", [28, 80])
def test_filterbank_is_the_htk_triangles(n_mels):
    np.testing.assert_allclose(features.mel_filterbank(n_mels), htk_triangles(n_mels), atol=1e-12)


def test_a_tone_lands_in_the_mel_band_centred_nearest_to_it():
    edges_mel = np.linspace(0.0, 2595.0 * np.log10(1.0 + 8000.0 / 700.0), 30)  # 28 mels + 2 edges
    centres = 700.0 * (10.0 ** (edges_mel[1:-1] / 2595.0) - 1.0)  # (28,) Hz
    for f in (300.0, 1000.0, 2500.0, 6000.0):
        wave = 0.5 * np.sin(2 * np.pi * f * np.arange(16000) / 16000)
        loudest = log_mel(wave, 16000)[10:-10].mean(axis=0).argmax()
        assert loudest == np.abs(centres - f).argmin(), (f, centres[loudest])


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_espeak_speech_at_22050_hz(tmp_path):
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), "The quick brown fox jumps over the lazy dog."],
                   check=True, capture_output=True)
    wave, sr = load_audio(path)
    assert sr == 22050 and wave.dtype == np.float32 and wave.ndim == 1
    ours = log_mel(wave, sr)
    wave16 = resample(wave, sr)
    assert wave16.size == math.ceil(Fraction(wave.size * 16000, 22050))
    ref = reference_log_mel(wave16, 28)
    assert ours.shape == ref.shape == (1 + wave16.size // 160, 28)
    # espeak's silences sit on the log floor: compare everything in absolute terms
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)
    assert ours.max() > 0.0 > ours.min()  # speech, not silence


# --------------------------------------------------------------------------
# resampling: sines of known frequency against the analytic sine at the new rate

EDGE = 64  # output samples at each end within reach of the zeros beyond the wave


@pytest.mark.parametrize("rate,target", [(8000, 16000), (11025, 16000), (22050, 16000), (44100, 16000),
                                         (48000, 16000), (16000, 22050), (16000, 8000)])
def test_resampled_sines_are_the_sine_at_the_new_rate(rate, target):
    """Below 0.4 x the lower Nyquist frequency, the output is the same sine sampled at the new rate
    to within 0.2 % of its amplitude (DC included)."""
    nyquist = min(rate, target) / 2
    for f in [f for f in (0.0, 440.0, 1000.0, 1500.0, 3000.0) if f <= 0.4 * nyquist]:
        wave = 0.5 * np.sin(2 * np.pi * f * np.arange(rate) / rate + 0.3) if f else np.full(rate, 0.5)
        out = resample(wave.astype(np.float32), rate, target)
        m = np.arange(out.size)
        expected = 0.5 * np.sin(2 * np.pi * f * m / target + 0.3) if f else np.full(out.size, 0.5)
        assert out.dtype == np.float32 and out.size == target
        np.testing.assert_allclose(out[EDGE:-EDGE], expected[EDGE:-EDGE], atol=1e-3, rtol=0, err_msg=f"{f} Hz")


@pytest.mark.parametrize("rate,target", [(22050, 16000), (44100, 16000), (48000, 16000), (16000, 8000)])
def test_downsampling_removes_tones_above_the_new_nyquist(rate, target):
    """What the new rate cannot hold is filtered out, not folded back: a tone at 1.25 x the new
    Nyquist frequency comes out more than 40 dB down, at 1.5 x more than 50 dB (where the input
    rate can carry it). Plain decimation or interpolation would keep it at full strength."""
    for ratio, min_db in ((1.25, 40.0), (1.5, 50.0)):
        f = ratio * target / 2
        if f >= rate / 2:
            continue
        wave = np.sin(2 * np.pi * f * np.arange(rate) / rate).astype(np.float32)
        out = resample(wave, rate, target)[EDGE:-EDGE].astype(np.float64)
        db = 20 * np.log10(np.sqrt(np.mean(out**2)) / np.sqrt(0.5))
        assert db < -min_db, (f, db)


def test_resampled_length_is_ceil_of_the_rate_ratio_over_many_lengths():
    rng = np.random.default_rng(4)
    for rate, target in [(8000, 16000), (11025, 16000), (22050, 16000), (44100, 16000), (48000, 16000),
                         (16001, 16000), (16000, 22050)]:
        for n in list(range(1, 200, 3)) + [441, 882, 1000, 4410, 4411]:
            out = resample(rng.standard_normal(n).astype(np.float32), rate, target)
            assert out.dtype == np.float32 and out.size == math.ceil(Fraction(n * target, rate)), (rate, n)


def test_resampling_at_the_same_rate_returns_the_wave_and_bad_rates_are_rejected():
    wave = np.random.default_rng(5).standard_normal(1000)
    out = resample(wave, 16000)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, wave.astype(np.float32))
    with pytest.raises(ValueError, match="positive"):
        resample(wave, 0)


def test_matches_torchaudio_where_it_is_installed():
    """torchaudio is no requirement (its PyPI wheels import only next to the torch they were built
    with); where one imports, the features and the resampler agree with it."""
    try:
        import torch
        import torchaudio
        import torchaudio.functional as AF
    except (ImportError, OSError) as e:  # a torchaudio built for another torch fails with OSError
        pytest.skip(f"torchaudio does not import here ({type(e).__name__}); the tests above do not need it")
    rng = np.random.default_rng(6)
    wave = (0.3 * rng.standard_normal(16000 + 123)).astype(np.float32)
    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, n_fft=512, win_length=400, hop_length=160, f_min=0.0, f_max=8000.0,
        n_mels=40, power=2.0, center=True, pad_mode="reflect", norm=None, mel_scale="htk",
    ).double()
    ref = torch.log(transform(torch.from_numpy(wave.astype(np.float64))) + 1e-6).T.numpy()  # (D, T) -> (T, D)
    np.testing.assert_allclose(log_mel(wave, 16000, n_mels=40), ref, atol=1e-4, rtol=0)
    for rate, target in [(22050, 16000), (44100, 16000), (8000, 16000), (16000, 22050)]:
        x = (0.3 * rng.standard_normal(rate + 77)).astype(np.float32)
        ref = AF.resample(torch.from_numpy(x).double(), rate, target).numpy()  # float64: torchaudio's own kernel exact
        np.testing.assert_allclose(resample(x, rate, target), ref, atol=1e-6, rtol=0, err_msg=f"{rate} -> {target}")


def test_frame_count_formula_over_many_lengths():
    rng = np.random.default_rng(1)
    for n in list(range(1, 700, 7)) + [1599, 1600, 1601, 16000, 16159, 16160]:
        wave = rng.standard_normal(n).astype(np.float32)
        assert log_mel(wave, SAMPLE_RATE).shape == (1 + n // HOP_LENGTH, 28), n
        assert num_frames(n) == 1 + n // 160


def test_resampled_length_and_frames_at_other_rates():
    rng = np.random.default_rng(2)
    for sr in (8000, 22050, 44100, 48000):
        n = sr * 2 + 17
        wave = rng.standard_normal(n).astype(np.float32)
        n16 = resample(wave, sr).size
        assert abs(n16 - n * 16000 / sr) <= 1
        assert log_mel(wave, sr).shape == (1 + n16 // 160, 28)


def test_stereo_is_averaged_and_int_files_scale_to_unit_range(tmp_path):
    rng = np.random.default_rng(3)
    stereo = (0.2 * rng.standard_normal((4000, 2))).astype(np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 16000, subtype="PCM_16")
    wave, sr = load_audio(path)
    assert sr == 16000 and wave.shape == (4000,) and wave.dtype == np.float32
    np.testing.assert_allclose(wave, stereo.mean(axis=1), atol=2 / 32768)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        log_mel(np.zeros(0, np.float32), 16000)
    with pytest.raises(ValueError, match="1-D"):
        log_mel(np.zeros((10, 2), np.float32), 16000)


# --------------------------------------------------------------------------
# speech activity: synthesised speech passes; silence, hiss, steady noise and short clips fail


def _synthesised_speech() -> list[tuple[str, np.ndarray, int]]:
    """A few sentences from espeak-ng and flite voices, spoken as src.corpus.synth speaks them."""
    from src.corpus import synth

    if shutil.which("espeak-ng") is None or shutil.which("flite") is None:
        pytest.fail("espeak-ng and flite are needed: apt-get install espeak-ng flite (see .ci/run)")
    speakers = [("espeak", "en-us", "", 175, 50), ("espeak", "en-gb-scotland", "f2", 130, 80),
                ("espeak", "de", "klatt", 200, 20), ("espeak", "cmn", "m3", 160, 35)]
    speakers += [("flite", v, "", 130 + 20 * i, 20 + 20 * i) for i, v in enumerate(synth.FLITE_VOICES)]
    sentences = ["yes", "the quick brown fox jumps over the lazy dog",
                 "it was the best of times, it was the worst of times"]
    out = []
    for i, (engine, voice, variant, speed, pitch) in enumerate(speakers):
        text = sentences[i % len(sentences)]
        spk = synth.Speaker(1, "dev-clean", engine, voice, variant, speed, pitch)
        wave, sr = synth.speak(synth.Job("dev-clean", "x", text.upper(), text, spk))
        out.append((f"{engine} {voice}+{variant}: {text}", wave, sr))
    return out


def test_speech_activity_passes_synthesised_speech_also_with_noise_or_quiet():
    rng = np.random.default_rng(7)
    for name, wave, sr in _synthesised_speech():
        power = float(np.mean(wave.astype(np.float64) ** 2))
        noisy = wave + rng.standard_normal(wave.size) * np.sqrt(power / 10.0)  # white noise at 10 dB SNR
        for variant, w in [("clean", wave), ("10 dB SNR", noisy), ("20 dB quieter", wave * 0.1)]:
            a = features.speech_activity(w, sr)
            assert a.has_speech and a.reason == "", (name, variant, a)
            assert a.level_db > features.SPEECH_LEVEL_DB + 10, (name, variant, a)  # with a margin
            assert a.range_db > features.SPEECH_RANGE_DB + 3, (name, variant, a)


def test_speech_activity_rejects_silence_noise_tones_and_short_clips():
    rng = np.random.default_rng(8)
    sr = 16000
    t = np.arange(5 * sr) / sr
    speech = _synthesised_speech()[0][1]  # espeak-ng "yes" at 22050 Hz
    cases = {
        "30 s of digital silence": (np.zeros(30 * sr, np.float32), sr, "level -120.0 dBFS"),
        "1-LSB dither": (rng.integers(-1, 2, 5 * sr) / 32768.0, sr, "below -55 dBFS"),
        "faint hiss": (1e-3 * rng.standard_normal(5 * sr), sr, "below -55 dBFS"),
        "loud white noise": (0.3 * rng.standard_normal(5 * sr), sr, "steady sound"),
        "moderate white noise": (0.01 * rng.standard_normal(5 * sr), 44100, "steady sound"),
        "hum": (0.1 * np.sin(2 * np.pi * 50 * t), sr, "steady sound"),
        "0.05 s of speech": (speech[len(speech) // 3:][:1102], 22050, "0.05 s of audio, shorter than 0.1 s"),
        "one sample": (np.array([0.5], np.float32), sr, "shorter than 0.1 s"),
        "no samples": (np.zeros(0, np.float32), sr, "0.00 s of audio"),
    }
    for name, (wave, rate, reason) in cases.items():
        a = features.speech_activity(wave, rate)
        assert not a.has_speech, (name, a)
        assert reason in a.reason, (name, a)
