"""Build the character n-gram LM that decoding fuses in (src/decoding/lm.py: the model and its scorer).

    python -m src.lm build --root data/11-785-f23-hw4p2 --partition train-clean-100 --order 6 --out lm/char6.npz
    python -m src.lm build --text sentences.txt --order 8 --out lm/char8.npz --dev-root data/11-785-f23-hw4p2
    python -m src.lm build --english fortunes,kjv,gcide --exclude-root bench/out/corpus-paragraphs \
        --order 6 --out lm/english6.npz          # general English (src/corpus/english.py), eval text left out
    python test.py decoding.lm=lm/char6.npz decoding.lm_weight=0.3      # fused into the beam search
"""
from __future__ import annotations

import argparse
from pathlib import Path

from src.decoding.lm import CharNgramLM
from src.errors import UserError, run_cli


# --------------------------------------------------------------------------
# Command line


def sentences_from_text(path: Path) -> list[str]:
    from src.corpus.text import normalize_text

    if not path.is_file():
        raise UserError(f"{path}: text file not found; give one sentence per line")
    lines = path.read_text(errors="replace").splitlines()
    return [s for s in (normalize_text(line) for line in lines) if s]


def sentences_from_partition(root: Path, partition: str) -> list[str]:
    from src.data.layout import list_utterances, load_npy, transcript_strings

    utts = list_utterances(root, partition, True)
    return ["".join(transcript_strings(load_npy(u.transcript))[1:-1]) for u in utts if u.transcript is not None]


def held_out_texts(root: Path) -> list[str]:
    """The transcripts an LM must not have seen: ``root``'s dev-clean, and test-clean's (its transcripts,
    or the test_reference.csv a synthesised corpus keeps)."""
    import csv

    from src.data.layout import PARTITIONS

    texts = []
    for partition in ("dev-clean", "test-clean"):
        if all((root / folder / "transcripts").is_dir() for folder in PARTITIONS[partition]):
            texts += sentences_from_partition(root, partition)
    reference = root / "test_reference.csv"
    if reference.is_file():
        with open(reference, newline="") as f:
            texts += [row["label"] for row in csv.DictReader(f)]
    if not texts:
        raise UserError(f"--exclude-root {root}: no dev-clean or test-clean transcripts and no test_reference.csv")
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.lm", description="Build a character n-gram language model.")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="count n-grams and write the model file")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="a text file, one sentence per line (normalised to A-Z ' and space)")
    source.add_argument("--root", help="a data root in the competition layout: its --partition transcripts")
    source.add_argument("--english", metavar="SOURCES",
                        help="general English from Debian packages, comma-separated: fortunes, kjv, gcide "
                             "(src/corpus/english.py)")
    build.add_argument("--exclude-root", help="leave out every sentence that shares 8 words with this root's "
                                              "dev-clean or test-clean transcripts")
    build.add_argument("--partition", default="train-clean-100", help="with --root (default train-clean-100)")
    build.add_argument("--order", type=int, default=6, help="n, 1..12 (default 6)")
    build.add_argument("--out", required=True, help="the model file to write (.npz)")
    build.add_argument("--dev-root", help="print the perplexity on this root's --dev-partition transcripts")
    build.add_argument("--dev-partition", default="dev-clean")
    args = parser.parse_args(argv)
    if args.english:
        from src.corpus.english import english_sentences

        sentences = english_sentences(name.strip() for name in args.english.split(","))
    elif args.text:
        sentences = sentences_from_text(Path(args.text))
    else:
        sentences = sentences_from_partition(Path(args.root), args.partition)
    removed = ""
    if args.exclude_root:
        from src.corpus.english import decontaminate

        sentences, n_removed = decontaminate(sentences, held_out_texts(Path(args.exclude_root)))
        removed = f" ({n_removed} left out: they share 8 words with {args.exclude_root}'s dev or test text)"
    if not sentences:
        raise UserError("lm: no sentences to count; give a text with sentences of the alphabet A-Z ' and space")
    lm = CharNgramLM.build(sentences, args.order)
    out = lm.save(args.out)
    line = f"lm: order {args.order}, {len(sentences)} sentences{removed}, " \
           f"{sum(len(level) for level in lm.table)} contexts -> {out} ({out.stat().st_size / 1e6:.1f} MB)"
    if args.dev_root:
        dev = sentences_from_partition(Path(args.dev_root), args.dev_partition)
        line += f"; perplexity per character on {args.dev_partition}: {lm.perplexity(dev):.3f}"
    print(line)
    return 0


if __name__ == "__main__":
    run_cli(main)
