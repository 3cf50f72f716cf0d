"""CTC beam search speed: this project's numba prefix beam search against pyctcdecode
(pure Python) and torchaudio's flashlight-text decoder (C++, lexicon-free), on the same
log-probs, the same beam width, no language model; on one thread and on two.

    python bench/bench_ctc_decode.py          # the DS2 checkpoint of bench_accuracy.py on its dev + test
    python bench/bench_ctc_decode.py --checkpoint runs/ds2/best.pt --root data/sample --beam 10

The log-probs are the CTC outputs of a trained model (encoded once, before any
timing), with <sos> and <eos> pushed to -1e4 for all three decoders (they are
never emitted). Each decoder is warmed up on one utterance first (numba's
compilation and caches are not timed). "2 threads": numba runs its prange over
utterances on 2 threads; pyctcdecode decodes with a pool of 2 processes
(its decode_batch); flashlight is called from 2 Python threads, each on half
of the utterances. Agreement: the share of utterances whose transcript equals
ours (spaces normalised); "ours as probable": the share where our transcript's
CTC probability (summed over all alignments, torch's ctc_loss) is at least that
of the other decoder's; CER against the references of each split.

Needs ``pip install pyctcdecode flashlight-text`` and a torchaudio built for the
installed torch (none of them in the requirements: only this benchmark uses them).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cli_args import count  # noqa: E402  (bench/, this script's folder, is on sys.path)

DEFAULT_CKPT = ROOT / "bench/out/run-20min-ds2/best.pt"
DEFAULT_ROOT = ROOT / "bench/out/corpus"


def log_probs_of(checkpoint: Path, root: Path, splits: list[str]) -> tuple[list[np.ndarray], list[str]]:
    """One (T', V) float32 array per utterance of ``splits``, and their references."""
    from src.checkpoint import front_end, load_checkpoint, model_from_checkpoint
    from src.data.dataset import SpeechDataset, collate
    from src.vocab import decode

    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, "cpu").eval()
    n_mels, normalize = front_end(ckpt)
    arrays, refs = [], []
    for split in splits:
        dataset = SpeechDataset(root, split, n_mels=n_mels, normalize=normalize, with_transcripts=split != "test-clean")
        if split == "test-clean":
            with open(root / "test_reference.csv") as f:
                refs += [row["label"] for row in csv.DictReader(f)]
        for start in range(0, len(dataset), 16):
            items = [dataset[i] for i in range(start, min(start + 16, len(dataset)))]
            batch = collate(items)
            with torch.no_grad():
                enc = model.encode(batch.features, batch.feature_lens)
            for b in range(len(items)):
                arrays.append(enc.ctc_log_probs[b, : int(enc.ctc_lens[b])].numpy().copy())
            if split != "test-clean":
                refs += [decode(it["tokens"].tolist()) for it in items]
    for a in arrays:
        a[:, 1:3] = -1e4  # <sos>, <eos>: never emitted, for every decoder alike
    return arrays, refs


def ctc_log_prob(arrays, texts) -> np.ndarray:
    """log p_ctc(text | utterance), summed over all alignments (torch's CTC loss), per utterance."""
    import torch.nn.functional as F

    from src.vocab import encode

    out = []
    for a, text in zip(arrays, texts):
        target = torch.tensor([encode(text)], dtype=torch.long)
        lp = torch.from_numpy(a)[:, None]  # (T', V) -> (T', 1, V)
        out.append(-float(F.ctc_loss(lp, target, torch.tensor([a.shape[0]]), torch.tensor([target.shape[1]]),
                                     blank=0, reduction="sum", zero_infinity=False)))
    return np.array(out)


def ours(arrays, beam, threads):
    import numba

    from src.decoding.ctc_decode import ctc_prefix_beam_search
    from src.vocab import decode

    numba.set_num_threads(threads)
    frames = max(a.shape[0] for a in arrays)
    padded = np.zeros((len(arrays), frames, arrays[0].shape[1]), dtype=np.float32)  # (B, T', V)
    for b, a in enumerate(arrays):
        padded[b, : a.shape[0]] = a
    lens = np.array([a.shape[0] for a in arrays])
    ctc_prefix_beam_search(padded[:1], lens[:1], beam_size=beam)  # warm up (compiled once, cached on disk)
    start = time.perf_counter()
    ids = ctc_prefix_beam_search(padded, lens, beam_size=beam)
    seconds = time.perf_counter() - start
    return [" ".join(decode(i).split()) for i in ids], seconds


def pyctcdecode_run(arrays, beam, threads):
    import multiprocessing

    from pyctcdecode import build_ctcdecoder

    from src.vocab import VOCAB

    labels = [""] + ["\u2047", "\u2048"] + VOCAB[3:]  # blank, <sos>/<eos> as unused symbols, the characters
    decoder = build_ctcdecoder(labels)
    decoder.decode(arrays[0], beam_width=beam)  # warm up
    start = time.perf_counter()
    if threads == 1:
        texts = [decoder.decode(a, beam_width=beam) for a in arrays]
    else:
        with multiprocessing.get_context("fork").Pool(threads) as pool:
            texts = decoder.decode_batch(pool, arrays, beam_width=beam)
    seconds = time.perf_counter() - start
    return [" ".join(t.split()) for t in texts], seconds


def flashlight_run(arrays, beam, threads):
    from concurrent.futures import ThreadPoolExecutor

    from torchaudio.models.decoder import ctc_decoder

    from src.vocab import VOCAB

    tokens = ["<pad>", "<sos>", "<eos>"] + [("|" if c == " " else c) for c in VOCAB[3:]]
    decoder = ctc_decoder(lexicon=None, tokens=tokens, lm=None, nbest=1, beam_size=beam, beam_size_token=beam,
                          blank_token="<pad>", sil_token="|", log_add=True)  # log_add: sum over alignments, as ours

    def decode_some(chunk):
        out = []
        for a in chunk:
            hyp = decoder(torch.from_numpy(a)[None])[0][0]
            out.append("".join(tokens[t] for t in hyp.tokens.tolist() if t > 2).replace("|", " ").strip())
        return out

    decode_some(arrays[:1])  # warm up
    start = time.perf_counter()
    if threads == 1:
        texts = decode_some(arrays)
    else:
        half = (len(arrays) + 1) // 2
        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(decode_some, [arrays[:half], arrays[half:]]))
        texts = parts[0] + parts[1]
    seconds = time.perf_counter() - start
    return [" ".join(t.split()) for t in texts], seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CKPT), help="a CTC model's checkpoint (default: %(default)s)")
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="data root with the splits (default: %(default)s)")
    parser.add_argument("--splits", default="dev-clean,test-clean")
    parser.add_argument("--beam", type=count, default=10)
    args = parser.parse_args()
    from host import describe, host_load

    from src.metrics import cer

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        sys.exit(f"error: {checkpoint}: no checkpoint; train one first "
                 "(python bench/bench_accuracy.py model.family=ds2) or pass --checkpoint")
    before = host_load()
    print(describe(before), flush=True)
    torch.set_num_threads(2)
    arrays, refs = log_probs_of(checkpoint, Path(args.root), args.splits.split(","))
    frames = sum(a.shape[0] for a in arrays)
    print(f"{len(arrays)} utterances, {frames} CTC frames, beam {args.beam}, checkpoint {checkpoint}", flush=True)
    torch.set_num_threads(1)
    rows = []
    for threads in (1, 2):
        results = {}
        for name, fn in (("numba prefix beam (ours)", ours), ("pyctcdecode", pyctcdecode_run),
                         ("flashlight (torchaudio)", flashlight_run)):
            texts, seconds = fn(arrays, args.beam, threads)
            results[name] = (texts, seconds)
        base = results["numba prefix beam (ours)"][0]
        base_lp = ctc_log_prob(arrays, base)
        for name, (texts, seconds) in results.items():
            agree = np.mean([a == b for a, b in zip(texts, base)])
            ours_as_good = np.mean(base_lp >= ctc_log_prob(arrays, texts) - 1e-3)
            rows.append((threads, name, seconds, len(arrays) / seconds, 100 * cer(texts, refs), 100 * agree,
                         100 * ours_as_good, seconds / results["numba prefix beam (ours)"][1]))
    after = host_load()
    print(f"\nbefore: {describe(before)}\nafter:  {describe(after)}")
    print(f"{'threads':<8}{'decoder':<27}{'seconds':>9}{'utt/s':>9}{'CER %':>8}{'same as ours %':>16}"
          f"{'ours as probable %':>20}{'x our time':>12}")
    for threads, name, seconds, speed, rate, agree, as_good, ratio in rows:
        print(f"{threads:<8}{name:<27}{seconds:>9.3f}{speed:>9.1f}{rate:>8.2f}{agree:>16.1f}{as_good:>20.1f}"
              f"{ratio:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
