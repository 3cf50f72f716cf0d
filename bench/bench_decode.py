"""Decode throughput: greedy against beam 5 and beam 10 (utterances per second).

    python bench/bench_decode.py                 # 64 utterances, default model config, CPU
    python bench/bench_decode.py --quick         # 16 utterances
    python bench/bench_decode.py --device cuda --utterances 256
    python bench/bench_decode.py --family transformer     # + the same searches without the key/value cache

Random weights with the default ModelConfig (the real LAS), inputs of
realistic length (600-800 frames, like dev-clean's mean of 713). A random
model emits <eos> at random, so <eos> is masked out here and every hypothesis
runs to a fixed, realistic length: 1.25 characters per listener frame (about
110 characters, dev-clean's mean), where beam search must then take <eos>.
All methods therefore do the same number of steps per utterance, and the
ratio measures the cost of the search itself. The "step share" column is the
part of the time spent inside model.step; the rest is the search's own
bookkeeping (top-k, reordering, pooling).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from src.config import load_config  # noqa: E402
from src.decoding import beam_search, greedy_decode, max_output_lengths  # noqa: E402
from src.models import build_model  # noqa: E402
from src.vocab import EOS, VOCAB_SIZE  # noqa: E402

from cli_args import count, positive  # noqa: E402  (bench/, this script's folder, is on sys.path)


class NoEarlyEos(torch.nn.Module):
    """Wraps a model: <eos> impossible (the length limit ends every hypothesis); times model.step."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.step_seconds = 0.0

    def encode(self, *args):
        return self.model.encode(*args)

    def init_state(self, encoded):
        return self.model.init_state(encoded)

    def reorder_state(self, state, index):
        return self.model.reorder_state(state, index)

    def step(self, tokens, state, encoded):
        sync(tokens.device)
        start = time.perf_counter()
        logits, state, attn = self.model.step(tokens, state, encoded)
        logits = logits.clone()
        logits[:, EOS] = -1e4
        sync(tokens.device)
        self.step_seconds += time.perf_counter() - start
        return logits, state, attn


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=count, default=64)
    parser.add_argument("--batch-size", type=count, default=32, help="utterances per batch (decoding.batch_size)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=count, default=2, help="torch CPU threads")
    parser.add_argument("--chars-per-frame", type=positive, default=1.25, help="output characters per listener frame")
    parser.add_argument("--beams", type=count, nargs="+", default=[5, 10])
    parser.add_argument("--repeats", type=count, default=2, help="interleaved repeats; the best time counts")
    parser.add_argument("--quick", action="store_true", help="16 utterances, 2 repeats")
    parser.add_argument("--family", default="las", help="model.family with its committed defaults (las, transformer)")
    args = parser.parse_args()
    from host import describe, host_load

    print(describe(host_load()), flush=True)  # before the run: the run itself loads the host
    if args.quick:
        args.utterances, args.repeats = min(args.utterances, 16), 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = build_model(load_config(None, [f"model.family={args.family}"]).model, 28, VOCAB_SIZE).to(device).eval()
    variants = {"": NoEarlyEos(net)}
    if args.family == "transformer":
        from src.models.transformer import FullPrefixSteps

        variants[" no cache"] = NoEarlyEos(FullPrefixSteps(net))
    model = variants[""]

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(600, 801, (args.utterances,), generator=g)
    batches = []
    for start in range(0, args.utterances, args.batch_size):
        lens = lengths[start : start + args.batch_size]
        feats = torch.randn(len(lens), int(lens.max()), 28, generator=g)
        with torch.no_grad():
            encoded = model.encode(feats.to(device), lens.to(device))
        limits = (max_output_lengths(lens, 0.154, 1) if args.family == "transformer"
                  else max_output_lengths(encoded.lens, args.chars_per_frame, 1))
        batches.append((encoded, limits))
    mean_chars = torch.cat([lim.float() for _, lim in batches]).mean().item()

    def run(method: str, k: int, variant: str = "") -> tuple[float, float, int]:
        model = variants[variant]
        model.step_seconds = 0.0
        chars = 0
        sync(device)
        start = time.perf_counter()
        for encoded, limits in batches:
            if method == "greedy":
                out = greedy_decode(model, encoded, limits)
            else:
                out = beam_search(model, encoded, limits, beam_size=k, length_penalty=1.0)
            chars += sum(len(s) for s in out)
        sync(device)
        return time.perf_counter() - start, model.step_seconds, chars

    run("greedy", 1)  # warm-up (allocator, kernels)
    methods = [(m, k, v) for v in variants for m, k in [("greedy", 1)] + [("beam", k) for k in args.beams]]
    print(f"{args.utterances} utterances of 600-800 frames in batches of {args.batch_size}, "
          f"{mean_chars:.0f} output characters each on average; family {args.family} with the committed "
          f"defaults, random weights; device {device}, {args.threads} torch threads")
    # Interleaved repeats (greedy, beam 5, beam 10, greedy, ...): on a shared machine the best
    # of several runs is the least disturbed one.
    best: dict[tuple[str, int, str], tuple[float, float, int]] = {}
    for _ in range(args.repeats):
        for method, k, variant in methods:
            result = run(method, k, variant)
            if (method, k, variant) not in best or result[0] < best[(method, k, variant)][0]:
                best[(method, k, variant)] = result
    print(f"{'method':19s} {'seconds':>8s} {'utt/s':>8s} {'chars/s':>9s} {'step share':>11s} {'x greedy':>9s}"
          f"   (best of {args.repeats})")
    base = None
    ratios = {}
    for method, k, variant in methods:
        seconds, step_seconds, chars = best[(method, k, variant)]
        base = base or seconds
        name = ("greedy" if method == "greedy" else f"beam {k}") + variant
        ratios[name] = seconds / base
        print(f"{name:19s} {seconds:8.2f} {args.utterances / seconds:8.1f} {chars / seconds:9.0f} "
              f"{step_seconds / seconds:10.0%} {seconds / base:8.2f}x")
    if "beam 10" in ratios:
        verdict = "meets" if ratios["beam 10"] <= 3.0 else "misses"
        print(f"beam 10 / greedy = {ratios['beam 10']:.2f}x ({verdict} the <= 3x target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
