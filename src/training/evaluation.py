"""Dev evaluation during training: loss through the family's objective, text through the decoders.

    result = evaluate(model, loader, device, options=..., hooks=..., decoding=...)

The dev loss is the objective with the dev options (teacher forcing 1, no
guided attention); the transcripts come from ``src.decoding.decode_encoded``,
the same path test.py uses (with the decoding settings given: greedy during
training), on the encoder output the objective already computed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from src.atomic import atomic_write
from src.decoding import decode_encoded
from src.metrics import cer, mean_levenshtein
from src.threads import keep_torch_threads
from src.training.precision import autocast
from src.training.state import rng_neutral_iter
from src.vocab import decode


@dataclass
class DevResult:
    loss: float = math.nan
    lev: float = math.nan
    cer: float = math.nan
    utterances: int = 0
    hook_metrics: dict = field(default_factory=dict)  # e.g. dev_alignment
    attention: np.ndarray | None = None  # (U, T') of the fixed utterance, for families with attention
    hypothesis: str = ""  # of the fixed utterance
    reference: str = ""

    def metrics(self) -> dict[str, float]:
        return {"dev_loss": self.loss, "dev_lev": self.lev, "dev_cer": self.cer, **self.hook_metrics}


def compute_loss(model: nn.Module, batch, features: torch.Tensor | None = None, **options):
    """The family's objective on a batch: ``model(features, feature_lens, tokens, token_lens, **options)``.

    ``features`` replaces batch.features (e.g. after SpecAugment). Returns the LossOutput.
    """
    return model(batch.features if features is None else features, batch.feature_lens, batch.tokens,
                 batch.token_lens, **options)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, *, options: dict, hooks: list, decoding,
             fixed_index: int = 0, amp_dtype: torch.dtype | None = None) -> DevResult:
    """Dev loss (objective with ``options``), decoded mean Levenshtein and CER, and the hooks' metrics.

    ``fixed_index``: dataset index of the utterance whose attention map is kept.
    """

    was_training = model.training
    model.eval()
    hyps, refs = [], []
    loss_sum, n = 0.0, 0
    result = DevResult()
    for hook in hooks:
        hook.dev_begin()
    for batch in rng_neutral_iter(loader):
        batch = batch.to(device)
        with autocast(device, amp_dtype):
            out = compute_loss(model, batch, **options)
            ids = decode_encoded(model, out.encoded, batch.feature_lens, decoding)
        b = len(batch)
        loss_sum += float(out.loss) * b
        n += b
        for hook in hooks:
            hook.observe_dev(out, batch)
        batch_refs = [decode(row[1:]) for row in batch.tokens.tolist()]
        batch_hyps = [decode(row) for row in ids]
        hyps += batch_hyps
        refs += batch_refs
        hit = (batch.indices == fixed_index).nonzero()
        if len(hit):
            r = int(hit[0, 0])
            if out.attention is not None:
                steps, frames = int(batch.token_lens[r]) - 1, int(out.encoded.lens[r])
                result.attention = out.attention[r, :steps, :frames].float().cpu().numpy()
            result.hypothesis, result.reference = batch_hyps[r], batch_refs[r]
    model.train(was_training)
    if n:
        result.loss = loss_sum / n
        with keep_torch_threads():
            result.lev = mean_levenshtein(hyps, refs)
            result.cer = cer(hyps, refs)
        result.utterances = n
    for hook in hooks:
        result.hook_metrics.update(hook.dev_end())
    return result


def save_attention_png(attention: np.ndarray, path: Path, title: str) -> None:
    """The attention map (U, T') as an image: output steps down, encoder frames across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6))
    ax.imshow(attention, aspect="auto", origin="upper", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("encoder frame t'")
    ax.set_ylabel("output step u")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)
