"""training.channel (src/data/augment.py: Channel, normalize_batch) against the definitions: the SNR
of the added noise, the decay of the reverberation, the telephone band; the batch normalisation against
the loader's numpy one; and a training run that uses it."""
import math

import numpy as np
import pytest
import torch

from src.config import ChannelConfig
from src.data.augment import Channel, normalize_batch
from src.data.dataset import normalize_utterance
from src.data.features import LOG_EPS, mel_band_edges
from src.errors import UserError


def log_mel_of(power: torch.Tensor) -> torch.Tensor:
    return torch.log(power + LOG_EPS)


def test_normalize_batch_equals_the_loaders_normalisation_on_real_frames():
    torch.manual_seed(0)
    x = torch.randn(3, 50, 28) * 4 + 7
    lens = torch.tensor([50, 31, 2])
    out = normalize_batch(x, lens)
    for b, n in enumerate(lens.tolist()):
        np.testing.assert_allclose(out[b, :n].numpy(), normalize_utterance(x[b, :n].numpy()), atol=1e-5)
        assert not out[b, n:].any()


def test_off_and_unchosen_utterances_are_unchanged():
    x = torch.randn(4, 20, 28)
    lens = torch.tensor([20, 20, 10, 5])
    assert torch.equal(Channel(ChannelConfig(prob=0.0), 28)(x, lens), x)


def test_noise_has_the_drawn_snr_and_a_white_spectrum():
    torch.manual_seed(1)
    power = torch.full((2, 4000, 28), 2.0)  # a steady signal: mean power 2 in every bin
    snr = 10.0
    cfg = ChannelConfig(prob=1.0, noise=1.0, snr_db_min=snr, snr_db_max=snr, band_limit=0.0, reverb=0.0)
    out = Channel(cfg, 28)(log_mel_of(power), torch.tensor([4000, 4000]))
    added = (out.exp() - LOG_EPS - power).double()  # (B, T, D) the noise's power
    per_bin = added.mean(1)  # (B, D)
    assert per_bin.mean(1).numpy() == pytest.approx([2.0 * 10 ** (-snr / 10)] * 2, rel=0.02)
    edges = mel_band_edges(28)
    width = edges[2:] - edges[:-2]
    np.testing.assert_allclose(per_bin[0].numpy() / per_bin[0].mean().item(), width / width.mean(), rtol=0.06)


def test_reverberation_decays_sixty_db_per_rt60():
    impulse = torch.zeros(1, 300, 28) + 1e-6
    impulse[0, 10] = 1.0
    rt60 = 0.5
    out = Channel.reverberate(impulse, torch.tensor([rt60]))
    assert out[0, 10, 0].item() == pytest.approx(1.0, rel=1e-4)  # the direct sound
    tail_db = 10 * math.log10(out[0, 10 + 25, 0].item() / out[0, 10, 0].item())  # 0.25 s later
    assert tail_db == pytest.approx(-60 * 0.25 / rt60, abs=0.1)
    assert out[0, :10].max().item() < 1e-4  # nothing before the sound


def test_telephone_band_cuts_only_the_bins_outside_300_to_3400_hz():
    power = torch.ones(1, 10, 28)
    cfg = ChannelConfig(prob=1.0, noise=0.0, band_limit=1.0, reverb=0.0)
    out = Channel(cfg, 28)(log_mel_of(power), torch.tensor([10])).exp()[0, 0]
    centres = mel_band_edges(28)[1:-1]
    inside = (centres >= 300) & (centres <= 3400)
    np.testing.assert_allclose(out[inside].numpy(), 1.0, rtol=1e-4)
    np.testing.assert_allclose(out[~inside].numpy(), 1e-3, rtol=1e-2)


def test_background_talker_is_the_next_utterance_looped_at_the_drawn_snr():
    torch.manual_seed(2)
    t, d, snr = 100, 28, 6.0
    ramp = torch.arange(1, 41, dtype=torch.float32)[:, None] * torch.linspace(1, 2, d)[None, :]  # (40, D)
    power = torch.zeros(2, t, d)
    power[0] = 3.0  # a steady talker, 100 frames
    power[1, :40] = ramp  # a rising one, 40 frames
    lens = torch.tensor([t, 40])
    cfg = ChannelConfig(prob=1.0, noise=0.0, band_limit=0.0, reverb=0.0, mix=1.0, snr_db_min=snr, snr_db_max=snr)
    out = Channel(cfg, d)(log_mel_of(power), lens)
    added = (out.exp() - LOG_EPS - power).double()  # (B, T, D) the background's power
    # utterance 0 hears utterance 1 (40 frames) looped from some frame, 10 dB ... below its own mean power
    starts = [s for s in range(40) if torch.allclose(
        added[0] / added[0].mean(), (ramp.double()[(torch.arange(t) + s) % 40] / ramp.double()[(torch.arange(t) + s) % 40].mean()), rtol=1e-4)]
    assert len(starts) == 1
    assert 10 * math.log10(3.0 / added[0].mean().item()) == pytest.approx(snr, abs=1e-3)
    # utterance 1, the last, hears utterance 0: steady, over its own 40 frames only
    own = ramp.double().mean().item()
    np.testing.assert_allclose(added[1, :40].numpy(), own * 10 ** (-snr / 10), rtol=1e-4)
    assert not out[1, 40:].any()


def test_channels_start_at_start_step(tmp_path, monkeypatch):
    """training.channel.start_step: the channel is applied from that optimiser step on, to every batch after."""
    from src.data.augment import Channel as real
    from test_resume import final_weights, make_corpus, tiny_config

    steps = []

    class Spy(real):
        def forward(self, features, lens):
            steps.append(run_state["step"])
            return features

    import src.training.loop as loop
    import src.training.setup as setup

    run_state = {"step": None}
    real_step = loop.train_step

    def step(run, batch, options, elapsed):
        run_state["step"] = run.state.global_step
        return real_step(run, batch, options, elapsed)

    monkeypatch.setattr(setup, "Channel", Spy)
    monkeypatch.setattr(loop, "train_step", step)
    corpus = make_corpus(tmp_path / "corpus")
    _, run = final_weights(tiny_config(corpus, tmp_path / "run", "training.epochs=2", "training.channel.prob=1",
                                       "training.channel.start_step=3"))
    assert steps == list(range(3, run.state.global_step)) and run.state.global_step >= 6


def test_bad_snr_range_is_one_line():
    with pytest.raises(UserError, match="snr_db_min"):
        ChannelConfig(snr_db_min=20, snr_db_max=10)


def test_training_with_a_channel_runs_and_differs_from_without(tmp_path):
    from test_resume import final_weights, make_corpus, tiny_config

    corpus = make_corpus(tmp_path / "corpus")
    plain, _ = final_weights(tiny_config(corpus, tmp_path / "plain", "training.epochs=1"))
    noisy, _ = final_weights(tiny_config(corpus, tmp_path / "noisy", "training.epochs=1", "training.channel.prob=1"))
    assert all(torch.isfinite(v).all() for v in noisy.values() if v.is_floating_point())
    assert any(not torch.equal(plain[k], noisy[k]) for k in plain)


def test_batches_are_normalised_on_the_device_after_a_channel_or_on_cuda():
    """setup.normalize_on_device: the loader leaves the normalisation to the device when a channel comes
    first, or on CUDA (the loader's CPU is what a fast GPU waits for); never with data.normalize=none."""
    from src.config import load_config
    from src.training.setup import normalize_on_device

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert not normalize_on_device(load_config("config.yaml", []), cpu)
    assert normalize_on_device(load_config("config.yaml", []), cuda)
    assert normalize_on_device(load_config("config.yaml", ["training.channel.prob=0.5"]), cpu)
    assert not normalize_on_device(load_config("config.yaml", ["data.normalize=none"]), cuda)


def test_training_with_normalisation_on_the_device_matches_the_loaders(tmp_path, monkeypatch):
    """The same run with the batches normalised by normalize_batch instead of the loader ends at nearly the
    same weights (the two differ only in float rounding)."""
    import src.training.setup as setup
    from test_resume import final_weights, make_corpus, tiny_config

    corpus = make_corpus(tmp_path / "corpus")
    loader, _ = final_weights(tiny_config(corpus, tmp_path / "loader", "training.epochs=1"))
    monkeypatch.setattr(setup, "normalize_on_device", lambda cfg, device: True)
    device, _ = final_weights(tiny_config(corpus, tmp_path / "device", "training.epochs=1"))
    assert loader.keys() == device.keys()
    assert any(not torch.equal(device[k], loader[k]) for k in loader)  # the other path ran
    for k in loader:
        if loader[k].is_floating_point():
            torch.testing.assert_close(device[k], loader[k], atol=2e-3, rtol=1e-3)
