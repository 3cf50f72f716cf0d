"""src.decoding.segments: where long utterances are cut, and that pieces decode as separate utterances would."""
import numpy as np
import pytest
import torch

from src.config import DecodingConfig
from src.decoding import decode_encoded
from src.decoding.segments import BLANK, SPACE, cut_points, decode_in_pieces
from src.models.transformer import Transformer, TransformerConfig
from src.vocab import TOKEN_TO_ID, VOCAB

A, B = TOKEN_TO_ID["A"], TOKEN_TO_ID["B"]


@pytest.mark.parametrize("seed", range(20))
def test_pieces_cover_the_path_in_order_and_never_pass_the_limit(seed):
    rng = np.random.default_rng(seed)
    path = rng.choice([BLANK, BLANK, BLANK, SPACE, A, B], size=int(rng.integers(1, 400))).tolist()
    limit = int(rng.integers(1, 120))
    pieces = cut_points(path, limit)
    assert pieces[0][0] == 0 and pieces[-1][1] == len(path)
    assert all(a < b for a, b in pieces) and all(b == a2 for (_, b), (a2, _) in zip(pieces, pieces[1:]))
    assert all(b - a <= limit for a, b in pieces)


def test_cuts_prefer_the_longest_pause_holding_a_space():
    # frames: word, short blank pause without a space, word, long pause with a space, word ...
    word = [A, BLANK, B, A]
    path = word + [BLANK] * 6 + word + [BLANK, BLANK, SPACE, BLANK, BLANK] + word + [BLANK] * 3
    # limit 20: the cut must fall in [10, 20): the 6-blank pause (4..9) is out, the space pause (14..18) is in
    assert cut_points(path, 20) == [(0, 16), (16, len(path))]
    assert cut_points(path, len(path)) == [(0, len(path))]
    # without any quiet frame in the window: cut at the limit
    assert cut_points([A] * 10, 4) == [(0, 4), (4, 8), (8, 10)]


def tiny_transformer():
    torch.manual_seed(0)
    cfg = TransformerConfig(d_model=16, heads=2, ffn_dim=16, encoder_layers=1, decoder_layers=1, conv_kernel=3,
                            front_end_channels=4, dropout=0.0)
    return Transformer(28, len(VOCAB), cfg).eval()


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_an_utterance_in_pieces_decodes_as_its_pieces_would_one_by_one(method):
    """Reference: each piece's slice of the encoder output, decoded alone as a batch of one, the texts
    joined by a space; the long utterance batched with a short one that stays whole."""
    model = tiny_transformer()
    torch.manual_seed(1)
    features = torch.randn(2, 1200, 28)
    feature_lens = torch.tensor([1200, 300])
    cfg = DecodingConfig(method=method, beam_size=3, ctc_weight=0.5, max_length_min=4, max_chars_per_frame=0.02,
                         segment_seconds=5.0)
    with torch.no_grad():
        encoded = model.encode(features, feature_lens)
        got = decode_encoded(model, encoded, feature_lens, cfg)
        whole = DecodingConfig(**{**cfg.__dict__, "segment_seconds": 0.0})
        assert got[1] == decode_encoded(model, encoded.index_select(torch.tensor([1])), feature_lens[1:], whole)[0]
        best = encoded.ctc_log_probs[0].argmax(-1).tolist()[: int(encoded.ctc_lens[0])]
        pieces = cut_points(best, 500 * int(encoded.ctc_lens[0]) // 1200)
        assert len(pieces) >= 3
        expected = []
        for a, b in pieces:
            one = type(encoded)(tuple(m[:1, a:b] for m in encoded.memory), torch.tensor([b - a]),
                                encoded.ctc_log_probs[:1, a:b], torch.tensor([b - a]))
            ids = decode_encoded(model, one, torch.tensor([round((b - a) * 1200 / int(encoded.ctc_lens[0]))]), whole)[0]
            while ids and ids[0] == SPACE:
                ids.pop(0)
            while ids and ids[-1] == SPACE:
                ids.pop()
            if ids:
                expected += ([SPACE] if expected else []) + ids
        assert expected and got[0] == expected[:24]  # the whole utterance's own limit: 0.02 x 1200 characters


def test_no_ctc_head_or_short_input_decodes_whole():
    model = tiny_transformer()
    with torch.no_grad():
        encoded = model.encode(torch.randn(1, 300, 28), torch.tensor([300]))
    decode = lambda *_: pytest.fail("nothing to cut")  # noqa: E731
    assert decode_in_pieces(encoded, torch.tensor([300]), 5.0, decode) is None
    assert decode_in_pieces(encoded._replace(ctc_log_probs=None), torch.tensor([300]), 1.0, decode) is None
    assert decode_in_pieces(encoded, torch.tensor([300]), 0.0, decode) is None
