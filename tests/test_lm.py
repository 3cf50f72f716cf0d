"""The character n-gram LM: distributions sum to one, counts by hand, files, bad input, fusion in the beam."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from src.errors import UserError
from src.decoding.lm import EVENTS, CharLMScorer, CharNgramLM
from src.vocab import EOS, PAD, SOS, TOKEN_TO_ID, VOCAB

ROOT = Path(__file__).resolve().parents[1]
TEXT = ["THE CAT SAT", "THE DOG SAT", "A CAT", "THE CAT'S HAT", "SAT ON A MAT"]


@pytest.mark.parametrize("order", [1, 2, 3, 6, 10])
def test_every_distribution_sums_to_one_for_random_histories(order):
    lm = CharNgramLM.build(TEXT, order)
    rng = np.random.default_rng(order)
    for _ in range(50):
        history = tuple(int(t) for t in rng.choice(EVENTS + [SOS], size=int(rng.integers(0, 12))))
        p = lm.probs(history)
        assert p.sum() == pytest.approx(1.0, abs=1e-9)
        assert p[PAD] == 0.0 and p[SOS] == 0.0 and (p[EVENTS] > 0).all()


def test_witten_bell_by_hand_on_a_tiny_text():
    lm = CharNgramLM.build(["AB", "AA"], order=2)
    A, B = TOKEN_TO_ID["A"], TOKEN_TO_ID["B"]
    # unigram events: A x3, B x1, <eos> x2 -> N = 6, T = 3 types; uniform u = 1/29
    u = 1 / 29
    p_uni = {A: (3 + 3 * u) / 9, B: (1 + 3 * u) / 9, EOS: (2 + 3 * u) / 9}
    # after A: A x1, B x1, <eos> x1 -> C = 3, T = 3
    assert lm.probs((A,))[B] == pytest.approx((1 + 3 * p_uni[B]) / 6)
    assert lm.probs((A,))[EOS] == pytest.approx((1 + 3 * p_uni[EOS]) / 6)
    # after <sos>: A x2 -> C = 2, T = 1
    assert lm.probs(())[A] == pytest.approx((2 + 1 * p_uni[A]) / 3)
    # an unseen history falls back to the unigram
    assert lm.probs((TOKEN_TO_ID["Z"],))[B] == pytest.approx(p_uni[B])


def test_save_load_round_trip_and_perplexity_prefers_seen_text(tmp_path):
    lm = CharNgramLM.build(TEXT, 4)
    loaded = CharNgramLM.load(lm.save(tmp_path / "lm.npz"))
    for history in [(), (TOKEN_TO_ID["T"],), tuple(TOKEN_TO_ID[c] for c in "THE C")]:
        np.testing.assert_allclose(loaded.probs(history), lm.probs(history), rtol=1e-6)
    assert lm.perplexity(["THE CAT SAT"]) < lm.perplexity(["XQZ JKV"])


def test_bad_lm_files_are_one_line(tmp_path):
    with pytest.raises(UserError, match="language model not found"):
        CharNgramLM.load(tmp_path / "none.npz")
    path = CharNgramLM.build(TEXT, 2).save(tmp_path / "lm.npz")
    data = dict(np.load(path))
    data["vocab"] = np.array(VOCAB[:-1])
    np.savez(tmp_path / "other.npz", **data)
    with pytest.raises(UserError, match="another vocabulary"):
        CharNgramLM.load(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_text("junk")
    with pytest.raises(UserError, match="not a language model file"):
        CharNgramLM.load(tmp_path / "junk.npz")
    from src.config import load_config

    with pytest.raises(UserError, match="decoding.lm_weight.*needs 'decoding.lm'"):
        load_config(None, ["decoding.lm_weight=0.5"])
    for entry, lm_file, message in [("test.py", tmp_path / "none.npz", "language model not found"),
                                    ("train.py", tmp_path / "none.npz", "language model not found"),
                                    ("test.py", tmp_path / "other.npz", "another vocabulary")]:
        proc = subprocess.run([sys.executable, entry, f"decoding.lm={lm_file}", "decoding.lm_weight=0.5"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_build_command_writes_the_model_and_prints_perplexity(tmp_path):
    text = tmp_path / "s.txt"
    text.write_text("\n".join(TEXT) + "\n")
    proc = subprocess.run([sys.executable, "-m", "src.lm", "build", "--text", str(text), "--order", "3",
                           "--out", str(tmp_path / "lm.npz"), "--dev-root", str(ROOT / "data" / "sample")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "perplexity per character on dev-clean" in proc.stdout
    assert CharNgramLM.load(tmp_path / "lm.npz").order == 3


class Unsure(torch.nn.Module):
    """An acoustic model that hears K slightly better than C, then A, T, <eos>."""

    def init_state(self, encoded):
        return (torch.zeros(encoded.lens.shape[0], dtype=torch.long),)

    def step(self, tokens, state, encoded):
        (t,) = state
        logits = torch.full((len(tokens), len(VOCAB)), -10.0)
        first = t == 0
        logits[first, TOKEN_TO_ID["C"]], logits[first, TOKEN_TO_ID["K"]] = 0.0, 0.2
        logits[t == 1, TOKEN_TO_ID["A"]] = 0.0
        logits[t == 2, TOKEN_TO_ID["T"]] = 0.0
        logits[t >= 3, EOS] = 0.0
        return logits, (t + 1,), None

    @staticmethod
    def reorder_state(state, index):
        return tuple(s.index_select(0, index) for s in state)


def test_fusion_steers_the_beam_toward_the_lm_spelling():
    from src.decoding import beam_search
    from src.models.interface import EncoderOutput

    encoded = EncoderOutput((torch.zeros(1, 4, 1),), torch.tensor([4]))
    lm = CharNgramLM.build(["CAT", "CAT", "CAT", "A CAT"], order=3)
    plain = beam_search(Unsure(), encoded, torch.tensor([8]), beam_size=2)
    fused = beam_search(Unsure(), encoded, torch.tensor([8]), beam_size=2,
                        scorers=[(0.5, lambda enc: CharLMScorer(lm, enc.lens.shape[0]))])
    assert plain == [[TOKEN_TO_ID[c] for c in "KAT"]]  # the acoustic model alone
    assert fused == [[TOKEN_TO_ID[c] for c in "CAT"]]  # the LM has only ever seen CAT


def test_tune_lm_grid_prints_the_best_pair(tmp_path, capsys, monkeypatch):
    import src.inference as inference
    from test_submission import run_main, tiny_checkpoint

    monkeypatch.setattr(inference, "LM_WEIGHTS", (0.0, 0.5))  # a 2 x 2 grid keeps the test short
    monkeypatch.setattr(inference, "LENGTH_PENALTIES", (0.5, 1.0))
    lm = CharNgramLM.build(TEXT, 3).save(tmp_path / "lm.npz")
    ckpt = tiny_checkpoint(tmp_path / "run" / "best.pt")
    assert run_main(tmp_path, "--checkpoint", str(ckpt), "--split", "dev-clean", "--tune-lm", f"decoding.lm={lm}",
                    "decoding.beam_size=2", "decoding.ctc_weight=0") == 0
    lines = capsys.readouterr().out.splitlines()
    table = [line for line in lines if line.startswith("lm_weight ")]
    assert len(table) == 4
    scores = [float(line.split("mean Levenshtein ")[1].split()[0]) for line in table]
    best = [line for line in lines if line.startswith("best on dev-clean")][0]
    assert f"(mean Levenshtein {min(scores):.3f}," in best
    with pytest.raises(UserError, match="--tune-lm needs --split"):
        run_main(tmp_path, "--checkpoint", str(ckpt), "--tune-lm")


@pytest.mark.parametrize("order", [1, 2, 4, 7])
def test_numba_probabilities_equal_the_dictionary_reference(order, tmp_path):
    from src.decoding.ngram import history_of, lm_log_probs_batch

    lm = CharNgramLM.load(CharNgramLM.build(TEXT + ["CATS AND DOGS", "A HAT"], order).save(tmp_path / "lm.npz"))
    rng = np.random.default_rng(order)
    histories = [tuple(int(t) for t in rng.choice(EVENTS[1:], size=int(rng.integers(0, 9)))) for _ in range(40)]
    histories += [tuple(TOKEN_TO_ID[c] for c in text[:cut]) for text in TEXT for cut in range(len(text))]
    got = lm_log_probs_batch(lm.packed(), np.stack([history_of(h, order) for h in histories]))
    with np.errstate(divide="ignore"):
        want = np.log(np.stack([lm.probs(h) for h in histories]))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_length_bonus_adds_beta_per_character_to_the_attention_beam_score():
    from src.decoding import LengthBonus, beam_search
    from src.models.interface import EncoderOutput

    encoded = EncoderOutput((torch.zeros(1, 4, 1),), torch.tensor([4]))
    plain = beam_search(Unsure(), encoded, torch.tensor([8]), beam_size=2, return_hypotheses=True)[0]
    bonus = beam_search(Unsure(), encoded, torch.tensor([8]), beam_size=2, return_hypotheses=True,
                        scorers=[(0.7, LengthBonus)])[0]
    assert bonus.tokens == plain.tokens == [TOKEN_TO_ID[c] for c in "KAT"]
    assert bonus.log_prob == pytest.approx(plain.log_prob + 0.7 * 3, abs=1e-5)  # 3 characters, none for <eos>


@pytest.mark.parametrize("order", [1, 3, 6, 12])
def test_counts_equal_a_loop_over_every_character(order):
    """The vectorised counting against the plain definition: for every event of every sentence, one count
    for each history of 0 .. order-1 tokens before it (<sos>-padded)."""
    from collections import Counter, defaultdict

    rng = np.random.default_rng(order)
    alphabet = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")
    sentences = TEXT + ["".join(rng.choice(alphabet, size=int(rng.integers(1, 40)))) for _ in range(200)]
    expected: list[defaultdict] = [defaultdict(Counter) for _ in range(order)]
    for sentence in sentences:
        ids = [SOS] * (order - 1) + [TOKEN_TO_ID[ch] for ch in sentence] + [EOS]
        for i in range(order - 1, len(ids)):
            for k in range(order):
                expected[k][tuple(ids[i - k : i])][ids[i]] += 1
    table = CharNgramLM.build(sentences, order).table
    for level, counts in zip(table, expected, strict=True):
        assert level.keys() == counts.keys()
        for context, counter in counts.items():
            tokens, values = level[context]
            assert tokens.tolist() == sorted(counter) and values.tolist() == [counter[t] for t in sorted(counter)]


def test_text_outside_the_vocabulary_is_one_line():
    with pytest.raises(UserError, match="outside the vocabulary"):
        CharNgramLM.build(["THE CAT", "über"], 3)
    with pytest.raises(UserError, match="outside the vocabulary"):
        CharNgramLM.build(["THE cat"], 3)
