"""Training throughput of the default config: utterances/s and audio seconds/s.

    python bench/bench_train.py                          # bundled sample's train-clean-100
    python bench/bench_train.py --root bench/out/corpus --steps 60 model.las.listener_hidden=256

Runs the real training step (teacher-forced forward, attention + CTC +
guided-attention loss, backward, clipping, AdamW) of ``config.yaml`` (plus overrides) over shuffled
batches from the data layer, on the device training would pick. The first
``--warmup`` steps are not timed. Prints one table line per setting.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from cli_args import count, natural  # bench/, this script's folder, is on sys.path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)


def training_setup(cfg, root: str, partition: str, device):
    """What a training step needs, built as train.py builds it (also used by bench_profile.py):
    the dataset, the seeded model in train mode, AdamW, and the family's loss options."""
    import torch

    from src.data.dataset import SpeechDataset
    from src.models import build_model
    from src.training.hooks import hooks_for
    from src.training.setup import make_optimizer
    from src.vocab import VOCAB

    torch.manual_seed(cfg.training.seed)
    dataset = SpeechDataset(root, partition, n_mels=cfg.data.n_mels, normalize=cfg.data.normalize)
    model = build_model(cfg.model, cfg.data.n_mels, len(VOCAB)).to(device).train()
    optimizer = make_optimizer(model, cfg.training)
    options = type(model).loss_options(cfg.training)  # the family's objective, as train.py runs it
    for hook in hooks_for(model, cfg.training):
        options.update(hook.batch_options())
    return dataset, model, optimizer, options


def main() -> int:
    import torch

    from src.config import load_config
    from src.data.dataset import make_loader
    from src.distributed import choose_device
    from src.models import count_parameters
    from src.training.evaluation import compute_loss
    from src.training.precision import autocast_dtype

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/sample", help="data root in the competition layout")
    parser.add_argument("--partition", default="train-clean-100")
    parser.add_argument("--steps", type=count, default=40, help="timed optimizer steps")
    parser.add_argument("--warmup", type=natural, default=5, help="untimed steps first")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args()
    from host import describe, host_load

    load = host_load()

    cfg = load_config("config.yaml", args.overrides)
    device = choose_device(cfg.training.device)
    dataset, model, optimizer, options = training_setup(cfg, args.root, args.partition, device)
    amp = autocast_dtype(cfg.training.amp, device, model)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    utts = frames = steps = 0
    start = None
    epoch = 0
    while steps < args.warmup + args.steps:
        loader = make_loader(dataset, cfg.data, shuffle=True, seed=cfg.training.seed, epoch=epoch)
        for batch in loader:
            if steps == args.warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = compute_loss(model, batch, **options).loss
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if steps >= args.warmup:
                utts += len(batch.names)
                frames += int(batch.feature_lens.sum())
            steps += 1
            if steps >= args.warmup + args.steps:
                break
        epoch += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(describe(load))  # measured before the run: the run itself loads the host
    print(f"bench_train: {device.type} ({threads} threads), {count_parameters(model) / 1e6:.2f}M parameters, "
          f"{args.root}/{args.partition}, batches of <= {cfg.data.max_utterances_per_batch} utt")
    print(f"{args.steps} steps in {seconds:.1f} s: {utts / seconds:.1f} utt/s, "
          f"{frames * 0.01 / seconds:.1f} audio s/s ({frames * 0.01 / utts:.2f} s per utterance)")
    return 0


if __name__ == "__main__":
    from src.errors import run_cli

    run_cli(main)  # a missing corpus or a bad override: one line, exit 2
