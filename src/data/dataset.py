"""Utterances to batches: SpeechDataset, collate/Batch, LengthBucketSampler, make_loader.

    ds = SpeechDataset(root, "train-clean-100", n_mels=28)
    loader = make_loader(ds, cfg.data, shuffle=True, seed=cfg.training.seed, epoch=epoch)
    for batch in loader:            # Batch: features (B, T, D), feature_lens (B,), tokens (B, U), ...
        batch = batch.to(device)

The dataset is lazy: it reads frame counts from the ``.npy`` headers (no array
data) and loads one file per item, so 132k utterances cost a few MB of RAM.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from src.errors import UserError
from src.vocab import PAD, TOKEN_TO_ID

from .layout import (
    FEATURE_DTYPES,
    FEATURES_ONLY,
    NpyHeader,
    feature_problem,
    list_utterances,
    load_npy,
    partition_folders,
    read_headers,
    read_transcript_ids,
    transcript_problem,
    transcript_strings,
)

NORMALIZE_CHOICES = ("none", "utterance")
NORMALIZE_EPS = 1e-5  # added to the variance before the square root


def transcript_ids(arr: np.ndarray, path: str | Path = "transcript") -> np.ndarray:
    """Transcript array -> token ids ``[SOS, c1..cn, EOS]`` (int64, (U,)). UserError if malformed."""
    problem = transcript_problem(arr)
    if problem is not None:
        raise UserError(f"{path}: {problem}")
    return np.array([TOKEN_TO_ID[t] for t in transcript_strings(arr)], dtype=np.int64)


def normalize_utterance(x: np.ndarray, eps: float = NORMALIZE_EPS) -> np.ndarray:
    """Zero mean, unit variance per feature bin over time: (T, D) -> (T, D) float32.

    A constant bin becomes zeros (the variance gets ``eps`` before the root).
    The mean and variance are accumulated in float64 (the squares of float32
    or float16 values beyond about 1e19 would overflow in float32), the
    result computed in float32: the loader does this for every utterance of
    every epoch, and float32 passes over the frames move half the bytes of
    float64 ones. Where the variance passes 1e60 (values beyond about 1e30,
    which the data check rejects), the whole computation runs in float64
    instead, so every finite float16 or float32 input gives a finite result
    without a warning (loader workers, new processes every epoch, would print
    numpy's RuntimeWarning again each epoch). Non-finite input, or float64
    beyond the float32 range (possible only with ``data.check=false``) gives
    NaN or Inf silently: training skips such a batch and warns once, naming
    its utterances.
    """
    x32 = np.asarray(x, dtype=np.float32)  # float32 values, as in_memory stores them
    with np.errstate(invalid="ignore", over="ignore"):
        mean = x32.mean(axis=0, dtype=np.float64)  # (D,)
        var = x32.var(axis=0, dtype=np.float64)  # (D,)
        if np.all(var < 1e60):  # |x - mean| < 1e33: nothing below overflows float32
            out = x32 - mean.astype(np.float32)  # (T, D), a new array
            out *= (1.0 / np.sqrt(var + eps)).astype(np.float32)
            return out
        x64 = x32.astype(np.float64)
        return ((x64 - mean) / np.sqrt(var + eps)).astype(np.float32)


# --------------------------------------------------------------------------
# Dataset


class SpeechDataset(Dataset):
    """One partition of the competition data.

    Item ``i``: ``dict(features=FloatTensor (T, D), tokens=LongTensor (U,) =
    [SOS, c1..cn, EOS] or None, name=str, index=i)``.

    ``frame_lengths`` (np.int64, (N,)) comes from the ``.npy`` headers, so
    building the dataset reads no array data. ``in_memory=True`` loads every
    file once into two flat arrays (no per-item disk reads afterwards).
    """

    def __init__(
        self,
        root: str | Path,
        partition: str,
        n_mels: int = 28,
        normalize: str = "utterance",
        in_memory: bool = False,
        with_transcripts: bool = True,
    ) -> None:
        if normalize not in NORMALIZE_CHOICES:
            raise ValueError(f"normalize must be one of {NORMALIZE_CHOICES}, got {normalize!r}")
        self.root = Path(root)
        self.partition = partition
        self.n_mels = n_mels
        self.normalize = normalize
        self.folders = partition_folders(partition)
        utts = list_utterances(root, partition, with_transcripts)
        self.has_transcripts = with_transcripts and all(u.transcript is not None for u in utts)
        # compact per-utterance storage: folder index + name (cheap to fork into workers)
        self.names: list[str] = [u.name for u in utts]
        folder_of = {f: i for i, f in enumerate(self.folders)}
        self._folder = np.array([folder_of[u.features.parent.parent.name] for u in utts], dtype=np.int16)

        headers = read_headers([u.features for u in utts], desc=f"{partition} headers")
        for u, h in zip(utts, headers):
            problem = feature_problem(h, n_mels)
            if problem is not None:
                raise UserError(f"{u.features}: {problem}")
        self.frame_lengths = np.array([h.shape[0] for h in headers], dtype=np.int64)
        # where each file's array data starts, and its dtype, for reads that skip parsing the header again
        # (-1: a column-major file, read by np.load)
        self._data_offset = np.array([-1 if h.fortran_order else h.data_offset for h in headers], dtype=np.int32)
        self._dtype_index = np.array([FEATURE_DTYPES.index(h.dtype) for h in headers], dtype=np.int8)
        self._token_lengths: np.ndarray | None = None

        self.in_memory = in_memory
        self._feat_flat: np.ndarray | None = None
        self._feat_offsets: np.ndarray | None = None
        self._tok_flat: np.ndarray | None = None
        self._tok_offsets: np.ndarray | None = None
        # without in_memory, token ids are kept once read: a transcript is a few hundred bytes, not worth
        # a file read per utterance every epoch
        self._tok_cache: list[np.ndarray | None] = [None] * len(self.names) if self.has_transcripts else []
        if in_memory:
            self._load_all(headers)

    # paths ------------------------------------------------------------------
    def features_path(self, i: int) -> Path:
        return self.root / self.folders[self._folder[i]] / "mfcc" / f"{self.names[i]}.npy"

    def transcript_path(self, i: int) -> Path | None:
        folder = self.folders[self._folder[i]]
        if not self.has_transcripts or folder in FEATURES_ONLY:
            return None
        return self.root / folder / "transcripts" / f"{self.names[i]}.npy"

    @property
    def token_lengths(self) -> np.ndarray | None:
        """Transcript lengths U (with SOS and EOS) from the headers, (N,) int64; None without transcripts."""
        if not self.has_transcripts:
            return None
        if self._token_lengths is None:
            headers = read_headers([self.transcript_path(i) for i in range(len(self))], desc="transcript headers")
            self._token_lengths = np.array([h.shape[0] if h.shape else 0 for h in headers], dtype=np.int64)
        return self._token_lengths

    # loading ----------------------------------------------------------------
    def _read_features(self, i: int) -> np.ndarray:
        """(T, D) as stored. The array data is read straight from where the header said it starts (the
        header is parsed once, when the dataset is built: np.load would parse it again on every read);
        a file that has changed size since then, a column-major one, or one that cannot be read goes
        through np.load (load_npy, which says what is wrong)."""
        path = self.features_path(i)
        n, offset = int(self.frame_lengths[i]) * self.n_mels, int(self._data_offset[i])
        if offset >= 0:
            dtype = FEATURE_DTYPES[self._dtype_index[i]]
            try:
                if os.path.getsize(path) == offset + n * dtype.itemsize:
                    return np.fromfile(path, dtype=dtype, count=n, offset=offset).reshape(-1, self.n_mels)
            except OSError:
                pass
        x = load_npy(path)
        if x.ndim != 2 or x.shape[1] != self.n_mels:
            raise UserError(f"{path}: expected (T, {self.n_mels}) features, got shape {x.shape}; re-create the features")
        return x

    def _read_tokens(self, i: int) -> np.ndarray | None:
        path = self.transcript_path(i)
        if path is None:
            return None
        ids = read_transcript_ids(path)
        return ids if ids is not None else transcript_ids(load_npy(path), path)

    def _cached_tokens(self, i: int) -> np.ndarray | None:
        if not self.has_transcripts:
            return None
        if self._tok_cache[i] is None:
            self._tok_cache[i] = self._read_tokens(i).astype(np.int8)  # (U,)
        return self._tok_cache[i].astype(np.int64)  # a copy: callers may change theirs

    def _load_all(self, headers: list[NpyHeader]) -> None:
        dtype = np.float16 if all(h.dtype == np.float16 for h in headers) else np.float32
        self._feat_offsets = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(self.frame_lengths, out=self._feat_offsets[1:])
        self._feat_flat = np.empty((int(self._feat_offsets[-1]), self.n_mels), dtype=dtype)  # (sum T, D)
        tokens = []
        for i in tqdm(range(len(self)), desc=f"loading {self.partition}", unit="utt", leave=False, disable=None):
            self._feat_flat[self._feat_offsets[i] : self._feat_offsets[i + 1]] = self._read_features(i)
            if self.has_transcripts:
                tokens.append(self._read_tokens(i).astype(np.int8))
        if self.has_transcripts:
            self._tok_offsets = np.zeros(len(self) + 1, dtype=np.int64)
            np.cumsum([len(t) for t in tokens], out=self._tok_offsets[1:])
            self._tok_flat = np.concatenate(tokens)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if self._feat_flat is not None:
            x = self._feat_flat[self._feat_offsets[i] : self._feat_offsets[i + 1]]
            tok = None
            if self._tok_flat is not None:
                tok = self._tok_flat[self._tok_offsets[i] : self._tok_offsets[i + 1]].astype(np.int64)
        else:
            x = self._read_features(i)
            tok = self._cached_tokens(i)
        if self.normalize == "utterance":
            x = normalize_utterance(x)  # a new float32 array
        elif self._feat_flat is not None or x.dtype != np.float32:
            x = np.array(x, dtype=np.float32)  # a copy: in_memory items are views of one shared array
        features = torch.from_numpy(x)  # (T, D)
        tokens = torch.from_numpy(tok) if tok is not None else None  # (U,)
        return {"features": features, "tokens": tokens, "name": self.names[i], "index": i}


# --------------------------------------------------------------------------
# Batches


class SubsetDataset(Dataset):
    """Some utterances of a SpeechDataset, keeping ``frame_lengths``/``names`` for the sampler."""

    def __init__(self, dataset, indices: np.ndarray):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.frame_lengths = np.asarray(dataset.frame_lengths)[self.indices]
        self.names = [dataset.names[i] for i in self.indices]
        self.has_transcripts = dataset.has_transcripts

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        item = dict(self.dataset[int(self.indices[i])])
        item["index"] = i
        return item


@dataclass
class Batch:
    """A padded batch. Masks come from the lengths, never from the pad values.

    features (B, T, D) float32, zero padded; feature_lens (B,) long;
    tokens (B, U) long, each row [SOS, c1..cn, EOS] padded with PAD, or None;
    token_lens (B,) long counting SOS and EOS, or None; names list[str];
    indices (B,) long (dataset indices).
    """

    features: torch.Tensor
    feature_lens: torch.Tensor
    tokens: torch.Tensor | None
    token_lens: torch.Tensor | None
    names: list[str]
    indices: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Batch(
            features=move(self.features),
            feature_lens=move(self.feature_lens),
            tokens=move(self.tokens),
            token_lens=move(self.token_lens),
            names=list(self.names),
            indices=move(self.indices),
        )

    def pin_memory(self) -> "Batch":
        """Called by DataLoader(pin_memory=True)."""
        def pin(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.pin_memory()

        return Batch(pin(self.features), pin(self.feature_lens), pin(self.tokens), pin(self.token_lens),
                     self.names, pin(self.indices))

    def __len__(self) -> int:
        return len(self.names)


def collate(items: list[dict[str, Any]]) -> Batch:
    """Dataset items -> Batch (zero-padded features, PAD-padded tokens)."""
    n = len(items)
    feature_lens = torch.tensor([it["features"].shape[0] for it in items], dtype=torch.long)  # (B,)
    d = items[0]["features"].shape[1]
    features = torch.zeros(n, int(feature_lens.max()), d, dtype=torch.float32)  # (B, T, D)
    for b, it in enumerate(items):
        features[b, : feature_lens[b]] = it["features"]
    tokens = token_lens = None
    if all(it["tokens"] is not None for it in items):
        token_lens = torch.tensor([len(it["tokens"]) for it in items], dtype=torch.long)  # (B,)
        tokens = torch.full((n, int(token_lens.max())), PAD, dtype=torch.long)  # (B, U)
        for b, it in enumerate(items):
            tokens[b, : token_lens[b]] = it["tokens"]
    return Batch(
        features=features,
        feature_lens=feature_lens,
        tokens=tokens,
        token_lens=token_lens,
        names=[it["name"] for it in items],
        indices=torch.tensor([it["index"] for it in items], dtype=torch.long),
    )


# --------------------------------------------------------------------------
# Sampler


class LengthBucketSampler(Sampler[list[int]]):
    """Batch sampler: utterances of similar length together, padded frames capped.

    Every batch has ``B * max(T) <= max_frames_per_batch`` (an over-long
    utterance alone forms its own batch) and ``B <= max_utterances_per_batch``.
    Shuffled, the order is sorted by length times a random factor in
    [0.9, 1.1] (so batches differ between epochs), then the batches are
    shuffled; the randomness is seeded with ``seed + epoch`` (``set_epoch``).
    Unshuffled, batches follow increasing length. With ``num_replicas > 1``
    the batches are dealt round robin to the ranks, after splitting the
    biggest batches until every rank gets the same number: ranks see disjoint
    utterances and together every utterance once per epoch.
    """

    JITTER = 0.1

    def __init__(
        self,
        frame_lengths: Sequence[int] | np.ndarray,
        max_frames_per_batch: int,
        max_utterances_per_batch: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.lengths = np.asarray(frame_lengths, dtype=np.int64)
        if max_frames_per_batch < 1 or max_utterances_per_batch < 1:
            raise ValueError("max_frames_per_batch and max_utterances_per_batch must be at least 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} not in [0, {num_replicas})")
        if len(self.lengths) < num_replicas:
            raise ValueError(f"{len(self.lengths)} utterances cannot be shared by {num_replicas} ranks")
        self.max_frames = int(max_frames_per_batch)
        self.max_utterances = int(max_utterances_per_batch)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.skip = 0  # batches of this epoch already done (resume mid-epoch)
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch``; clears any ``skip_batches``."""
        self.epoch = int(epoch)
        self.skip = 0

    def skip_batches(self, n: int) -> None:
        """Leave out the first ``n`` batches of the current epoch (mid-epoch resume)."""
        self.skip = max(0, int(n))

    def _pack(self, order: np.ndarray) -> list[list[int]]:
        batches: list[list[int]] = []
        cur: list[int] = []
        cur_max = 0
        lengths = self.lengths.tolist()
        for i in order.tolist():
            length = lengths[i]
            new_max = max(cur_max, length)
            if cur and (len(cur) >= self.max_utterances or (len(cur) + 1) * new_max > self.max_frames):
                batches.append(cur)
                cur, new_max = [], length
            cur.append(i)
            cur_max = new_max
        if cur:
            batches.append(cur)
        return batches

    def _balance(self, batches: list[list[int]]) -> list[list[int]]:
        """Split the biggest batches until the count divides among the ranks."""
        while len(batches) % self.num_replicas:
            j = max(range(len(batches)), key=lambda k: len(batches[k]))
            big = batches[j]
            if len(big) < 2:
                raise UserError(
                    f"data.max_frames_per_batch={self.max_frames}: every batch holds one utterance, so "
                    f"{len(self.lengths)} utterances cannot be dealt evenly to {self.num_replicas} ranks; "
                    "raise data.max_frames_per_batch"
                )
            half = len(big) // 2
            batches[j : j + 1] = [big[:half], big[half:]]  # one batch -> two, both under the caps
        return batches

    def all_batches(self) -> list[list[int]]:
        """This epoch's batches for every rank, in order (before dealing to ranks)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        if self.shuffle:
            rng = np.random.default_rng(self.seed + self.epoch)
            jitter = rng.uniform(1.0 - self.JITTER, 1.0 + self.JITTER, size=len(self.lengths))
            order = np.argsort(self.lengths * jitter, kind="stable")
            batches = self._pack(order)
            batches = [batches[k] for k in rng.permutation(len(batches))]
        else:
            batches = self._pack(np.argsort(self.lengths, kind="stable"))
        batches = self._balance(batches)
        self._cache = (self.epoch, batches)
        return batches

    def _mine(self) -> list[list[int]]:
        return self.all_batches()[self.rank :: self.num_replicas][self.skip :]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._mine())

    def __len__(self) -> int:
        return len(self._mine())


def loader_workers(setting: str | int) -> int:
    """DataLoader worker processes for ``data.num_workers``: a number as given, or ``auto``: none on
    a CPU-only machine, where a worker process takes cycles from the two compute threads (one epoch,
    1,000 utterances, 2 cores, median of 3: 38.8 utt/s with 0 workers, 34.4 with 2; bench_cores.py),
    and 2 when CUDA is available, where the CPU only feeds the GPU."""
    if setting == "auto":
        return 2 if torch.cuda.is_available() else 0
    return int(setting)


def make_decoding_loader(dataset: SpeechDataset, data_cfg: Any, batch_size: int,
                         num_workers: int | str | None = None) -> DataLoader:
    """Unshuffled DataLoader for decoding (test.py, transcribe.py, dev scoring): batches of at most
    ``batch_size`` utterances (decoding.batch_size) under the training frame cap; ``num_workers``
    replaces data.num_workers when given."""
    changes = {"max_utterances_per_batch": batch_size}
    if num_workers is not None:
        changes["num_workers"] = num_workers
    return make_loader(dataset, replace(data_cfg, **changes), shuffle=False, seed=0)


def make_loader(
    dataset: SpeechDataset,
    data_cfg: Any,
    *,
    shuffle: bool,
    seed: int,
    epoch: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    skip_batches: int = 0,
) -> DataLoader:
    """DataLoader of Batch over ``dataset`` with a LengthBucketSampler.

    ``skip_batches`` drops this rank's first batches of ``epoch`` (resume
    mid-epoch); ``loader.batch_sampler.set_epoch(e)`` moves to another epoch
    with no skip.
    """
    sampler = LengthBucketSampler(
        dataset.frame_lengths,
        data_cfg.max_frames_per_batch,
        data_cfg.max_utterances_per_batch,
        shuffle=shuffle,
        seed=seed,
        num_replicas=num_replicas,
        rank=rank,
    )
    sampler.set_epoch(epoch)
    sampler.skip_batches(skip_batches)
    workers = loader_workers(data_cfg.num_workers)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
