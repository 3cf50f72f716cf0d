"""src.corpus.long: a speaker's utterances joined into 25-35 s ones, checked against a hand-made split."""
import numpy as np
import pytest

from src.corpus import long
from src.errors import UserError


def write_split(root, utterances):
    for name, frames, text in utterances:
        (root / "dev-clean" / "mfcc").mkdir(parents=True, exist_ok=True)
        (root / "dev-clean" / "transcripts").mkdir(parents=True, exist_ok=True)
        feats = np.full((frames, 3), float(len(text)), dtype=np.float32) + np.arange(frames)[:, None]
        np.save(root / "dev-clean" / "mfcc" / f"{name}.npy", feats)
        np.save(root / "dev-clean" / "transcripts" / f"{name}.npy", np.array(["<sos>", *text, "<eos>"]))


def test_groups_close_at_the_minimum_never_pass_the_maximum_and_stay_within_a_speaker():
    names = ["1-1-0000", "1-1-0001", "1-1-0002", "1-1-0003", "2-1-0000", "2-1-0001", "3-1-0000"]
    frames = [1500, 1200, 3000, 900, 2000, 400, 4000]
    # speaker 1: 1500+1200 closes; 3000 alone is over the minimum; 900 left alone is dropped.
    # speaker 2: 2000+400 < 2500: dropped. speaker 3: 4000 > max: skipped.
    assert long.plan_groups(names, frames, 2500, 3500) == [[0, 1], [2]]
    # an utterance that would pass the maximum starts a new group
    assert long.plan_groups(["1-1-0000", "1-1-0001", "1-1-0002"], [2000, 2000, 600], 2500, 3500) == [[1, 2]]


def test_join_split_concatenates_features_and_transcripts(tmp_path):
    write_split(tmp_path, [("5-9-0000", 1400, "HELLO THERE"), ("5-9-0001", 1300, "GENERAL"),
                           ("5-9-0002", 100, "X"), ("7-9-0000", 2600, "ALONE")])
    split, n = long.join_split(tmp_path, "dev-clean", 25, 35)
    assert (split, n) == ("dev-clean-long", 2)
    out = tmp_path / split
    assert sorted(p.name for p in (out / "mfcc").iterdir()) == ["5-9-0000.npy", "7-9-0000.npy"]
    joined = np.load(out / "mfcc" / "5-9-0000.npy")
    a = np.load(tmp_path / "dev-clean" / "mfcc" / "5-9-0000.npy")
    b = np.load(tmp_path / "dev-clean" / "mfcc" / "5-9-0001.npy")
    np.testing.assert_array_equal(joined, np.vstack([a, b]))
    assert "".join(np.load(out / "transcripts" / "5-9-0000.npy")) == "<sos>HELLO THERE GENERAL<eos>"
    assert long.join_split(tmp_path, "dev-clean", 25, 35) == (split, n)  # again: rewritten, same result


def test_a_split_without_transcripts_is_refused(tmp_path):
    (tmp_path / "test-clean" / "mfcc").mkdir(parents=True)
    with pytest.raises(UserError, match="transcripts"):
        long.join_split(tmp_path, "test-clean")
