"""The family seam: a toy family added through the registry alone trains, checkpoints,
resumes and decodes with train.py and test.py, and the loop runs no attention hook for it."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_resume import assert_same_weights, make_corpus

ROOT = Path(__file__).resolve().parents[1]

# Run an entry script as `python SCRIPT ARGS` does, after registering the toy family.
LAUNCH = ("import runpy, sys; sys.path.insert(0, {tests!r}); import toy_family; "
          "sys.argv = [{script!r}] + sys.argv[1:]; runpy.run_path({script!r}, run_name='__main__')")


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    code = LAUNCH.format(tests=str(ROOT / "tests"), script=script)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def toy_args(corpus: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"data.root={corpus}", f"logging.run_dir={run_dir}", "logging.wandb=disabled", "data.num_workers=0",
            "data.max_utterances_per_batch=4", "data.check=false", "model.family=toy_ctc", "training.device=cpu",
            "training.lr=3e-2", "training.warmup_steps=2", "training.scheduler=plateau",
            "training.specaugment.start=-1", "training.specaugment.freq_warp=0", "training.specaugment.time_stretch=0", "decoding.method=greedy", *extra]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = make_corpus(tmp_path_factory.mktemp("toy"), n_train=24, n_dev=6)
    test_dir = root / "test-clean" / "mfcc"  # test.py needs a test split: the dev features, no transcripts
    shutil.copytree(root / "dev-clean" / "mfcc", test_dir)
    return root


def test_toy_family_trains_resumes_and_decodes_through_the_entry_scripts(corpus, tmp_path):
    straight = run_script("train.py", *toy_args(corpus, tmp_path / "a", "training.epochs=6"))
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert "family toy_ctc" in straight.stdout and "tf " not in straight.stdout  # no attention hooks
    first = run_script("train.py", *toy_args(corpus, tmp_path / "b", "training.epochs=3"))
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = run_script("train.py", *toy_args(corpus, tmp_path / "b", "training.epochs=6"))
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert a["family"] == "toy_ctc" and a["model_config"] == {"bias": True}
    assert a["train_state"]["finished"] and a["train_state"]["hooks"] == {}
    assert_same_weights(a["model"], b["model"])

    # test.py rebuilds the toy from the checkpoint alone and decodes it with CTC greedy
    scored = run_script("test.py", "--checkpoint", str(tmp_path / "a" / "best.pt"), "--split", "dev-clean",
                        "--device", "cpu", *toy_args(corpus, tmp_path / "a")[:4], "decoding.method=greedy")
    assert scored.returncode == 0, scored.stderr[-2000:]
    cer = float(scored.stdout.split("CER ")[1].split(",")[0])
    assert cer < 0.35, scored.stdout  # a linear CTC model learns the toy 'voice' (chance is above 1)
    out = tmp_path / "sub.csv"
    written = run_script("test.py", "--checkpoint", str(tmp_path / "a" / "best.pt"), "--output", str(out),
                         "--device", "cpu", *toy_args(corpus, tmp_path / "a")[:4], "decoding.method=beam",
                         "decoding.beam_size=4")
    assert written.returncode == 0, written.stderr[-2000:]
    assert len(out.read_text().splitlines()) == 1 + 6

    # the CTC prefix beam search with a character LM fused in, tuned on dev
    from src.lm import CharNgramLM, sentences_from_partition

    lm = CharNgramLM.build(sentences_from_partition(corpus, "train-clean-100"), 3).save(tmp_path / "lm.npz")
    tuned = run_script("test.py", "--checkpoint", str(tmp_path / "a" / "best.pt"), "--split", "dev-clean",
                       "--tune-lm", "--device", "cpu", *toy_args(corpus, tmp_path / "a")[:4], f"decoding.lm={lm}",
                       "decoding.beam_size=4")
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    grid = [line for line in tuned.stdout.splitlines() if line.startswith("lm_weight ")]
    assert len(grid) == 20 and all(" length_bonus " in line for line in grid)  # the CTC grid: alpha x beta
    assert "best on dev-clean: decoding.lm_weight=" in tuned.stdout


def test_the_toy_family_is_configured_from_its_own_yaml_section(corpus, tmp_path):
    """config.yaml's model: section is built from the registry, so a family registered from outside
    the package has a section of its own: bias false there gives a checkpoint and a model without it."""
    config = tmp_path / "toy.yaml"
    config.write_text("model:\n  family: toy_ctc\n  toy_ctc:\n    bias: false\n")
    args = [a for a in toy_args(corpus, tmp_path / "y", "training.epochs=1") if not a.startswith("model.family")]
    proc = run_script("train.py", "--config", str(config), *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = torch.load(tmp_path / "y" / "last.pt", weights_only=True)
    assert ckpt["family"] == "toy_ctc" and ckpt["model_config"] == {"bias": False}
    assert set(ckpt["model"]) == {"proj.weight"}
    assert "toy_ctc:\n    bias: false" in (tmp_path / "y" / "config.yaml").read_text()
    typo = run_script("train.py", "--config", str(config), *args, "model.toy_ctc.bais=true")
    assert typo.returncode == 2 and "did you mean 'model.toy_ctc.bias'" in typo.stderr


def test_a_model_without_decoders_is_one_line():
    from src.decoding import decode_encoded
    from src.config import DecodingConfig
    from src.errors import UserError
    from src.models.interface import EncoderOutput

    lens = torch.tensor([5])
    with pytest.raises(UserError, match="neither a step decoder nor CTC"):
        decode_encoded(torch.nn.Linear(1, 1), EncoderOutput((), lens), lens, DecodingConfig())
