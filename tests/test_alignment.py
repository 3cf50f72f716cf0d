"""Guided attention towards the CTC head's alignment: the occupancy kernel against an enumeration
of every CTC path, the pooling and the KL loss against loops, the LAS targets, the hook's notices."""
import itertools
import math

import numpy as np
import pytest
import torch

from src.models.alignment import ctc_occupancy, pool_frames
from src.models.las import LAS, LASConfig
from src.models.losses import attention_target_loss
from src.vocab import EOS, SOS, VOCAB, encode


def enumerated_occupancy(lp: np.ndarray, labels: list[int]) -> np.ndarray:
    """P(frame t emits label l | x, y) by enumerating every path of T symbols (blank = 0) that
    collapses to ``labels``: (L, T), each row normalised over t; zeros when no path exists."""
    frames, vocab = lp.shape
    occupancy = np.zeros((len(labels), frames))
    for path in itertools.product(range(vocab), repeat=frames):
        emitted, owner, previous = [], [], None
        for symbol in path:  # collapse repeats, then drop blanks; remember which label each frame emits
            if symbol != 0 and symbol != previous:
                emitted.append(symbol)
            owner.append(len(emitted) - 1 if symbol != 0 else -1)
            previous = symbol
        if emitted != labels:
            continue
        p = math.exp(sum(lp[t, s] for t, s in enumerate(path)))
        for t, label in enumerate(owner):
            if label >= 0:
                occupancy[label, t] += p
    total = occupancy.sum(axis=1, keepdims=True)
    return np.divide(occupancy, total, out=np.zeros_like(occupancy), where=total > 0)


@pytest.mark.parametrize("frames,labels", [(1, [1]), (3, [1, 1]), (4, [1, 2]), (5, [2, 2, 1]), (6, [1, 2, 1]),
                                           (6, [2]), (7, [1, 1, 2]), (2, [1, 1]), (3, [1, 2, 1, 2])])
def test_occupancy_equals_the_enumeration_of_every_path(frames, labels):
    rng = np.random.default_rng(frames * 10 + len(labels))
    lp = torch.log_softmax(torch.tensor(rng.normal(size=(frames, 3)) * 2.0), dim=-1).float()
    got = ctc_occupancy(lp[None], torch.tensor([frames]), torch.tensor([labels]), torch.tensor([len(labels)]))[0]
    want = enumerated_occupancy(lp.double().numpy(), labels)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    feasible = frames >= len(labels) + sum(a == b for a, b in zip(labels, labels[1:]))
    assert np.allclose(got.sum(dim=1).numpy(), 1.0 if feasible else 0.0, atol=1e-5)


def test_occupancy_batches_ignore_padding_and_match_one_at_a_time():
    torch.manual_seed(0)
    lens, label_lens = torch.tensor([9, 6, 7]), torch.tensor([4, 2, 3])
    lp = torch.log_softmax(torch.randn(3, 9, 5), dim=-1)
    labels = torch.randint(1, 5, (3, 4))
    batch = ctc_occupancy(lp, lens, labels, label_lens)  # (B, L, T'')
    garbage = lp.clone()
    garbage[1, 6:] = 3.0  # beyond lens: never read
    labels_garbage = labels.clone()
    labels_garbage[1, 2:] = 0
    assert torch.equal(ctc_occupancy(garbage, lens, labels_garbage, label_lens), batch)
    for b in range(3):
        n, t = int(label_lens[b]), int(lens[b])
        alone = ctc_occupancy(lp[b : b + 1, :t], lens[b : b + 1], labels[b : b + 1, :n], label_lens[b : b + 1])[0]
        assert torch.allclose(batch[b, :n, :t], alone, atol=1e-6)
        assert batch[b, n:].abs().sum() == 0 and batch[b, :, t:].abs().sum() == 0


def test_occupancy_of_an_untrained_head_is_a_band_around_the_diagonal():
    """Every frame equally likely to emit anything: character l's expected frame is where a
    uniform pace puts it, and its mass lies within a few frames of that."""
    frames, n = 120, 30
    lp = torch.full((1, frames, 6), -math.log(6.0))
    labels = torch.tensor([[1 + (i % 5) for i in range(n)]])
    occupancy = ctc_occupancy(lp, torch.tensor([frames]), labels, torch.tensor([n]))[0]  # (L, T)
    expected = (occupancy * torch.arange(frames)).sum(dim=1)  # (L,)
    pace = (torch.arange(n) + 0.5) * frames / n
    assert (expected - pace).abs().max() < 0.1 * frames
    assert torch.all(expected[1:] > expected[:-1])  # in order


def test_pool_frames_sums_runs_like_the_pblstm_joins_frames():
    occupancy = torch.rand(2, 3, 7)
    for factor in (1, 2, 4):
        frames = -(-7 // factor)
        pooled = pool_frames(occupancy, factor, frames)
        for t in range(frames):
            assert torch.allclose(pooled[:, :, t], occupancy[:, :, t * factor : (t + 1) * factor].sum(dim=2))
    assert pool_frames(occupancy, 2, 6).shape == (2, 3, 6)  # a wider batch: zero frames at the end
    with pytest.raises(ValueError):
        pool_frames(occupancy, 2, 3)


def test_attention_target_loss_is_kl_over_steps_with_a_target_and_pulls_towards_it():
    torch.manual_seed(1)
    scores = torch.randn(2, 4, 6, requires_grad=True)
    attn = torch.softmax(scores, dim=2)
    target = torch.softmax(torch.randn(2, 4, 6) * 3, dim=2)
    target[1, 3] = 0.0  # a step without a target
    value = attention_target_loss(attn, target)
    want, steps = 0.0, 0
    for b in range(2):
        for u in range(4):
            if b == 1 and u == 3:
                continue
            want += sum(float(target[b, u, t]) * math.log(float(target[b, u, t]) / float(attn[b, u, t].detach()))
                        for t in range(6))
            steps += 1
    assert value.item() == pytest.approx(want / steps, rel=1e-5)
    value.backward()
    # d KL / d scores = (attention - target) / steps, whatever the spread of the attention
    grad = (attn - target).detach() / steps
    grad[1, 3] = 0.0
    assert torch.allclose(scores.grad, grad, atol=1e-6)
    assert attention_target_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)


def _las_batch():
    texts = ["AB A", "BAB"]
    rows = [[SOS] + encode(t) + [EOS] for t in texts]
    tokens = torch.zeros(2, max(map(len, rows)), dtype=torch.long)
    for b, r in enumerate(rows):
        tokens[b, : len(r)] = torch.tensor(r)
    token_lens = torch.tensor([len(r) for r in rows])
    feature_lens = torch.tensor([40, 29])
    return torch.randn(2, 40, 5), feature_lens, tokens, token_lens


def _small_las(**overrides) -> LAS:
    sizes = dict(conv_channels=8, conv_stride=2, listener_hidden=8, listener_layers=2, attention_dim=8,
                 embedding_dim=8, speller_hidden=8, ctc_layer=1)
    return LAS(5, len(VOCAB), LASConfig(**{**sizes, **overrides}))


def test_las_occupancy_targets_and_centres_follow_the_ctc_posterior_per_listener_frame():
    torch.manual_seed(0)
    model = _small_las()
    model.eval()
    features, feature_lens, tokens, token_lens = _las_batch()
    encoded = model.encode(features, feature_lens)
    occupancy = model.char_occupancy(encoded, tokens, token_lens)  # (B, n, T')
    steps, frames_max = tokens.size(1) - 1, encoded.memory[0].size(1)
    assert occupancy.shape == (2, tokens.size(1) - 2, frames_max)
    posterior = ctc_occupancy(encoded.ctc_log_probs, encoded.ctc_lens, tokens[:, 1:-1], token_lens - 2)
    for b in range(2):
        n, frames = int(token_lens[b]) - 2, int(encoded.lens[b])
        for c in range(n):  # two CTC frames to one listener frame
            for t in range(frames):
                assert occupancy[b, c, t].item() == pytest.approx(posterior[b, c, 2 * t : 2 * t + 2].sum().item(),
                                                                  abs=1e-6)
    target = model.attention_targets(occupancy, steps, None)  # (B, U, T')
    centers = model.window_centers(occupancy, token_lens, encoded.lens, steps)  # (B, U)
    for b in range(2):
        n = int(token_lens[b]) - 2
        assert torch.allclose(target[b, :n], occupancy[b, :n]) and target[b, n:].abs().sum() == 0  # no <eos> target
        assert centers[b, 0] == 0.0  # the first step: where speech starts
        for u in range(1, n + 1):  # then where the character before is, on average
            mean = float((occupancy[b, u - 1] * torch.arange(frames_max)).sum())
            assert centers[b, u].item() == pytest.approx(mean, abs=1e-4)
    # no alignment (no CTC head): a uniform pace
    pace = model.window_centers(None, token_lens, encoded.lens, steps)
    n, frames = int(token_lens[1]) - 2, int(encoded.lens[1])
    assert pace[1, 1:n + 1].tolist() == pytest.approx([min((c + 0.5) / n * frames, frames - 1) for c in range(n)])
    # the objective: the guided part is the KL from these targets (it differs from the diagonal's penalty)
    model.train()
    torch.manual_seed(3)
    out = model(features, feature_lens, tokens, token_lens, guided_attention=1.0, guided_target="ctc")
    train_target = model.attention_targets(model.char_occupancy(out.encoded, tokens, token_lens), steps, None)
    want = attention_target_loss(out.attention, train_target)
    assert out.parts["ga"] == pytest.approx(want.item(), rel=1e-4)
    torch.manual_seed(3)
    diagonal = model(features, feature_lens, tokens, token_lens, guided_attention=1.0, guided_target="diagonal")
    assert diagonal.parts["att"] == out.parts["att"] and diagonal.parts["ga"] != pytest.approx(out.parts["ga"])


def test_window_mask_against_its_definition_and_never_empty():
    model = _small_las(window_behind=2, window_ahead=3)
    attention = model.speller.attention
    centers = torch.tensor([[0.0, 4.4, 9.0], [2.5, 6.0, 0.2]])
    mask = attention.window_mask(centers, 10)
    for b in range(2):
        for u in range(3):
            for t in range(10):
                assert bool(mask[b, u, t]) == (centers[b, u] - 2.5 <= t <= centers[b, u] + 3.5)
            assert mask[b, u].any()


@pytest.mark.parametrize("input_feeding,location_kernel", [(False, 0), (True, 0), (False, 3)])
def test_windowed_steps_equal_teacher_forcing_centred_where_each_step_looked(input_feeding, location_kernel):
    """Decoding centres each window on the last step's weights; training takes the centres as given:
    given the centres the step loop used, the teacher-forced pass computes the same logits and
    weights, and each step's weights are zero outside its window."""
    torch.manual_seed(0)
    model = _small_las(window_behind=1, window_ahead=2, input_feeding=input_feeding, location_kernel=location_kernel)
    model.eval()
    features, feature_lens, tokens, _ = _las_batch()
    with torch.no_grad():
        encoded = model.encode(features, feature_lens)
        tokens_in = tokens[:, :-1]
        state = model.init_state(encoded)
        logits, attns, centers = [], [], []
        for u in range(tokens_in.size(1)):
            step_logits, state, attn = model.step(tokens_in[:, u], state, encoded)
            centers.append(state[6])  # the centre this step's window used
            logits.append(step_logits)
            attns.append(attn)
        centers = torch.stack(centers, dim=1)  # (B, U)
        forced_logits, forced_attn = model.teacher_forced(encoded, tokens_in, 1.0, centers)
    assert torch.allclose(torch.stack(logits, dim=1), forced_logits, atol=1e-5)
    assert torch.allclose(torch.stack(attns, dim=1), forced_attn, atol=1e-6)
    outside = ~model.speller.attention.window_mask(centers, forced_attn.size(2))
    assert forced_attn[outside].abs().max() == 0.0
    assert torch.allclose(forced_attn.sum(dim=2), torch.ones(2, tokens_in.size(1)), atol=1e-5)
    advance, last = model.speller.window_advance, (encoded.lens - 1).float()
    assert advance > 0 and centers[:, 0].tolist() == [advance, advance]  # from frame 0
    assert torch.all(centers[:, 1:] >= centers[:, :-1])  # decoding moves the window forward only
    for u in range(1, centers.size(1)):  # to where the step before looked, or on by the advance, within the utterance
        looked = model.speller.attention.expected_frame(forced_attn[:, u - 1])
        want = torch.minimum(torch.maximum(centers[:, u - 1] + advance, looked), last)
        assert torch.allclose(centers[:, u], want, atol=1e-5)
    if location_kernel == 0 and not input_feeding:
        with pytest.raises(ValueError, match="centres"):
            model.teacher_forced(encoded, tokens_in, 1.0)


def test_hook_says_once_when_attention_aligned_and_warns_once_when_it_has_not():
    from src.config import load_config
    from src.training.hooks import AttentionHooks

    cfg = load_config(None, ["training.alignment_warning_steps=300"]).training
    hooks = AttentionHooks(cfg)
    hooks.end_of_epoch(0, {"dev_alignment": 0.2, "dev_cer": 0.9}, step=200, minutes=1.0)
    assert hooks.notices() == []
    hooks.end_of_epoch(1, {"dev_alignment": 0.3, "dev_cer": 0.9}, step=400, minutes=2.0)
    (warning,) = hooks.notices()
    assert warning.startswith("warning: attention has not aligned after 400 steps") and "0.30 < 0.5" in warning
    hooks.end_of_epoch(2, {"dev_alignment": 0.4, "dev_cer": 0.9}, step=600, minutes=3.0)
    assert hooks.notices() == []  # once per run
    partly = AttentionHooks(cfg)  # following the audio, not yet sharp: no warning
    partly.end_of_epoch(1, {"dev_alignment": 0.7, "dev_cer": 0.5}, step=400, minutes=2.0)
    assert partly.notices() == [] and not partly.state["aligned"]
    assert hooks.batch_options()["guided_attention"] == cfg.guided_attention
    hooks.end_of_epoch(3, {"dev_alignment": 0.93, "dev_cer": 0.4}, step=800, minutes=4.25)
    (line,) = hooks.notices()
    assert line.startswith("attention aligned: dev alignment 0.93 >= 0.9 at epoch 4, step 800, 4.2 min")
    assert hooks.state["aligned_at"] == {"epoch": 4, "step": 800, "minutes": 4.25}
    assert hooks.batch_options()["guided_attention"] == 0.0
    hooks.end_of_epoch(4, {"dev_alignment": 0.95, "dev_cer": 0.3}, step=1000, minutes=5.0)
    assert hooks.notices() == []
    restored = AttentionHooks(cfg, hooks.state)  # a resumed run: nothing said again
    restored.end_of_epoch(5, {"dev_alignment": 0.2, "dev_cer": 0.3}, step=1200, minutes=6.0)
    assert restored.notices() == []
