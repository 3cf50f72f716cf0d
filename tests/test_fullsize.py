"""src/corpus/fullsize.py: the full-size stand-in has the competition's counts and lengths
(../shared/competition-data.md), passes the data check, is the same on every run, and never
overwrites files it did not write."""
from __future__ import annotations

import numpy as np
import pytest

from src.corpus.fullsize import make_fullsize, split_plan
from src.data.check import check_data
from src.errors import UserError
from src.vocab import VOCAB

# the competition's figures (competition-data.md): utterances, mean and max frames, mean and max characters
COMPETITION = {
    "train-clean-100": (28539, 1265, 2448, 187, 400),
    "dev-clean": (2703, 713, 3260, 109, 518),
    "test-clean": (2620, 738, 3491, None, None),
}


@pytest.mark.parametrize("split", list(COMPETITION))
def test_full_scale_plan_has_the_competitions_counts_and_lengths(split):
    n, mean_frames, max_frames, mean_chars, max_chars = COMPETITION[split]
    count, frames, chars = split_plan(split, seed=0, scale=1.0)
    assert count == n == len(frames) == len(chars)
    assert frames.max() == max_frames and frames.min() >= 8
    assert abs(frames.mean() - mean_frames) / mean_frames < 0.02
    assert (chars <= frames).all() and chars.min() >= 2
    if mean_chars is not None:
        assert abs(chars.mean() - mean_chars) / mean_chars < 0.05
        assert chars.max() <= max_chars


def files_of(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.npy"))}


def test_a_small_stand_in_is_valid_competition_data_as_planned(tmp_path):
    root = tmp_path / "fs"
    counts = make_fullsize(root, scale=0.002, progress=False)
    assert counts == {"train-clean-100": 57, "dev-clean": 5, "test-clean": 5}
    summary = check_data(root, None)  # the whole layout, deep pass included
    assert {k: v[0] for k, v in summary.items()} == counts
    assert not (root / "test-clean" / "transcripts").exists()
    for split in ("train-clean-100", "dev-clean"):
        _, frames, chars = split_plan(split, 0, 0.002)
        feats = sorted((root / split / "mfcc").glob("*.npy"))
        texts = sorted((root / split / "transcripts").glob("*.npy"))
        assert [p.name for p in feats] == [p.name for p in texts]
        for i, (f, t) in enumerate(zip(feats, texts)):
            x, tokens = np.load(f), np.load(t)
            assert x.shape == (frames[i], 28) and x.dtype == np.float32 and np.isfinite(x).all()
            assert tokens[0] == "<sos>" and tokens[-1] == "<eos>" and len(tokens) == chars[i] + 2
            assert set(tokens[1:-1]) <= set(VOCAB[3:]) and tokens[1] != " " and tokens[-2] != " "


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_fullsize(tmp_path / name, seed=seed, scale=0.0005, progress=False)
    a, b, c = (files_of(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


def test_a_made_split_is_kept_other_settings_replace_it_and_foreign_files_are_refused(tmp_path):
    root = tmp_path / "fs"
    make_fullsize(root, scale=0.0005, progress=False)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.npy")}
    make_fullsize(root, scale=0.0005, progress=False)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.npy")} == before  # kept, not rewritten

    make_fullsize(root, scale=0.001, progress=False)  # other settings: the split is made again, nothing stale
    assert len(list((root / "train-clean-100" / "mfcc").glob("*.npy"))) == round(28539 * 0.001)

    real = tmp_path / "real" / "dev-clean" / "mfcc"
    real.mkdir(parents=True)
    np.save(real / "mine.npy", np.zeros((5, 28), np.float32))
    with pytest.raises(UserError, match="dev-clean: holds 1 files but no .fullsize.json"):
        make_fullsize(tmp_path / "real", scale=0.0005, progress=False)
    assert (real / "mine.npy").exists() and not (tmp_path / "real" / "train-clean-100").exists()  # nothing written

    stamp = root / "dev-clean" / ".fullsize.json"  # a split left half made (killed): made again, not refused
    stamp.write_text(stamp.read_text().replace('"complete": true', '"complete": false'))
    (root / "dev-clean" / "mfcc" / sorted(p.name for p in (root / "dev-clean" / "mfcc").iterdir())[0]).unlink()
    make_fullsize(root, scale=0.001, progress=False)
    assert len(list((root / "dev-clean" / "mfcc").glob("*.npy"))) == round(2703 * 0.001)


def test_scale_out_of_range_is_one_line(tmp_path):
    with pytest.raises(UserError, match="--scale 2.0"):
        make_fullsize(tmp_path, scale=2.0)
