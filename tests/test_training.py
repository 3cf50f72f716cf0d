"""Training pieces: schedules, teacher forcing stages, alignment score, losses, NaN skip, OOM advice, train.py."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from src.config import TeacherForcingConfig
from src.errors import UserError
from src.schedules import (
    PlateauState,
    TeacherForcingState,
    attention_alignment,
    cosine_lr,
    next_teacher_forcing,
    plateau_update,
    specaugment_begins,
    specaugment_deadline,
    specaugment_strength,
    training_progress,
    wsd_lr,
)

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------
# Schedules


def test_cosine_lr_known_points():
    kw = dict(base_lr=1.0, min_lr=0.0, warmup_steps=10, total_steps=110)
    assert cosine_lr(0, **kw) == pytest.approx(0.1)
    assert cosine_lr(9, **kw) == pytest.approx(1.0)
    assert cosine_lr(10, **kw) == pytest.approx(1.0)
    assert cosine_lr(60, **kw) == pytest.approx(0.5)  # half way: cos(pi/2)
    assert cosine_lr(110, **kw) == pytest.approx(0.0)
    assert cosine_lr(500, **kw) == pytest.approx(0.0)
    assert cosine_lr(20, **kw, time_fraction=0.5) == pytest.approx(0.5)  # the budget runs ahead of the steps


def test_wsd_lr_holds_the_peak_then_falls_linearly():
    # warmup 10 steps, then 100 steps of progress; the last 20% (steps 90-110) decay 1 -> 0
    kw = dict(base_lr=1.0, min_lr=0.0, warmup_steps=10, total_steps=110, decay_fraction=0.2)
    assert wsd_lr(0, **kw) == pytest.approx(0.1)
    assert wsd_lr(10, **kw) == pytest.approx(1.0)
    assert wsd_lr(90, **kw) == pytest.approx(1.0)  # progress 0.8: the decay starts here
    assert wsd_lr(100, **kw) == pytest.approx(0.5)  # half of the decay
    assert wsd_lr(110, **kw) == pytest.approx(0.0)
    assert wsd_lr(500, **kw) == pytest.approx(0.0)
    assert wsd_lr(20, **kw, time_fraction=0.9) == pytest.approx(0.5)  # the budget runs ahead of the steps
    assert wsd_lr(50, base_lr=1.0, min_lr=0.2, warmup_steps=0, total_steps=100, decay_fraction=1.0) == pytest.approx(0.6)


def test_specaugment_begins_by_progress_or_when_training_loss_is_below_dev_loss():
    nan = float("nan")
    assert specaugment_begins("progress", progress=0.5, start=0.5, train_loss=9.0, dev_loss=1.0)
    assert not specaugment_begins("progress", progress=0.4, start=0.5, train_loss=0.1, dev_loss=1.0)
    assert specaugment_begins("overfit", progress=0.1, start=0.0, train_loss=0.9, dev_loss=1.0)
    assert not specaugment_begins("overfit", progress=0.9, start=0.0, train_loss=1.1, dev_loss=1.0)  # underfit
    assert not specaugment_begins("overfit", progress=0.1, start=0.2, train_loss=0.9, dev_loss=1.0)  # too early
    assert not specaugment_begins("overfit", progress=0.9, start=0.0, train_loss=nan, dev_loss=1.0)
    assert not specaugment_begins("overfit", progress=0.9, start=0.0, train_loss=0.5, dev_loss=nan)
    # only if the masks, ramped in over 0.25 of training, are at full width by the deadline (0.8),
    # however clearly it overfits; the progress trigger ignores the deadline
    kw = dict(start=0.0, train_loss=0.5, dev_loss=1.0, deadline=0.8, ramp=0.25)
    assert specaugment_begins("overfit", progress=0.55, **kw)
    assert not specaugment_begins("overfit", progress=0.56, **kw)
    assert not specaugment_begins("overfit", progress=0.795, **kw)  # run-20min-auto-workers fired here
    assert specaugment_begins("overfit", progress=0.79, **{**kw, "ramp": 0.0})
    assert specaugment_begins("progress", progress=0.9, start=0.5, train_loss=9.0, dev_loss=1.0, deadline=0.8)
    assert not specaugment_begins("overfit", progress=0.9, start=-1, train_loss=0.5, dev_loss=1.0)  # disabled


def test_specaugment_deadline_is_until_or_the_start_of_the_cool_down():
    assert specaugment_deadline(1.0, "wsd", 0.2) == pytest.approx(0.8)
    assert specaugment_deadline(1.0, "wsd", 0.5) == pytest.approx(0.5)
    assert specaugment_deadline(0.6, "wsd", 0.2) == pytest.approx(0.6)
    assert specaugment_deadline(1.0, "cosine", 0.2) == 1.0  # no cool-down: the end of training
    assert specaugment_deadline(0.7, "plateau", 0.2) == 0.7


def test_specaugment_strength_ramps_in_by_progress():
    assert training_progress(50, 200) == 0.25
    assert training_progress(50, 200, time_fraction=0.6) == 0.6  # a time budget running ahead
    assert training_progress(500, 200) == 1.0
    points = [(0.0, 0.0), (0.49, 0.0), (0.5, 0.0), (0.6, 0.4), (0.75, 1.0), (1.0, 1.0)]
    for progress, strength in points:
        assert specaugment_strength(progress, 0.5, 0.25) == pytest.approx(strength)
    assert specaugment_strength(0.5, 0.5, 0.0) == 1.0  # no ramp: full width at the start
    assert specaugment_strength(1.0, -1, 0.25) == 0.0  # disabled


def test_specaugment_masks_are_bands_within_real_frames():
    """The zeros of every utterance are exactly one band of frames (inside its real frames) and
    one band of bins, each at most strength x the configured width; strength 0 draws nothing."""
    from src.config import SpecAugmentConfig
    from src.data.augment import SpecAugment

    cfg = SpecAugmentConfig(freq_mask=5, n_freq_masks=1, time_mask=7, n_time_masks=1, freq_warp=0.0, time_stretch=0.0)
    augment = SpecAugment(cfg)
    torch.manual_seed(0)
    batch, frames, dim = 64, 50, 20
    lens = torch.randint(10, frames + 1, (batch,))
    features = torch.randn(batch, frames, dim) + 5.0  # no zeros of its own
    before = torch.get_rng_state()
    unchanged, same_lens = augment(features, lens, 0.0)
    assert unchanged is features and same_lens is lens
    assert torch.equal(torch.get_rng_state(), before)
    widths = {"time": set(), "freq": set()}
    for strength in (1.0, 0.5):
        augmented, augmented_lens = augment(features, lens, strength)
        assert torch.equal(augmented_lens, lens)  # no time_stretch: the lengths stay
        zero = augmented == 0
        for b in range(batch):
            # the widths are below the sizes, so a fully zero frame is a time mask, a fully zero bin a freq mask
            rows = [t for t in range(frames) if bool(zero[b, t, :].all())]
            cols = [d for d in range(dim) if bool(zero[b, :, d].all())]
            expected = torch.zeros(frames, dim, dtype=torch.bool)
            expected[rows, :] = True
            expected[:, cols] = True
            assert torch.equal(zero[b], expected)  # nothing but the two bands
            for band, width, name in ((rows, cfg.time_mask, "time"), (cols, cfg.freq_mask, "freq")):
                assert band == list(range(band[0], band[0] + len(band))) if band else True  # contiguous
                assert len(band) <= strength * width
                widths[name].add(len(band))
            assert all(t < int(lens[b]) for t in rows), "a time mask fell into the padding"
    assert len(widths["time"]) > 3 and len(widths["freq"]) > 2  # widths are drawn, not fixed


def _vtlp_reference(x, alpha, boundary=0.8):
    """VTLP written forwards in numpy: the warp w(f) (alpha * f up to the knee, then a straight line
    to w(top) = top), inverted by interpolating its table, then each frame resampled with np.interp."""
    import numpy as np

    dim = x.shape[1]
    top = dim - 1.0
    f = np.linspace(0.0, top, 20001)
    knee = boundary * top / max(alpha, 1.0)
    warped = np.where(f <= knee, alpha * f, alpha * knee + (f - knee) * (top - alpha * knee) / (top - knee))
    source = np.interp(np.arange(dim), warped, f)  # w is increasing: its inverse at every output bin
    return np.stack([np.interp(source, np.arange(dim), frame) for frame in x])


def test_frequency_warp_matches_vtlp_written_forwards():
    """SpecAugment.warp against _vtlp_reference for stretch and squeeze; alpha 1 leaves the
    features as they are; the drawn factors stay within 1 +- strength * freq_warp."""
    import numpy as np

    from src.config import SpecAugmentConfig
    from src.data.augment import SpecAugment

    torch.manual_seed(1)
    features = torch.randn(4, 9, 28)
    alphas = torch.tensor([0.9, 1.0, 1.13, 0.8])
    warped = SpecAugment.warp(features, alphas)
    for b, alpha in enumerate(alphas.tolist()):
        expected = _vtlp_reference(features[b].double().numpy(), alpha)
        np.testing.assert_allclose(warped[b].numpy(), expected, atol=1e-4)
    assert torch.equal(warped[1], features[1])

    augment = SpecAugment(SpecAugmentConfig(n_freq_masks=0, n_time_masks=0, freq_warp=0.1, time_stretch=0.0))
    ramp = torch.arange(28.0).expand(64, 1, 28)  # bin d holds d: the output is where each bin read
    sources = augment(ramp, torch.ones(64, dtype=torch.long), 0.5)[0][:, 0, :]  # (64, 28)
    low, high = (SpecAugment.warp_sources(torch.tensor([a]), 28)[0] for a in (1.05, 0.95))
    assert bool((sources >= low - 1e-5).all() and (sources <= high + 1e-5).all())
    assert len({round(float(s[5]), 4) for s in sources}) > 10  # a factor per utterance


def test_time_stretch_matches_numpy_interpolation():
    """SpecAugment.stretch against np.interp of every bin over the utterance's own frames (first
    and last frame kept, round(rate * L) frames out, zeros after them); rate 1 changes nothing;
    forward draws rates within 1 +- strength * time_stretch and keeps its time masks inside the
    new lengths."""
    import numpy as np

    from src.config import SpecAugmentConfig
    from src.data.augment import SpecAugment

    torch.manual_seed(2)
    lens = torch.tensor([40, 17, 1, 33])
    features = torch.randn(4, 40, 6)
    features[torch.arange(40)[None, :] >= lens[:, None]] = 0.0  # zero padded, as collate pads
    rates = torch.tensor([0.9, 1.25, 1.5, 1.0])
    out, new_lens = SpecAugment.stretch(features, lens, rates)
    for b in range(4):
        n, m = int(lens[b]), max(1, round(float(rates[b]) * int(lens[b])))
        assert int(new_lens[b]) == m
        x = features[b, :n].double().numpy()
        expected = np.stack([np.interp(np.linspace(0.0, n - 1.0, m), np.arange(n), x[:, d]) for d in range(6)], 1)
        np.testing.assert_allclose(out[b, :m].numpy(), expected, atol=1e-5)
        assert bool((out[b, m:] == 0).all())
    assert out.size(1) == 36  # the longest stretched utterance: 0.9 * 40
    assert torch.equal(out[3, :33], features[3, :33])

    augment = SpecAugment(SpecAugmentConfig(n_freq_masks=0, n_time_masks=1, time_mask=20, time_stretch=0.5, freq_warp=0.0))
    lens = torch.full((200,), 50)
    ones = torch.ones(200, 50, 3)
    masked, drawn = augment(ones, lens, 1.0)
    assert bool(((drawn >= 25) & (drawn <= 75)).all()) and len(set(drawn.tolist())) > 20
    late = 0
    for b in range(200):
        n = int(drawn[b])
        assert bool((masked[b, n:] == 0).all())  # padding after the new length
        band = (masked[b, :n, 0] == 0).nonzero().flatten().tolist()
        assert band == list(range(band[0], band[0] + len(band))) if band else True  # one band, inside
        assert len(band) <= 20
        late += any(t >= 50 for t in band)
    assert late > 10  # masks fall where the stretched utterance reaches past its old length


def test_perturbation_runs_apart_from_the_masks():
    """perturb (training.specaugment.perturb: always) sets the stretch and warp ranges apart from the
    masks' strength: at strength 0 and perturb 1 the lengths span the full 1 +- time_stretch and the
    bins are warped, but nothing is masked; at strength 0 and perturb 0 the batch passes untouched
    and no random number is drawn; perturb None follows strength, as before."""
    from src.config import SpecAugmentConfig
    from src.data.augment import SpecAugment

    augment = SpecAugment(SpecAugmentConfig(n_freq_masks=2, freq_mask=4, n_time_masks=2, time_mask=10,
                                            time_stretch=0.2, freq_warp=0.1))
    torch.manual_seed(3)
    lens = torch.full((300,), 100)
    ramp = torch.arange(1.0, 29.0).expand(300, 100, 28)  # bin d holds d + 1: never 0 unless masked
    out, drawn = augment(ramp, lens, 0.0, 1.0)
    assert int(drawn.min()) < 85 and int(drawn.max()) > 115  # rates reach past 1 +- 0.15
    assert bool(((drawn >= 80) & (drawn <= 120)).all())
    for b in range(300):
        assert bool((out[b, :int(drawn[b])] > 0).all())  # no mask anywhere in the real frames
    assert bool((out[:, 0, 5] != 6.0).any())  # some utterances' bins moved (the warp)

    state = torch.get_rng_state()
    same, same_lens = augment(ramp, lens, 0.0, 0.0)
    assert same is ramp and torch.equal(same_lens, lens) and torch.equal(torch.get_rng_state(), state)

    torch.manual_seed(4)
    follows = augment(ramp, lens, 0.5)
    torch.manual_seed(4)
    explicit = augment(ramp, lens, 0.5, 0.5)
    assert torch.equal(follows[0], explicit[0]) and torch.equal(follows[1], explicit[1])


def test_masks_off_leaves_the_perturbation_on(tmp_path):
    """specaugment.start=-1 turns the masks off, not the warp and stretch of perturb=always: training
    then differs from a run with neither, and equals it once the perturbation is tied to the
    (absent) masks or set to 0."""
    from test_resume import final_weights, make_corpus, tiny_config

    corpus = make_corpus(tmp_path / "corpus")
    off = ("training.epochs=1", "training.specaugment.start=-1")
    none = ("training.specaugment.freq_warp=0", "training.specaugment.time_stretch=0")
    weights = {}
    for name, extra in {"perturbed": (), "plain": none,
                        "with_masks": ("training.specaugment.perturb=with_masks",)}.items():
        weights[name], _ = final_weights(tiny_config(corpus, tmp_path / name, *off, *extra))
    assert any(not torch.equal(weights["perturbed"][k], weights["plain"][k]) for k in weights["plain"])
    assert all(torch.equal(weights["with_masks"][k], weights["plain"][k]) for k in weights["plain"])


def test_optimizer_is_adamw_with_no_decay_on_vectors():
    """make_optimizer against AdamW written out in float64 (Adam's moments and bias correction,
    decoupled weight decay on matrices only), over steps of random gradients."""
    from src.config import TrainingConfig
    from src.training.setup import make_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.LayerNorm(4))
    lr, wd, (b1, b2), eps = 1e-2, 0.1, (0.9, 0.98), 1e-8
    opt = make_optimizer(model, TrainingConfig(lr=lr, weight_decay=wd))
    assert opt.defaults["fused"]  # the one-kernel update, on CPU as on CUDA
    params = dict(model.named_parameters())
    ref = {n: p.detach().double().clone() for n, p in params.items()}
    m = {n: torch.zeros_like(r) for n, r in ref.items()}
    v = {n: torch.zeros_like(r) for n, r in ref.items()}
    for t in range(1, 8):
        for n, p in params.items():
            p.grad = torch.randn_like(p)
            g = p.grad.double()
            ref[n] *= 1 - lr * (wd if p.dim() >= 2 else 0.0)
            m[n] = b1 * m[n] + (1 - b1) * g
            v[n] = b2 * v[n] + (1 - b2) * g * g
            ref[n] -= lr * (m[n] / (1 - b1 ** t)) / ((v[n] / (1 - b2 ** t)).sqrt() + eps)
        opt.step()
    for n, p in params.items():
        assert torch.allclose(p.detach().double(), ref[n], atol=1e-6), n


def test_plateau_cuts_after_patience():
    s = PlateauState()
    metrics = [10, 9, 9.5, 9.2, 9.1, 8.0, 8.5]
    scales = []
    for m in metrics:
        s = plateau_update(s, m, factor=0.5, patience=2)
        scales.append(s.scale)
    assert scales == [1, 1, 1, 1, 0.5, 0.5, 0.5]


def test_teacher_forcing_stages_by_brute_force():
    cfg = TeacherForcingConfig(trigger="epoch", trigger_epoch=2, stages=[[0.9, 0.6], [0.5, 0.2]])
    state = TeacherForcingState(rate=1.0)
    rates = []
    for epoch in range(12):
        state = next_teacher_forcing(state, cfg, epoch=epoch, alignment=0.0, dev_cer=1.0)
        rates.append(round(state.rate, 6))
    expected, r = [], 1.0
    for epoch in range(12):  # the rule by hand: x0.9 down to 0.6, then x0.5 down to 0.2
        if epoch >= 2:
            r = max(0.6, r * 0.9) if r > 0.6 else max(0.2, r * 0.5)
        expected.append(round(r, 6))
    assert rates == expected
    assert rates[:2] == [1.0, 1.0] and rates[-1] == 0.2


@pytest.mark.parametrize("trigger,kw,fires", [
    ("aligned", dict(alignment=0.95, dev_cer=1.0), True),
    ("aligned", dict(alignment=0.5, dev_cer=0.0), False),
    ("dev_error", dict(alignment=0.0, dev_cer=0.3), True),
    ("dev_error", dict(alignment=1.0, dev_cer=0.7), False),
])
def test_teacher_forcing_triggers_latch(trigger, kw, fires):
    cfg = TeacherForcingConfig(trigger=trigger, trigger_alignment=0.9, trigger_dev_cer=0.5, stages=[[0.5, 0.1]])
    state = next_teacher_forcing(TeacherForcingState(), cfg, epoch=0, **kw)
    assert state.triggered is fires and state.rate == (0.5 if fires else 1.0)
    if fires:  # latched: keeps decaying whatever the metrics do next
        state = next_teacher_forcing(state, cfg, epoch=1, alignment=0.0, dev_cer=1.0)
        assert state.rate == 0.25


def one_hot_path(peaks: list[int], frames: int) -> torch.Tensor:
    """(U, T) attention that puts all its weight on frame peaks[u] at step u."""
    attn = torch.zeros(len(peaks), frames)
    attn[torch.arange(len(peaks)), torch.tensor(peaks)] = 1.0
    return attn


def diagonal(steps: int, frames: int) -> list[int]:
    return [u * frames // steps for u in range(steps)]


def alignment_of(attn: torch.Tensor) -> float:
    """attention_alignment of one (U, T) map with no padding."""
    U, T = attn.shape
    return float(attention_alignment(attn.unsqueeze(0), torch.tensor([U]), torch.tensor([T]))[0])


@pytest.mark.parametrize("U, T", [(12, 6), (17, 17), (40, 17), (8, 20), (3, 2)])
def test_clean_diagonal_attention_passes_the_trigger(U, T):
    assert alignment_of(one_hot_path(diagonal(U, T), T)) == 1.0
    # spread over the peak's neighbours, as a pBLSTM listener's attention often is: still aligned
    spread = sum(w * one_hot_path([min(T - 1, max(0, p + d)) for p in diagonal(U, T)], T)
                 for d, w in ((-1, 0.2), (0, 0.6), (1, 0.2)))
    assert alignment_of(spread) >= 0.9


@pytest.mark.parametrize("name, peaks, expected", [
    # attention creeping over the first frames (1-5 of 17) while the output runs on: the failure a
    # correlation of step and peak scored 0.93; 5 of 17 frames passed
    ("stalled", [min(4, u // 6) for u in range(30)], 5 / 17),
    # never reaches the end: the first 9 of 17 frames, then stuck
    ("stops half way", [min(8, u) for u in range(17)], 9 / 17),
    # the last frame first, back to the first: no frame passed in order
    ("reversed", diagonal(17, 17)[::-1], 0.0),
    # in order, but frames 6-11 jumped over
    ("skipping", list(range(6)) + list(range(12, 17)), 11 / 17),
    # loops back ("THE SAME THE SAME"): all frames passed, but two jumps back of 5 frames cost 2 x 5
    ("loops back", list(range(9)) + list(range(3, 9)) + list(range(3, 17)), (17 - 10) / 17),
    # flickers back one frame between neighbours (free), but a jump back of 2 costs 2
    ("flickers", [0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 6, 7, 8, 6, 9, 10, 11, 12, 13, 14, 15, 16], (17 - 2) / 17),
])
def test_attention_that_does_not_align_fails_the_trigger(name, peaks, expected):
    score = alignment_of(one_hot_path(peaks, 17))
    assert score == pytest.approx(expected, abs=1e-9) and score < 0.9


def test_alignment_is_low_for_unfocused_attention():
    U, T = 20, 17
    uniform = torch.full((U, T), 1.0 / T)
    assert alignment_of(uniform) < 0.1  # peaks tie on frame 0: stuck, and 3 of 17 frames' weight near it
    # a diagonal whose peak holds only 40% of the weight, the rest spread far away: focus ~0.45
    blurred = 0.4 * one_hot_path(diagonal(U, T), T) + 0.6 * uniform
    assert alignment_of(blurred) == pytest.approx(0.4 + 0.6 * 3 / T, abs=0.03)


def test_alignment_ignores_padding_beyond_the_lengths():
    U, T, pad_u, pad_t = 12, 9, 5, 4
    stalled = one_hot_path([min(2, u // 4) for u in range(U)], T)
    clean = one_hot_path(diagonal(U, T), T)
    reference = [alignment_of(stalled), alignment_of(clean)]
    padded = torch.zeros(2, U + pad_u, T + pad_t)
    padded[0, :U, :T], padded[1, :U, :T] = stalled, clean
    # garbage that would complete the stalled path, or derail the clean one, were it counted
    padded[0, U:, :] = one_hot_path(list(range(T - 3, T - 3 + pad_u)), T + pad_t)
    padded[1, :, T:] = 5.0
    padded[1, U:, :] = torch.rand(pad_u, T + pad_t)
    scores = attention_alignment(padded, torch.tensor([U, U]), torch.tensor([T, T]))
    assert scores.tolist() == pytest.approx(reference, abs=1e-12)
    assert reference[0] < 0.9 <= reference[1]


# --------------------------------------------------------------------------
# Loss, NaN skip, OOM advice (tiny corpus from test_resume)


def _batch_and_model():
    from test_model import tiny_las

    from src.data.dataset import Batch
    from src.vocab import EOS, SOS, encode

    texts = ["CAT", "A DOG"]
    rows = [[SOS] + encode(t) + [EOS] for t in texts]
    tokens = torch.zeros(2, max(map(len, rows)), dtype=torch.long)
    for b, r in enumerate(rows):
        tokens[b, : len(r)] = torch.tensor(r)
    batch = Batch(features=torch.randn(2, 40, 5), feature_lens=torch.tensor([40, 33]), tokens=tokens,
                  token_lens=torch.tensor([len(r) for r in rows]), names=["a", "b"], indices=torch.tensor([0, 1]))
    return batch, tiny_las(conv_stride=1, listener_layers=2, ctc_layer=1).eval()


def test_compute_loss_combines_attention_and_ctc():
    import torch.nn.functional as F

    from src.training.evaluation import compute_loss

    batch, model = _batch_and_model()
    loss = compute_loss(model, batch, teacher_forcing_rate=1.0, label_smoothing=0.0, ctc_weight=0.25).loss
    enc = model.encode(batch.features, batch.feature_lens)
    occupancy = model.char_occupancy(enc, batch.tokens, batch.token_lens)  # the windows' centres, as training has them
    centers = model.window_centers(occupancy, batch.token_lens, enc.lens, batch.tokens.size(1) - 1)
    logits, _ = model.teacher_forced(enc, batch.tokens[:, :-1], centers=centers)
    att = sum(F.cross_entropy(logits[b, : n - 1], batch.tokens[b, 1:n], reduction="sum")
              for b, n in enumerate(batch.token_lens.tolist())) / int((batch.token_lens - 1).sum())
    ctc = sum(  # per utterance: CTC over its own frames, blank = PAD = 0, divided by its target length
        F.ctc_loss(enc.ctc_log_probs[b : b + 1, : int(enc.ctc_lens[b])].transpose(0, 1),
                   batch.tokens[b : b + 1, 1 : n - 1], enc.ctc_lens[b : b + 1], torch.tensor([n - 2]),
                   blank=0, reduction="sum") / (n - 2)
        for b, n in enumerate(batch.token_lens.tolist())) / 2
    torch.testing.assert_close(loss, 0.75 * att + 0.25 * ctc)


def _tiny_cfg(tmp_path, *extra):
    from test_resume import make_corpus, tiny_config

    return tiny_config(make_corpus(tmp_path / "corpus"), tmp_path / "run", "training.epochs=1", *extra)


def test_non_finite_loss_is_skipped_and_counted(tmp_path, monkeypatch):
    import src.training.loop as training
    from test_resume import on_training_batch

    def nan_loss(model, out):
        out.loss = out.loss * float("nan")

    on_training_batch(2, nan_loss, monkeypatch)
    with pytest.warns(RuntimeWarning, match="non-finite loss .*utterances train-clean-100-"):
        run = training.train(_tiny_cfg(tmp_path))
    assert run.state.nan_skips == 1 and run.state.global_step == 4
    assert all(torch.isfinite(p).all() for p in run.core.parameters())


def test_final_check_makes_best_pt_whichever_weights_test_py_decodes_better(tmp_path):
    """training.final_check: when the final weights are not best.pt, both are scored on dev with
    test.py's decoder, and best.pt ends up holding the one with the lower mean Levenshtein. The
    reference decodes each set of weights with test.py's path (decode_dataset) and scores it with
    the brute-force edit distance; both orders are tried, so one must replace and one must keep."""
    import src.training.loop as training
    from src.checkpoint import load_checkpoint, model_from_checkpoint
    from src.decoding import decode_dataset
    from test_metrics import brute_force

    run = training.train(_tiny_cfg(tmp_path, "decoding.method=greedy"))
    trained = {k: v.clone() for k, v in run.core.state_dict().items()}
    from src.vocab import EOS

    silent = {**trained, "speller.char_out.bias": trained["speller.char_out.bias"].clone()}
    silent["speller.char_out.bias"][EOS] += 100.0  # says </s> at once: every hypothesis is empty

    def mean_lev(weights):
        run.core.load_state_dict(weights)
        hyps, refs = decode_dataset(run.core, run.dev_set, run.cfg.data, run.cfg.decoding)
        return sum(brute_force(h, r) for h, r in zip(hyps, refs)) / len(refs)

    levs = {"trained": mean_lev(trained), "silent": mean_lev(silent)}
    assert levs["trained"] != levs["silent"]  # else the test could not tell the two apart
    weights = {"trained": trained, "silent": silent}
    for in_best, final in (("trained", "silent"), ("silent", "trained")):
        run.core.load_state_dict(weights[in_best])
        training.save_best(run, {"epoch": 1})
        run.core.load_state_dict(weights[final])
        training.final_dev_report(run, final_is_best=False)
        expected = final if levs[final] < levs[in_best] else in_best
        best = model_from_checkpoint(load_checkpoint(run.run_dir / "best.pt")).state_dict()
        for k, v in weights[expected].items():
            assert torch.equal(best[k], v), (in_best, final, k)
    log = (run.run_dir / "train.log").read_text()
    assert log.count("(training.final_check)") == 2 and log.count("they are best.pt now") == 1
    # off, or when the last dev evaluation made best.pt: best.pt is not scored against anything
    training.final_dev_report(run, final_is_best=True)
    assert (run.run_dir / "train.log").read_text().count("(training.final_check)") == 2


def _lstm_runs_in_bf16() -> bool:
    """The reference for cpu_runs_bf16_recurrent: a listener-shaped (bidirectional) LSTM forward
    under bf16 autocast."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.LSTM(28, 64, bidirectional=True)(torch.randn(10, 3, 28))
    except RuntimeError:
        return False
    return True


def test_bf16_autocast_on_cpu_trains_in_fp32_weights_close_to_fp32(tmp_path):
    """training.amp=bf16 runs on the CPU (how the GPU's autocast path is tested here): the loss is
    bfloat16-close to the fp32 loss but not equal to it (the products did run in bf16), and the
    gradients, weights and a trained run's checkpoint stay float32. fp16 asks for CUDA in one line.
    Needs a CPU whose oneDNN runs LSTMs in bf16 (AVX-512)."""
    import src.training.loop as training
    from src.training import precision
    from src.training.evaluation import compute_loss

    cpu = torch.device("cpu")
    assert precision.autocast_dtype("bf16", cpu) is torch.bfloat16  # no model: nothing recurrent to refuse
    assert precision.autocast_dtype("auto", cpu) is None and precision.autocast_dtype("none", cpu) is None
    with pytest.raises(UserError, match="training.amp=fp16 needs a CUDA GPU"):
        precision.autocast_dtype("fp16", cpu)

    batch, model = _batch_and_model()
    supported = _lstm_runs_in_bf16()
    assert precision.cpu_runs_bf16_recurrent() == supported
    if not supported:
        pytest.skip("this CPU's oneDNN has no bf16 LSTM (AVX2 only): the refusal is tested below")
    assert precision.autocast_dtype("bf16", cpu, model) is torch.bfloat16
    options = dict(teacher_forcing_rate=1.0, label_smoothing=0.0, ctc_weight=0.25)
    reference = compute_loss(model, batch, **options).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = compute_loss(model, batch, **options).loss
    assert loss.dtype == torch.float32 and float(loss) != float(reference)
    torch.testing.assert_close(loss, reference, rtol=0.03, atol=0.0)
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)

    run = training.train(_tiny_cfg(tmp_path, "training.amp=bf16"))
    assert run.amp_dtype is torch.bfloat16 and run.state.global_step > 0
    saved = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert all(v.dtype == torch.float32 for v in saved.values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())


def test_bf16_on_a_cpu_without_bf16_lstm_is_a_one_line_error(tmp_path, monkeypatch):
    """Where oneDNN has no bf16 LSTM (probed; forced here), training.amp=bf16 with a recurrent model
    stops with one line before the run folder is written; a model without recurrent layers is let
    through."""
    import src.training.loop as training
    from src.training import precision

    monkeypatch.setattr(precision, "cpu_runs_bf16_recurrent", lambda: False)
    cpu = torch.device("cpu")
    with pytest.raises(UserError, match="cannot run LSTM/GRU layers in bfloat16"):
        precision.autocast_dtype("bf16", cpu, torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.GRU(2, 2)))
    assert precision.autocast_dtype("bf16", cpu, torch.nn.Linear(2, 2)) is torch.bfloat16
    assert precision.autocast_dtype("none", cpu, torch.nn.LSTM(2, 2)) is None
    with pytest.raises(UserError, match="use training.amp=none"):
        training.train(_tiny_cfg(tmp_path, "training.amp=bf16"))
    assert not (tmp_path / "run" / "config.yaml").exists() and not (tmp_path / "run" / "last.pt").exists()


def test_out_of_memory_becomes_advice(tmp_path, monkeypatch):
    import src.training.setup as training

    run = training.setup_run(_tiny_cfg(tmp_path))

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(training, "compute_loss", oom)
    with pytest.raises(UserError, match="smaller data.max_frames_per_batch"):
        training.probe_largest_batches(run)


# --------------------------------------------------------------------------
# python train.py end to end on the bundled sample


def test_train_py_on_bundled_sample(tmp_path):
    if not (ROOT / "data" / "sample" / "train-clean-360" / "mfcc").is_dir():
        pytest.skip("bundled sample data/sample not built yet")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--config", str(ROOT / "config.yaml"), "data.root=data/sample",
           "data.train_partition=train-clean-360", "data.num_workers=0", "training.epochs=1",
           "training.dev_max_utterances=6", f"logging.run_dir={run_dir}", "logging.wandb=offline",
           "model.las.conv_channels=16", "model.las.listener_hidden=16", "model.las.speller_hidden=32",
           "model.las.attention_dim=16", "model.las.embedding_dim=16", "training.device=cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline")
    began = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    wall = time.monotonic() - began
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("last.pt", "best.pt", "config.yaml", "train.log", "attention/epoch_001.png"):
        assert (run_dir / name).is_file(), name
    assert "epoch 1/1" in proc.stdout and "dev loss" in proc.stdout
    # start-up is said once, within the command's wall time, its phases adding up to less than the whole
    said = re.findall(r"start-up: first optimiser step ([\d.]+) s after the process started \(imports, config ([\d.]+) s, "
                      r"data check ([\d.]+) s, datasets ([\d.]+) s, model, checkpoint, logging ([\d.]+) s, "
                      r"first batch ([\d.]+) s\)", (run_dir / "train.log").read_text())
    assert len(said) == 1, proc.stdout[-2000:]
    total, *phases = map(float, said[0])
    assert abs(sum(phases) - total) <= 0.35 and total <= wall  # the phases are the whole (rounding, /proc's ticks)
    from src.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(run_dir / "best.pt"))  # rebuilt from the file alone
    assert model.speller.hidden == 32
    # a bad override is one line on stderr and exit code 2
    bad = subprocess.run([sys.executable, "train.py", "--config", str(ROOT / "config.yaml"), "training.lrr=1"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "training.lr" in bad.stderr


def test_seconds_since_process_start_reads_the_clock_of_a_process_that_waited():
    code = "import time; time.sleep(1.0); from src.training.state import seconds_since_process_start as s; print(s())"
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - began
    assert 1.0 <= float(out.stdout) <= wall + 0.02, (out.stdout, out.stderr[-500:], wall)  # /proc counts 10 ms ticks


def _guided_reference(attn, out_lens, enc_lens, sigma):
    """The guided-attention loss written as plain loops over valid cells."""
    import math as m

    total, steps = 0.0, 0
    for b in range(attn.size(0)):
        U, T = int(out_lens[b]), int(enc_lens[b])
        for u in range(U):
            for t in range(T):
                w = 1.0 - m.exp(-((t / T - u / U) ** 2) / (2 * sigma**2))
                total += float(attn[b, u, t]) * w
            steps += 1
    return total / steps


def test_guided_attention_loss_matches_loops_ignores_padding_and_prefers_the_diagonal():
    from src.models.losses import guided_attention_loss

    torch.manual_seed(0)
    out_lens, enc_lens = torch.tensor([7, 4, 1]), torch.tensor([9, 5, 3])
    attn = torch.softmax(torch.randn(3, 7, 9), dim=2)
    value = guided_attention_loss(attn, out_lens, enc_lens, sigma=0.3)
    assert value.item() == pytest.approx(_guided_reference(attn, out_lens, enc_lens, 0.3), rel=1e-5)

    garbage = attn.clone()
    garbage[1, 4:] = 5.0  # beyond out_lens
    garbage[1, :, 5:] = 7.0  # beyond enc_lens
    assert guided_attention_loss(garbage, out_lens, enc_lens).item() == pytest.approx(
        guided_attention_loss(attn, out_lens, enc_lens).item(), rel=1e-6)

    U, T = 20, 40
    diagonal = torch.zeros(1, U, T)
    diagonal[0, torch.arange(U), (torch.arange(U) * T) // U] = 1.0
    stuck = torch.zeros(1, U, T)
    stuck[0, :, -1] = 1.0  # every step on the last frame: the LAS failure this loss prevents
    lens_u, lens_t = torch.tensor([U]), torch.tensor([T])
    assert guided_attention_loss(diagonal, lens_u, lens_t).item() < 0.01
    assert guided_attention_loss(stuck, lens_u, lens_t).item() > 0.5


def test_dev_decoder_follows_test_py_when_asked():
    """training.dev_decoder=test scores dev with exactly test.py's decoding settings; greedy
    keeps every setting but the method."""
    from src.config import load_config
    from src.training.report import dev_decoding

    cfg = load_config(None, ["decoding.beam_size=7", "decoding.ctc_weight=0.4"])
    assert dev_decoding(cfg).method == "greedy" and dev_decoding(cfg).ctc_weight == 0.4
    cfg = load_config(None, ["decoding.beam_size=7", "decoding.ctc_weight=0.4", "training.dev_decoder=test"])
    assert dev_decoding(cfg) == cfg.decoding and dev_decoding(cfg).method == "beam"
    with pytest.raises(UserError, match="dev_decoder"):
        load_config(None, ["training.dev_decoder=beam"])
