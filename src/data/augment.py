"""Augmentation of training batches, in the feature domain: SpecAugment's masks, VTLP and speed
perturbation (``training.specaugment``); other channels: noise, a telephone band, reverberation
(``training.channel``).

    augment = SpecAugment(cfg.training.specaugment)
    features, lens = augment(features (B, T, D), lens (B,), strength, perturb)   # -> (B, T2, D), (B,)
    channel = Channel(cfg.training.channel, n_mels)
    features = channel(log-mel features (B, T, D), lens (B,))   # before per-utterance normalisation
    features = normalize_batch(features, lens)                   # as src/data/dataset.py normalises

When each part applies is the training loop's business (src/schedules.py: specaugment_begins,
specaugment_strength); this module only transforms a batch.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from src.data.features import LOG_EPS, mel_band_edges


def specaugment_needed(sa) -> bool:
    """Whether training augments at all: masks (``start`` >= 0), or the warp and stretch that
    ``perturb: always`` applies from the first step even with the masks off (``start`` -1)."""
    perturbs = sa.perturb == "always" and (sa.freq_warp > 0 or sa.time_stretch > 0)
    return sa.start >= 0 or perturbs


class SpecAugment(nn.Module):
    """Frequency and time masks (Park et al., 2019), drawn independently for every utterance.

    Each mask has a width drawn uniformly from 0..strength * max width and a start drawn
    uniformly where it fits; time masks fall within the utterance's real frames (a mask in
    the padding of a short utterance would be wasted). Masked values become 0, the
    utterance mean after per-utterance normalisation. ``strength`` (0-1) comes from
    schedules.specaugment_strength; 0 returns the features unchanged and draws nothing.

    With ``freq_warp`` > 0, each utterance's frequency axis is first stretched by a factor
    alpha drawn from 1 +- perturb * freq_warp, as vocal tract length perturbation (VTLP;
    Jaitly and Hinton, 2013) does: bin f reads the input at f / alpha up to a boundary, above
    which a second straight line keeps the top bin in place (``warp_sources``).

    With ``time_stretch`` > 0, each utterance is first resampled in time to a length of
    round(rate * frames), rate drawn from 1 +- perturb * time_stretch: speed perturbation (Ko
    et al., 2015) done on the features rather than the audio (``stretch``). The lengths change,
    so forward returns them with the features.

    ``perturb`` is the masks' ``strength`` unless ``training.specaugment.perturb`` is ``always``:
    then the warp and the stretch run at full range from the first step, while the masks wait
    for their trigger. Unlike masks, which hide what the model has to hear, they change how it
    sounds (another vocal tract, another speaking rate), so they need not wait for overfitting.
    """

    def __init__(self, sa_cfg):
        super().__init__()
        self.freq_mask, self.n_freq_masks = sa_cfg.freq_mask, sa_cfg.n_freq_masks
        self.time_mask, self.n_time_masks = sa_cfg.time_mask, sa_cfg.n_time_masks
        self.freq_warp = sa_cfg.freq_warp
        self.time_stretch = sa_cfg.time_stretch

    @staticmethod
    def warp_sources(alpha: torch.Tensor, dim: int, boundary: float = 0.8) -> torch.Tensor:
        """Where each output bin reads the input, for warp factors alpha (B,): -> (B, D) float
        positions in [0, D - 1]. The warp w(f) = alpha * f holds up to f0 = boundary * top /
        max(alpha, 1) and then runs straight to w(top) = top; this is its inverse."""
        top = float(dim - 1)
        bins = torch.arange(dim, device=alpha.device, dtype=torch.float32)[None, :]  # (1, D)
        alpha = alpha[:, None]  # (B, 1)
        f0 = boundary * top / alpha.clamp(min=1.0)  # (B, 1): the knee, in input bins
        upper = f0 + (bins - alpha * f0) * (top - f0) / (top - alpha * f0)  # (B, D)
        return torch.where(bins <= alpha * f0, bins / alpha, upper).clamp(0.0, top)

    @classmethod
    def warp(cls, features: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """features (B, T, D), alpha (B,) -> (B, T, D), each utterance's bins linearly interpolated
        at its warp_sources."""
        dim = features.size(2)
        source = cls.warp_sources(alpha, dim)  # (B, D)
        low = source.floor().long().clamp(max=dim - 2)  # (B, D): the bin below each source
        frac = (source - low).to(features.dtype)[:, None, :]  # (B, 1, D)
        index = low[:, None, :].expand(-1, features.size(1), -1)  # (B, D) -> (B, T, D)
        below, above = features.gather(2, index), features.gather(2, index + 1)  # (B, T, D) each
        return torch.lerp(below, above, frac)  # exact at frac 0 and 1: alpha 1 changes nothing

    @staticmethod
    def stretch(features: torch.Tensor, lens: torch.Tensor, rate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, T, D), lens (B,), rate (B,) -> (B, T2, D) and the new lens (B,): utterance b
        becomes L2 = max(1, round(rate * L)) frames, frame j linearly interpolated at input position
        j * (L - 1) / (L2 - 1), so its first and last real frames stay where they are; zero padded."""
        frames = features.size(1)
        lens = lens.to(features.device)
        new_lens = (lens.to(torch.float32) * rate).round().long().clamp(min=1)  # (B,)
        scale = (lens - 1).to(torch.float32) / (new_lens - 1).clamp(min=1).to(torch.float32)  # (B,): input frames per output frame
        out_frames = int(new_lens.max())
        positions = torch.arange(out_frames, device=features.device, dtype=torch.float32)  # (T2,)
        source = (positions[None, :] * scale[:, None]).clamp(max=(lens - 1).clamp(min=0)[:, None].float())  # (B, T2)
        low = source.floor().long()  # (B, T2)
        frac = (source - low).to(features.dtype)[:, :, None]  # (B, T2, 1)
        dim = features.size(2)
        below = features.gather(1, low[:, :, None].expand(-1, -1, dim))  # (B, T2) -> (B, T2, D)
        above = features.gather(1, (low + 1).clamp(max=frames - 1)[:, :, None].expand(-1, -1, dim))  # (B, T2, D)
        stretched = torch.lerp(below, above, frac)  # (B, T2, D); frac 0 at the last real frame
        real = positions[None, :] < new_lens[:, None]  # (B, T2)
        return stretched.masked_fill(~real[:, :, None], 0.0), new_lens

    @staticmethod
    def _masks(n: int, max_width: float, sizes: torch.Tensor, length: int) -> torch.Tensor:
        """``n`` bands per row, each of a width drawn from 0..floor(max_width), within the row's
        ``sizes`` (B,): -> (B, length) bool, True where masked."""
        positions = torch.arange(length, device=sizes.device)  # (L,)
        masked = torch.zeros(sizes.size(0), length, dtype=torch.bool, device=sizes.device)
        for _ in range(n):
            width = (torch.rand(sizes.shape, device=sizes.device) * (int(max_width) + 1)).long()
            width = torch.minimum(width, sizes)  # (B,)
            first = (torch.rand(sizes.shape, device=sizes.device) * (sizes - width + 1)).long()  # (B,)
            masked |= (positions[None, :] >= first[:, None]) & (positions[None, :] < (first + width)[:, None])
        return masked

    def forward(self, features: torch.Tensor, lens: torch.Tensor, strength: float = 1.0,
                perturb: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, T, D), lens (B,) -> features (B, T2, D) and lens (B,): stretched in time
        (time_stretch > 0; otherwise T2 = T and the same lens), warped (freq_warp > 0), with the
        masked bands set to 0. ``perturb`` is the share of the stretch and warp ranges (``strength``
        when None, as with ``perturb: with_masks``); a share of 0 draws nothing for that part."""
        perturb = strength if perturb is None else perturb
        if strength <= 0.0 and perturb <= 0.0:
            return features, lens
        lens = lens.to(features.device)
        if self.time_stretch > 0.0 and perturb > 0.0:
            rate = 1.0 + perturb * self.time_stretch * (2.0 * torch.rand(lens.shape, device=features.device) - 1.0)
            features, lens = self.stretch(features, lens, rate)  # (B,) rates in 1 +- perturb * time_stretch
        if self.freq_warp > 0.0 and perturb > 0.0:
            alpha = 1.0 + perturb * self.freq_warp * (2.0 * torch.rand(lens.shape, device=features.device) - 1.0)
            features = self.warp(features, alpha)  # (B,) factors in 1 +- perturb * freq_warp
        if strength <= 0.0:
            return features, lens
        batch, frames, dim = features.shape
        freq = self._masks(self.n_freq_masks, strength * self.freq_mask, torch.full_like(lens, dim), dim)  # (B, D)
        time = self._masks(self.n_time_masks, strength * self.time_mask, lens, frames)  # (B, T)
        return features.masked_fill(freq[:, None, :] | time[:, :, None], 0.0), lens  # (B, 1, D) | (B, T, 1) -> (B, T, D)


def normalize_batch(features: torch.Tensor, lens: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit variance per bin over each utterance's real frames, as
    src.data.dataset.normalize_utterance (in float64): (B, T, D) -> (B, T, D), zero beyond lens."""
    real = (torch.arange(features.size(1), device=features.device)[None, :] < lens[:, None])[:, :, None]  # (B, T, 1)
    x = features.double().masked_fill(~real, 0.0)
    n = lens.to(x.dtype)[:, None, None].clamp(min=1)  # (B, 1, 1)
    mean = x.sum(1, keepdim=True) / n  # (B, 1, D)
    var = ((x - mean).masked_fill(~real, 0.0) ** 2).sum(1, keepdim=True) / n  # (B, 1, D)
    return ((x - mean) / torch.sqrt(var + eps)).masked_fill(~real, 0.0).to(features.dtype)


class Channel(nn.Module):
    """Another recording channel for a share of the training utterances, on log-mel features before
    their per-utterance normalisation (which would cancel a fixed gain per bin, not these):

    - reverberation: each bin's power smeared forward in time by an exponential tail that falls
      60 dB in RT60 seconds (drawn from 0.1 .. ``rt60_max``), the direct sound kept at 1;
    - a telephone band: bins whose centre lies outside 300-3400 Hz lose 30 dB;
    - noise at an SNR drawn from ``snr_db_min`` .. ``snr_db_max`` against the utterance's mean
      power over its real frames and bins: white noise, so each bin gets power in proportion to its
      filter's bandwidth, with the frame-to-frame spread of a power estimate (chi-square, 8
      degrees of freedom);
    - a background talker (``mix``): the next utterance of the batch (the batch rolled by one),
      looped to this one's length from a random frame, added as mel power at an SNR drawn from the
      same range; first, so that the room and the band act on both talkers.

    Each utterance takes a channel with probability ``prob``; a channel has each of the four
    parts with its own probability (``mix``, ``reverb``, ``band_limit``, ``noise``). Random numbers
    come from torch's generator, like SpecAugment's, so a resumed run draws what a straight one
    would. ``start_step`` (read by the training loop) keeps the first steps clean.
    """

    def __init__(self, cfg, n_mels: int):
        super().__init__()
        self.cfg = cfg
        edges = torch.tensor(mel_band_edges(n_mels), dtype=torch.float32)  # (D + 2,) Hz
        centres, width = edges[1:-1], edges[2:] - edges[:-2]  # (D,) each
        self.register_buffer("white", width / width.mean(), persistent=False)  # (D,) white noise per bin
        outside = (centres < 300.0) | (centres > 3400.0)
        self.register_buffer("telephone", torch.where(outside, 1e-3, 1.0), persistent=False)  # (D,) power gain

    @staticmethod
    def reverberate(power: torch.Tensor, rt60: torch.Tensor, frame_seconds: float = 0.01) -> torch.Tensor:
        """power (B, T, D), rt60 (B,) seconds -> (B, T, D): y[t] = sum_k a^k power[t - k] over one RT60
        of frames, a = 10^(-6 * frame_seconds / rt60) (60 dB per RT60)."""
        b, t, d = power.shape
        k = max(1, int(math.ceil(float(rt60.max()) / frame_seconds)))
        decay = 10.0 ** (-6.0 * frame_seconds / rt60)  # (B,) per frame
        kernel = decay[:, None] ** torch.arange(k, device=power.device, dtype=power.dtype)  # (B, K): a^0 .. a^(K-1)
        x = power.transpose(1, 2).reshape(1, b * d, t)  # (B, T, D) -> (B, D, T) -> (1, B*D, T)
        weight = kernel.flip(1).repeat_interleave(d, dim=0)[:, None, :]  # (B*D, 1, K), oldest tap first
        y = nn.functional.conv1d(nn.functional.pad(x, (k - 1, 0)), weight, groups=b * d)  # (1, B*D, T)
        return y.reshape(b, d, t).transpose(1, 2)  # (1, B*D, T) -> (B, D, T) -> (B, T, D)

    @staticmethod
    def background(power: torch.Tensor, lens: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """Each utterance's background talker: (B, T, D) mel power of the next utterance in the batch
        (row b + 1, the last row taking row 0), read from frame floor(offset * its length) and looped
        over its real frames; offset (B,) in [0, 1)."""
        b, t, d = power.shape
        other, other_lens = power.roll(-1, 0), lens.roll(-1, 0).clamp(min=1)  # (B, T, D), (B,)
        start = (offset * other_lens).long()  # (B,)
        index = (torch.arange(t, device=power.device)[None, :] + start[:, None]) % other_lens[:, None]  # (B, T)
        return other.gather(1, index[:, :, None].expand(b, t, d))  # (B, T, D)

    def forward(self, features: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """log-mel features (B, T, D) (natural log of mel power + LOG_EPS), lens (B,) -> (B, T, D),
        zero beyond lens; utterances without a channel come back unchanged."""
        cfg = self.cfg
        b, t, d = features.shape
        device = features.device
        draw = lambda p: (torch.rand(b, device=device) < p)  # noqa: E731  (B,) bool
        chosen = draw(cfg.prob)
        reverb, band, noise = chosen & draw(cfg.reverb), chosen & draw(cfg.band_limit), chosen & draw(cfg.noise)
        rt60 = 0.1 + (cfg.rt60_max - 0.1) * torch.rand(b, device=device)  # (B,)
        snr_db = cfg.snr_db_min + (cfg.snr_db_max - cfg.snr_db_min) * torch.rand(b, device=device)  # (B,)
        fluctuation = torch.randn(b, t, d, 8, device=device).pow(2).mean(-1)  # (B, T, D): chi-square(8) / 8
        if cfg.mix > 0:  # drawn only when on, so that runs without it draw what they always did
            mix = chosen & draw(cfg.mix)
            mix_snr_db = cfg.snr_db_min + (cfg.snr_db_max - cfg.snr_db_min) * torch.rand(b, device=device)  # (B,)
            offset = torch.rand(b, device=device)  # (B,) where in the other utterance the loop starts, as a share
        if not bool(chosen.any()):
            return features
        real = (torch.arange(t, device=device)[None, :] < lens[:, None])[:, :, None]  # (B, T, 1)
        power = (features.float().exp() - LOG_EPS).clamp(min=0.0) * real  # (B, T, D) mel power
        if cfg.mix > 0 and bool(mix.any()):
            talker = self.background(power, lens, offset)  # (B, T, D)
            own = power.sum((1, 2)) / (lens.clamp(min=1) * d)  # (B,) mean power per bin and frame
            talker = talker * real
            level = talker.sum((1, 2)) / (lens.clamp(min=1) * d)  # (B,) the same over this utterance's frames
            gain = own * 10.0 ** (-mix_snr_db / 10.0) / level.clamp(min=1e-20)  # (B,)
            power = torch.where(mix[:, None, None], power + gain[:, None, None] * talker, power)
        if cfg.reverb > 0 and bool(reverb.any()):
            power = torch.where(reverb[:, None, None], self.reverberate(power, rt60) * real, power)
        power = torch.where(band[:, None, None], power * self.telephone, power)
        level = power.sum((1, 2)) / (lens.clamp(min=1) * d)  # (B,) mean power per bin and frame
        floor = level * 10.0 ** (-snr_db / 10.0)  # (B,)
        power = torch.where(noise[:, None, None], power + floor[:, None, None] * self.white * fluctuation, power)
        out = torch.log(power + LOG_EPS).masked_fill(~real, 0.0).to(features.dtype)
        return torch.where(chosen[:, None, None], out, features)


def channel_needed(channel_cfg) -> bool:
    return channel_cfg.prob > 0.0


__all__ = ["Channel", "SpecAugment", "channel_needed", "normalize_batch", "specaugment_needed"]
