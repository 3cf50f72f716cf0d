"""Losses shared by the families' objectives: CTC, attention cross-entropy, guided attention
(towards the diagonal, or towards a target distribution such as the CTC head's alignment).

Each takes what a family's forward has at hand and returns a scalar; a family's
``forward`` weights and sums them (src/models/interface.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.models.interface import EncoderOutput, lengths_to_mask
from src.vocab import PAD


def ctc_targets(tokens: torch.Tensor, token_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [SOS, c1..cn, EOS, PAD...] (B, U) -> targets (B, U-2) = [c1..cn, PAD...], lens (B,) = n."""
    return tokens[:, 1:-1].clone(), token_lens - 2


def ctc_loss(encoded: EncoderOutput, tokens: torch.Tensor, token_lens: torch.Tensor) -> torch.Tensor:
    """Mean CTC loss of ``encoded.ctc_log_probs`` against the characters of ``tokens``
    (blank = <pad>; an infeasible utterance, with fewer frames than it needs, counts 0)."""
    targets, target_lens = ctc_targets(tokens, token_lens)
    return F.ctc_loss(
        encoded.ctc_log_probs.transpose(0, 1),  # (B, T'', V) -> (T'', B, V)
        targets,
        encoded.ctc_lens,
        target_lens,
        blank=PAD,
        reduction="mean",
        zero_infinity=True,
    )


def in_every_gradient(loss: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``loss`` with every trainable parameter of ``module`` in its graph when several processes train
    (DistributedDataParallel waits for a gradient of each, so a part the objective skipped gets zeros);
    in one process ``loss`` itself, so that skipped parameters get no gradient and the optimiser leaves
    them alone."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return loss + 0.0 * sum(p.sum() for p in module.parameters() if p.requires_grad)
    return loss


def attention_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Mean cross-entropy of logits (B, U, V) against targets (B, U), <pad> ignored, label smoothed."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),  # (B, U, V) -> (B*U, V)
        targets.reshape(-1),
        ignore_index=PAD,
        label_smoothing=label_smoothing,
    )


def guided_attention_loss(attn: torch.Tensor, out_lens: torch.Tensor, enc_lens: torch.Tensor,
                          sigma: float = 0.3) -> torch.Tensor:
    """Attention mass away from the diagonal (Tachibana et al., 2017, "guided attention").

    attn (B, U, T') weights, out_lens (B,) valid output steps, enc_lens (B,) valid
    encoder frames. The penalty of step u on frame t is
    ``1 - exp(-(t / T'_b - u / U_b)^2 / (2 sigma^2))``: 0 on the diagonal of each
    utterance's own (U_b, T'_b) rectangle, near 1 far from it. Returns the mean
    over valid output steps of the penalised attention mass, in [0, 1]. Speech
    is monotonic, so this prior only speeds up the alignment a model must find.
    """
    steps, frames = attn.size(1), attn.size(2)
    u = torch.arange(steps, device=attn.device, dtype=torch.float32)  # (U,)
    t = torch.arange(frames, device=attn.device, dtype=torch.float32)  # (T',)
    u_pos = u.unsqueeze(0) / out_lens.clamp(min=1).unsqueeze(1).float()  # (B, U)
    t_pos = t.unsqueeze(0) / enc_lens.clamp(min=1).unsqueeze(1).float()  # (B, T')
    gap = t_pos.unsqueeze(1) - u_pos.unsqueeze(2)  # (B, 1, T') - (B, U, 1) -> (B, U, T')
    penalty = 1.0 - torch.exp(-gap.pow(2) / (2.0 * sigma**2))  # (B, U, T')
    step_mask = lengths_to_mask(out_lens, steps)  # (B, U)
    frame_mask = lengths_to_mask(enc_lens, frames)  # (B, T')
    mask = (step_mask.unsqueeze(2) & frame_mask.unsqueeze(1)).float()  # (B, U, T')
    mass = (attn.float() * penalty * mask).sum(dim=2)  # (B, U, T') -> (B, U)
    return (mass * step_mask.float()).sum() / step_mask.float().sum().clamp(min=1.0)


def attention_target_loss(attn: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How far the attention is from where it should look: KL(target || attention), mean over steps.

    attn (B, U, T') weights; target (B, U, T') rows that sum to 1 over T' (a step's target
    distribution over frames, e.g. src/models/alignment.py's CTC occupancy) or to 0 (a step
    without a target: padding, an utterance with no alignment), which do not count. Unlike
    the diagonal's penalty, whose gradient fades when attention is spread over every frame
    (it moves each weight by about that weight), the gradient on a step's scores is
    ``attention - target`` whatever the spread: full strength from the first step.
    """
    target = target.float()
    has_target = target.sum(dim=2) > 0.5  # (B, U)
    log_ratio = target.clamp_min(1e-30).log() - attn.float().clamp_min(1e-30).log()  # (B, U, T')
    kl = (target * log_ratio).sum(dim=2)  # (B, U, T') -> (B, U)
    return (kl * has_target).sum() / has_target.sum().clamp(min=1)
