"""Training features that only families with attention use (``model.has_attention``).

    teacher forcing    the rate fed to the objective; decays in stages once its
                       trigger (dev CER by default; or epoch, dev alignment) has fired
    guided attention   the weight of the guided-attention loss, dropped once the
                       dev attention has aligned (training.guided_attention_until_aligned)
    alignment          how well the dev attention aligns, sharp and in order from the first
                       frame to the last (src/schedules.py: attention_alignment), which
                       drops the guided loss (and starts the decay with trigger aligned);
                       one line says when it first passes the threshold, and one warning
                       (once per run) when it is below 0.5 after training.alignment_warning_steps

The loop knows hooks only through this small protocol, so a CTC family runs
through the same loop with none of them:

    options = hook.batch_options()          # extra objective options for a training batch
    options = hook.dev_options()            # ... for a dev batch
    hook.dev_begin(); hook.observe_dev(out, batch) per dev batch; metrics = hook.dev_end()
    summary = hook.end_of_epoch(epoch, dev_metrics, step=..., minutes=...)   # e.g. "align 0.90  tf 1.000->0.990"
    lines = hook.notices()                  # what the loop prints under the epoch line (then cleared)
    hook.state  (a plain dict saved in last.pt; a resumed run continues from it)
"""
from __future__ import annotations

from typing import Any

import torch

from src.models.interface import LossOutput, has_attention
from src.schedules import TeacherForcingState, attention_alignment, next_teacher_forcing


UNALIGNED = 0.5  # a dev alignment below this after training.alignment_warning_steps gets the warning


class AttentionHooks:
    """Teacher forcing, guided attention and dev alignment for an attention family."""

    name = "attention"

    def __init__(self, training_cfg: Any, state: dict | None = None):
        self.t = training_cfg
        self.state = state or {"teacher_forcing": TeacherForcingState(rate=training_cfg.teacher_forcing.start).as_dict(),
                               "aligned": False}
        self._alignment: list[torch.Tensor] = []
        self._notices: list[str] = []

    @property
    def teacher_forcing_rate(self) -> float:
        return float(self.state["teacher_forcing"]["rate"])

    def batch_options(self) -> dict[str, float]:
        # guided attention until the alignment trigger has fired (or for good with guided_attention_until_aligned off)
        aligned = self.t.guided_attention_until_aligned and self.state["aligned"]
        return {"teacher_forcing_rate": self.teacher_forcing_rate,
                "guided_attention": 0.0 if aligned else self.t.guided_attention}

    def dev_options(self) -> dict[str, float]:
        return {"teacher_forcing_rate": 1.0, "guided_attention": 0.0}

    def progress(self) -> dict[str, str]:
        return {"tf": f"{self.teacher_forcing_rate:.2f}"}

    def dev_begin(self) -> None:
        self._alignment = []

    def observe_dev(self, out: LossOutput, batch) -> None:
        if out.attention is not None:
            self._alignment.append(attention_alignment(out.attention, batch.token_lens - 1, out.encoded.lens))

    def dev_end(self) -> dict[str, float]:
        return {"dev_alignment": float(torch.cat(self._alignment).mean()) if self._alignment else 0.0}

    def end_of_epoch(self, epoch: int, dev_metrics: dict[str, float], step: int = 0, minutes: float = 0.0) -> str:
        tf = self.t.teacher_forcing
        alignment = dev_metrics.get("dev_alignment", 0.0)
        self.note_alignment(alignment, epoch, step, minutes)
        before = self.teacher_forcing_rate
        self.state["teacher_forcing"] = next_teacher_forcing(
            TeacherForcingState(**self.state["teacher_forcing"]), tf, epoch=epoch,
            alignment=alignment, dev_cer=dev_metrics["dev_cer"]).as_dict()
        return f"align {alignment:.2f}  tf {before:.3f}->{self.teacher_forcing_rate:.3f}"

    def note_alignment(self, alignment: float, epoch: int, step: int, minutes: float) -> None:
        """Latch ``aligned`` once the dev alignment reaches the threshold, saying so in one line (and when
        it was: state["aligned_at"]); warn once when it is still below UNALIGNED (attention that has not
        begun to follow the audio) after training.alignment_warning_steps."""
        threshold = self.t.teacher_forcing.trigger_alignment
        where = f"epoch {epoch + 1}, step {step}, {minutes:.1f} min"
        if not self.state["aligned"] and alignment >= threshold:
            self.state["aligned"] = True
            self.state["aligned_at"] = {"epoch": epoch + 1, "step": step, "minutes": round(minutes, 2)}
            off = " (guided attention off from here)" if self.t.guided_attention and \
                self.t.guided_attention_until_aligned else ""
            self._notices.append(f"attention aligned: dev alignment {alignment:.2f} >= {threshold:g} at {where}{off}")
        deadline = self.t.alignment_warning_steps
        if alignment < UNALIGNED and 0 < deadline <= step and not self.state.get("warned_unaligned"):
            self.state["warned_unaligned"] = True
            self._notices.append(
                f"warning: attention has not aligned after {step} steps (dev alignment {alignment:.2f} < "
                f"{UNALIGNED:g} at {where}): greedy decoding will repeat or skip words and the beam leans on "
                "the CTC head. Try training.guided_attention_target=ctc (needs the CTC head: training.ctc_weight "
                "above 0), a larger training.guided_attention, more and smaller steps "
                "(data.max_utterances_per_batch), or a longer run (docs/training.md, alignment)")

    def notices(self) -> list[str]:
        """The lines to print after this epoch's line (cleared once taken)."""
        lines, self._notices = self._notices, []
        return lines


def hooks_for(model, training_cfg, saved: dict[str, dict] | None = None) -> list:
    """The hooks ``model``'s capabilities call for, each restored from ``saved`` (train_state.hooks)."""
    saved = saved or {}
    hooks = []
    if has_attention(model):
        hooks.append(AttentionHooks(training_cfg, saved.get(AttentionHooks.name)))
    return hooks
