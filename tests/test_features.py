"""src.data.features against torchaudio's MelSpectrogram and the frame-count formula."""
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from src.data import features
from src.data.features import HOP_LENGTH, SAMPLE_RATE, load_audio, log_mel, num_frames, resample


def reference_log_mel(wave16: np.ndarray, n_mels: int) -> np.ndarray:
    """torchaudio's MelSpectrogram with the contract's parameters, then log(x + 1e-6): (T, D)."""
    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, n_fft=512, win_length=400, hop_length=160, f_min=0.0, f_max=8000.0,
        n_mels=n_mels, power=2.0, center=True, pad_mode="reflect", norm=None, mel_scale="htk",
    ).double()
    mel = transform(torch.from_numpy(np.asarray(wave16, dtype=np.float64)))  # (D, T)
    return torch.log(mel + 1e-6).T.numpy()  # (D, T) -> (T, D)


@pytest.mark.parametrize("n_mels", [28, 40, 80])
def test_random_noise_matches_torchaudio(n_mels):
    rng = np.random.default_rng(0)
    wave = (0.3 * rng.standard_normal(16000 + 123)).astype(np.float32)
    ours = log_mel(wave, 16000, n_mels=n_mels)
    ref = reference_log_mel(wave, n_mels)
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape == (num_frames(wave.size), n_mels)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_filterbank_matches_torchaudio():
    ref = torchaudio.functional.melscale_fbanks(257, 0.0, 8000.0, 28, 16000, norm=None, mel_scale="htk")
    np.testing.assert_allclose(features.mel_filterbank(28), ref.double().numpy(), atol=1e-5)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_espeak_speech_matches_torchaudio_after_resampling(tmp_path):
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), "The quick brown fox jumps over the lazy dog."],
                   check=True, capture_output=True)
    wave, sr = load_audio(path)
    assert sr == 22050 and wave.dtype == np.float32 and wave.ndim == 1
    ours = log_mel(wave, sr)
    wave16 = torchaudio.functional.resample(torch.from_numpy(wave), sr, SAMPLE_RATE).numpy()
    ref = reference_log_mel(wave16, 28)
    assert ours.shape == ref.shape == (1 + wave16.size // 160, 28)
    # espeak's silences sit on the log floor: compare everything in absolute terms
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)
    assert ours.max() > 0.0 > ours.min()  # speech, not silence


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
