"""Long utterances decoded in pieces cut at the CTC head's word boundaries (``decoding.segment_seconds``).

An attention decoder that learned on utterances of 4 to 15 seconds meets 35-second ones in
LibriSpeech's test-clean; its attention drifts there (it stops early or repeats itself) and
a joint CTC/attention beam costs time in proportion to frames times characters. With
``decoding.segment_seconds = S > 0`` every utterance longer than S seconds is decoded in
pieces of at most S seconds:

1. the whole utterance is encoded once, so every encoder frame keeps its full context;
2. the cuts are chosen on the CTC head's best path (:func:`cut_points`): within the second
   half of each S-second span, the frame inside the longest run of frames whose best token
   is blank or space, at least one of them a space (a word boundary the model itself
   heard), cut at the middle of that run; without a space, the longest blank run; without
   one, at the span's end;
3. each piece is an utterance of its own for the decoder (its slice of every memory tensor
   and of the CTC log-probs, its own length limit), decoded greedily or by the beam with
   every scorer;
4. the pieces' transcripts are joined with one space.

Pieces are cut on the CTC frames (rate T''); the step decoder's memory (rate T') is cut at
the same instants, ``round(c * T' / T'')``. Models without a CTC head, and CTC-only models
(whose decoders are local and linear in time already), are decoded whole.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from src.models.interface import EncoderOutput
from src.vocab import PAD, TOKEN_TO_ID

BLANK = PAD  # the CTC blank is <pad> (id 0)
SPACE = TOKEN_TO_ID[" "]
FRAMES_PER_SECOND = 100  # input features: one frame every 10 ms


def cut_points(best_path: list[int], max_frames: int) -> list[tuple[int, int]]:
    """Pieces [start, end) of CTC frames 0 .. len(best_path), each at most ``max_frames`` long (see the
    module docstring for where the cuts fall). One piece when the path fits."""
    n = len(best_path)
    quiet = [t in (BLANK, SPACE) for t in best_path]
    # the run of quiet frames each frame belongs to: (first, last) or None
    runs: list[tuple[int, int] | None] = [None] * n
    t = 0
    while t < n:
        if not quiet[t]:
            t += 1
            continue
        end = t
        while end + 1 < n and quiet[end + 1]:
            end += 1
        for i in range(t, end + 1):
            runs[i] = (t, end)
        t = end + 1
    pieces, start = [], 0
    while n - start > max_frames:
        lo, hi = start + max(1, max_frames // 2), start + max_frames  # cut at a frame in [lo, hi)
        best, best_key = hi, (-1, -1)
        for c in range(lo, hi):
            run = runs[c]
            if run is None:
                continue
            first, last = max(run[0], start + 1), min(run[1], hi - 1)
            has_space = any(best_path[i] == SPACE for i in range(run[0], run[1] + 1))
            key = (int(has_space), last - first + 1)
            if key > best_key:
                best, best_key = (first + last + 1) // 2, key
        pieces.append((start, best))
        start = best
    pieces.append((start, n))
    return pieces


def _slice(t: torch.Tensor, row: int, a: int, b: int, width: int) -> torch.Tensor:
    """Frames a..b of ``t[row]`` (T, *) padded with zeros to ``width`` frames."""
    piece = t[row, a:b]
    pad = t.new_zeros((width - piece.shape[0], *piece.shape[1:]))
    return torch.cat([piece, pad])


def decode_in_pieces(encoded: EncoderOutput, feature_lens: torch.Tensor, segment_seconds: float,
                     decode: Callable[[EncoderOutput, torch.Tensor], list[list[int]]]) -> list[list[int]] | None:
    """Token ids per utterance, utterances longer than ``segment_seconds`` decoded piece by piece with
    ``decode(pieces' EncoderOutput, pieces' feature lengths (P,))``; None when no utterance is that long
    or the model has no CTC head (decode it whole)."""
    if encoded.ctc_log_probs is None or segment_seconds <= 0:
        return None
    max_input = int(segment_seconds * FRAMES_PER_SECOND)
    if int(feature_lens.max()) <= max_input:
        return None
    ctc_lens = encoded.ctc_lens if encoded.ctc_lens is not None else encoded.lens
    best = encoded.ctc_log_probs.argmax(dim=-1).tolist()  # (B, T'') best tokens
    pieces = []  # (utterance, ctc start, ctc end, memory start, memory end, input frames)
    for b, (frames, n_ctc, n_mem) in enumerate(zip(feature_lens.tolist(), ctc_lens.tolist(), encoded.lens.tolist())):
        per_ctc = frames / n_ctc  # input frames per CTC frame
        for a, e in cut_points(best[b][:n_ctc], max(1, int(max_input / per_ctc))):
            ma, me = round(a * n_mem / n_ctc), round(e * n_mem / n_ctc)
            pieces.append((b, a, e, ma, max(me, ma + 1), max(1, round((e - a) * per_ctc))))
    mem_width = max(me - ma for _, _, _, ma, me, _ in pieces)
    ctc_width = max(e - a for _, a, e, _, _, _ in pieces)
    memory = tuple(torch.stack([_slice(m, b, ma, me, mem_width) for b, _, _, ma, me, _ in pieces])
                   for m in encoded.memory)  # each (P, width, *)
    ctc = torch.stack([_slice(encoded.ctc_log_probs, b, a, e, ctc_width) for b, a, e, _, _, _ in pieces])
    device = encoded.lens.device
    lens = torch.tensor([me - ma for _, _, _, ma, me, _ in pieces], device=device)
    ctc_piece_lens = torch.tensor([e - a for _, a, e, _, _, _ in pieces], device=device)
    piece_frames = torch.tensor([f for *_, f in pieces], device=device)
    ids = decode(EncoderOutput(memory, lens, ctc, ctc_piece_lens), piece_frames)
    out: list[list[int]] = [[] for _ in range(len(feature_lens))]
    for (b, *_), piece in zip(pieces, ids):
        words = [t for t in piece]
        while words and words[0] == SPACE:
            words.pop(0)
        while words and words[-1] == SPACE:
            words.pop()
        if words:
            out[b] += ([SPACE] if out[b] else []) + words
    return out
