"""Resume: 2 epochs straight == 1 epoch + resume + 1 epoch, and a mid-epoch Ctrl-C + resume, bit for bit."""
from pathlib import Path

import pytest
import torch

from src.config import load_config

def make_corpus(root: Path, n_train: int = 16, n_dev: int = 4, n_mels: int = 28, seed: int = 0) -> Path:
    """A tiny corpus in the competition layout (src/corpus/toy.py)."""
    from src.corpus.toy import make_toy_corpus

    return make_toy_corpus(root, n_train=n_train, n_dev=n_dev, n_mels=n_mels, seed=seed)


def tiny_config(data_root: Path, run_dir: Path, *extra: str):
    return load_config(None, [
        f"data.root={data_root}", f"logging.run_dir={run_dir}", "logging.wandb=disabled",
        "data.num_workers=0", "data.max_utterances_per_batch=4", "data.check=false",
        "model.las.conv_channels=8", "model.las.listener_hidden=8", "model.las.attention_dim=8", "model.las.embedding_dim=8",
        "model.las.speller_hidden=16", "model.las.locked_dropout=0.2", "model.las.speller_dropout=0.2",
        "training.epochs=2", "training.device=cpu", "training.warmup_steps=2", "training.lr=3e-3",
        "training.teacher_forcing.trigger=epoch", "training.teacher_forcing.stages=[[0.5, 0.2]]",
        "training.specaugment.trigger=progress", "training.specaugment.start=0.25", "training.specaugment.ramp=0.5", "training.specaugment.freq_mask=3",
        "training.specaugment.time_mask=4", *extra,
    ])


def final_weights(cfg):
    from src.training import train

    run = train(cfg)
    return {k: v.clone() for k, v in run.core.state_dict().items()}, run


def on_training_batch(n: int, change, monkeypatch) -> None:
    """Patch the loop so that ``change(model, out)`` runs on the n-th training batch's LossOutput."""
    import src.training.loop as loop

    real = loop.compute_loss
    calls = {"n": 0}

    def patched(model, batch, **kw):
        out = real(model, batch, **kw)
        if model.training:
            calls["n"] += 1
            if calls["n"] == n:
                change(model, out)
        return out

    monkeypatch.setattr(loop, "compute_loss", patched)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def assert_ctrl_c_at_sixth_batch_then_resume_gives(straight, corpus, run_dir, monkeypatch, *extra) -> None:
    """Ctrl-C at epoch 2, batch 2 (4 batches per epoch), then a resume: the weights equal ``straight``."""
    import src.training.loop as training

    real = training.shared_elapsed_minutes
    calls = {"n": 0}

    def interrupt_at_sixth_batch(run):  # called once at the start of every training batch
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(run)

    monkeypatch.setattr(training, "shared_elapsed_minutes", interrupt_at_sixth_batch)
    with pytest.raises(KeyboardInterrupt):
        training.train(tiny_config(corpus, run_dir, *extra))
    monkeypatch.setattr(training, "shared_elapsed_minutes", real)
    ckpt = torch.load(run_dir / "last.pt", weights_only=False)
    assert (ckpt["train_state"]["epoch"], ckpt["train_state"]["batch"]) == (1, 1)
    resumed, _ = final_weights(tiny_config(corpus, run_dir, *extra))
    assert_same_weights(straight, resumed)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def test_two_epochs_equal_one_plus_resume_plus_one(corpus, tmp_path):
    # plateau lr and SpecAugment at full width from the start: neither depends on the planned number
    # of epochs, which the first half sets to 1 (the other tests resume within one plan, with a ramp);
    # the time stretch changes the lengths the model sees, and its draws must resume as the masks' do
    same_plan = ("training.scheduler=plateau", "training.specaugment.start=0", "training.specaugment.ramp=0",
                 "training.specaugment.time_stretch=0.1")
    straight, run = final_weights(tiny_config(corpus, tmp_path / "a", *same_plan))
    assert run.state.epoch == 2  # teacher forcing 1 -> 0.5 -> 0.25 (decayed twice):
    assert run.state.hooks["attention"]["teacher_forcing"]["rate"] == 0.25
    final_weights(tiny_config(corpus, tmp_path / "b", *same_plan, "training.epochs=1"))
    resumed, run_b = final_weights(tiny_config(corpus, tmp_path / "b", *same_plan))
    assert run_b.state.epoch == 2
    assert_same_weights(straight, resumed)
    for name in ("last.pt", "best.pt", "config.yaml", "train.log"):
        assert (tmp_path / "b" / name).is_file()
    assert "resumed from" in (tmp_path / "b" / "train.log").read_text()


def test_ctrl_c_mid_epoch_then_resume_is_identical(corpus, tmp_path, monkeypatch):
    straight, _ = final_weights(tiny_config(corpus, tmp_path / "a"))  # the default (wsd) schedule
    assert_ctrl_c_at_sixth_batch_then_resume_gives(straight, corpus, tmp_path / "b", monkeypatch)


def test_overfit_trigger_latches_and_survives_a_resume(corpus, tmp_path, monkeypatch):
    """SpecAugment by the overfit trigger: off in epoch 1, latched at its end (the trigger is patched to
    fire), on in epoch 2; a Ctrl-C in epoch 2 and a resume give the same weights as a straight run,
    which they would not if last.pt lost the latch (the resumed batches would go unmasked)."""
    import src.training.schedule as training

    overfit = ("training.specaugment.trigger=overfit", "training.specaugment.start=0",
               "training.specaugment.ramp=0")
    seen = []
    monkeypatch.setattr(training, "specaugment_begins", lambda trigger, **kw: seen.append(kw) or True)
    straight, run = final_weights(tiny_config(corpus, tmp_path / "a", *overfit))
    assert run.state.specaugment_from == pytest.approx(0.5)  # latched at the end of epoch 1 of 2, once
    assert len(seen) == 1 and seen[0]["dev_loss"] > 0 and seen[0]["train_loss"] > 0
    unmasked, _ = final_weights(tiny_config(corpus, tmp_path / "u", "training.specaugment.start=-1"))
    assert any(not torch.equal(straight[k], unmasked[k]) for k in straight)  # the masks did change epoch 2
    assert_ctrl_c_at_sixth_batch_then_resume_gives(straight, corpus, tmp_path / "b", monkeypatch, *overfit)


def test_time_budget_stops_with_a_checkpoint(corpus, tmp_path):
    cfg = tiny_config(corpus, tmp_path / "c", "training.max_minutes=0.000001")
    _, run = final_weights(cfg)
    ckpt = torch.load(tmp_path / "c" / "last.pt", weights_only=False)
    assert ckpt["train_state"]["global_step"] == 0 and not run.state.finished
    assert "time budget" in (tmp_path / "c" / "train.log").read_text()


def test_budget_mid_epoch_scores_dev_into_best_and_resumes_exactly(corpus, tmp_path, monkeypatch):
    import src.training.loop as training

    no_time = "training.anneal_by_time=false"  # the schedule then depends on steps alone
    straight, _ = final_weights(tiny_config(corpus, tmp_path / "a", no_time))

    calls = {"n": 0}

    def budget_gone_before_the_sixth_batch(run):
        calls["n"] += 1
        return 1e9 if calls["n"] == 6 else 0.0

    real_dev = training.evaluate_dev

    def dev_improves_every_time(run):  # so that the weights at the stop are the best so far, whatever they score
        dev, metrics = real_dev(run)
        calls["dev"] = calls.get("dev", 0) + 1
        return dev, {**metrics, "dev_lev": 100.0 - calls["dev"]}

    monkeypatch.setattr(training, "shared_elapsed_minutes", budget_gone_before_the_sixth_batch)
    monkeypatch.setattr(training, "evaluate_dev", dev_improves_every_time)
    _, stopped = final_weights(tiny_config(corpus, tmp_path / "b", no_time, "training.max_minutes=1000"))
    monkeypatch.undo()
    last = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    best = torch.load(tmp_path / "b" / "best.pt", weights_only=False)
    assert last["train_state"]["batch"] > 0 and not stopped.state.finished
    # the weights at the stop were scored and, being the best so far, saved as best.pt
    assert last["train_state"]["best_dev_lev"] == best["train_state"]["best_dev_lev"] == 98.0
    assert_same_weights(best["model"], last["model"])
    assert "at the budget: dev lev" in (tmp_path / "b" / "train.log").read_text()
    in_progress = torch.load(tmp_path / "b" / "epoch_002.pt", weights_only=False)  # the snapshot of epoch 2 so far
    assert_same_weights(in_progress["model"], last["model"])

    resumed, _ = final_weights(tiny_config(corpus, tmp_path / "b", no_time, "training.max_minutes=1000"))
    assert_same_weights(straight, resumed)
    finished = torch.load(tmp_path / "b" / "epoch_002.pt", weights_only=False)  # rewritten when epoch 2 ended
    assert_same_weights(finished["model"], straight)
