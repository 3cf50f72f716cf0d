"""Submission writing and checking, and test.py end to end on the bundled sample."""
from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import pytest
import torch

from src.checkpoint import save_checkpoint
from src.config import Config, to_dict
from src.models.las import LASConfig
from src.errors import UserError
from src.inference import main
from src.submission import check_submission, write_submission
from src.metrics import levenshtein
from src.models.las import LAS
from src.vocab import VOCAB

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


def test_write_then_check_round_trip(tmp_path):
    labels = ["HELLO WORLD", "", "IT'S A TEST", "A"]
    path = write_submission(tmp_path / "sub" / "submission.csv", labels)
    assert check_submission(path, n_expected=4) == 4
    assert not list(path.parent.glob("*.tmp"))
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["index", "label"]] + [[str(i), s] for i, s in enumerate(labels)]


@pytest.mark.parametrize(
    "text,expected,message",
    [
        ("", None, "missing or empty"),
        ("id,label\n0,A\n", None, "index,label"),
        ("index,label\n0,A\n1,B\n", 3, "2 rows"),
        ("index,label\n0,A\n2,B\n", None, "out of order"),
        ("index,label\n0,hello\n", None, "not allowed"),
        ("index,label\n0,A,B\n", None, "2 columns"),
        ("index,label\n0,<eos>\n", None, "not allowed"),
    ],
)
def test_check_rejects_bad_files(tmp_path, text, expected, message):
    path = tmp_path / "s.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        check_submission(path, n_expected=expected)


def tiny_checkpoint(path: Path, n_mels: int = 28, vocab=None) -> Path:
    torch.manual_seed(0)
    las = LASConfig(conv_channels=8, listener_hidden=8, listener_layers=2, attention_dim=8, embedding_dim=8,
                    speller_hidden=8)
    vocab = list(VOCAB) if vocab is None else vocab
    model = LAS(n_mels, len(vocab), las)
    # the checkpoint layout written before model families existed (a flat model_config with 'family'):
    # it must keep loading
    save_checkpoint(path, dict(model=model.state_dict(), model_config={"family": "las", **dataclasses.asdict(las)},
                               n_mels=n_mels, vocab=vocab, config=to_dict(Config())))
    return path


def run_main(tmp_path, *extra):
    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  root: {SAMPLE}\n  num_workers: 0\n")
    return main(["--config", str(config), "--device", "cpu", *extra,
                 "decoding.max_chars_per_frame=0.0375", "decoding.max_length_min=2"])


needs_sample = pytest.mark.skipif(not (SAMPLE / "test-clean").is_dir(), reason="bundled sample missing")


@needs_sample
def test_test_py_writes_a_checked_submission(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "run" / "best.pt")
    out = tmp_path / "submission.csv"
    assert run_main(tmp_path, "--checkpoint", str(ckpt), "--output", str(out), "decoding.method=greedy") == 0
    n_files = len(os.listdir(SAMPLE / "test-clean" / "mfcc"))
    assert check_submission(out, n_expected=n_files) == n_files
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith(f"wrote {out}: {n_files} rows") for line in lines)
    # the sample keeps its test transcripts: the submission is scored as Kaggle would
    with open(SAMPLE / "test_reference.csv", newline="") as f:
        refs = [row["label"] for row in csv.DictReader(f)]
    with open(out, newline="") as f:
        hyps = [row["label"] for row in csv.DictReader(f)]
    expected = sum(levenshtein(h, r) for h, r in zip(hyps, refs)) / len(refs)
    scored = next(line for line in lines if line.startswith("scored against"))
    assert f"mean Levenshtein {expected:.2f} " in scored


@needs_sample
def test_test_py_scores_a_split_worst_first(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "run" / "best.pt")
    assert run_main(tmp_path, "--checkpoint", str(ckpt), "--split", "dev-clean", "decoding.beam_size=2") == 0
    scores = tmp_path / "run" / "scores_dev-clean.tsv"
    with open(scores, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == len(os.listdir(SAMPLE / "dev-clean" / "mfcc"))
    distances = [int(r["distance"]) for r in rows]
    assert distances == sorted(distances, reverse=True)
    for r in rows:
        assert levenshtein(r["hypothesis"], r["reference"]) == int(r["distance"])
    mean = sum(distances) / len(distances)
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"mean Levenshtein {mean:.3f}" in summary and str(scores) in summary


@needs_sample
@pytest.mark.parametrize("kind", ["n_mels", "vocab"])
def test_checkpoint_that_does_not_fit_the_data_fails_in_one_line(tmp_path, kind):
    if kind == "n_mels":
        ckpt = tiny_checkpoint(tmp_path / "best.pt", n_mels=40)
        match = "expects 40-dimensional features"
    else:
        ckpt = tiny_checkpoint(tmp_path / "best.pt", vocab=list(VOCAB) + ["<blank>"])
        match = "vocabulary"
    with pytest.raises(UserError, match=match) as err:
        run_main(tmp_path, "--checkpoint", str(ckpt), "--output", str(tmp_path / "s.csv"))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "s.csv").exists()


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        run_main(tmp_path, "--checkpoint", str(tmp_path / "nope.pt"))


@needs_sample
def test_test_py_decodes_with_the_decoding_section_of_the_familys_preset(tmp_path, capsys, monkeypatch):
    """As train.py applies the preset of the family and hardware, test.py applies that preset's decoding:
    section (and nothing else of it); command-line overrides still win, and --preset none keeps the file's."""
    import yaml

    from src.models.transformer import Transformer, TransformerConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    torch.manual_seed(0)
    cfg = TransformerConfig(d_model=8, heads=2, ffn_dim=8, encoder_layers=1, decoder_layers=1, conv_kernel=3,
                            front_end_channels=2)
    ckpt = tmp_path / "run" / "best.pt"
    save_checkpoint(ckpt, dict(model=Transformer(28, len(VOCAB), cfg).state_dict(), family="transformer",
                               model_config=dataclasses.asdict(cfg), n_mels=28, vocab=list(VOCAB),
                               config=to_dict(Config())))
    preset = yaml.safe_load((ROOT / "configs" / "cpu-transformer.yaml").read_text())["decoding"]
    assert preset["ctc_weight"] != Config().decoding.ctc_weight  # else this test could not tell them apart
    limit = ["decoding.beam_size=2", "data.test_partition=dev-clean"]

    def decoding_line(*options, override=()) -> str:
        assert run_main(tmp_path, "--checkpoint", str(ckpt), "--split", "dev-clean", *options, *limit, *override) == 0
        return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("test: "))

    assert f"ctc_weight {preset['ctc_weight']}" in decoding_line()
    assert f"ctc_weight {Config().decoding.ctc_weight}" in decoding_line("--preset", "none")
    assert "ctc_weight 0.9" in decoding_line(override=["decoding.ctc_weight=0.9"])
