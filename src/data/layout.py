"""What is on disk: partitions, the data root, utterance lists, ``.npy`` files.

    data/11-785-f23-hw4p2/                 (DEFAULT_DATA_ROOT)
      train-clean-100/mfcc/*.npy           features (T, D), one file per utterance
      train-clean-100/transcripts/*.npy    ['<sos>', 'H', 'I', '<eos>'], same file names
      train-clean-360/...                  same
      dev-clean/...                        same
      test-clean/mfcc/*.npy                features only

"train-clean-460" is no folder: it is train-clean-100 and train-clean-360 together;
"train-clean-100+augmented" is train-clean-100 and its degraded copies in train-clean-100-augmented.
The ``*_problem`` functions define a valid features file / transcript; both the
dataset and ``src.data.check`` use them. Only numpy here (no torch), so the
checker starts fast.
"""
from __future__ import annotations

import functools
import os
import pickle
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
from numpy.lib import format as npy_format
from tqdm import tqdm

from src.errors import UserError, first_line
from src.vocab import ALLOWED_CHARACTERS, CHARACTERS, EOS, SOS, TOKEN_TO_ID

DEFAULT_DATA_ROOT = "data/11-785-f23-hw4p2"  # where the competition zip unpacks
SAMPLE_DATA_ROOT = "data/sample"  # the bundled sample, used when the competition data is absent

FEATURES_DIR = "mfcc"
TRANSCRIPTS_DIR = "transcripts"

# partition name -> the folders it is made of, in this order
PARTITIONS: dict[str, list[str]] = {
    "train-clean-100": ["train-clean-100"],
    "train-clean-360": ["train-clean-360"],
    "train-clean-460": ["train-clean-100", "train-clean-360"],
    "dev-clean": ["dev-clean"],
    "test-clean": ["test-clean"],
    # not the competition's: 25-35 s utterances (python -m src.corpus.long), and dev or test heard through
    # rooms, telephone lines and noise (python -m src.corpus.synth ... --channel dev-clean)
    "dev-clean-long": ["dev-clean-long"],
    "dev-clean-channel": ["dev-clean-channel"],
    "test-clean-channel": ["test-clean-channel"],
    # a training partition and its degraded copies (python -m src.corpus.synth|prepare ... --augment N)
    "train-clean-100+augmented": ["train-clean-100", "train-clean-100-augmented"],
    "train-clean-360+augmented": ["train-clean-360", "train-clean-360-augmented"],
    "train-clean-460+augmented": ["train-clean-100", "train-clean-100-augmented", "train-clean-360",
                                  "train-clean-360-augmented"],
}
# the folders that exist on disk, in a fixed order
SPLIT_FOLDERS: list[str] = ["train-clean-100", "train-clean-360", "dev-clean", "test-clean"]
# folders shipped without transcripts
FEATURES_ONLY = frozenset({"test-clean"})

DOWNLOAD_HINT = (
    "kaggle competitions download -c attention-based-speech-recognition"
    " && unzip -q attention-based-speech-recognition.zip -d data"
)
REPO_ROOT = Path(__file__).resolve().parents[2]
FEATURE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_FIX = "re-download or re-unzip the data, or remove the utterance"
# Largest |value| a features file may hold. Features are log-mel energies: log(1e-6) = -13.8 for
# silence, about +10 for full-scale audio in [-1, 1], about +31 for audio scaled to int16 range
# (src/data/features.py). 1e4 leaves room for any scaling a real front end uses, and float16 files
# of real log-mels (float16 reaches 65504) pass; larger values are a broken file or features that
# are not logarithmic, and near 3e38 they turn into an infinite or NaN loss in training.
MAX_FEATURE_MAGNITUDE = 1e4


@dataclass(frozen=True)
class Utterance:
    """One utterance: ``name`` is the file name without ``.npy``."""

    name: str
    features: Path
    transcript: Path | None


def partition_folders(partition: str) -> list[str]:
    """The split folders that make up ``partition`` (UserError on an unknown name)."""
    try:
        return PARTITIONS[partition]
    except KeyError:
        raise UserError(
            f"unknown partition '{partition}'; use one of {', '.join(PARTITIONS)}"
        ) from None


def _same_path(a: Path, b: Path) -> bool:
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def _existing(path: Path) -> Path | None:
    """``path`` if it exists; a relative path is tried from the cwd, then the repository."""
    if path.exists():
        return path
    if not path.is_absolute() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    return None


def layout_hint(root: Path) -> str | None:
    """When ``root`` holds no split folder but a subfolder does: that subfolder's path."""
    if not root.is_dir() or any((root / s).is_dir() for s in SPLIT_FOLDERS):
        return None
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return None
    children.sort(key=lambda p: p.name != Path(DEFAULT_DATA_ROOT).name)  # the competition folder first
    for child in children:
        if any((child / s).is_dir() for s in SPLIT_FOLDERS):
            return str(child)
    return None


def check_root_layout(root: Path, source: str = "data.root") -> None:
    """UserError unless ``root`` is a directory holding at least one split folder."""
    if not root.is_dir():
        raise UserError(f"{root}: data folder not found; set {source} to the competition folder or run: {DOWNLOAD_HINT}")
    hint = layout_hint(root)
    if hint is not None:
        raise UserError(
            f"{root}: no split folders ({', '.join(SPLIT_FOLDERS)}) here, but {hint} has them; "
            f"use that folder instead (set {source}={hint})"
        )
    if not any((root / s).is_dir() for s in SPLIT_FOLDERS):
        raise UserError(
            f"{root}: no split folders ({', '.join(SPLIT_FOLDERS)}); "
            f"point {source} at the unzipped competition folder or run: {DOWNLOAD_HINT}"
        )


def resolve_data_root(data_cfg: Any) -> Path:
    """The data root to use for ``data_cfg.root``.

    The default root (``data/11-785-f23-hw4p2``) falls back to the bundled
    sample ``data/sample`` with one line saying so; any other missing root, or
    a root that is one level above the competition folder, is a UserError.
    Relative roots are looked up from the cwd, then from the repository.
    """
    wanted = Path(data_cfg.root)
    found = _existing(wanted)
    is_default = _same_path(wanted, Path(DEFAULT_DATA_ROOT)) or _same_path(wanted, REPO_ROOT / DEFAULT_DATA_ROOT)
    if found is None and is_default:
        sample = _existing(Path(SAMPLE_DATA_ROOT))
        if sample is None:
            raise UserError(
                f"{wanted}: competition data not found and the bundled sample {SAMPLE_DATA_ROOT} "
                f"is missing too; run: {DOWNLOAD_HINT}"
            )
        print(
            f"data: {wanted} not found, using the bundled sample {SAMPLE_DATA_ROOT}; "
            f"for the competition data run: {DOWNLOAD_HINT}",
            flush=True,
        )
        return sample
    if found is None:
        raise UserError(
            f"{wanted}: data folder not found; set data.root to the competition folder "
            f"(default {DEFAULT_DATA_ROOT}) or run: {DOWNLOAD_HINT}"
        )
    check_root_layout(found)
    return found


def _npy_names(folder: Path) -> list[str]:
    """Sorted ``*.npy`` file names in ``folder`` (hidden files ignored)."""
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if e.name.endswith(".npy") and not e.name.startswith(".")]
    except OSError as err:
        raise UserError(f"{folder}: cannot list the folder ({err.strerror}); check the path and permissions") from None
    names.sort()  # the submission order: sorted(os.listdir(test-clean/mfcc))
    return names


def _unpaired(first: list[str], second: set[str], first_dir: Path, second_dir: Path, what: str) -> None:
    missing = [n for n in first if n not in second]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(
            f"{first_dir / missing[0]}: {what}, expected {second_dir / missing[0]}{more}; "
            "restore the missing files (re-download or re-unzip the data) or remove the unpaired ones"
        )


def list_folder(root: str | Path, folder: str, with_transcripts: bool = True) -> list[Utterance]:
    """Utterances of one split folder, sorted by file name. UserError if missing/unpaired/empty."""
    split = Path(root) / folder
    if not split.is_dir():
        hint = layout_hint(Path(root))
        fix = f"set data.root={hint}" if hint else f"check data.root or run: {DOWNLOAD_HINT}"
        raise UserError(f"{split}: split folder not found; {fix}")
    feat_dir = split / FEATURES_DIR
    if not feat_dir.is_dir():
        raise UserError(f"{feat_dir}: features folder not found; the split needs {FEATURES_DIR}/*.npy (re-unzip the data)")
    names = _npy_names(feat_dir)
    if not names:
        raise UserError(f"{feat_dir}: no .npy feature files (empty split); re-download or re-unzip the data")
    if not with_transcripts:
        return [Utterance(n[:-4], feat_dir / n, None) for n in names]
    tr_dir = split / TRANSCRIPTS_DIR
    if not tr_dir.is_dir():
        raise UserError(
            f"{tr_dir}: transcripts folder not found; the split needs {TRANSCRIPTS_DIR}/*.npy (re-unzip the data)"
        )
    tr_names = _npy_names(tr_dir)
    _unpaired(names, set(tr_names), feat_dir, tr_dir, "features without a transcript")
    _unpaired(tr_names, set(names), tr_dir, feat_dir, "transcript without features")
    return [Utterance(n[:-4], feat_dir / n, tr_dir / n) for n in names]


def list_utterances(root: str | Path, partition: str, with_transcripts: bool = True) -> list[Utterance]:
    """Utterances of ``partition``: features paired with transcripts by file name.

    Sorted by file name within each folder; train-clean-460 is train-clean-100
    followed by train-clean-360. ``with_transcripts`` is ignored (False) for
    test-clean, which has none. UserError for a missing folder, an unpaired
    file or an empty split.
    """
    out: list[Utterance] = []
    for folder in partition_folders(partition):
        out.extend(list_folder(root, folder, with_transcripts and folder not in FEATURES_ONLY))
    return out


def present_folders(root: str | Path) -> list[str]:
    """The split folders that exist under ``root``, in SPLIT_FOLDERS order."""
    return [s for s in SPLIT_FOLDERS if (Path(root) / s).is_dir()]


# --------------------------------------------------------------------------
# .npy files: headers, loading, what a valid array looks like


class NpyHeader(NamedTuple):
    shape: tuple[int, ...]
    dtype: np.dtype
    data_offset: int  # bytes before the array data
    file_size: int
    fortran_order: bool = False  # column-major data (np.save of a transposed array)

    @property
    def data_bytes(self) -> int | None:
        """Bytes the array data needs; None for object (pickled) arrays."""
        if self.dtype.hasobject:
            return None
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def read_npy_header(path: str | Path) -> NpyHeader:
    """Shape and dtype of a ``.npy`` file without reading its data. UserError if unreadable."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            version = npy_format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(f)
            else:  # 3.0 (utf-8 header): rare; let numpy parse it
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
                return NpyHeader(tuple(arr.shape), arr.dtype, size - arr.nbytes, size,
                                 bool(arr.flags.f_contiguous and not arr.flags.c_contiguous))
            return NpyHeader(tuple(int(n) for n in shape), np.dtype(dtype), f.tell(), size, bool(fortran))
    except Exception as err:  # ValueError (bad magic/header), EOFError, OSError
        raise UserError(f"{path}: unreadable .npy file ({first_line(err)}); {_FIX}") from None


# What a pickled object array of strings needs to be rebuilt, and nothing else: numpy's
# ``_reconstruct`` (module numpy.core.multiarray before numpy 2, numpy._core.multiarray since),
# ``ndarray`` and ``dtype``. Any other global in the pickle (os.system, builtins.eval, ...) is refused.
_RECONSTRUCT = np.ndarray.__reduce__(np.empty(0))[0]
_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
_PICKLE_GLOBALS = {
    **{(m, "_reconstruct"): _RECONSTRUCT for m in _MULTIARRAY},
    **{(m, "ndarray"): np.ndarray for m in ("numpy", *_MULTIARRAY)},
    **{(m, "dtype"): np.dtype for m in ("numpy", *_MULTIARRAY)},
}
_RESAVE = "re-save it as a unicode array: np.save(path, arr.astype(str))"


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays: no other class or function is ever looked up."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise _ForbiddenPickle(f"{module}.{name}") from None


class _ForbiddenPickle(Exception):
    """A pickle asked for a global outside _PICKLE_GLOBALS."""


def _load_object_array(path: str | Path) -> np.ndarray:
    """An object ``.npy`` file (pickled data) rebuilt without running code; must hold a 1-D array of str."""
    with open(path, "rb") as f:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            npy_format.read_array_header_1_0(f)
        elif version == (2, 0):
            npy_format.read_array_header_2_0(f)
        else:
            raise UserError(f"{path}: object array in .npy format {version[0]}.{version[1]}; {_RESAVE}")
        try:
            arr = _ArrayUnpickler(f).load()
        except _ForbiddenPickle as err:
            raise UserError(f"{path}: its pickled data asks for {err}, which could run code, so it is not "
                            f"loaded; if it is a transcript, {_RESAVE}") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or not all(isinstance(t, str) for t in arr.tolist()):
        what = f"shape {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise UserError(f"{path}: object array that is not a 1-D array of strings ({what}); "
                        "store a transcript as one character per element: np.save(path, np.array(chars))")
    return arr


def load_npy(path: str | Path) -> np.ndarray:
    """``np.load`` without pickles; an object array (a transcript saved with dtype object) is rebuilt
    by a restricted unpickler that admits numpy's array classes only (:func:`_load_object_array`).
    UserError if unreadable, or if its pickle asks for anything else."""
    try:
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as err:
            if "allow_pickle" not in str(err):
                raise
            if not _is_npy(path):
                raise UserError(f"{path}: pickled data, not an .npy array; it is not loaded (it could run code); "
                                f"{_RESAVE}") from None
            return _load_object_array(path)
    except UserError:
        raise
    except Exception as err:  # truncated data, bad pickle, I/O errors
        raise UserError(f"{path}: unreadable .npy file ({first_line(err)}); {_FIX}") from None


def _is_npy(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(npy_format.MAGIC_PREFIX)) == npy_format.MAGIC_PREFIX


def read_headers(paths: Sequence[str | Path], desc: str = "headers") -> list[NpyHeader]:
    """Headers of many files; threads hide disk latency; progress bar on big lists."""
    if len(paths) < 2000:
        return [read_npy_header(p) for p in paths]
    with ThreadPoolExecutor(max_workers=8) as pool:
        it = pool.map(read_npy_header, paths)
        return list(tqdm(it, total=len(paths), desc=desc, unit="utt", leave=False))


def feature_problem(header: NpyHeader, n_mels: int) -> str | None:
    """What is wrong with a features file judging by its header, or None."""
    shape, dtype = header.shape, header.dtype
    if dtype not in FEATURE_DTYPES:
        return f"features have dtype {dtype}, expected float16, float32 or float64; re-create the features"
    if len(shape) != 2:
        return f"expected (T, {n_mels}) features, got shape {shape}; re-create the features"
    if shape[1] != n_mels:
        if shape[0] == n_mels:
            return f"expected (T, {n_mels}) features, got shape {shape} (transposed?); store frames as rows"
        return (
            f"expected (T, {n_mels}) features, got shape {shape}; "
            f"set data.n_mels={shape[1]} if every file has {shape[1]} bins, else re-create the features"
        )
    if shape[0] == 0:
        return "empty features (0 frames); remove the utterance or re-create it"
    return truncation_problem(header)


def feature_values_problem(x: np.ndarray) -> str | None:
    """What is wrong with the values of a loaded (T, D) features array, or None.

    NaN or Inf anywhere, or a magnitude above ``MAX_FEATURE_MAGNITUDE``.
    """
    finite = np.isfinite(x)
    if not finite.all():
        n_nan = int(np.isnan(x).sum())
        n_inf = int(x.size - finite.sum()) - n_nan
        frame = int(np.argwhere(~finite)[0][0])
        return f"{n_nan} NaN and {n_inf} Inf values (first at frame {frame}); re-create the features or remove the utterance"
    if x.size == 0:
        return None
    flat = int(np.argmax(np.abs(x)))
    value = float(x.reshape(-1)[flat])
    if abs(value) > MAX_FEATURE_MAGNITUDE:
        frame, col = np.unravel_index(flat, x.shape)[:2] if x.ndim >= 2 else (flat, 0)
        return (
            f"feature value {value:.4g} at frame {int(frame)}, bin {int(col)}, larger in magnitude than the "
            f"{MAX_FEATURE_MAGNITUDE:g} log-mel features can reach; re-create the features "
            "(log-mel energies, as src/data/features.py computes them) or remove the utterance"
        )
    return None


def truncation_problem(header: NpyHeader) -> str | None:
    need = header.data_bytes
    if need is not None and header.file_size < header.data_offset + need:
        return (
            f"truncated .npy file ({header.file_size} bytes, its header promises "
            f"{header.data_offset + need}); {_FIX}"
        )
    return None


def transcript_strings(arr: np.ndarray) -> list[str]:
    """A transcript array (str, bytes or object elements) as a list of Python strings."""
    return [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in arr.reshape(-1).tolist()]


def transcript_problem(arr: np.ndarray) -> str | None:
    """What is wrong with a loaded transcript array, or None.

    Expected: 1-D, ``['<sos>', c1, ..., cn, '<eos>']`` with n >= 1 and every c
    in the vocabulary (A-Z, apostrophe, space).
    """
    if arr.ndim != 1:
        return f"expected a 1-D transcript array, got shape {arr.shape}; store one character per element"
    toks = transcript_strings(arr)
    if not toks:
        return "empty transcript (0 elements); remove the utterance or fix its transcript"
    if toks[0] != "<sos>":
        return f"transcript does not start with '<sos>' (starts with {toks[0]!r}); add <sos>/<eos> around the characters"
    if toks[-1] != "<eos>" or len(toks) < 2:
        return f"transcript does not end with '<eos>' (ends with {toks[-1]!r}); add <sos>/<eos> around the characters"
    middle = toks[1:-1]
    if not middle:
        return "empty transcript (only <sos><eos>); remove the utterance or fix its transcript"
    bad = sorted({t for t in middle if t not in ALLOWED_CHARACTERS})
    if bad:
        shown = ", ".join(repr(b) for b in bad[:5])
        return (
            f"transcript has characters outside the vocabulary ({shown}); "
            "use one element per character from A-Z, apostrophe and space"
        )
    return None


# the header np.save writes for a 1-D array of str: {'descr': '<U5', 'fortran_order': False, 'shape': (189,), }
_STR_HEADER = re.compile(rb"\{'descr': '<U(\d+)', 'fortran_order': False, 'shape': \((\d+),\), \} *\n")
_CODE_TO_ID = np.full(128, -1, dtype=np.int64)  # code point of a vocabulary character -> its id
_CODE_TO_ID[[ord(c) for c in CHARACTERS]] = [TOKEN_TO_ID[c] for c in CHARACTERS]


@functools.lru_cache(maxsize=16)
def _code_points(token: str, width: int) -> bytes:
    """``token`` as a <U``width`` element's bytes (UTF-32 little-endian code points, zero-padded)."""
    return np.array([ord(c) for c in token] + [0] * (width - len(token)), dtype="<u4").tobytes()


def read_transcript_ids(path: str | Path) -> np.ndarray | None:
    """Token ids ``[SOS, c1..cn, EOS]`` (int64, (U,)) of a well-formed transcript file, read without np.load:
    the file in one read, its header matched against the one np.save writes for a str array, the
    characters mapped by code point. None for anything else (another dtype or layout, a character
    outside the vocabulary, a missing <sos>/<eos>, a short file): :func:`transcript_problem` of
    :func:`load_npy`'s array then says what is wrong. The training loader reads one transcript per utterance per
    epoch, and np.load's header parsing was most of that time."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    if raw[:6] != b"\x93NUMPY" or len(raw) < 12:
        return None
    start = 10 if raw[6] == 1 else 12  # version 1: 2-byte header length; 2 and 3: 4 bytes
    length = int.from_bytes(raw[8:start], "little")
    m = _STR_HEADER.fullmatch(raw[start : start + length])
    if m is None:
        return None
    width, n = int(m.group(1)), int(m.group(2))
    offset = start + length
    if n < 3 or width < 5 or len(raw) != offset + 4 * width * n:
        return None
    row = 4 * width  # bytes per element
    if raw[offset : offset + row] != _code_points("<sos>", width) or raw[-row:] != _code_points("<eos>", width):
        return None
    codes = np.frombuffer(raw, dtype="<u4", count=width * n, offset=offset).reshape(n, width)  # (U, width)
    middle = codes[1:-1]  # (U - 2, width): one character each, the rest of each row zero
    if middle[:, 1:].any() or (middle[:, 0] >= 128).any():
        return None
    ids = _CODE_TO_ID[middle[:, 0]]
    if (ids < 0).any():
        return None
    return np.concatenate([[SOS], ids, [EOS]])
