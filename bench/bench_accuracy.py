"""Accuracy benchmark: train the default config for a fixed wall-clock budget
on a synthetic multi-voice corpus, then score dev and test (unseen voices and
sentences).

    python bench/bench_accuracy.py                      # 4000 train utterances, 20 minutes
    python bench/bench_accuracy.py --minutes 5 --train 1000   # a quick look

Steps (each skipped when its output exists, so an interrupted run continues):
1. ``python -m src.corpus.synth bench/out/corpus --counts ...`` (espeak-ng and flite
   voices; dev-clean and test-clean speakers and sentences are not in train);
2. ``python train.py data.root=bench/out/corpus training.max_minutes=M ...``
   with every other setting from config.yaml;
3. greedy and beam decoding of dev-clean and test-clean with the best
   checkpoint (or ``--checkpoint``), scored by mean Levenshtein distance (the competition metric) and CER.

The result table is printed and saved as ``<run folder>/accuracy.json``, with
the host's load before training and after scoring (a busy host is flagged).

    python bench/bench_accuracy.py model.family=ds2     # another family: its own run folder
    python -m src.average bench/out/run-20min --last 3  # then score the average of the last 3 epochs:
    python bench/bench_accuracy.py --checkpoint average.pt
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from cli_args import count, non_negative, positive  # bench/, this script's folder, is on sys.path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (``--out`` may be elsewhere)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run(cmd: list[str]) -> None:
    """Run a step; its own error line is above, so a failure ends here in one more line (exit 2)."""
    from src.errors import UserError

    print("$", " ".join(cmd), flush=True)
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if code != 0:
        raise UserError(f"bench_accuracy: the step above exited with code {code}; fix what it printed and "
                        "run the same command again (finished steps are skipped)")


# how a decoding setting is named in a row's decoder column
LABELS = {"ctc_weight": "ctc", "lm_weight": "lm", "length_penalty": "lp"}


def score_split(checkpoint: Path, corpus: Path, split: str, method: str, beam_size: int, **decoding) -> dict:
    """Decode ``split`` with the checkpoint alone (test.py's decode_dataset); mean Levenshtein and CER."""
    import csv

    from src.checkpoint import front_end, load_checkpoint, model_from_checkpoint
    from src.config import DataConfig, DecodingConfig
    from src.data.dataset import SpeechDataset
    from src.decoding import decode_dataset
    from src.metrics import cer, mean_levenshtein

    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, "cpu")
    with_refs = split != "test-clean"
    n_mels, normalize = front_end(ckpt)
    dataset = SpeechDataset(corpus, split, n_mels=n_mels, normalize=normalize, with_transcripts=with_refs)
    start = time.perf_counter()
    hyps, refs = decode_dataset(model, dataset, DataConfig(num_workers=0), DecodingConfig(method=method,
                                beam_size=beam_size, **decoding), desc=f"{split} {method}")
    seconds = time.perf_counter() - start
    if refs is None:  # test-clean: the references synth wrote, in sorted file order
        with open(corpus / "test_reference.csv") as f:
            refs = [row["label"] for row in csv.DictReader(f)]
    return {
        "split": split,
        "decoder": (method if method == "greedy" else f"beam {beam_size}")
                   + "".join(f" {LABELS.get(k, k)} {v:g}" for k, v in decoding.items()
                             if isinstance(v, float) and (v or k == "length_penalty")),
        "utterances": len(hyps),
        "mean_levenshtein": round(mean_levenshtein(hyps, refs), 2),
        "cer_percent": round(100 * cer(hyps, refs), 2),
        "decode_seconds": round(seconds, 1),
    }


def main() -> int:
    from src.config import DecodingConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=positive, default=20.0, help="training wall-clock budget")
    parser.add_argument("--train", type=count, default=4000, help="training utterances to synthesise")
    parser.add_argument("--eval", type=count, default=200, help="dev and test utterances each")
    parser.add_argument("--out", default="bench/out", help="corpus, run and results folder")
    parser.add_argument("--beam", type=count, default=10, help="beam size for the beam rows")
    parser.add_argument("--length-penalty", type=non_negative, default=None,
                        help="decoding.length_penalty of the beam rows (default: the committed one)")
    parser.add_argument("--ctc-weights", default=f"0,{DecodingConfig().ctc_weight:g}",
                        help="comma-separated decoding.ctc_weight values, one beam row each (joint CTC/attention; "
                             "default: 0 and the committed decoding.ctc_weight)")
    parser.add_argument("--lm-weights", default="0",
                        help="comma-separated decoding.lm_weight values; > 0 builds a 6-gram character LM from the "
                             "corpus' training transcripts (out/lm-char6.npz) and fuses it")
    parser.add_argument("--name", default=None,
                        help="run folder under --out (default: run-<minutes>min, plus the family when not las)")
    parser.add_argument("--checkpoint", default="best.pt",
                        help="checkpoint in the run folder to score, e.g. average.pt from python -m src.average "
                             "(results go to accuracy-<its name>.json)")
    parser.add_argument("--results", default=None,
                        help="results file in the run folder (default: accuracy.json, or accuracy-<checkpoint>.json)")
    parser.add_argument("overrides", nargs="*", help="extra train.py key=value overrides")
    args = parser.parse_args()
    from host import describe, host_load

    load_before = host_load()
    print(describe(load_before), flush=True)

    out = ROOT / args.out
    corpus = out / "corpus"
    family = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("model.family=")), "las")
    default_name = f"run-{args.minutes:g}min" + ("" if family == "las" else f"-{family}")
    run_dir = out / (args.name or default_name)
    if not (corpus / "test_reference.csv").exists():
        counts = f"train-clean-100={args.train},dev-clean={args.eval},test-clean={args.eval}"
        run([sys.executable, "-m", "src.corpus.synth", str(corpus), "--counts", counts, "--seed", "2026", "--workers", "2"])
    if not (run_dir / "best.pt").exists() or (run_dir / "last.pt").exists() and not (run_dir / "done").exists():
        run(
            [sys.executable, "train.py", f"data.root={corpus}", f"logging.run_dir={run_dir}",
             f"training.max_minutes={args.minutes}", "training.epochs=1000", "logging.wandb=disabled", *args.overrides]
        )
        (run_dir / "done").touch()
    ckpt = run_dir / args.checkpoint
    lm_weights = [float(w) for w in args.lm_weights.split(",")]
    lm_path = out / "lm-char6.npz"
    if any(w > 0 for w in lm_weights) and not lm_path.exists():
        run([sys.executable, "-m", "src.lm", "build", "--root", str(corpus), "--order", "6", "--out", str(lm_path),
             "--dev-root", str(corpus)])
    beam_options = {} if args.length_penalty is None else {"length_penalty": args.length_penalty}
    rows = []
    for split in ("dev-clean", "test-clean"):
        rows.append(score_split(ckpt, corpus, split, "greedy", 1))
        for weight in (float(w) for w in args.ctc_weights.split(",")):
            for lm_weight in lm_weights:
                lm = {"lm": str(lm_path), "lm_weight": lm_weight} if lm_weight > 0 else {}
                rows.append(score_split(ckpt, corpus, split, "beam", args.beam, ctc_weight=weight, **lm, **beam_options))
    load_after = host_load()
    print(f"\nbench_accuracy: {args.train} train utterances, {args.minutes:g} min of training on "
          f"{__import__('os').cpu_count()} CPU cores, family {family}, checkpoint {shown(ckpt)}")
    print(f"before training: {describe(load_before)}\nafter scoring:   {describe(load_after)}")
    print(f"{'split':<12}{'decoder':<28}{'utts':>6}{'mean Lev':>10}{'CER %':>8}{'decode s':>10}")
    for r in rows:
        print(f"{r['split']:<12}{r['decoder']:<28}{r['utterances']:>6}{r['mean_levenshtein']:>10}"
              f"{r['cer_percent']:>8}{r['decode_seconds']:>10}")
    result = args.results or ("accuracy.json" if args.checkpoint == "best.pt"
                              else f"accuracy-{Path(args.checkpoint).stem}.json")
    (run_dir / result).write_text(json.dumps({"args": vars(args), "rows": rows, "host_before": load_before,
                                                       "host_after": load_after}, indent=2))
    return 0


if __name__ == "__main__":
    from src.errors import run_cli

    run_cli(main)
