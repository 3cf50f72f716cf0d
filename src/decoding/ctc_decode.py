"""CTC decoding in numba: best path (greedy) and prefix beam search, batched over utterances.

    ids = ctc_greedy(log_probs (B, T, V), lens (B,))                      # list of B token-id lists
    ids = ctc_prefix_beam_search(log_probs, lens, beam_size=10)           # the most probable labellings
    ids = ctc_prefix_beam_search(log_probs, lens, 10, lm=packed, lm_weight=0.5, length_bonus=1.0)  # + an LM

Blank is <pad> (id 0); <sos> and <eos> are never emitted. Both accept torch
tensors or numpy arrays and run one utterance per numba thread (``prange``);
the answer does not depend on the number of threads.

Prefix beam search (Graves 2012; Hannun et al. 2014) keeps, for every prefix
in the beam, the log-probability of all alignments of the frames so far that
emit exactly that prefix, split by whether the last frame is blank (p_b) or
the prefix's last label (p_nb). At frame t each prefix g can

    stay g       by a blank:               p_b(g)   += p(g) + lp[t, blank]
                 by repeating its last c:  p_nb(g)  += p_nb(g) + lp[t, c]
    become g+c   for c != last:            p_nb(g+c) += p(g) + lp[t, c]
                 for c == last:            p_nb(g+c) += p_b(g) + lp[t, c]   (a blank must separate them)

with p(g) = logaddexp(p_b(g), p_nb(g)); extensions that reach a prefix already
in the beam are merged into it. Prefixes live in a trie (parent and token
arrays), so a beam entry is one integer. Per frame only the ``token_top_k``
most probable labels within ``prune_log_prob`` of the frame's best are tried.

Shallow fusion with a character n-gram LM (src/decoding/ngram.py) ranks prefixes by

    log p_ctc(g) + lm_weight * log p_LM(g) + length_bonus * |g|

where log p_LM(g) is summed once per label, when a trie node is made (the LM
sees the prefix, not the alignment), and a finished prefix adds
lm_weight * log p_LM(<eos> | g) before the best is chosen. With lm_weight and
length_bonus 0 this is the plain search.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from src.decoding.ngram import NO_LM, PackedLM, lm_log_prob
from src.threads import keep_torch_threads
from src.vocab import EOS, PAD, SOS

BLANK = PAD  # the CTC blank is <pad>, id 0
NEG_INF = -np.inf


def _as_numpy(log_probs, lens) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(log_probs, "detach"):
        log_probs = log_probs.detach().float().cpu().numpy()
    if hasattr(lens, "detach"):
        lens = lens.detach().cpu().numpy()
    lp = np.ascontiguousarray(log_probs, dtype=np.float32)
    lens = np.ascontiguousarray(lens, dtype=np.int64)
    if lp.ndim != 3 or lens.shape != (lp.shape[0],):
        raise ValueError(f"ctc decoding: expected log_probs (B, T, V) and lens (B,), got {lp.shape} and {lens.shape}")
    return lp, np.minimum(lens, lp.shape[1])


def _with_torch_threads(fn):
    """``fn`` run under :func:`src.threads.keep_torch_threads` (its numba kernels reset torch's threads)."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with keep_torch_threads():
            return fn(*args, **kwargs)
    return wrapped


# --------------------------------------------------------------------------
# Best path


@njit(cache=True, parallel=True)
def _greedy_kernel(lp: np.ndarray, lens: np.ndarray, out: np.ndarray, out_lens: np.ndarray) -> None:
    for b in prange(lp.shape[0]):
        prev, n = -1, 0
        for t in range(lens[b]):
            best, best_lp = BLANK, lp[b, t, BLANK]
            for c in range(lp.shape[2]):
                if c != 1 and c != 2 and lp[b, t, c] > best_lp:
                    best, best_lp = c, lp[b, t, c]
            if best != BLANK and best != prev:
                out[b, n] = best
                n += 1
            prev = best
        out_lens[b] = n


@_with_torch_threads
def ctc_greedy(log_probs, lens) -> list[list[int]]:
    """Best path: the most probable token per frame, repeats collapsed, blanks dropped.

    log_probs (B, T, V) log-softmax (blank = 0), lens (B,) valid frames -> B lists of ids.
    """
    lp, lens = _as_numpy(log_probs, lens)
    out = np.zeros(lp.shape[:2], dtype=np.int64)  # (B, T): at most one label per frame
    out_lens = np.zeros(lp.shape[0], dtype=np.int64)
    _greedy_kernel(lp, lens, out, out_lens)
    return [out[b, : out_lens[b]].tolist() for b in range(lp.shape[0])]


# --------------------------------------------------------------------------
# Prefix beam search


@njit(cache=True)
def _logaddexp(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    if a > b:
        return a + np.log1p(np.exp(b - a))
    return b + np.log1p(np.exp(a - b))


@njit(cache=True)
def _history_of_node(node: int, parent: np.ndarray, token: np.ndarray, history: np.ndarray) -> None:
    """history (n,) <- the last n labels of the trie node's prefix, <sos>-padded, oldest first."""
    for h in range(history.shape[0] - 1, -1, -1):
        history[h] = token[node] if node > 0 else 1  # <sos> before the first label
        if node > 0:
            node = parent[node]


@njit(cache=True)
def _decode_one(lp: np.ndarray, n_frames: int, beam: int, top_k: int, prune: float,
                parent: np.ndarray, token: np.ndarray, node_lm: np.ndarray, node_len: np.ndarray,
                lm_order, lm_keys, lm_key_start, lm_row_start, lm_tok, lm_cnt, lm_scale, lm_inv,
                lm_weight: float, length_bonus: float) -> tuple[int, float, int]:
    """Prefix beam search over one utterance lp (T, V); returns (best node, its score, nodes used).

    parent/token: trie storage (node 0 is the empty prefix); the caller backtracks from the node.
    node_lm/node_len: each node's summed LM log-prob and length (used when lm_order > 0 or a bonus is set).
    """
    vocab = lp.shape[1]
    use_lm = lm_order > 0 and lm_weight != 0.0
    history = np.empty(max(lm_order - 1, 0), dtype=np.int64)
    width = beam * (top_k + 1)  # candidates per frame: every beam staying + its extensions
    beam_node = np.zeros(beam, dtype=np.int64)
    beam_pb = np.full(beam, NEG_INF)
    beam_pnb = np.full(beam, NEG_INF)
    beam_pb[0] = 0.0  # the empty prefix, before any frame
    n_beam = 1
    n_nodes = 1
    parent[0], token[0], node_lm[0], node_len[0] = -1, -1, 0.0, 0
    cand_node = np.zeros(width, dtype=np.int64)
    cand_pb = np.empty(width)
    cand_pnb = np.empty(width)
    labels = np.empty(vocab, dtype=np.int64)
    for t in range(n_frames):
        row = lp[t]
        # the labels worth trying at this frame: top_k by probability, within prune of the best
        order = np.argsort(-row)
        n_labels = 0
        best_label_lp = NEG_INF
        for i in range(vocab):
            c = order[i]
            if c == BLANK or c == SOS or c == EOS:  # never emitted
                continue
            if best_label_lp == NEG_INF:
                best_label_lp = row[c]
            if n_labels == top_k or row[c] < best_label_lp + prune:
                break
            labels[n_labels] = c
            n_labels += 1
        n_cand = 0
        for j in range(n_beam):  # staying: every beam prefix is a candidate
            g = beam_node[j]
            total = _logaddexp(beam_pb[j], beam_pnb[j])
            cand_node[n_cand] = g
            cand_pb[n_cand] = total + row[BLANK]
            cand_pnb[n_cand] = beam_pnb[j] + row[token[g]] if token[g] >= 0 else NEG_INF
            n_cand += 1
        for j in range(n_beam):  # extending
            g = beam_node[j]
            total = _logaddexp(beam_pb[j], beam_pnb[j])
            if use_lm:
                _history_of_node(g, parent, token, history)
            for i in range(n_labels):
                c = labels[i]
                score = (beam_pb[j] if c == token[g] else total) + row[c]
                if score == NEG_INF:
                    continue
                found = -1  # is g + c already a candidate (a prefix of the beam, or an extension made)?
                for k in range(n_cand):
                    node = cand_node[k]
                    if parent[node] == g and token[node] == c:
                        found = k
                        break
                if found < 0:
                    parent[n_nodes], token[n_nodes] = g, c
                    node_len[n_nodes] = node_len[g] + 1
                    node_lm[n_nodes] = node_lm[g]
                    if use_lm:
                        node_lm[n_nodes] += lm_log_prob(lm_order, lm_keys, lm_key_start, lm_row_start, lm_tok,
                                                        lm_cnt, lm_scale, lm_inv, history, c)
                    cand_node[n_cand] = n_nodes
                    cand_pb[n_cand] = NEG_INF
                    cand_pnb[n_cand] = score
                    n_nodes += 1
                    n_cand += 1
                else:
                    cand_pnb[found] = _logaddexp(cand_pnb[found], score)
        # keep the beam best candidates by CTC + LM + length bonus (ties: the earlier candidate)
        totals = np.empty(n_cand)
        for k in range(n_cand):
            node = cand_node[k]
            totals[k] = _logaddexp(cand_pb[k], cand_pnb[k]) + lm_weight * node_lm[node] + length_bonus * node_len[node]
        keep = np.argsort(-totals, kind="mergesort")[:beam]
        n_beam = keep.shape[0]
        for j in range(n_beam):
            beam_node[j] = cand_node[keep[j]]
            beam_pb[j] = cand_pb[keep[j]]
            beam_pnb[j] = cand_pnb[keep[j]]
    best, best_score = 0, NEG_INF
    for j in range(n_beam):
        g = beam_node[j]
        total = _logaddexp(beam_pb[j], beam_pnb[j]) + lm_weight * node_lm[g] + length_bonus * node_len[g]
        if use_lm:  # the sentence ends here: <eos> after g
            _history_of_node(g, parent, token, history)
            total += lm_weight * lm_log_prob(lm_order, lm_keys, lm_key_start, lm_row_start, lm_tok, lm_cnt,
                                             lm_scale, lm_inv, history, 2)
        if total > best_score:
            best, best_score = g, total
    return best, best_score, n_nodes


@njit(cache=True, parallel=True)
def _beam_kernel(lp, lens, beam, top_k, prune, out, out_lens, out_scores,
                 lm_order, lm_keys, lm_key_start, lm_row_start, lm_tok, lm_cnt, lm_scale, lm_inv,
                 lm_weight, length_bonus) -> None:
    max_nodes = 1 + lp.shape[1] * beam * top_k
    for b in prange(lp.shape[0]):
        parent = np.empty(max_nodes, dtype=np.int64)
        token = np.empty(max_nodes, dtype=np.int64)
        node_lm = np.empty(max_nodes, dtype=np.float64)
        node_len = np.empty(max_nodes, dtype=np.int64)
        node, score, _ = _decode_one(lp[b], lens[b], beam, top_k, prune, parent, token, node_lm, node_len,
                                     lm_order, lm_keys, lm_key_start, lm_row_start, lm_tok, lm_cnt, lm_scale,
                                     lm_inv, lm_weight, length_bonus)
        n = 0
        while node > 0:  # backtrack to the empty prefix: the labels come out last first
            out[b, n] = token[node]
            node = parent[node]
            n += 1
        out[b, :n] = out[b, :n][::-1].copy()
        out_lens[b] = n
        out_scores[b] = score


@_with_torch_threads
def ctc_prefix_beam_search(log_probs, lens, beam_size: int = 10, token_top_k: int | None = None,
                           prune_log_prob: float = -20.0, return_scores: bool = False,
                           lm: PackedLM | None = None, lm_weight: float = 0.0, length_bonus: float = 0.0):
    """The most probable labelling of each utterance (summed over its alignments), by prefix beam search.

    log_probs (B, T, V) log-softmax (blank = 0), lens (B,) valid frames. ``token_top_k``
    labels per frame at most (default: beam_size), none more than ``-prune_log_prob`` below
    the frame's best label. ``lm`` (src.decoding.ngram.pack of a CharNgramLM) with
    ``lm_weight`` and ``length_bonus``: shallow fusion, as the module says. Returns B lists
    of ids (and their scores: log-probabilities when there is no fusion, (B,)).
    """
    if beam_size < 1:
        raise ValueError(f"ctc_prefix_beam_search: beam_size must be at least 1, got {beam_size}")
    lp, lens = _as_numpy(log_probs, lens)
    top_k = int(min(token_top_k or beam_size, lp.shape[2]))
    out = np.zeros(lp.shape[:2], dtype=np.int64)  # (B, T)
    out_lens = np.zeros(lp.shape[0], dtype=np.int64)
    scores = np.zeros(lp.shape[0], dtype=np.float64)
    _beam_kernel(lp, lens, int(beam_size), top_k, float(prune_log_prob), out, out_lens, scores,
                 *(lm or NO_LM), float(lm_weight if lm is not None else 0.0), float(length_bonus))
    ids = [out[b, : out_lens[b]].tolist() for b in range(lp.shape[0])]
    return (ids, scores) if return_scores else ids
