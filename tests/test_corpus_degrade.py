"""src/corpus/degrade.py (augmented training copies, on the wave) against definitions measured
independently: SNR, the speech-shaped noise's spectrum by octave, the hum's harmonics, the band-pass's
Butterworth gains by pure tones, PCM levels, the room's direct-to-reverberant ratio and its RT60 per
band by Schroeder's backward integration; then --augment in synth and prepare, and the partition
that trains on both."""
import csv
import math
import shutil
import zlib

import numpy as np
import pytest
import soundfile as sf

from src.corpus import degrade
from src.corpus import prepare as prep
from src.corpus import synth
from src.data.features import load_audio, log_mel
from src.data.layout import list_utterances
from src.errors import UserError
from wave_measures import SR, band_power, snr_db, tone



def speechlike(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """Noise with a falling spectrum (most power below 1 kHz), as speech has."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.standard_normal(int(seconds * SR)))  # brown: -6 dB per octave
    x -= np.convolve(x, np.ones(64) / 64, mode="same")  # no drift
    return (0.3 * x / np.max(np.abs(x))).astype(np.float32)


def test_mix_at_snr_gives_the_requested_snr():
    wave, noise = tone(440.0, 2.0), np.random.default_rng(1).standard_normal(2 * SR)
    assert abs(snr_db(wave, degrade.mix_at_snr(wave, noise, 3.5)) - 3.5) < 1e-6


def test_speech_shaped_noise_has_the_utterances_spectrum_by_octave():
    wave = speechlike(4.0)
    noise = degrade.speech_shaped_noise(wave, SR, np.random.default_rng(2))
    assert noise.shape == wave.shape and abs(np.mean(noise ** 2) - 1.0) < 1e-9
    assert np.corrcoef(noise, wave)[0, 1] ** 2 < 0.01  # not the utterance itself
    bands = [(125 * 2 ** k, 250 * 2 ** k) for k in range(6)]  # 125 Hz - 8 kHz
    share = lambda x: np.array([band_power(x, lo, hi) for lo, hi in bands]) / band_power(x, 125, 8000)
    np.testing.assert_allclose(10 * np.log10(share(noise)), 10 * np.log10(share(wave)), atol=1.0)


def test_hum_is_the_mains_frequency_and_its_harmonics_falling_as_one_over_k():
    noise, mains = degrade.hum(4 * SR, SR, np.random.default_rng(3))
    assert mains in (50.0, 60.0) and abs(np.mean(noise ** 2) - 1.0) < 1e-9
    power = np.abs(np.fft.rfft(noise)) ** 2
    f = np.fft.rfftfreq(noise.size, 1.0 / SR)
    harmonics = [power[np.argmin(np.abs(f - k * mains))] for k in range(1, degrade.HUM_HARMONICS + 1)]
    assert sum(harmonics) > 0.999 * power.sum()  # nothing between the harmonics
    np.testing.assert_allclose(np.array(harmonics) / harmonics[0], [1 / k ** 2 for k in range(1, 9)], rtol=1e-6)


def test_band_pass_has_butterworth_gains_at_and_beyond_its_edges():
    def gain_db(hz):
        y = degrade.band_pass(tone(hz), SR, 200.0, 4000.0)
        return 10 * math.log10(np.mean(y ** 2) / np.mean(tone(hz).astype(np.float64) ** 2))

    assert abs(gain_db(1000.0)) < 0.1
    assert abs(gain_db(200.0) + 10 * math.log10(2)) < 0.1 and abs(gain_db(4000.0) + 10 * math.log10(2)) < 0.1
    # an octave beyond each edge: 2nd order below (1 / (1 + 2^4)), 4th order above (1 / (1 + 2^8))
    assert abs(gain_db(100.0) + 10 * math.log10(17)) < 0.1 and abs(gain_db(8000.0 - 1) + 10 * math.log10(257)) < 0.2


@pytest.mark.parametrize("bits", [6, 10])
def test_quantise_puts_every_sample_on_a_grid_of_2_to_the_bits_levels(bits):
    x = np.sin(np.linspace(0, 50, 20001)) * 0.37
    y = degrade.quantise(x, bits)
    step = 2 * 0.37 / (2 ** bits - 1)  # full scale at the peak
    assert np.unique(np.round(y / step, 6)).size <= 2 ** bits
    np.testing.assert_allclose(y / step, np.round(y / step), atol=1e-6)
    assert np.max(np.abs(y - x)) <= step / 2 + 1e-12


def test_soft_clip_keeps_the_peak_and_compresses_loud_samples_more_than_quiet_ones():
    x = np.linspace(-0.5, 0.5, 1001)
    y = degrade.soft_clip(x, 3.0)
    assert abs(np.max(np.abs(y)) - 0.5) < 1e-12 and np.all(np.diff(y) > 0)
    assert abs(y[501] / x[501] - 3.0 / math.tanh(3.0)) < 1e-3  # small signals: gain drive / tanh(drive)
    assert y[900] / x[900] < y[520] / x[520]


@pytest.mark.parametrize("rt60,drr", [(0.4, 0.0), (0.9, 6.0)])
def test_room_response_direct_to_reverberant_ratio_and_rt60_per_band(rt60, drr):
    rir = degrade.room_response(rt60, drr, SR, np.random.default_rng(4))
    assert rir[0] == 1.0 and not rir[1: int(0.002 * SR)].any()
    assert abs(10 * math.log10(1.0 / np.sum(rir[1:].astype(np.float64) ** 2)) - drr) < 1e-6
    tail = rir[int(0.040 * SR) + 1:].astype(np.float64)  # after the last early reflection
    spectrum = np.fft.rfft(tail, 2 * tail.size)
    f = np.fft.rfftfreq(2 * tail.size, 1.0 / SR)
    for (lo, hi), share in (((100.0, 1000.0), 1.0), ((5000.0, 7500.0), 0.4)):
        band = np.fft.irfft(np.where((f >= lo) & (f < hi), spectrum, 0.0))[: tail.size]
        decay = np.cumsum(band[::-1] ** 2)[::-1]  # Schroeder: energy still to come, at each sample
        curve = 10 * np.log10(decay / decay[0])
        t = np.arange(curve.size) / SR
        fit = (curve <= -5) & (curve >= -25)  # T20
        slope = np.polyfit(t[fit], curve[fit], 1)[0]
        assert abs(-60 / slope - rt60 * share) < 0.12 * rt60 * share, (lo, hi)


def test_degrade_draws_every_kind_and_is_a_function_of_the_generator(tmp_path):
    sf.write(tmp_path / "fan.wav", np.random.default_rng(5).standard_normal(3000).astype(np.float32) * 0.1, 8000)
    noise_files = degrade.noise_files_in(tmp_path)
    wave = speechlike(1.0)
    seen, sources = set(), set()
    for seed in range(60):
        out, what = degrade.degrade(wave, SR, np.random.default_rng(seed), noise_files)
        again, what_again = degrade.degrade(wave, SR, np.random.default_rng(seed), noise_files)
        assert out.dtype == np.float32 and out.shape == wave.shape and np.array_equal(out, again)
        assert what == what_again and np.isfinite(out).all() and not np.allclose(out, wave)
        seen.add(what.split(":")[0])
        sources.update(s for s in ("speech-shaped", "hum", "recorded fan.wav") if s in what)
    assert seen == set(degrade.KINDS) and sources == {"speech-shaped", "hum", "recorded fan.wav"}
    silent = np.zeros(100, np.float32)
    assert np.array_equal(degrade.degrade(silent, SR, np.random.default_rng(0))[0], silent)


def test_recorded_noise_is_resampled_looped_from_a_random_start_at_unit_power(tmp_path):
    ramp = np.linspace(-0.5, 0.5, 800, dtype=np.float32)
    sf.write(tmp_path / "n.flac", ramp, SR)
    out = degrade.recorded_noise(tmp_path / "n.flac", 3000, SR, np.random.default_rng(6))
    assert out.shape == (3000,) and abs(np.mean(out ** 2) - 1.0) < 1e-9
    stored, _ = load_audio(tmp_path / "n.flac")
    loop = np.tile(stored, 6).astype(np.float64)
    unit = lambda seg: seg / np.sqrt(np.mean(seg ** 2))
    starts = [s for s in range(800) if np.allclose(unit(loop[s:s + 3000]), out, atol=1e-6)]
    assert len(starts) == 1  # some start of the recording, looped: 3000 samples from 800


def test_command_line_options_are_checked_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for augment, folder, message in ((-1, None, "--augment: expected"), (0, tmp_path, "--noise-dir: only used"),
                                     (1, tmp_path / "none", "not a folder"), (1, tmp_path / "empty", "no .wav")):
        with pytest.raises(UserError, match=message):
            degrade.augment_options(augment, folder)
    with pytest.raises(UserError, match="give one of them"):
        synth.synthesize_corpus(tmp_path, {"train-clean-100": 1, "dev-clean": 1}, augment=1, channel="dev-clean",
                                progress=False)


needs_speech = pytest.mark.skipif(shutil.which("espeak-ng") is None or not synth.FORTUNES_DIR.is_dir(),
                                  reason="espeak-ng or fortunes are not installed")


@needs_speech
def test_synth_augment_writes_degraded_copies_of_the_training_split_only(tmp_path):
    counts = {"train-clean-100": 3, "dev-clean": 1, "test-clean": 1}
    synth.synthesize_corpus(tmp_path, counts, seed=5, workers=1, progress=False)
    totals = synth.synthesize_corpus(tmp_path, counts, seed=5, workers=2, progress=False, augment=2)
    assert list(totals) == ["train-clean-100-augmented"] and totals["train-clean-100-augmented"][0] == 6
    with open(tmp_path / "train-clean-100-augmented.tsv") as f:
        drawn = {row["name"]: row["augmentation"] for row in csv.DictReader(f, delimiter="\t")}
    jobs = [j for j in synth.plan_corpus(counts, seed=5) if j.split == "train-clean-100"]
    assert sorted(drawn) == sorted(f"{j.name}-a{k}" for j in jobs for k in (1, 2))
    copies = tmp_path / "train-clean-100-augmented"
    for job in jobs:  # each copy: log-mel of the spoken wave through what the tsv names
        wave, sr = synth.speak(job)
        for k in (1, 2):
            out, what = degrade.degrade(wave, sr, np.random.default_rng([5, zlib.crc32(job.name.encode()), 2, k]))
            assert what == drawn[f"{job.name}-a{k}"]
            np.testing.assert_allclose(np.load(copies / "mfcc" / f"{job.name}-a{k}.npy"), log_mel(out, sr), atol=1e-5)
            assert "".join(np.load(copies / "transcripts" / f"{job.name}-a{k}.npy")[1:-1]) == job.text
    both = list_utterances(tmp_path, "train-clean-100+augmented")
    assert [u.name for u in both] == sorted(j.name for j in jobs) + sorted(drawn)
    with pytest.raises(UserError, match="already has files"):
        synth.synthesize_corpus(tmp_path, counts, seed=5, workers=1, progress=False, augment=1)
    with pytest.raises(UserError, match="no training split"):
        synth.synthesize_corpus(tmp_path / "x", {"dev-clean": 1}, seed=5, workers=1, progress=False, augment=1)


def test_prepare_augment_copies_training_utterances_and_resumes_a_missing_copy(tmp_path):
    src = tmp_path / "c"
    src.mkdir()
    rows = []
    for i, split in enumerate(("train", "train", "dev")):
        sf.write(src / f"u{i}.wav", speechlike(1.0, seed=i), SR, subtype="FLOAT")
        rows.append(f"u{i}.wav,hello number {'one two three'.split()[i]},{split}")
    (src / "m.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    summary = prep.prepare("manifest", src / "m.csv", out, progress=False, augment=1)
    assert summary.written == {"train-clean-100": 2, "train-clean-100-augmented": 2, "dev-clean": 1}
    assert sorted(p.stem for p in (out / "train-clean-100-augmented" / "mfcc").glob("*.npy")) == ["u0-a1", "u1-a1"]
    copy = out / "train-clean-100-augmented" / "mfcc" / "u1-a1.npy"
    wave, sr = load_audio(src / "u1.wav")
    expected, _ = degrade.degrade(wave, sr, np.random.default_rng([zlib.crc32(b"u1-a1"), 2]))
    np.testing.assert_allclose(np.load(copy), log_mel(expected, sr), atol=1e-5)
    before = np.load(copy)
    copy.unlink()  # a run cut short before this copy landed
    again = prep.prepare("manifest", src / "m.csv", out, progress=False, augment=1)
    assert again.already_done == 2 and again.written == {"train-clean-100": 1, "train-clean-100-augmented": 1}
    np.testing.assert_array_equal(np.load(copy), before)
