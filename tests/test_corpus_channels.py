"""src/corpus/channels.py (the evaluation split's channels, on the wave) against definitions measured
independently: the SNR of the added noise, the pink spectrum's equal power per octave, the telephone
line's band by the gain of pure tones, mu-law against G.711's formula, the room's RT60 by Schroeder's
backward integration, the convolution against numpy's; and synth's --channel copy of a split."""
import math

import numpy as np
import pytest

from src.corpus import channels
from wave_measures import SR, band_power, snr_db, tone



@pytest.mark.parametrize("colour", ["white", "pink"])
def test_noise_has_the_requested_snr(colour):
    wave = tone(440.0, 4.0)
    noisy = channels.add_noise(wave, 12.5, np.random.default_rng(0), colour)
    assert noisy.shape == wave.shape and noisy.dtype == np.float32
    assert abs(snr_db(wave, noisy) - 12.5) < 0.05


def test_pink_noise_has_equal_power_per_octave_and_white_twice_as_much_per_higher_octave():
    rng = np.random.default_rng(1)
    pink = channels.pink_noise(1 << 18, rng)
    white = rng.standard_normal(1 << 18)
    assert abs(np.mean(pink ** 2) - 1.0) < 1e-9
    for noise, ratio in ((pink, 1.0), (white, 2.0)):  # octave 2-4 kHz against 1-2 kHz
        measured = band_power(noise, 2000, 4000) / band_power(noise, 1000, 2000)
        assert abs(10 * math.log10(measured / ratio)) < 0.3


def test_mu_law_matches_g711s_formula_and_quantises_to_256_levels():
    x = np.linspace(-1, 1, 200001)  # dense enough to reach the levels next to zero
    y = channels.mu_law(x)
    companded = np.sign(x) * np.log(1 + 255 * np.abs(x)) / np.log(256)  # G.711 mu-law, written out
    step = 2 / 255
    expected = np.round((companded + 1) / step) * step - 1
    expected = np.sign(expected) * ((1 + 255) ** np.abs(expected) - 1) / 255
    np.testing.assert_allclose(y, expected, atol=1e-12)
    assert np.unique(np.round(y, 12)).size == 256
    # x = (256 ** |c| - 1) / 255, so a step of 2 / 255 in c is about ln 256 (|x| + 1 / 255) 2 / 255 in x:
    # the error is within half a step, proportional to the sample
    assert np.all(np.abs(y - x) <= np.log(256) * (np.abs(x) + 1 / 255) / 255 * 1.05)


def test_telephone_passes_speech_frequencies_and_cuts_below_300_and_above_4000_hz():
    def gain_db(hz):
        x = tone(hz)
        y = channels.telephone(x, SR)
        assert y.shape == x.shape
        core = slice(2000, -2000)  # the resampler's edges aside
        return 10 * math.log10(np.mean(y[core].astype(np.float64) ** 2) / np.mean(x[core].astype(np.float64) ** 2))

    for hz in (500.0, 1000.0, 3000.0):
        assert abs(gain_db(hz)) < 0.5, hz
    assert gain_db(100.0) < -30 and gain_db(6000.0) < -30


@pytest.mark.parametrize("rt60", [0.3, 0.8])
def test_room_response_decays_60_db_in_rt60_by_schroeder_integration(rt60):
    rir = channels.room_impulse_response(rt60, SR, np.random.default_rng(2))
    assert rir[0] == 1.0 and not rir[1 : int(0.002 * SR)].any()
    tail = rir[int(0.002 * SR):].astype(np.float64)
    assert abs(np.sum(tail ** 2) - 1.0) < 1e-9  # as much energy as the direct sound
    decay = np.cumsum(tail[::-1] ** 2)[::-1]  # Schroeder: energy still to come, at each sample
    curve = 10 * np.log10(decay / decay[0])
    t = np.arange(curve.size) / SR
    fit = (curve <= -5) & (curve >= -25)  # T20: the fall from -5 to -25 dB, extrapolated to 60 dB
    slope = np.polyfit(t[fit], curve[fit], 1)[0]  # dB per second
    assert abs(-60 / slope - rt60) < 0.05 * rt60


def test_reverberate_is_the_convolution_with_the_room_at_the_waves_power():
    wave = np.random.default_rng(3).standard_normal(5000).astype(np.float32)
    wet = channels.reverberate(wave, SR, 0.2, np.random.default_rng(4))
    rir = channels.room_impulse_response(0.2, SR, np.random.default_rng(4))
    expected = np.convolve(wave.astype(np.float64), rir)[: wave.size]
    expected *= math.sqrt(np.mean(wave.astype(np.float64) ** 2) / np.mean(expected ** 2))
    np.testing.assert_allclose(wet, expected, atol=1e-4)


def test_through_channel_draws_every_kind_and_is_a_function_of_the_generator():
    wave = tone(700.0, 0.5)
    seen = set()
    for seed in range(40):
        out, sr, what = channels.through_channel(wave, SR, np.random.default_rng(seed))
        again, _, what_again = channels.through_channel(wave, SR, np.random.default_rng(seed))
        assert sr == SR and out.shape == wave.shape and np.array_equal(out, again) and what == what_again
        assert np.isfinite(out).all() and not np.array_equal(out, wave)
        seen.add(what.split(":")[0])
    assert seen == set(channels.KINDS)
