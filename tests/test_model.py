"""LAS: length formula vs real shapes, attention masks, step == forward, overfitting, checkpoints."""
import math

import numpy as np
import pytest
import torch

from src.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from src.config import ModelConfig
from src.models.las import LASConfig
from src.errors import UserError
from src.models import build_model
from src.models.interface import EncoderOutput
from src.models.las import LAS, Attention, Listener, listener_output_lengths
from src.vocab import EOS, SOS, VOCAB, decode, encode


def tiny_las(**kw) -> LAS:
    """A small LAS whose attention sees the whole utterance (windowed attention: tests/test_alignment.py)."""
    sizes = dict(conv_channels=8, conv_stride=1, listener_hidden=6, listener_layers=3, locked_dropout=0.0,
                 attention_dim=8, embedding_dim=8, speller_hidden=12, speller_dropout=0.0, ctc_layer=2,
                 window_behind=0, window_ahead=0)
    sizes.update(kw)
    torch.manual_seed(0)
    return LAS(5, len(VOCAB), LASConfig(**sizes))


# --------------------------------------------------------------------------
# The time-reduction formula against the real listener


@pytest.mark.parametrize("stride", [1, 2, 3, 4])
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_listener_output_lengths_match_shapes(stride, layers):
    torch.manual_seed(0)
    listener = Listener(5, 4, stride, 3, layers, 0.0, ctc_layer=1).eval()
    lens = torch.arange(1, 65)  # T = 1..64 in one padded batch
    x = torch.randn(len(lens), 64, 5)
    with torch.no_grad():
        out, out_lens, _, _ = listener(x, lens)
    for T in range(1, 65):
        expected = math.ceil(T / (stride * 2**layers))  # nested ceilings of integer divisions
        assert listener_output_lengths(T, stride, layers) == expected
        assert int(out_lens[T - 1]) == expected
        row = out[T - 1]
        assert torch.all(row[expected:] == 0)  # zero padded beyond the length
        assert torch.any(row[expected - 1] != 0)  # the last real frame is there
    assert out.shape[1] == listener_output_lengths(64, stride, layers)
    for T in (1, 2, 7, 8, 9, 31, 33):  # alone, the shape is the formula
        with torch.no_grad():
            solo, _, _, _ = listener(torch.randn(1, T, 5), torch.tensor([T]))
        assert solo.shape[1] == listener_output_lengths(T, stride, layers)


def test_listener_ignores_padding_values():
    """An utterance gives the same output alone and in a batch padded with garbage."""
    listener = Listener(5, 4, 2, 3, 2, 0.0, ctc_layer=1).eval()
    torch.manual_seed(1)
    lens = torch.tensor([23, 40, 17])
    x = torch.randn(3, 40, 5)
    x[0, 23:] = 1e3  # padding is never read: masks come from lengths
    x[2, 17:] = -7.0
    with torch.no_grad():
        out, out_lens, ctc_x, ctc_lens = listener(x, lens)
        for b in range(3):
            n = int(lens[b])
            solo, solo_lens, solo_ctc, _ = listener(x[b : b + 1, :n], lens[b : b + 1])
            torch.testing.assert_close(out[b, : int(out_lens[b])], solo[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ctc_x[b, : int(ctc_lens[b])], solo_ctc[0], rtol=1e-5, atol=1e-6)


def test_pblstm_cpu_path_equals_packed_lstm():
    """The CPU path (reverse within lengths, no packing) against nn.LSTM on packed sequences."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from src.models.las import pBLSTM

    torch.manual_seed(0)
    layer = pBLSTM(3, 4)
    x = torch.randn(4, 18, 3, requires_grad=True)
    lens = torch.tensor([18, 5, 11, 1])
    out, out_lens = layer(x, lens)
    pairs = x.reshape(4, 9, 6)  # T even: (B, T, F) -> (B, T/2, 2F)
    packed = pack_padded_sequence(pairs, out_lens, batch_first=True, enforce_sorted=False)
    ref, _ = pad_packed_sequence(layer.lstm(packed)[0], batch_first=True, total_length=9)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    gx = torch.autograd.grad((out * grad).sum(), x)[0]
    gref = torch.autograd.grad((ref * grad).sum(), x)[0]
    torch.testing.assert_close(gx, gref)


# --------------------------------------------------------------------------
# Attention


def test_attention_masks_from_lengths_and_sums_to_one():
    torch.manual_seed(0)
    att = Attention(listener_dim=6, query_dim=5, attention_dim=4)
    lens = torch.tensor([7, 1, 4, 10])
    keys, values = att.project(torch.randn(4, 10, 6))
    keys[0, 7:] = 1e4  # huge garbage in the padding must not matter
    state = torch.randn(4, 5)
    context, weights = att(state, keys, values, lens)
    expected_mask = torch.tensor([[t < n for t in range(10)] for n in lens.tolist()])
    assert torch.all(weights[~expected_mask] == 0)
    assert torch.all(weights[expected_mask] > 0)
    torch.testing.assert_close(weights.sum(1), torch.ones(4))
    # brute force per utterance: softmax over its own frames only
    for b, n in enumerate(lens.tolist()):
        q = att.query(state[b])
        scores = torch.stack([keys[b, t] @ q for t in range(n)]) / math.sqrt(4)
        w = torch.softmax(scores, 0)
        torch.testing.assert_close(weights[b, :n], w)
        torch.testing.assert_close(context[b], (w[:, None] * values[b, :n]).sum(0))


def test_location_aware_scores_against_a_loop():
    """Location-aware attention: each frame's score is the content score plus w . tanh of the
    previous weights convolved (zero padded, centred), by explicit sums over kernel taps."""
    torch.manual_seed(0)
    K, C = 5, 3
    att = Attention(listener_dim=6, query_dim=5, attention_dim=4, location_kernel=K, location_channels=C)
    lens = torch.tensor([9, 4])
    keys, values = att.project(torch.randn(2, 9, 6))
    state = torch.randn(2, 5)
    previous = torch.softmax(torch.randn(2, 9), dim=1) * (torch.arange(9) < lens[:, None])
    context, weights = att(state, keys, values, lens, previous=previous)
    W = att.location.weight[:, 0]  # (C, K)
    w = att.location_score.weight[0]  # (C,)
    for b, n in enumerate(lens.tolist()):
        q = att.query(state[b])
        scores = []
        for t in range(n):
            conv = [sum(W[c, j] * previous[b, t + j - K // 2] for j in range(K) if 0 <= t + j - K // 2 < 9)
                    for c in range(C)]
            location = sum(w[c] * torch.tanh(conv[c]) for c in range(C))
            scores.append(keys[b, t] @ q / math.sqrt(4) + location)
        expected = torch.softmax(torch.stack(scores), 0)
        torch.testing.assert_close(weights[b, :n], expected)
        assert torch.all(weights[b, n:] == 0)
        torch.testing.assert_close(context[b], (expected[:, None] * values[b, :n]).sum(0))
    with pytest.raises(ValueError):  # it needs the previous step
        att(state, keys, values, lens)


def test_location_kernel_must_be_odd():
    with pytest.raises(UserError, match="location_kernel"):
        LASConfig(location_kernel=4)


# --------------------------------------------------------------------------
# Step function and teacher-forced forward


def _toy_batch(seed=0, B=3, T=30, U=9):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 5, generator=g)
    lens = torch.tensor([T, T - 7, 11])[:B]
    tokens = torch.randint(3, len(VOCAB), (B, U), generator=g)
    tokens[:, 0] = SOS
    return x, lens, tokens


@pytest.mark.parametrize("input_feeding,location_kernel", [(True, 0), (False, 0), (False, 5), (True, 3)])
def test_step_loop_reproduces_teacher_forced_forward(input_feeding, location_kernel):
    model = tiny_las(input_feeding=input_feeding, location_kernel=location_kernel).eval()
    x, lens, tokens = _toy_batch()
    with torch.no_grad():
        encoded = model.encode(x, lens)
        logits, attn = model.teacher_forced(encoded, tokens, 1.0)
        enc = model.encode(x, lens)
        state = model.init_state(enc)
        for u in range(tokens.size(1)):
            step_logits, state, step_attn = model.step(tokens[:, u], state, enc)
            torch.testing.assert_close(step_logits, logits[:, u])
            torch.testing.assert_close(step_attn, attn[:, u])
    assert logits.shape == (3, 9, len(VOCAB)) and attn.shape == (3, 9, enc.memory[0].size(1))
    assert torch.all(attn[1, :, int(enc.lens[1]):] == 0)
    assert encoded.ctc_log_probs.shape == (3, listener_output_lengths(30, 1, 2), len(VOCAB))
    torch.testing.assert_close(encoded.ctc_log_probs.exp().sum(-1), torch.ones(3, encoded.ctc_log_probs.size(1)))


def test_teacher_forcing_zero_feeds_own_argmax():
    """Training mode, rate 0 (no dropout): every input after SOS is the previous argmax."""
    model = tiny_las().train()
    x, lens, tokens = _toy_batch(seed=3)
    with torch.no_grad():
        logits, _ = model.teacher_forced(model.encode(x, lens), tokens, 0.0)
        enc = model.encode(x, lens)
        state = model.init_state(enc)
        tok = tokens[:, 0]
        for u in range(tokens.size(1)):
            step_logits, state, _ = model.step(tok, state, enc)
            torch.testing.assert_close(step_logits, logits[:, u])
            tok = step_logits.argmax(-1)


@pytest.mark.parametrize("location_kernel", [0, 3])
def test_parallel_scheduled_sampling_feeds_the_guesses_of_a_true_prefix(location_kernel):
    """Without input feeding, rate 0 (training mode, no dropout): every input after SOS is the
    argmax the model gives at the position before it when fed the true tokens (step loop reference)."""
    model = tiny_las(input_feeding=False, location_kernel=location_kernel).train()
    x, lens, tokens = _toy_batch(seed=4)
    with torch.no_grad():
        logits, _ = model.teacher_forced(model.encode(x, lens), tokens, 0.0)
        enc = model.encode(x, lens)
        state, guesses = model.init_state(enc), []
        for u in range(tokens.size(1)):
            step_logits, state, _ = model.step(tokens[:, u], state, enc)
            guesses.append(step_logits.argmax(-1))
        fed = torch.stack([tokens[:, 0]] + guesses[:-1], dim=1)  # (B, U): SOS, then the guess for each position
        state = model.init_state(enc)
        for u in range(tokens.size(1)):
            step_logits, state, _ = model.step(fed[:, u], state, enc)
            torch.testing.assert_close(step_logits, logits[:, u])
    assert not torch.equal(fed[:, 1:], tokens[:, 1:])  # the test feeds something other than the truth


@pytest.mark.parametrize("location_kernel", [0, 3])
def test_reorder_state_and_index_select(location_kernel):
    model = tiny_las(location_kernel=location_kernel).eval()
    x, lens, tokens = _toy_batch(seed=5)
    index = torch.tensor([2, 0, 2, 1])
    with torch.no_grad():
        enc = model.encode(x, lens)
        state = model.init_state(enc)
        logits, state, _ = model.step(tokens[:, 0], state, enc)
        logits2, _, attn2 = model.step(tokens[:, 1], state, enc)
        picked = model.reorder_state(state, index)
        logits_r, _, attn_r = model.step(tokens[index, 1], picked, enc.index_select(index))
    torch.testing.assert_close(logits_r, logits2[index])
    torch.testing.assert_close(attn_r, attn2[index])
    assert isinstance(enc.index_select(index), EncoderOutput)


@pytest.mark.parametrize("input_feeding", [True, False])
def test_weight_tying_and_forget_gate_bias(input_feeding):
    model = tiny_las(input_feeding=input_feeding)
    assert model.speller.char_out.weight is model.speller.embedding.weight
    first = model.speller.cell1 if input_feeding else model.speller.rnn1
    h = first.hidden_size
    bias = (first.bias_ih + first.bias_hh) if input_feeding else (first.bias_ih_l0 + first.bias_hh_l0)
    assert torch.all(bias[h : 2 * h] == 1) and torch.all(bias[:h] == 0)


# --------------------------------------------------------------------------
# A tiny model overfits 8 utterances


def toy_utterances(n=8, seed=0):
    """Texts rendered by a toy 'voice': each character a fixed noisy frame pattern of 4-6 frames."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(len(VOCAB), 5)).astype(np.float32) * 2
    words = ["CAT", "DOG", "BIRD", "FISH", "A", "THE", "RED", "BLUE", "SEES", "ONE"]
    texts = [" ".join(rng.choice(words, size=rng.integers(2, 4))) for _ in range(n)]
    feats = []
    for text in texts:
        frames = [np.repeat(protos[i][None], rng.integers(4, 7), 0) for i in encode(text)]
        x = np.concatenate(frames) + 0.1 * rng.normal(size=(sum(len(f) for f in frames), 5))
        feats.append(torch.tensor(x, dtype=torch.float32))
    return texts, feats


def test_tiny_model_overfits_eight_utterances():
    import torch.nn.functional as F

    from src.decoding.greedy import greedy_decode

    texts, feats = toy_utterances()
    B = len(texts)
    lens = torch.tensor([f.shape[0] for f in feats])
    x = torch.zeros(B, int(lens.max()), 5)
    for b, f in enumerate(feats):
        x[b, : len(f)] = f
    rows = [[SOS] + encode(t) + [EOS] for t in texts]
    tokens = torch.zeros(B, max(map(len, rows)), dtype=torch.long)
    for b, r in enumerate(rows):
        tokens[b, : len(r)] = torch.tensor(r)
    torch.manual_seed(0)
    model = LAS(5, len(VOCAB), LASConfig(conv_channels=32, conv_stride=1, listener_hidden=32, listener_layers=2,
                                         locked_dropout=0.0, attention_dim=32, embedding_dim=32, speller_hidden=64,
                                         speller_dropout=0.0, ctc_layer=1, window_behind=0, window_ahead=0))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    first = None
    for step in range(450):
        logits, _ = model.teacher_forced(model.encode(x, lens), tokens[:, :-1], 1.0)
        loss = F.cross_entropy(logits.reshape(-1, len(VOCAB)), tokens[:, 1:].reshape(-1), ignore_index=0)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.07:
            break
    assert first > 3.0 and loss.item() < 0.07  # from chance (ln 31 = 3.4) to memorised
    model.eval()
    with torch.no_grad():
        enc = model.encode(x, lens)
        hyps = [decode(ids) for ids in greedy_decode(model, enc, torch.full((B,), 40))]
    assert hyps == texts


# --------------------------------------------------------------------------
# build_model and checkpoints


def test_checkpoint_rebuilds_model_alone(tmp_path):
    import dataclasses

    cfg = ModelConfig(las=LASConfig(conv_channels=8, listener_hidden=6, attention_dim=8, embedding_dim=8,
                                    speller_hidden=12))
    torch.manual_seed(0)
    model = build_model(cfg, 5, len(VOCAB)).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, {"model": model.state_dict(), "family": "las", "model_config": dataclasses.asdict(cfg.las),
                           "n_mels": 5, "vocab": list(VOCAB)})
    assert not (tmp_path / "m.pt.tmp").exists()
    rebuilt = model_from_checkpoint(load_checkpoint(path), "cpu")
    x, lens, tokens = _toy_batch()
    token_lens = torch.full((tokens.size(0),), tokens.size(1))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, lens, tokens, token_lens).loss, model(x, lens, tokens, token_lens).loss,
                                   rtol=0, atol=0)


def test_checkpoint_from_before_input_feeding_was_a_setting_loads_with_it(tmp_path):
    import dataclasses

    model = tiny_las(input_feeding=True).eval()
    sizes = dataclasses.asdict(model.cfg)
    del sizes["input_feeding"]  # what checkpoints written before the setting hold
    save_checkpoint(tmp_path / "old.pt", {"model": model.state_dict(), "family": "las", "model_config": sizes,
                                          "n_mels": 5, "vocab": list(VOCAB)})
    rebuilt = model_from_checkpoint(load_checkpoint(tmp_path / "old.pt"), "cpu")
    assert rebuilt.cfg.input_feeding and rebuilt.speller.cell1.input_size == 8 + 8  # embedding + context


def test_checkpoint_from_before_windowed_attention_attends_to_every_frame(tmp_path):
    import dataclasses

    model = tiny_las(window_behind=0, window_ahead=0).eval()
    sizes = dataclasses.asdict(model.cfg)
    del sizes["window_behind"], sizes["window_ahead"]  # what checkpoints written before the settings hold
    save_checkpoint(tmp_path / "old.pt", {"model": model.state_dict(), "family": "las", "model_config": sizes,
                                          "n_mels": 5, "vocab": list(VOCAB)})
    rebuilt = model_from_checkpoint(load_checkpoint(tmp_path / "old.pt"), "cpu")
    assert rebuilt.speller.attention.window is None and LASConfig().window_ahead > 0


def test_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="not a readable checkpoint") as err:
        load_checkpoint(bad)
    assert "\n" not in str(err.value)
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(UserError, match="missing model_config"):
        load_checkpoint(tmp_path / "partial.pt")


def test_las_config_rejects_bad_ctc_layer():
    with pytest.raises(UserError, match="ctc_layer"):
        build_model(ModelConfig(las=LASConfig(listener_layers=2, ctc_layer=3)), 28, len(VOCAB))
