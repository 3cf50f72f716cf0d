"""Mixed precision: which autocast dtype a run uses, and the one autocast block every caller shares.

    dtype = autocast_dtype(cfg.training.amp, device, model)   # None: fp32
    with autocast(device, dtype): out = model(...)
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

from src.errors import UserError


@functools.cache
def cpu_runs_bf16_recurrent() -> bool:
    """Whether this CPU runs LSTM and GRU layers under bfloat16 autocast. oneDNN's bf16 recurrent
    kernels need AVX-512; on an AVX2-only CPU (seen here on an AMD EPYC) the forward pass raises
    "could not create a primitive descriptor for the LSTM forward propagation primitive"."""
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            for layer in (nn.LSTM(4, 4, batch_first=True), nn.GRU(4, 4, batch_first=True)):
                layer(torch.zeros(1, 2, 4))  # (B=1, T=2, 4)
    except RuntimeError:
        return False
    return True


def autocast_dtype(amp: str, device: torch.device, model: nn.Module | None = None) -> torch.dtype | None:
    """The autocast dtype of training and dev scoring, or None for fp32.

    CUDA: bf16 when asked for or (auto) when the GPU has it, else fp16 with a GradScaler (not measured
    here: no GPU was available). CPU: bf16 only when asked for (``training.amp=bf16``; the matrix
    products and recurrent layers run in bfloat16, weights, optimizer state and losses stay fp32);
    auto keeps fp32 there. A ``model`` with recurrent layers on a CPU whose oneDNN cannot run them in
    bf16 is a one-line error rather than a crash at the first step. Anything else (e.g. mps) runs fp32."""
    if amp == "none":
        return None
    if device.type == "cuda":
        if amp == "bf16" and not torch.cuda.is_bf16_supported():
            raise UserError("config: training.amp=bf16 but this GPU has no bfloat16; use training.amp=fp16 or auto")
        if amp == "bf16" or amp == "auto" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if device.type == "cpu" and amp == "fp16":
        raise UserError("config: training.amp=fp16 needs a CUDA GPU; on the CPU use training.amp=bf16, auto or none")
    if device.type == "cpu" and amp == "bf16":
        recurrent = model is not None and any(isinstance(m, nn.RNNBase) for m in model.modules())
        if recurrent and not cpu_runs_bf16_recurrent():
            raise UserError("config: training.amp=bf16 but this CPU cannot run LSTM/GRU layers in bfloat16 "
                            "(oneDNN needs AVX-512); use training.amp=none (or auto)")
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast on ``device``'s type with ``dtype``, or a no-op context for fp32 (None)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
