"""training.ctc_warmup_steps: the objective on CTC alone equals the CTC part of the full objective, leaves
the decoder without gradients, and a run trains only the encoder's lower part until the step named,
then everything; a family without a decoder to skip says so and trains as before."""
import pytest
import torch

from test_model import tiny_las
from test_resume import final_weights, make_corpus, tiny_config
from test_transformer import tiny
from src.vocab import EOS, PAD, SOS


def batch(seed: int = 0, n_mels: int = 5):
    """Two utterances of 40 and 31 frames with 6 and 4 characters: features, lens, tokens, token lens."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 40, n_mels, generator=g)
    tokens = torch.tensor([[SOS, 5, 6, 7, 8, 9, 10, EOS], [SOS, 11, 12, 13, 14, EOS, PAD, PAD]])
    return x, torch.tensor([40, 31]), tokens, torch.tensor([8, 6])


def test_las_ctc_only_is_the_ctc_part_and_leaves_the_speller_and_upper_listener_without_gradients():
    model = tiny_las(listener_layers=3, ctc_layer=2).eval()
    x, lens, tokens, token_lens = batch()
    full = model(x, lens, tokens, token_lens, ctc_weight=0.5)
    alone = model(x, lens, tokens, token_lens, ctc_weight=0.5, ctc_only=True)
    assert alone.parts["ctc"] == pytest.approx(full.parts["ctc"], rel=1e-6) and alone.parts["att"] == 0.0
    assert alone.loss.item() == pytest.approx(full.parts["ctc"], rel=1e-6)
    alone.loss.backward()
    for name, p in model.named_parameters():
        skipped = name.startswith("speller.") or name.startswith("listener.layers.2.")
        assert (p.grad is None) == skipped, name


def test_transformer_ctc_only_is_the_ctc_part_and_leaves_the_decoder_without_gradients():
    model = tiny("conformer")
    x, lens, tokens, token_lens = batch(n_mels=28)
    full = model(x, lens, tokens, token_lens, ctc_weight=0.3)
    alone = model(x, lens, tokens, token_lens, ctc_weight=0.3, ctc_only=True)
    assert alone.loss.item() == pytest.approx(full.parts["ctc"], rel=1e-6)
    alone.loss.backward()
    encoder = [n for n, p in model.named_parameters() if p.grad is not None]
    decoder = [n for n, p in model.named_parameters() if p.grad is None]
    assert encoder and decoder and "ctc.weight" in encoder and not any(n.startswith("ctc") for n in decoder)


def test_a_run_trains_the_listener_on_ctc_until_the_step_then_everything(tmp_path, monkeypatch):
    import src.training.loop as loop

    snapshots, real_step = {}, loop.train_step

    def step(run, batch, options, elapsed):
        if run.state.global_step in (0, 3):  # before the first step, and after the last step of the warm-up
            snapshots[run.state.global_step] = {k: v.clone() for k, v in run.core.state_dict().items()}
        return real_step(run, batch, options, elapsed)

    monkeypatch.setattr(loop, "train_step", step)
    corpus = make_corpus(tmp_path / "corpus")
    weights, run = final_weights(tiny_config(corpus, tmp_path / "run", "training.ctc_warmup_steps=3"))
    before, warm = snapshots[0], snapshots[3]
    skipped = [k for k in before if k.startswith("speller.") or k.startswith("listener.layers.1.")]
    trained = [k for k in before if k.startswith(("listener.conv.", "listener.layers.0.", "ctc."))]
    assert skipped and trained
    assert all(torch.equal(before[k], warm[k]) for k in skipped)
    assert all(not torch.equal(before[k], warm[k]) for k in trained)
    assert all(not torch.equal(warm[k], weights[k]) for k in skipped if weights[k].is_floating_point())
    log = (tmp_path / "run" / "train.log").read_text()
    assert "until step 3" in log and "CTC warm-up over at step 3" in log


def test_a_family_without_a_decoder_says_the_setting_does_nothing(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    final_weights(tiny_config(corpus, tmp_path / "ds2", "model.family=ds2", "model.ds2.rnn_hidden=8",
                              "model.ds2.conv_channels=4", "training.epochs=1", "training.ctc_warmup_steps=3"))
    assert "training.ctc_warmup_steps=3 does nothing here" in (tmp_path / "ds2" / "train.log").read_text()


def test_the_overfit_trigger_waits_for_an_epoch_without_warm_up_steps():
    """SpecAugment's overfit trigger compares the epoch's training loss with the dev loss; CTC alone is
    not the dev loss's objective, so an epoch with warm-up steps never latches it, and the next one can."""
    from types import SimpleNamespace

    from src.config import load_config
    from src.distributed import DistInfo
    from src.training.schedule import update_specaugment

    cfg = load_config(None, ["training.specaugment.trigger=overfit", "training.specaugment.start=0", "training.epochs=10"])
    state = SimpleNamespace(global_step=300, specaugment_from=-1.0)
    run = SimpleNamespace(cfg=cfg, state=state, specaugment=object(), ctc_warmup_steps=250, info=DistInfo(),
                          total_steps=1000, elapsed_minutes=lambda: 1.0)
    update_specaugment(run, train_loss=1.0, dev_loss=2.0, batches=100)  # steps 200-300: 50 of them CTC alone
    assert state.specaugment_from < 0
    state.global_step = 400
    update_specaugment(run, train_loss=1.0, dev_loss=2.0, batches=100)  # steps 300-400: the whole objective
    assert state.specaugment_from == pytest.approx(0.4)
