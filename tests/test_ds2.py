"""DeepSpeech2: length formula vs real shapes, padding never reaches real frames, it learns, it resumes."""
import math

import pytest
import torch

from test_resume import assert_same_weights, final_weights, make_corpus

from src.models.ds2 import DS2Config
from src.models.ds2 import DeepSpeech2, ds2_output_lengths
from src.models.layers import reverse_within_lengths

TINY = DS2Config(conv_channels=4, rnn_layers=2, rnn_hidden=8, dropout=0.0)


@pytest.mark.parametrize("reduction", [2, 4])
def test_length_formula_matches_real_shapes(reduction):
    torch.manual_seed(0)
    model = DeepSpeech2(28, 31, DS2Config(conv_channels=2, rnn_layers=1, rnn_hidden=4, time_reduction=reduction)).eval()
    lens = torch.arange(1, 121)  # T = 1..120 in one padded batch
    with torch.no_grad():
        encoded = model.encode(torch.randn(len(lens), 120, 28), lens)
    for T in range(1, 121):
        expected = math.ceil(math.ceil(T / 2) / (reduction // 2))
        assert ds2_output_lengths(T, reduction) == expected
        assert int(encoded.lens[T - 1]) == expected
    assert encoded.ctc_log_probs.shape[1] == ds2_output_lengths(120, reduction)
    torch.testing.assert_close(encoded.ctc_log_probs.exp().sum(-1), torch.ones(len(lens), encoded.ctc_log_probs.size(1)))


def test_reverse_within_lengths_is_its_own_inverse_and_leaves_padding():
    x = torch.arange(2 * 5, dtype=torch.float32).reshape(2, 5, 1)
    lens = torch.tensor([5, 3])
    y = reverse_within_lengths(x, lens)
    assert y[1, :, 0].tolist() == [7.0, 6.0, 5.0, 8.0, 9.0]
    torch.testing.assert_close(reverse_within_lengths(y, lens), x)


@pytest.mark.parametrize("rnn_type,bidirectional,lookahead", [("gru", True, 0), ("lstm", True, 0), ("gru", False, 3)])
def test_padding_never_changes_real_frames(rnn_type, bidirectional, lookahead):
    torch.manual_seed(1)
    model = DeepSpeech2(28, 31, DS2Config(conv_channels=4, rnn_layers=2, rnn_hidden=8, dropout=0.0,
                                          rnn_type=rnn_type, bidirectional=bidirectional, lookahead=lookahead))
    if model.lookahead is not None:  # not the identity it starts as
        torch.nn.init.normal_(model.lookahead.conv.weight)
    lens = torch.tensor([61, 40, 23])
    x = torch.randn(3, 61, 28)
    noisy = x.clone()
    noisy[1, 40:] = 1e3  # padding values are never read: masks come from lengths
    noisy[2, 23:] = -7.0
    model.train()  # batch statistics over real frames only: the same with any padding values
    torch.testing.assert_close(model.encode(noisy, lens).ctc_log_probs, model.encode(x, lens).ctc_log_probs)
    model.eval()
    with torch.no_grad():
        batch = model.encode(noisy, lens)
        for b, n in enumerate(lens.tolist()):
            alone = model.encode(x[b : b + 1, :n], torch.tensor([n]))
            frames = int(alone.lens[0])
            torch.testing.assert_close(batch.ctc_log_probs[b, :frames], alone.ctc_log_probs[0], atol=1e-5, rtol=1e-5)


def ds2_config(corpus, run_dir, *extra):
    from src.config import load_config

    return load_config(None, [
        f"data.root={corpus}", f"logging.run_dir={run_dir}", "logging.wandb=disabled", "data.num_workers=0",
        "data.max_utterances_per_batch=4", "data.check=false", "model.family=ds2", "training.device=cpu",
        "model.ds2.conv_channels=8", "model.ds2.rnn_layers=2", "model.ds2.rnn_hidden=32", "model.ds2.dropout=0.0",
        "model.ds2.time_reduction=2", "training.lr=3e-3", "training.warmup_steps=5", "training.scheduler=plateau",
        "training.specaugment.start=-1", "training.specaugment.freq_warp=0", "training.specaugment.time_stretch=0", "decoding.method=greedy", *extra])


def test_ds2_learns_the_toy_corpus_and_resumes_bit_identically(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n_train=24, n_dev=6)
    straight, run = final_weights(ds2_config(corpus, tmp_path / "a", "training.epochs=16"))
    log = (tmp_path / "a" / "train.log").read_text()
    assert "family ds2" in log and "tf " not in log  # a CTC family: no attention hooks
    assert run.state.best_dev_lev < 2.0, log[-1500:]  # mean Levenshtein on ~10-character toy sentences
    final_weights(ds2_config(corpus, tmp_path / "b", "training.epochs=8"))
    resumed, _ = final_weights(ds2_config(corpus, tmp_path / "b", "training.epochs=16"))
    assert_same_weights(straight, resumed)


def test_lookahead_is_the_row_convolution_formula():
    from src.models.ds2 import Lookahead

    torch.manual_seed(2)
    layer = Lookahead(5, tau=3)
    torch.nn.init.normal_(layer.conv.weight)
    x = torch.randn(2, 9, 5)
    w = layer.conv.weight[:, 0, :]  # (H, tau + 1)
    expected = torch.zeros_like(x)
    for t in range(9):
        for j in range(4):
            if t + j < 9:
                expected[:, t] += w[:, j] * x[:, t + j]
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("tau", [0, 2])
def test_unidirectional_output_ignores_the_far_future(tau):
    """Frame t' of a forward-only model with lookahead tau reads input frames <= 4 (t' + tau) + 15 only
    (conv 11 with stride 2 twice: 2 * (2 * (t' + tau) + 5) + 5); a bidirectional one reads them all."""
    torch.manual_seed(3)
    x = torch.randn(1, 100, 28)
    later = x.clone()
    later[:, 60:] = torch.randn(1, 40, 28)  # the future from input frame 60 on
    lens = torch.tensor([100])
    for bidirectional in (False, True):
        model = DeepSpeech2(28, 31, DS2Config(conv_channels=4, rnn_layers=2, rnn_hidden=8, dropout=0.0,
                                              bidirectional=bidirectional, lookahead=0 if bidirectional else tau))
        if model.lookahead is not None:
            torch.nn.init.normal_(model.lookahead.conv.weight)
        model.eval()
        with torch.no_grad():
            a, b = model.encode(x, lens).ctc_log_probs[0], model.encode(later, lens).ctc_log_probs[0]
        past = [t for t in range(a.size(0)) if 4 * (t + tau) + 15 < 60]
        if bidirectional:
            assert not torch.allclose(a[past[0]], b[past[0]])
        else:
            torch.testing.assert_close(a[past], b[past])
            assert not torch.allclose(a[past[-1] + 1 :], b[past[-1] + 1 :])
