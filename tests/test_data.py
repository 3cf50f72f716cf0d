"""Data layer: layout, SpeechDataset, collate/Batch, LengthBucketSampler, make_loader.

A tiny competition-layout tree is written to tmp_path with known arrays and
texts; every test compares what the data layer returns against them. The last
tests run against the bundled sample data/sample.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from src.config import DataConfig, load_config
from src.data.layout import SAMPLE_DATA_ROOT
from src.data import layout
from src.data.check import check_data
from src.data.dataset import (Batch, LengthBucketSampler, SpeechDataset, collate, loader_workers, make_loader,
                              normalize_utterance)
from src.data.layout import PARTITIONS, list_utterances, resolve_data_root
from src.errors import UserError
from src.vocab import CHARACTERS, EOS, PAD, SOS, decode, encode

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [np.float16, np.float32, np.float64]
# names chosen so that sorting file names differs from sorting stems ("a-1.npy" < "a.npy")
NAMES = {
    "train-clean-100": ["103-1240-0000", "103-1240-0001", "19-198-0000", "a", "a-1", "zz-9"],
    "train-clean-360": ["100-121669-0000", "100-121669-0001", "1001-134707-0000"],
    "dev-clean": ["84-121123-0000", "84-121123-0001", "174-50561-0000", "2277-149874-0000"],
    "test-clean": ["1089-134686-0000", "b", "b-1", "121-121726-0000", "61-70968-0000"],
}


def random_text(rng: np.random.Generator) -> str:
    n = int(rng.integers(1, 30))
    text = "".join(rng.choice(CHARACTERS, size=n))
    return "X" + text  # at least one non-space character


def write_split(root: Path, folder: str, names: list[str], rng: np.random.Generator, n_mels: int = 28) -> dict:
    """Write one split folder; returns {name: (features as written, text or None)}."""
    (root / folder / "mfcc").mkdir(parents=True)
    with_text = folder != "test-clean"
    if with_text:
        (root / folder / "transcripts").mkdir()
    truth = {}
    for k, name in enumerate(names):
        t = int(rng.integers(3, 120))
        x = (rng.normal(size=(t, n_mels)) * rng.uniform(0.5, 3.0, size=n_mels) + rng.normal(size=n_mels) * 5)
        x = x.astype(DTYPES[k % 3])
        np.save(root / folder / "mfcc" / f"{name}.npy", x)
        text = None
        if with_text:
            text = random_text(rng)
            arr = np.array(["<sos>", *text, "<eos>"])
            if k % 2:  # some releases store object arrays (need allow_pickle)
                arr = arr.astype(object)
            np.save(root / folder / "transcripts" / f"{name}.npy", arr)
        truth[name] = (x, text)
    return truth


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("competition") / "11-785-f23-hw4p2"
    rng = np.random.default_rng(7)
    truth = {folder: write_split(root, folder, names, rng) for folder, names in NAMES.items()}
    return root, truth


# --------------------------------------------------------------------------
# layout


def test_partitions_cover_the_competition():
    assert PARTITIONS["train-clean-460"] == ["train-clean-100", "train-clean-360"]
    assert set(PARTITIONS) == {"train-clean-100", "train-clean-360", "train-clean-460", "dev-clean", "test-clean",
                               "dev-clean-long", "dev-clean-channel", "test-clean-channel",
                               "train-clean-100+augmented", "train-clean-360+augmented", "train-clean-460+augmented"}
    # then: src.corpus.long's joined dev utterances, synth --channel's copies, --augment's training copies
    assert PARTITIONS["train-clean-460+augmented"] == ["train-clean-100", "train-clean-100-augmented",
                                                       "train-clean-360", "train-clean-360-augmented"]


def test_list_utterances_pairs_by_name_sorted(tree):
    root, truth = tree
    for folder in ["train-clean-100", "train-clean-360", "dev-clean"]:
        utts = list_utterances(root, folder)
        assert [u.features.name for u in utts] == sorted(os.listdir(root / folder / "mfcc"))
        assert sorted(u.name for u in utts) == sorted(truth[folder])
        for u in utts:
            assert u.transcript == root / folder / "transcripts" / f"{u.name}.npy"
            assert u.features == root / folder / "mfcc" / f"{u.name}.npy"


def test_test_order_is_sorted_listdir(tree):
    root, _ = tree
    utts = list_utterances(root, "test-clean", with_transcripts=True)
    assert [f"{u.name}.npy" for u in utts] == sorted(os.listdir(root / "test-clean" / "mfcc"))
    assert [u.name for u in utts][:2] == ["1089-134686-0000", "121-121726-0000"]
    assert [u.name for u in utts][-2:] == ["b-1", "b"]  # "b-1.npy" < "b.npy"
    assert all(u.transcript is None for u in utts)


def test_train_460_is_union_of_100_and_360(tree):
    root, _ = tree
    both = list_utterances(root, "train-clean-460")
    assert both == list_utterances(root, "train-clean-100") + list_utterances(root, "train-clean-360")
    ds = SpeechDataset(root, "train-clean-460", normalize="none")
    assert len(ds) == len(NAMES["train-clean-100"]) + len(NAMES["train-clean-360"])
    assert sorted(ds.names) == sorted(NAMES["train-clean-100"] + NAMES["train-clean-360"])


def test_unknown_partition_is_a_user_error(tree):
    root, _ = tree
    with pytest.raises(UserError, match="train-clean-500"):
        list_utterances(root, "train-clean-500")


def test_resolve_data_root_falls_back_to_sample(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(layout, "REPO_ROOT", tmp_path)
    (tmp_path / SAMPLE_DATA_ROOT / "dev-clean").mkdir(parents=True)
    root = resolve_data_root(DataConfig())
    assert root.resolve() == (tmp_path / SAMPLE_DATA_ROOT).resolve()
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert "data/sample" in out[0]
    assert "kaggle competitions download -c attention-based-speech-recognition" in out[0]
    assert "unzip -q attention-based-speech-recognition.zip -d data" in out[0]


def test_resolve_data_root_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(layout, "REPO_ROOT", tmp_path)
    with pytest.raises(UserError, match="elsewhere: data folder not found"):
        resolve_data_root(DataConfig(root="elsewhere"))
    # default root missing and no sample either
    with pytest.raises(UserError, match="kaggle competitions download"):
        resolve_data_root(DataConfig())
    # the user points at data/, one level above the unzipped competition folder
    (tmp_path / "data" / "11-785-f23-hw4p2" / "dev-clean").mkdir(parents=True)
    with pytest.raises(UserError) as err:
        resolve_data_root(DataConfig(root="data"))
    assert "data.root=data/11-785-f23-hw4p2" in str(err.value)
    assert resolve_data_root(DataConfig()) == Path("data/11-785-f23-hw4p2")
    with pytest.raises(UserError, match="data.root=data/11-785-f23-hw4p2"):
        check_data("data")


# --------------------------------------------------------------------------
# SpeechDataset


def test_dataset_items_match_files(tree):
    root, truth = tree
    ds = SpeechDataset(root, "train-clean-100", normalize="none")
    assert ds.names == sorted(truth["train-clean-100"], key=lambda n: n + ".npy")
    for i, name in enumerate(ds.names):
        x, text = truth["train-clean-100"][name]
        item = ds[i]
        assert item["name"] == name and item["index"] == i
        assert item["features"].dtype == torch.float32
        assert item["features"].shape == x.shape
        np.testing.assert_array_equal(item["features"].numpy(), x.astype(np.float32))
        # vocabulary round trip against the transcript text
        tokens = item["tokens"]
        assert tokens.dtype == torch.long
        assert tokens[0] == SOS and tokens[-1] == EOS
        assert tokens[1:-1].tolist() == encode(text)
        assert decode(tokens.tolist()) == text
        tokens.zero_()  # the caller's copy: the next read must not see this
    for i, name in enumerate(ds.names):  # a second pass, from the token ids kept by the first
        tokens = ds[i]["tokens"]
        assert tokens.dtype == torch.long
        assert tokens.tolist() == [SOS, *encode(truth["train-clean-100"][name][1]), EOS]
    assert ds.frame_lengths.dtype == np.int64
    assert ds.frame_lengths.tolist() == [len(truth["train-clean-100"][n][0]) for n in ds.names]
    assert ds.token_lengths.tolist() == [len(truth["train-clean-100"][n][1]) + 2 for n in ds.names]


def test_direct_reads_equal_np_load_for_every_dtype_order_and_a_file_that_changed(tmp_path):
    """Items read straight from the data offset equal np.load's arrays: float16/32/64, column-major,
    an .npy version 2 header; a file rewritten after the dataset was built is read again with np.load."""
    rng = np.random.default_rng(5)
    mfcc = tmp_path / "dev-clean" / "mfcc"
    mfcc.mkdir(parents=True)
    arrays = {"a16": rng.normal(size=(17, 28)).astype(np.float16), "b32": rng.normal(size=(9, 28)).astype(np.float32),
              "c64": rng.normal(size=(12, 28)), "d_fortran": np.asfortranarray(rng.normal(size=(11, 28)).astype(np.float32))}
    for name, x in arrays.items():
        np.save(mfcc / f"{name}.npy", x)
    with open(mfcc / "e_v2.npy", "wb") as f:
        arrays["e_v2"] = rng.normal(size=(6, 28)).astype(np.float32)
        np.lib.format.write_array(f, arrays["e_v2"], version=(2, 0))
    ds = SpeechDataset(tmp_path, "dev-clean", normalize="none", with_transcripts=False)
    assert ds.names == sorted(arrays)
    for i, name in enumerate(ds.names):
        np.testing.assert_array_equal(ds[i]["features"].numpy(), np.load(mfcc / f"{name}.npy").astype(np.float32))
    grown = rng.normal(size=(20, 28)).astype(np.float32)
    np.save(mfcc / "b32.npy", grown)  # after the headers were read
    np.testing.assert_array_equal(ds[ds.names.index("b32")]["features"].numpy(), grown)


def test_test_split_has_no_tokens(tree):
    root, truth = tree
    ds = SpeechDataset(root, "test-clean")
    assert not ds.has_transcripts and ds.token_lengths is None
    assert all(ds[i]["tokens"] is None for i in range(len(ds)))
    assert collate([ds[0], ds[1]]).tokens is None


def test_utterance_normalisation(tree):
    root, truth = tree
    ds = SpeechDataset(root, "dev-clean", normalize="utterance")
    for i in range(len(ds)):
        x = ds[i]["features"].double()
        assert torch.allclose(x.mean(0), torch.zeros(28, dtype=torch.float64), atol=1e-4)
        assert torch.allclose(x.std(0, unbiased=False), torch.ones(28, dtype=torch.float64), atol=1e-3)
    # eps-safe: a constant bin and a single frame give zeros, not NaN
    x = np.ones((5, 3), dtype=np.float16)
    x[:, 1] = np.arange(5)
    y = normalize_utterance(x)
    assert np.isfinite(y).all() and np.all(y[:, 0] == 0) and np.all(y[:, 2] == 0)
    assert abs(y[:, 1].std() - 1) < 1e-3
    assert np.all(normalize_utterance(np.array([[3.0, -1.0]])) == 0)


def test_in_memory_equals_lazy(tree):
    root, _ = tree
    lazy = SpeechDataset(root, "train-clean-460")
    mem = SpeechDataset(root, "train-clean-460", in_memory=True)
    for i in range(len(lazy)):
        a, b = lazy[i], mem[i]
        assert torch.equal(a["features"], b["features"])
        assert torch.equal(a["tokens"], b["tokens"])
        assert a["name"] == b["name"]


def test_dataset_rejects_wrong_feature_dimension(tree):
    root, _ = tree
    with pytest.raises(UserError, match=r"expected \(T, 40\) features, got shape \(\d+, 28\)"):
        SpeechDataset(root, "dev-clean", n_mels=40)


# --------------------------------------------------------------------------
# collate / Batch


def test_collate_shapes_and_padding(tree):
    root, _ = tree
    ds = SpeechDataset(root, "dev-clean", normalize="none")
    items = [ds[i] for i in range(len(ds))]
    batch = collate(items)
    B = len(items)
    T = max(it["features"].shape[0] for it in items)
    U = max(len(it["tokens"]) for it in items)
    assert batch.features.shape == (B, T, 28) and batch.features.dtype == torch.float32
    assert batch.tokens.shape == (B, U) and batch.tokens.dtype == torch.long
    assert batch.feature_lens.tolist() == [it["features"].shape[0] for it in items]
    assert batch.token_lens.tolist() == [len(it["tokens"]) for it in items]
    assert batch.names == [it["name"] for it in items]
    assert batch.indices.tolist() == list(range(B))
    for b, it in enumerate(items):
        n, u = batch.feature_lens[b], batch.token_lens[b]
        assert torch.equal(batch.features[b, :n], it["features"])
        assert torch.all(batch.features[b, n:] == 0)
        assert torch.equal(batch.tokens[b, :u], it["tokens"])
        assert torch.all(batch.tokens[b, u:] == PAD)
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.features, batch.features)
    again = pickle.loads(pickle.dumps(batch))
    assert torch.equal(again.tokens, batch.tokens) and again.names == batch.names


# --------------------------------------------------------------------------
# LengthBucketSampler


def lengths_for_sampler(n: int = 500, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(20, 2000, size=n).astype(np.int64)


@pytest.mark.parametrize("cap, max_utts", [(6000, 64), (20000, 8), (2500, 100)])
def test_sampler_frame_cap_and_coverage(cap, max_utts):
    lengths = lengths_for_sampler()
    lengths[3] = 5000  # longer than the cap of some cases: must sit alone
    for shuffle in (True, False):
        sampler = LengthBucketSampler(lengths, cap, max_utts, shuffle=shuffle, seed=3)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(lengths)))  # every index exactly once
        for b in batches:
            assert 1 <= len(b) <= max_utts
            assert len(b) * lengths[b].max() <= cap or len(b) == 1


def test_sampler_groups_similar_lengths():
    lengths = lengths_for_sampler(2000)
    sampler = LengthBucketSampler(lengths, 20000, 64, shuffle=True, seed=0)
    padded = sum(len(b) * lengths[b].max() for b in sampler)
    assert padded / lengths.sum() < 1.25  # a random grouping wastes far more
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(lengths))
    random_padded = sum(len(c) * lengths[c].max() for c in np.array_split(perm, len(sampler)))
    assert padded < random_padded


def test_sampler_deterministic_and_reshuffles():
    lengths = lengths_for_sampler()

    def epoch_batches(seed, epoch):
        s = LengthBucketSampler(lengths, 8000, 32, shuffle=True, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert epoch_batches(5, 0) == epoch_batches(5, 0)
    assert epoch_batches(5, 1) == epoch_batches(5, 1)
    assert epoch_batches(5, 0) != epoch_batches(5, 1)
    assert epoch_batches(5, 0) != epoch_batches(6, 0)
    plain = LengthBucketSampler(lengths, 8000, 32, shuffle=False)
    first = list(plain)
    plain.set_epoch(4)
    assert list(plain) == first
    # unshuffled: increasing length
    maxima = [lengths[b].max() for b in first]
    assert maxima == sorted(maxima)


@pytest.mark.parametrize("replicas", [2, 3, 4, 7])
def test_sampler_distributed_ranks(replicas):
    lengths = lengths_for_sampler(301)
    for shuffle in (True, False):
        per_rank = []
        for rank in range(replicas):
            s = LengthBucketSampler(lengths, 9000, 16, shuffle=shuffle, seed=1, num_replicas=replicas, rank=rank)
            s.set_epoch(2)
            per_rank.append(list(s))
            assert len(s) == len(per_rank[-1])
        assert len({len(b) for b in per_rank}) == 1  # equal batch counts
        flat = [i for batches in per_rank for b in batches for i in b]
        assert sorted(flat) == list(range(len(lengths)))  # disjoint and complete
        for batches in per_rank:
            for b in batches:
                assert len(b) * lengths[b].max() <= 9000 and len(b) <= 16


def test_sampler_distributed_needs_enough_batches():
    lengths = np.full(5, 900)  # every utterance alone under the cap: 5 batches for 4 ranks
    with pytest.raises(UserError, match="data.max_frames_per_batch"):
        list(LengthBucketSampler(lengths, 1000, 8, num_replicas=4, rank=0))
    with pytest.raises(ValueError):
        LengthBucketSampler(lengths, 1000, 8, num_replicas=6, rank=0)


def test_sampler_skip_batches_resumes_mid_epoch():
    lengths = lengths_for_sampler()
    s = LengthBucketSampler(lengths, 8000, 32, shuffle=True, seed=9)
    s.set_epoch(3)
    full = list(s)
    s.skip_batches(5)
    assert list(s) == full[5:] and len(s) == len(full) - 5
    s.set_epoch(4)  # a new epoch starts from its first batch
    assert len(list(s)) == len(s) and len(s) > len(full) - 5


# --------------------------------------------------------------------------
# make_loader


def test_make_loader_with_worker_and_skip(tree):
    root, truth = tree
    ds = SpeechDataset(root, "train-clean-460")
    cfg = DataConfig(max_frames_per_batch=300, max_utterances_per_batch=4, num_workers=1)
    loader = make_loader(ds, cfg, shuffle=True, seed=11, epoch=1)
    batches = list(loader)
    assert all(isinstance(b, Batch) for b in batches)
    seen = sorted(i for b in batches for i in b.indices.tolist())
    assert seen == list(range(len(ds)))
    for b in batches:
        assert b.features.shape[0] * b.features.shape[1] <= 300 or b.features.shape[0] == 1
        assert b.features.shape[1] == int(b.feature_lens.max())
    cfg0 = DataConfig(max_frames_per_batch=300, max_utterances_per_batch=4, num_workers=0)
    resumed = list(make_loader(ds, cfg0, shuffle=True, seed=11, epoch=1, skip_batches=2))
    assert [b.indices.tolist() for b in resumed] == [b.indices.tolist() for b in batches[2:]]


def test_loader_workers_auto_follows_cuda(monkeypatch, tree):
    root, _ = tree
    ds = SpeechDataset(root, "train-clean-460")
    assert load_config(None, ["data.num_workers=3"]).data.num_workers == "3"  # YAML and the command line
    assert loader_workers(load_config(None, ["data.num_workers=3"]).data.num_workers) == 3
    assert loader_workers(0) == 0  # DataConfig(num_workers=0) in code
    for cuda, expected in ((False, 0), (True, 2)):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        assert loader_workers("auto") == expected
        assert make_loader(ds, DataConfig(), shuffle=False, seed=0).num_workers == expected


# --------------------------------------------------------------------------
# the bundled sample (made by src.corpus.synth in the competition layout)

SAMPLE = ROOT / SAMPLE_DATA_ROOT


def test_bundled_sample_is_valid():
    summary = check_data(SAMPLE, stamp=False)
    assert {"train-clean-100", "dev-clean", "test-clean"} <= set(summary)
    assert all(n > 0 and frames > 0 for n, frames in summary.values())


def test_bundled_sample_loads():
    for partition in ["train-clean-100", "dev-clean"]:
        ds = SpeechDataset(SAMPLE, partition)
        assert len(ds) > 0 and ds.has_transcripts
        for i in range(len(ds)):
            item = ds[i]
            assert item["features"].shape == (ds.frame_lengths[i], 28)
            assert torch.isfinite(item["features"]).all()
            text = decode(item["tokens"].tolist())
            assert text and set(text) <= set(CHARACTERS)
    test = SpeechDataset(SAMPLE, "test-clean")
    assert [f"{n}.npy" for n in test.names] == sorted(os.listdir(SAMPLE / "test-clean" / "mfcc"))
    loader = make_loader(test, DataConfig(num_workers=0), shuffle=False, seed=0)
    assert sorted(i for b in loader for i in b.indices.tolist()) == list(range(len(test)))


def test_transcripts_read_without_np_load_match_np_load_or_step_aside(tmp_path):
    """read_transcript_ids against transcript_ids(np.load(...)): the same ids for every well-formed str
    transcript (any element width, .npy version 1 or 2); None for anything else, which the np.load
    path then reads or rejects with its own message."""
    from numpy.lib import format as npy_format

    from src.data.dataset import read_transcript_ids, transcript_ids

    def saved(name, arr, version=None):
        path = tmp_path / f"{name}.npy"
        if version is None:
            np.save(path, arr)
        else:
            with open(path, "wb") as f:
                npy_format.write_array(f, arr, version=version)
        return path

    chars = list("IT'S A TEST")
    good = {
        "plain": np.array(["<sos>", *chars, "<eos>"]),
        "wider": np.array(["<sos>", *chars, "<eos>"], dtype="<U9"),
        "one character": np.array(["<sos>", "Z", "<eos>"]),
    }
    for name, arr in good.items():
        for version in (None, (2, 0)):
            path = saved(f"{name}-{version}", arr, version)
            ids = read_transcript_ids(path)
            assert ids is not None and ids.dtype == np.int64, name
            np.testing.assert_array_equal(ids, transcript_ids(np.load(path), path))
    other = {
        "object dtype": np.array(["<sos>", "A", "<eos>"], dtype=object),
        "bytes": np.array([b"<sos>", b"A", b"<eos>"]),
        "lower case": np.array(["<sos>", "a", "<eos>"]),
        "two characters in one element": np.array(["<sos>", "AB", "<eos>"]),
        "no <eos>": np.array(["<sos>", "A", "B"]),
        "no characters": np.array(["<sos>", "<eos>"]),
        "2-D": np.array([["<sos>", "A", "<eos>"]]),
        "outside ASCII": np.array(["<sos>", "\u00c9", "<eos>"]),
        "empty element": np.array(["<sos>", "", "<eos>"]),
    }
    for name, arr in other.items():
        assert read_transcript_ids(saved(name, arr)) is None, name
    truncated = saved("truncated", good["plain"])
    truncated.write_bytes(truncated.read_bytes()[:-4])
    assert read_transcript_ids(truncated) is None
    assert read_transcript_ids(tmp_path / "missing.npy") is None
