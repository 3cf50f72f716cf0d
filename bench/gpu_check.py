"""The GPU presets on a real GPU, in minutes: does each train in bf16 and fp16, how fast, in how much
memory, does its worst batch fit, how fast does it decode, and (two GPUs) does torchrun run.

    python bench/gpu_check.py --out bench/out/gpu_check.md           # one GPU, at most 8 minutes
    python bench/gpu_check.py --device cpu --tiny                     # the same code paths on the CPU, tiny models

For each preset (configs/gpu-*.yaml) the model is built from the preset's config and trained on
batches made here, shaped like the competition's train-clean-100: random (T, 28) features with T
drawn from a left-skewed distribution of mean 1,265 and maximum 2,448 frames (standard deviation 350
assumed), random characters at 0.148 per frame (at most 400), packed by the preset's
``data.max_utterances_per_batch`` / ``max_frames_per_batch`` caps (LengthBucketSampler, as training
packs them). A few batches are repeated for ``--steps`` steps (the project's make_optimizer, the
family's objective with its loss options, precision.autocast, a GradScaler under fp16, clipping; no
SpecAugment; the lr ramps to the preset's peak over the first quarter): the loss must stay finite
and fall from the first pass over those batches to the last. Then: the worst batches (most padded
frames; the longest utterance) forward + backward once, as train.py's out-of-memory probe does; beam
search with the preset's decoding settings on a few test-clean-shaped utterances (mean 738 frames);
with two or more GPUs, ``torchrun --nproc_per_node=2 train.py`` (nccl) on a tiny synthetic corpus.
``--tiny``: lengths and batch caps a tenth, tiny model sizes, for a CPU run in seconds. fp16
autocast needs CUDA; bf16 on the CPU runs where oneDNN can (precision.autocast_dtype says).

Prints one markdown table (and writes it to ``--out``). Imports torch, numpy, yaml and src only.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cli_args import count, positive, preset_list  # bench/, this script's folder, is on sys.path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.corpus.fullsize import SPLITS, draw_lengths  # noqa: E402  (the competition's lengths; numpy only)

GPU_PRESETS = ("gpu-las", "gpu-transformer", "gpu-ds2")
TRAIN_FRAMES = SPLITS["train-clean-100"][1:4]  # mean, max, assumed standard deviation (frames): 1265, 2448, 350
TEST_FRAMES = SPLITS["test-clean"][1:4]  # 738, 3491, 450
CHARS_PER_FRAME, MAX_CHARS = SPLITS["train-clean-100"][4:6]  # 0.148, 400
TINY_MODELS = {
    "las": ["model.las.conv_channels=16", "model.las.listener_hidden=16", "model.las.attention_dim=16",
            "model.las.embedding_dim=16", "model.las.speller_hidden=32"],
    "transformer": ["model.transformer.d_model=32", "model.transformer.heads=2", "model.transformer.ffn_dim=64",
                    "model.transformer.encoder_layers=2", "model.transformer.decoder_layers=1",
                    "model.transformer.conv_kernel=7", "model.transformer.front_end_channels=16"],
    "ds2": ["model.ds2.conv_channels=4", "model.ds2.rnn_layers=2", "model.ds2.rnn_hidden=32"],
}


@dataclass
class Row:
    preset: str
    check: str
    ok: str  # yes | no | skipped
    utt_s: float = math.nan
    peak_gib: float = math.nan
    notes: str = ""

    def markdown(self) -> str:
        speed = "-" if math.isnan(self.utt_s) else f"{self.utt_s:.1f}"
        peak = "-" if math.isnan(self.peak_gib) else f"{self.peak_gib:.2f}"
        return f"| {self.preset} | {self.check} | {self.ok} | {speed} | {peak} | {self.notes} |"


def make_batch(rng, lengths, n_mels: int):
    """A collated Batch of random features (B, T, D) and random characters, 0.148 per frame."""
    import torch

    from src.data.dataset import collate
    from src.vocab import EOS, SOS, VOCAB

    items = []
    for i, t in enumerate(lengths):
        n_chars = int(min(MAX_CHARS, max(2, round(CHARS_PER_FRAME * t * rng.uniform(0.85, 1.15)))))
        chars = rng.integers(3, len(VOCAB), size=n_chars)  # A-Z, apostrophe, space
        items.append({"features": torch.from_numpy(rng.standard_normal((int(t), n_mels)).astype("float32")),
                      "tokens": torch.tensor([SOS, *chars.tolist(), EOS]), "name": f"synthetic-{i}", "index": i})
    return collate(items)


def preset_config(name: str, tiny: bool, device: str):
    from src.config import load_config

    cfg = load_config(ROOT / "config.yaml", [f"training.device={device}"], preset=name)
    if tiny:
        utts, frames = min(8, cfg.data.max_utterances_per_batch), cfg.data.max_frames_per_batch // 10
        cfg = load_config(ROOT / "config.yaml", [f"training.device={device}", *TINY_MODELS[cfg.model.family],
                                                  f"data.max_utterances_per_batch={utts}",
                                                  f"data.max_frames_per_batch={frames}", "decoding.beam_size=4"],
                          preset=name)
    return cfg


def build(cfg, device):
    import torch

    from src.models import build_model, count_parameters
    from src.training.hooks import hooks_for
    from src.training.setup import make_optimizer
    from src.vocab import VOCAB

    torch.manual_seed(cfg.training.seed)
    model = build_model(cfg.model, cfg.data.n_mels, len(VOCAB)).to(device).train()
    options = type(model).loss_options(cfg.training)
    for hook in hooks_for(model, cfg.training):
        options.update(hook.batch_options())
    return model, make_optimizer(model, cfg.training), options, count_parameters(model)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device) -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else math.nan


def train_check(name: str, cfg, device, dtype, batches: list, steps: int, deadline: float) -> Row:
    """``steps`` optimizer steps cycling over ``batches`` under autocast ``dtype``."""
    import torch

    from src.training.evaluation import compute_loss
    from src.training.precision import autocast

    label = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]
    model, optimizer, options, n_params = build(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    reset_peak(device)
    losses, timed_utts, start = [], 0, None
    warm = max(1, steps // 4)
    try:
        for i in range(steps):
            if time.monotonic() > deadline:
                break
            if i == min(2, steps - 1):  # the first steps pay for kernel selection and allocation
                synchronize(device)
                start = time.perf_counter()
            batch = batches[i % len(batches)]
            for group in optimizer.param_groups:
                group["lr"] = cfg.training.lr * min(1.0, (i + 1) / warm)
            with autocast(device, dtype):
                out = compute_loss(model, batch, **options)
            scaler.scale(out.loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(out.loss.detach()))
            if start is not None:
                timed_utts += len(batch)
        synchronize(device)
    except torch.OutOfMemoryError:
        return Row(name, f"train {label}", "no", notes=f"out of memory at step {len(losses) + 1}")
    seconds = time.perf_counter() - start if start is not None else math.nan
    k = len(batches)
    if len(losses) < 2 * k:
        return Row(name, f"train {label}", "no", notes=f"only {len(losses)} of {steps} steps within --minutes")
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    finite = all(math.isfinite(x) for x in losses)
    fell = finite and last < first
    utts, frames = sum(len(b) for b in batches) / k, sum(int(b.feature_lens.max()) for b in batches) / k
    shape = f"{utts:.0f} utts x {frames:.0f} frames"
    return Row(name, f"train {label}", "yes" if fell else "no", timed_utts / seconds, peak_gib(device),
               f"{n_params / 1e6:.2f}M params; loss {first:.3f} -> {last:.3f} ({'fell' if fell else 'did not fall'}"
               f"{'' if finite else ', NOT FINITE'}); {len(losses)} steps over {k} batches of about {shape}")


def probe_check(name: str, cfg, device, dtype, worst: list) -> Row:
    """Forward + backward the worst batches once, as probe_largest_batches does."""
    import torch

    from src.training.evaluation import compute_loss
    from src.training.precision import autocast

    label = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]
    model, _, options, _ = build(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    reset_peak(device)
    shapes = ", ".join(f"{len(b)} x {int(b.feature_lens.max())}" for b in worst)
    try:
        for batch in worst:
            with autocast(device, dtype):
                out = compute_loss(model, batch, **options)
            scaler.scale(out.loss).backward()
            model.zero_grad(set_to_none=True)
            del out
        synchronize(device)
    except torch.OutOfMemoryError:
        return Row(name, f"OOM probe {label}", "no", notes=f"out of memory on worst batches ({shapes} frames): "
                                                            "lower data.max_frames_per_batch")
    return Row(name, f"OOM probe {label}", "yes", peak_gib=peak_gib(device),
               notes=f"worst batches (utts x frames): {shapes}")


def decode_check(name: str, cfg, device, batch) -> Row:
    """decode_batch with the preset's decoding settings (an untrained model: often to the length limit)."""
    from src.decoding import decode_batch, decoding_description

    model, _, _, _ = build(cfg, device)
    decode_batch(model, make_small(batch, 1), cfg.decoding)  # warm-up (kernels, numba compilation)
    synchronize(device)
    start = time.perf_counter()
    texts = decode_batch(model, batch, cfg.decoding)
    synchronize(device)
    seconds = time.perf_counter() - start
    chars = sum(len(t) for t in texts) / max(1, len(texts))
    return Row(name, f"decode {cfg.decoding.method} {cfg.decoding.beam_size}", "yes", len(texts) / seconds,
               notes=f"{len(texts)} utts of mean {float(batch.feature_lens.float().mean()):.0f} frames, "
                     f"untrained model, {chars:.0f} chars each; {decoding_description(cfg.decoding)}")


def make_small(batch, n: int):
    from src.data.dataset import collate

    items = [{"features": batch.features[i, : int(batch.feature_lens[i])].cpu(), "tokens": None,
              "name": batch.names[i], "index": i} for i in range(n)]
    return collate(items)


def ddp_check(name: str, extra: list[str], deadline: float) -> Row:
    """torchrun --nproc_per_node=2 train.py on a toy corpus, when two GPUs exist."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus < 2:
        print(f"ddp: skipped, torchrun needs two CUDA GPUs ({gpus} found)", flush=True)
        return Row(name, "torchrun 2 GPUs", "skipped", notes=f"needs 2 CUDA GPUs, {gpus} found")
    from src.corpus.toy import make_toy_corpus

    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_toy_corpus(Path(tmp) / "corpus", n_train=64, n_dev=8)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
               "--preset", name, f"data.root={corpus}", f"logging.run_dir={Path(tmp) / 'run'}",
               "logging.wandb=disabled", "data.check=false", "data.max_utterances_per_batch=8", "training.epochs=2",
               "training.final_check=false",
               *extra]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                  timeout=max(60.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as err:
            return Row(name, "torchrun 2 GPUs", "no", notes=f"still running after {err.timeout:.0f} s (--minutes)")
        seconds = time.perf_counter() - start
    ok = proc.returncode == 0 and "x2 ranks" in proc.stdout + proc.stderr
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] if not ok else []
    return Row(name, "torchrun 2 GPUs", "yes" if ok else "no",
               notes=f"nccl, 2 epochs of a 64-utterance toy corpus, {seconds:.0f} s, exit {proc.returncode}"
                     + (f": {tail[0][:200]}" if tail else ""))


def precisions(device, model_has_rnn: bool) -> list:
    """The autocast dtypes to try on ``device`` (None = fp32), and lines saying what is skipped."""
    import torch

    from src.training.precision import cpu_runs_bf16_recurrent

    if device.type == "cuda":
        found = [torch.float16]
        if torch.cuda.is_bf16_supported():
            found.insert(0, torch.bfloat16)
        else:
            print("bf16: skipped, this GPU has no bfloat16", flush=True)
        return found
    print("fp16: skipped, fp16 autocast needs CUDA", flush=True)
    found = [None]
    if not model_has_rnn or cpu_runs_bf16_recurrent():
        found.append(torch.bfloat16)
    else:
        print("bf16: skipped for recurrent models, this CPU's oneDNN has no bf16 LSTM/GRU", flush=True)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(GPU_PRESETS), help="comma-separated presets (configs/NAME.yaml)")
    parser.add_argument("--steps", type=count, default=None,
                        help="training steps per precision (default 30; --tiny 12)")
    parser.add_argument("--minutes", type=positive, default=8.0, help="time budget; later checks are skipped past it")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="tiny models, short batches: the CPU path in seconds")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args()

    import numpy as np
    import torch

    from src.data.dataset import LengthBucketSampler
    from src.errors import UserError

    presets = preset_list(args.presets)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible; run on a GPU machine or use --device cpu --tiny")
    device = torch.device(args.device)
    steps = args.steps or (12 if args.tiny else 30)
    deadline = time.monotonic() + args.minutes * 60
    scale = 0.1 if args.tiny else 1.0
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"gpu_check: {what}, torch {torch.__version__}, presets {', '.join(presets)}, {steps} steps, "
          f"budget {args.minutes:g} min{', tiny models' if args.tiny else ''}", flush=True)

    rows: list[Row] = []
    for name in presets:
        cfg = preset_config(name, args.tiny, args.device)
        rng = np.random.default_rng(cfg.training.seed)
        n_mels = cfg.data.n_mels
        pool = draw_lengths(rng, 400 if args.tiny else 4000, *TRAIN_FRAMES, scale=scale)
        sampler = LengthBucketSampler(pool, cfg.data.max_frames_per_batch, cfg.data.max_utterances_per_batch,
                                      shuffle=True, seed=cfg.training.seed)
        packed = sampler.all_batches()
        typical = [make_batch(rng, pool[b], n_mels).to(device) for b in packed[:3 if args.tiny else 4]]
        by_frames = max(packed, key=lambda b: len(b) * int(pool[b].max()))
        longest = next(b for b in packed if 0 in b)  # pool[0] is the longest utterance
        worst = [make_batch(rng, pool[b], n_mels).to(device) for b in ([by_frames] if by_frames is longest
                                                                        else [by_frames, longest])]
        n_decode = 4 if args.tiny else min(32, cfg.decoding.batch_size)
        test_lengths = draw_lengths(rng, n_decode + 1, *TEST_FRAMES, scale=scale)[1:]  # [0] is the longest
        decode_set = make_batch(rng, test_lengths, n_mels).to(device)
        model_has_rnn = cfg.model.family in ("las", "ds2")
        for dtype in precisions(device, model_has_rnn):
            rows.append(train_check(name, cfg, device, dtype, typical, steps, deadline) if time.monotonic() < deadline
                        else Row(name, "train", "skipped", notes="past --minutes"))
            print(rows[-1].markdown(), flush=True)
        from src.training.precision import autocast_dtype

        run_dtype = autocast_dtype(cfg.training.amp, device)  # what train.py would use (auto: bf16 or fp16 / fp32)
        for check in (lambda: probe_check(name, cfg, device, run_dtype, worst),
                      lambda: decode_check(name, cfg, device, decode_set)):
            rows.append(check() if time.monotonic() < deadline else Row(name, "-", "skipped", notes="past --minutes"))
            print(rows[-1].markdown(), flush=True)
        del typical, worst, decode_set
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type == "cuda":
        family = preset_config(presets[0], False, args.device).model.family
        extra = TINY_MODELS[family] if args.tiny else []
        rows.append(ddp_check(presets[0], extra, deadline) if time.monotonic() < deadline
                    else Row(presets[0], "torchrun 2 GPUs", "skipped", notes="past --minutes"))
    else:
        print("ddp: skipped, torchrun with nccl needs two CUDA GPUs", flush=True)
        rows.append(Row(presets[0], "torchrun 2 GPUs", "skipped", notes="CPU run"))

    table = "\n".join([f"gpu_check on {what}, torch {torch.__version__}: {steps} steps per precision"
                       f"{', tiny models, lengths / 10' if args.tiny else ''}", "",
                       "| preset | check | ok | utt/s | peak GiB | notes |", "|---|---|---|---|---|---|",
                       *(r.markdown() for r in rows)])
    print("\n" + table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
    return 0 if all(r.ok in ("yes", "skipped") for r in rows) else 1


if __name__ == "__main__":
    os.chdir(ROOT)
    from src.errors import run_cli

    run_cli(main)
