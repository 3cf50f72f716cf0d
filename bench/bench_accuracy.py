"""Accuracy benchmark: train the default config for a fixed wall-clock budget
on a synthetic multi-voice corpus, then score dev and test (unseen voices and
text), dev's long utterances and dev heard through other channels.

    python bench/bench_accuracy.py                      # the paragraph corpus, 20 minutes
    python bench/bench_accuracy.py --minutes 5 --train 600    # a quick look
    python bench/bench_accuracy.py --corpus sentences   # the corpus of the figures before 2026-12-03

Corpora (``--corpus``; each generated once, cached under ``--out`` and reproducible):

- ``paragraphs`` (the default): ``python -m src.corpus.synth bench/out/corpus-paragraphs
  --preset paragraphs``: LibriSpeech-length utterances (training 11.6 s on average, dev
  and test about 7 s with a tail past 30 s) read by espeak-ng, flite and festival voices,
  2,400 training utterances (7.75 h, 240 speakers), 150 dev and 150 test
  utterances by voices and of text never heard in training; run folders ``para-<M>min``.
- ``sentences``: the single-sentence espeak-ng/flite corpus of the earlier figures
  (4,000 training utterances of 4 s, 200 dev, 200 test; ``--seed 2026``); run folders
  ``run-<M>min``, as they were.

Steps (each skipped when its output exists, so an interrupted run continues):
1. the corpus (above), ``python -m src.corpus.long CORPUS`` (dev-clean's utterances
   of each speaker joined into 25-35 s ones: the long rows), and ``python -m src.corpus.synth
   CORPUS ... --channel dev-clean`` (dev-clean spoken again, each utterance through a room, a
   telephone line or noise: the channel rows); with ``--augment N`` also ``python -m src.corpus.synth
   CORPUS ... --augment N`` (N degraded copies of each training utterance, src/corpus/degrade.py);
2. ``python train.py data.root=CORPUS training.max_minutes=M ...``
   with every other setting from config.yaml (and the preset it picks);
3. greedy and beam decoding of dev-clean, test-clean, dev-clean-channel and dev-clean-long with the best
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
import shutil
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


# --corpus NAME -> (folder under --out, synth arguments, default (train, eval) utterances, run folder prefix)
CORPORA = {
    "paragraphs": ("corpus-paragraphs", ["--preset", "paragraphs"], (2400, 150), "para"),
    "sentences": ("corpus", ["--seed", "2026"], (4000, 200), "run"),
}

# how a decoding setting is named in a row's decoder column
LABELS = {"ctc_weight": "ctc", "lm_weight": "lm", "length_penalty": "lp", "length_bonus": "bonus", "segment_seconds": "seg"}


def default_decoder(family: str):
    """The decoding settings test.py uses for a checkpoint of ``family`` here: config.yaml's, under the
    decoding: section of the preset training picks (configs/cpu-FAMILY.yaml on this machine)."""
    from src.config import load_decoding_config

    return load_decoding_config("config.yaml", None, "auto", family)[0].decoding


def score_split(checkpoint: Path, corpus: Path, split: str, method: str, beam_size: int, base=None,
                **decoding) -> dict:
    """Decode ``split`` with the checkpoint alone (test.py's decode_dataset, with ``base``'s decoding settings
    or the defaults, and the given ones); mean Levenshtein and CER."""
    import csv
    import dataclasses

    from src.checkpoint import front_end, load_checkpoint, model_from_checkpoint
    from src.config import DataConfig, DecodingConfig
    from src.data.dataset import SpeechDataset
    from src.decoding import decode_dataset
    from src.metrics import cer, mean_levenshtein
    from src.models.interface import is_step_decoder

    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, "cpu")
    with_refs = split != "test-clean"
    n_mels, normalize = front_end(ckpt)
    dataset = SpeechDataset(corpus, split, n_mels=n_mels, normalize=normalize, with_transcripts=with_refs)
    start = time.perf_counter()
    settings = dataclasses.replace(base or DecodingConfig(), method=method, beam_size=beam_size, **decoding)
    hyps, refs = decode_dataset(model, dataset, DataConfig(num_workers=0), settings, desc=f"{split} {method}")
    seconds = time.perf_counter() - start
    if refs is None:  # test-clean: the references synth wrote, in sorted file order
        with open(corpus / "test_reference.csv") as f:
            refs = [row["label"] for row in csv.DictReader(f)]
    kinds = channel_kinds(corpus, split, dataset.names)
    by_kind = {kind: {"utterances": len(idx), "cer_percent": round(100 * cer([hyps[i] for i in idx], [refs[i] for i in idx]), 2)}
               for kind, idx in sorted(kinds.items())}
    return {
        "split": split,
        "decoder": (method if method == "greedy" else f"beam {beam_size}")
                   + "".join(f" {LABELS.get(k, k)} {v:g}" for k, v in decoding.items()
                             if isinstance(v, float) and (v or k == "length_penalty")
                             and (k != "ctc_weight" or is_step_decoder(model))),  # CTC-only: no weight
        "utterances": len(hyps),
        "mean_levenshtein": round(mean_levenshtein(hyps, refs), 2),
        "cer_percent": round(100 * cer(hyps, refs), 2),
        "decode_seconds": round(seconds, 1),
        **({"kinds": by_kind} if by_kind else {}),
    }


def channel_kinds(corpus: Path, split: str, names: list[str]) -> dict[str, list[int]]:
    """For a channel split (``CORPUS/<split>.tsv``: name, channel description): the indices of
    ``names`` by channel kind, the description's first word (noise, telephone, reverb, reverb+noise);
    {} for any other split."""
    table = corpus / f"{split}.tsv"
    if not table.is_file():
        return {}
    import csv

    with open(table, newline="") as f:
        kind_of = {row["name"]: row["channel"].split(":", 1)[0] for row in csv.DictReader(f, delimiter="\t")}
    kinds: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        kinds.setdefault(kind_of.get(name, "unknown"), []).append(i)
    return kinds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=positive, default=20.0, help="training wall-clock budget")
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="paragraphs",
                        help="paragraphs: LibriSpeech-length, three engines (default); sentences: the earlier figures'")
    parser.add_argument("--train", type=count, default=None,
                        help="training utterances to synthesise (default: paragraphs 2400, sentences 4000)")
    parser.add_argument("--eval", type=count, default=None, help="dev and test utterances each "
                                                                 "(default: paragraphs 150, sentences 200)")
    parser.add_argument("--out", default="bench/out", help="corpus, run and results folder")
    parser.add_argument("--beam", type=count, default=10, help="beam size for the beam rows")
    parser.add_argument("--length-penalty", type=non_negative, default=None,
                        help="decoding.length_penalty of the beam rows (default: the committed one)")
    parser.add_argument("--ctc-weights", default=None,
                        help="comma-separated decoding.ctc_weight values, one beam row each (joint CTC/attention; "
                             "default: 0 and the committed one, config.yaml's or the family's preset's; 0 alone for a CTC-only family)")
    parser.add_argument("--lm-weights", default="0",
                        help="comma-separated decoding.lm_weight values: beam rows with a 6-gram character LM fused "
                             "(built once, see --lm)")
    parser.add_argument("--lm", choices=("english", "transcripts"), default="english",
                        help="english: general English text from Debian packages, the corpus' dev and test sentences "
                             "left out (out/lm-english6.npz); transcripts: the corpus' training transcripts "
                             "(out/lm-char6.npz, the figures before 2026-12-03)")
    parser.add_argument("--length-bonus", type=non_negative, default=None,
                        help="decoding.length_bonus of the LM rows (default: the committed one)")
    parser.add_argument("--segments", default="",
                        help="comma-separated decoding.segment_seconds values: more dev-clean-long rows (greedy and "
                             "beam), the long utterances decoded in pieces cut at CTC word boundaries")
    parser.add_argument("--name", default=None,
                        help="run folder under --out (default: run-<minutes>min, plus the family when not las)")
    parser.add_argument("--checkpoint", default="best.pt",
                        help="checkpoint in the run folder to score, e.g. average.pt from python -m src.average "
                             "(results go to accuracy-<its name>.json)")
    parser.add_argument("--results", default=None,
                        help="results file in the run folder (default: accuracy.json, or accuracy-<checkpoint>.json)")
    parser.add_argument("--augment", type=count, default=0, metavar="N",
                        help="train on the corpus and N degraded copies of each training utterance (synth --augment N, "
                             "made once into train-clean-100-augmented; data.train_partition=train-clean-100+augmented)")
    parser.add_argument("overrides", nargs="*", help="extra train.py key=value overrides")
    args = parser.parse_args()
    from host import describe, host_load

    # everything scoring needs, loaded before the training step: a run of an hour must not mix this
    # tree's config with decoders changed under it meanwhile
    import importlib

    for module in ("src.checkpoint", "src.data.dataset", "src.decoding", "src.metrics"):
        importlib.import_module(module)

    load_before = host_load()
    print(describe(load_before), flush=True)

    out = ROOT / args.out
    folder, synth_args, (n_train, n_eval), prefix = CORPORA[args.corpus]
    corpus = out / folder
    args.train, args.eval = args.train or n_train, args.eval or n_eval
    family = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("model.family=")), "las")
    decoder = default_decoder(family)
    default_name = f"{prefix}-{args.minutes:g}min" + ("" if family == "las" else f"-{family}")
    run_dir = out / (args.name or default_name)
    counts = f"train-clean-100={args.train},dev-clean={args.eval},test-clean={args.eval}"
    if not (corpus / "test_reference.csv").exists():
        run([sys.executable, "-m", "src.corpus.synth", str(corpus), *synth_args, "--counts", counts, "--workers", "2"])
    if not (corpus / "dev-clean-long" / "mfcc").is_dir():
        run([sys.executable, "-m", "src.corpus.long", str(corpus)])
    if not (corpus / "dev-clean-channel.tsv").exists():  # written last: without it, a copy cut short
        shutil.rmtree(corpus / "dev-clean-channel", ignore_errors=True)
        run([sys.executable, "-m", "src.corpus.synth", str(corpus), *synth_args, "--counts", counts,
             "--channel", "dev-clean", "--workers", "2"])
    if args.augment:
        made = corpus / "train-clean-100-augmented.tsv"  # written last: without it, a copy cut short
        if not made.exists():
            shutil.rmtree(corpus / "train-clean-100-augmented", ignore_errors=True)
            run([sys.executable, "-m", "src.corpus.synth", str(corpus), *synth_args, "--counts", counts,
                 "--augment", str(args.augment), "--workers", "2"])
        copies = len(made.read_text().splitlines()) - 1
        if copies != args.augment * args.train:
            from src.errors import UserError

            raise UserError(f"{made}: {copies} copies, not {args.augment} of each of {args.train} utterances; "
                            f"remove it and {made.with_suffix('')} to make them again")
        args.overrides.append("data.train_partition=train-clean-100+augmented")
    if not (run_dir / "best.pt").exists() or (run_dir / "last.pt").exists() and not (run_dir / "done").exists():
        run(
            [sys.executable, "train.py", f"data.root={corpus}", f"logging.run_dir={run_dir}",
             f"training.max_minutes={args.minutes}", "training.epochs=1000", "logging.wandb=disabled", *args.overrides]
        )
        (run_dir / "done").touch()
    ckpt = run_dir / args.checkpoint
    if args.ctc_weights is None:  # 0 and the committed weight; a CTC-only family has no weight to vary
        from src.checkpoint import load_checkpoint, model_from_checkpoint
        from src.models.interface import is_step_decoder

        attention = is_step_decoder(model_from_checkpoint(load_checkpoint(ckpt), "cpu"))
        args.ctc_weights = f"0,{decoder.ctc_weight:g}" if attention else "0"
    lm_weights = [float(w) for w in args.lm_weights.split(",")]
    lm_path = out / ("lm-english6.npz" if args.lm == "english" else "lm-char6.npz")
    if any(w > 0 for w in lm_weights) and not lm_path.exists():
        text = (["--english", "fortunes,kjv,gcide", "--exclude-root", str(corpus)] if args.lm == "english"
                else ["--root", str(corpus)])
        run([sys.executable, "-m", "src.lm", "build", *text, "--order", "6", "--out", str(lm_path),
             "--dev-root", str(corpus)])
    beam_options = {} if args.length_penalty is None else {"length_penalty": args.length_penalty}
    rows = []
    for split in ("dev-clean", "test-clean"):
        rows.append(score_split(ckpt, corpus, split, "greedy", 1, decoder))
        for weight in (float(w) for w in args.ctc_weights.split(",")):
            for lm_weight in lm_weights:
                lm = {"lm": str(lm_path), "lm_weight": lm_weight} if lm_weight > 0 else {}
                if lm and args.length_bonus is not None:
                    lm["length_bonus"] = args.length_bonus
                rows.append(score_split(ckpt, corpus, split, "beam", args.beam, decoder, ctc_weight=weight, **lm,
                                        **beam_options))
    # dev's utterances through rooms, telephone lines and noise: greedy, and the committed beam
    rows.append(score_split(ckpt, corpus, "dev-clean-channel", "greedy", 1, decoder))
    rows.append(score_split(ckpt, corpus, "dev-clean-channel", "beam", args.beam, decoder,
                            ctc_weight=decoder.ctc_weight, **beam_options))
    if any((corpus / "dev-clean-long" / "mfcc").glob("*.npy")):  # the long rows: greedy, and the committed beam
        for seconds in [decoder.segment_seconds] + [float(x) for x in args.segments.split(",") if x]:
            rows.append(score_split(ckpt, corpus, "dev-clean-long", "greedy", 1, decoder, segment_seconds=seconds))
            rows.append(score_split(ckpt, corpus, "dev-clean-long", "beam", args.beam, decoder,
                                    ctc_weight=decoder.ctc_weight, segment_seconds=seconds, **beam_options))
    load_after = host_load()
    print(f"\nbench_accuracy: corpus {args.corpus} ({shown(corpus)}), {args.train} train utterances, "
          f"{args.minutes:g} min of training on "
          f"{__import__('os').cpu_count()} CPU cores, family {family}, checkpoint {shown(ckpt)}")
    print(f"before training: {describe(load_before)}\nafter scoring:   {describe(load_after)}")
    print(f"{'split':<19}{'decoder':<28}{'utts':>6}{'mean Lev':>10}{'CER %':>8}{'decode s':>10}{'s/utt':>7}")
    for r in rows:
        print(f"{r['split']:<19}{r['decoder']:<28}{r['utterances']:>6}{r['mean_levenshtein']:>10}"
              f"{r['cer_percent']:>8}{r['decode_seconds']:>10}{r['decode_seconds'] / max(1, r['utterances']):>7.2f}")
        for kind, k in r.get("kinds", {}).items():  # the channel split, by kind of channel
            print(f"{'  ' + kind:<19}{'':<28}{k['utterances']:>6}{'':>10}{k['cer_percent']:>8}")
    result = args.results or ("accuracy.json" if args.checkpoint == "best.pt"
                              else f"accuracy-{Path(args.checkpoint).stem}.json")
    (run_dir / result).write_text(json.dumps({"args": vars(args), "rows": rows, "host_before": load_before,
                                                       "host_after": load_after}, indent=2))
    return 0


if __name__ == "__main__":
    from src.errors import run_cli

    run_cli(main)
