"""What a 12-hour Kaggle session buys: epochs of train-clean-100 per GPU preset and GPU, from FLOPs.

    python bench/gpu_estimate.py                      # gpu-las, gpu-transformer, gpu-ds2; T4, P100, A100, H100
    python bench/gpu_estimate.py --minutes 660 --utilisation 0.25 --recurrent-utilisation 0.1
    python bench/gpu_estimate.py --decode             # test.py's decoding per test-clean utterance instead

An estimate, not a measurement. One training step (forward + backward, the family's objective with
teacher forcing) of each preset's model is counted on the CPU with torch.utils.flop_counter.FlopCounterMode,
on single utterances at three quantiles (20, 50, 80%) of a LibriSpeech-shaped length distribution (bench/gpu_check.py's:
mean 1,265 frames, at most 2,448, 0.148 characters per frame), averaged, and scaled by the padding
that the preset's batch caps leave (LengthBucketSampler on 4,000 drawn lengths). The counter misses
recurrent kernels (oneDNN's LSTM) or counts them only in part (the native GRU), so every LSTM/GRU
call's own count (torch.lstm / torch.gru, seen by a TorchFunctionMode, then counted alone) is replaced
by the formula 2 x gates (4 LSTM, 3 GRU) x (input + hidden) x hidden FLOPs per frame and direction,
forward, times 3 for forward + backward. Element-wise work, the CTC
loss and the optimizer are not counted (they are memory-bound: part of what the utilisation covers).

Epochs = session minutes x 60 x peak x utilisation / (28,539 utterances x FLOPs per utterance).

``--decode``: what ``python test.py`` costs on each GPU, per utterance of test-clean (2,620, lengths
drawn as src/corpus/fullsize.py draws them, mean 738 frames, 0.148 characters per frame). Beam search
is a loop of small steps, so its time is set by how many kernels it launches one after another, not by
its FLOPs: each preset's model (untrained) decodes three batches of ``decoding.batch_size`` utterances
(sorted by length as test.py's loader sorts them; the batches at 20, 50 and 80% of the split) with the
preset's decoding settings, each hypothesis kept from ending before the utterance's expected number
of characters (a trained model's length). Every aten operator that is not a view is counted as one
kernel launch (TorchDispatchMode), and the FLOPs as above; the time is the larger of launches x
LAUNCH_SECONDS (10 microseconds assumed: eager PyTorch's host time per operator on a CUDA device) and
FLOPs / (peak x the family's utilisation). Host work outside torch (numba kernels, Python between
operators beyond the per-operator time) is not counted.
Peaks (dense tensor, the precision train.py picks): T4 65 TFLOPS fp16, P100 18.7 fp16 (no tensor
cores, no bf16), A100 312 bf16, H100 SXM 990 bf16. Utilisation: 25% assumed for the Conformer
(large matrix products, but short utterances, many small element-wise kernels and variable shapes);
10% for the recurrent families, whose LSTM/GRU layers run one time step after another: each step is
a small (B x H) x (H x 4H) product that cannot fill a large GPU, and the speller's and listener's
steps wait on each other. Neither figure is measured (bench/gpu_check.py measures utt/s).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli_args import positive, preset_list  # bench/, this script's folder, is on sys.path
from gpu_check import CHARS_PER_FRAME, GPU_PRESETS, SPLITS, TEST_FRAMES, TRAIN_FRAMES, draw_lengths

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAIN_UTTERANCES = 28539  # train-clean-100
UTILISATION, RECURRENT_UTILISATION = 0.25, 0.10  # assumed shares of peak: the Conformer; LSTM/GRU families


def assumed_utilisation(family: str, utilisation: float = UTILISATION,
                        recurrent: float = RECURRENT_UTILISATION) -> float:
    return recurrent if family in ("las", "ds2") else utilisation
LAUNCH_SECONDS = 10e-6  # assumed host time per eager operator (dispatch + kernel launch) on a CUDA device
TEST_UTTERANCES = SPLITS["test-clean"][0]  # 2,620
VIEW_OPS = {"view", "_unsafe_view", "expand", "t", "transpose", "permute", "slice", "select", "unsqueeze", "squeeze",
            "as_strided", "detach", "alias", "_reshape_alias", "reshape", "unbind", "split", "chunk", "narrow",
            "lift_fresh", "_to_copy_noop", "unflatten", "flatten"}
GPUS = (("T4", 65e12, "fp16"), ("P100", 18.7e12, "fp16"), ("A100", 312e12, "bf16"), ("H100", 990e12, "bf16"))
QUANTILES = (0.2, 0.5, 0.8)
class RecurrentCalls:
    """A TorchFunctionMode that notes every torch.lstm / torch.gru call (nn.LSTM, nn.GRU and the
    models' own direction-by-direction calls alike): its function, arguments and forward FLOPs,
    2 x (weight matrix elements) x frames for each input and hidden weight of every layer and
    direction, i.e. 2 x gates x (input + hidden) x hidden per frame and direction."""

    def __new__(cls):
        from torch.overrides import TorchFunctionMode

        class Mode(TorchFunctionMode):
            def __init__(self):
                super().__init__()
                self.calls = []  # (func, args, forward FLOPs)

            def __torch_function__(self, func, types, args=(), kwargs=None):
                if getattr(func, "__name__", "") in ("lstm", "gru", "rnn_tanh", "rnn_relu"):
                    packed = not isinstance(args[2], (list, tuple))  # (data, batch_sizes, hx, params, ...)
                    data, params = args[0], args[3] if packed else args[2]
                    frames = data.shape[0] if packed else data.shape[0] * data.shape[1]
                    flops = sum(2 * w.numel() * frames for w in params if w.dim() == 2)
                    self.calls.append((func, args, flops))
                return func(*args, **(kwargs or {}))

        return Mode()


def counted_alone(func, args) -> int:
    """What FlopCounterMode counts for one recurrent call, forward + backward, on fresh tensors of the
    same shapes (oneDNN's LSTM: nothing; the native GRU: its matrix products, in part)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def fresh(a):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.detach().clone().requires_grad_(a.requires_grad)
        if isinstance(a, (list, tuple)):
            return type(a)(fresh(x) for x in a)
        return a

    copies = [fresh(a) for a in args]
    with FlopCounterMode(display=False) as counter:
        out = func(*copies)
        out[0].float().sum().backward()
    return counter.get_total_flops()


def step_flops(model, batch, options: dict) -> tuple[int, int]:
    """(total, recurrent) FLOPs of forward + backward of ``model``'s objective on ``batch``: the
    counter's total, less what it counted of the recurrent calls, plus 3 x their forward formula."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from src.training.evaluation import compute_loss

    recurrent = RecurrentCalls()
    # the math attention backend is made of matrix products, which the counter knows
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter, recurrent:
        compute_loss(model, batch, **options).loss.backward()
    seen = sum(counted_alone(func, args) for func, args, _ in recurrent.calls)
    rnn = 3 * sum(flops for _, _, flops in recurrent.calls)
    return counter.get_total_flops() - seen + rnn, rnn


def preset_estimate(name: str):
    """(config, mean FLOPs per utterance of a training step incl. padding, recurrent share, padding factor)."""
    import numpy as np
    import torch

    from gpu_check import build, make_batch
    from src.config import load_config
    from src.data.dataset import LengthBucketSampler

    cfg = load_config(ROOT / "config.yaml", ["training.device=cpu"], preset=name)
    rng = np.random.default_rng(cfg.training.seed)
    pool = draw_lengths(rng, 4000, *TRAIN_FRAMES)
    batches = LengthBucketSampler(pool, cfg.data.max_frames_per_batch, cfg.data.max_utterances_per_batch,
                                  shuffle=True, seed=cfg.training.seed).all_batches()
    padding = sum(len(b) * int(pool[b].max()) for b in batches) / int(pool.sum())
    model, _, options, _ = build(cfg, torch.device("cpu"))
    totals, rnns = [], []
    for q in QUANTILES:
        batch = make_batch(rng, [int(np.quantile(pool, q))], cfg.data.n_mels)
        total, rnn = step_flops(model, batch, options)
        totals.append(total)
        rnns.append(rnn)
    return cfg, float(np.mean(totals)) * padding, float(np.sum(rnns) / np.sum(totals)), padding


class OperatorCount:
    """A TorchDispatchMode counting the aten operators that launch work (views and no-ops left out)."""

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode

        class Mode(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.launches = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.overloadpacket.__name__ not in VIEW_OPS:
                    self.launches += 1
                return func(*args, **(kwargs or {}))

        return Mode()


class NoEarlyEnd:
    """A beam-search scorer that keeps <eos> out until the utterance's expected length, so an untrained
    model decodes for as many steps as a trained one would (it adds one small operator per step)."""

    def __init__(self, encoded, expected: "torch.Tensor"):
        self.expected = expected  # (N,) characters per row

    def score(self, prefix_len: int):
        import torch

        from src.vocab import EOS, VOCAB

        out = torch.zeros(self.expected.numel(), len(VOCAB), device=self.expected.device)  # (N, V)
        out[:, EOS] = torch.where(self.expected > prefix_len, -1e4, 0.0)
        return out

    def select(self, index, tokens) -> None:
        self.expected = self.expected[index]


def decode_estimate(name: str):
    """(config, launches per utterance, FLOPs per utterance, characters per utterance, whether the model has a
    step decoder (beam search in torch; else its CTC search runs in numba, not counted)) of test.py's decoding
    with preset ``name``: the mean over three batches of test-clean-shaped utterances (see --decode)."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from gpu_check import build, make_batch
    from src.config import load_config
    from src.decoding import beam_search, length_normalised, scorers_for
    from src.models.interface import is_step_decoder

    cfg = load_config(ROOT / "config.yaml", ["training.device=cpu"], preset=name)
    dec = cfg.decoding
    rng = np.random.default_rng(cfg.training.seed)
    lengths = np.sort(draw_lengths(rng, TEST_UTTERANCES, *TEST_FRAMES, shortest=SPLITS["test-clean"][6]))
    n = dec.batch_size
    model, _, _, _ = build(cfg, torch.device("cpu"))
    model.eval()
    launches, flops, chars = [], [], []
    for q in QUANTILES:
        start = min(int(q * len(lengths)), len(lengths) - n)
        batch = make_batch(rng, lengths[start:start + n], cfg.data.n_mels)
        expected = torch.round(batch.feature_lens * SPLITS["test-clean"][4]).long()  # (B,)
        count = OperatorCount()
        with torch.no_grad(), FlopCounterMode(display=False) as counter, count:
            encoded = model.encode(batch.features, batch.feature_lens)
            if is_step_decoder(model):
                weight, scorers = scorers_for(encoded, dec)
                scorers.append((1.0, lambda enc: NoEarlyEnd(enc, expected.repeat_interleave(dec.beam_size))))
                beam_search(model, encoded, expected, beam_size=dec.beam_size, scorers=scorers,
                            attention_weight=weight, ranker=length_normalised(dec.length_penalty))
            # a CTC family's prefix beam search runs in numba on the host: only its encoder is counted
        launches.append(count.launches / n)
        flops.append(counter.get_total_flops() / n)
        chars.append(float(expected.float().mean()))
    return cfg, float(np.mean(launches)), float(np.mean(flops)), float(np.mean(chars)), is_step_decoder(model)


def decode_table(presets: list[str], utilisation: float, recurrent: float) -> list[str]:
    header = ["preset", "decoder", "characters per utt", "kernel launches per utt", "GFLOP per utt",
              *(f"{gpu}: s per utt (test-clean, min)" for gpu, _, _ in GPUS)]
    lines = [f"Estimate, not measured: python test.py's decoding of test-clean ({TEST_UTTERANCES:,} utterances, "
             f"mean {TEST_FRAMES[0]} frames) per GPU; time = max(launches x {LAUNCH_SECONDS * 1e6:g} us, "
             "FLOPs / (peak x utilisation))", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    from src.decoding import decoding_description

    for name in presets:
        cfg, launches, flops, chars, step = decode_estimate(name)
        util = assumed_utilisation(cfg.model.family, utilisation, recurrent)
        seconds = [max(launches * LAUNCH_SECONDS, flops / (peak * util)) for _, peak, _ in GPUS]
        decoder = decoding_description(cfg.decoding) if step else \
            f"CTC prefix beam {cfg.decoding.beam_size}: the encoder only (the search runs in numba on the host)"
        lines.append(f"| {name} | {decoder} | {chars:.0f} | {launches:,.0f} | "
                     f"{flops / 1e9:.2f} | " + " | ".join(f"{s:.3f} ({s * TEST_UTTERANCES / 60:.1f})" for s in seconds)
                     + " |")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(GPU_PRESETS), help="comma-separated presets")
    parser.add_argument("--minutes", type=positive, default=660.0, help="training minutes of the session (default 660)")
    parser.add_argument("--utilisation", type=positive, default=UTILISATION, help="assumed share of peak, Conformer")
    parser.add_argument("--recurrent-utilisation", type=positive, default=RECURRENT_UTILISATION,
                        help="assumed share of peak, families with LSTM/GRU layers")
    parser.add_argument("--decode", action="store_true",
                        help="instead: test.py's decoding time per test-clean utterance (kernel launches and FLOPs)")
    args = parser.parse_args()
    import torch

    presets = preset_list(args.presets)
    torch.manual_seed(0)
    if args.decode:
        print("\n".join(decode_table(presets, args.utilisation, args.recurrent_utilisation)))
        return 0
    header = ["preset", "GFLOP per utt (train step)", "recurrent share", "padding", "assumed utilisation",
              *(f"{gpu} ({peak / 1e12:g} TFLOPS {dtype})" for gpu, peak, dtype in GPUS)]
    lines = [f"FLOP estimate, not measured: epochs of train-clean-100 ({TRAIN_UTTERANCES:,} utterances) in "
             f"{args.minutes:g} training minutes on one GPU; mean utterance {TRAIN_FRAMES[0]} frames, "
             f"{CHARS_PER_FRAME} chars/frame",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in presets:
        cfg, flops, rnn_share, padding = preset_estimate(name)
        util = assumed_utilisation(cfg.model.family, args.utilisation, args.recurrent_utilisation)
        epochs = [args.minutes * 60 * peak * util / (TRAIN_UTTERANCES * flops) for _, peak, _ in GPUS]
        lines.append(f"| {name} | {flops / 1e9:.1f} | {rnn_share:.0%} | {padding:.2f} | {util:.0%} | "
                     + " | ".join(f"{e:.1f}" for e in epochs) + " |")
        print(lines[-1], file=sys.stderr, flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    from src.errors import run_cli

    run_cli(main)
