"""Dev scoring during and after training.

    dev, metrics = evaluate_dev(run)      # every epoch: loss, mean Levenshtein, CER (greedy unless asked)
    final_dev_report(run, final_is_best)  # at the end: best.pt with test.py's decoder, a few transcripts
"""
from __future__ import annotations

import dataclasses

from torch import nn

from src import distributed as dist_utils
from src.checkpoint import load_for_decoding
from src.config import Config
from src.data.dataset import loader_workers, make_decoding_loader
from src.decoding import decode_dataset, decoding_description
from src.metrics import cer, mean_levenshtein
from src.threads import keep_torch_threads
from src.training.evaluation import DevResult, evaluate
from src.training.state import Run, save_best


def dev_decoding(cfg: Config):
    """Dev scoring during training: test.py's decoder (training.dev_decoder=test), or the same
    settings made greedy (fast, but a looping greedy decoder can rank checkpoints unlike the beam)."""
    if cfg.training.dev_decoder == "test":
        return cfg.decoding
    return dataclasses.replace(cfg.decoding, method="greedy")


def evaluate_dev(run: Run) -> tuple[DevResult, dict[str, float]]:
    """Score the dev set on rank 0; every rank gets the metrics."""
    cfg = run.cfg
    dev = DevResult()
    if run.info.is_main:
        # batched as test.py batches: fewer, wider steps of the decoder loop than the training batches
        workers = min(loader_workers(cfg.data.num_workers), 1)
        loader = make_decoding_loader(run.dev_set, cfg.data, cfg.decoding.batch_size, num_workers=workers)
        dev = evaluate(run.core, loader, run.device, options=run.dev_options(), hooks=run.hooks,
                       decoding=dev_decoding(cfg), amp_dtype=run.amp_dtype)
    return dev, dist_utils.broadcast_object(dev.metrics(), run.info)


def epoch_position(run: Run) -> float:
    """Epochs done, with the share of the one in progress (the ``epoch`` of a checkpoint's metrics)."""
    return run.state.epoch + run.state.batch / max(1, run.steps_per_epoch)


def _dev_with_test_decoder(run: Run, model: nn.Module, desc: str) -> tuple[float, float, list[str], list[str]]:
    """(mean Levenshtein, CER, hypotheses, references) of ``model`` on dev with test.py's decoder."""
    with keep_torch_threads():
        hyps, refs = decode_dataset(model, run.dev_set, dataclasses.replace(run.cfg.data, num_workers=0),
                                    run.cfg.decoding, desc=desc)
        return mean_levenshtein(hyps, refs), cer(hyps, refs), hyps, refs


def final_dev_report(run: Run, final_is_best: bool, n_examples: int = 3) -> None:
    """Score best.pt on dev with the decoder test.py will use (decoding.*), and show a few
    transcripts next to their references, so that the last number printed is the one to expect.

    training.final_check: when best.pt was picked by the greedy dev score and the final weights
    (the end of the schedule's cool-down) are not best.pt (``final_is_best`` false), score them too,
    and make them best.pt if test.py's decoder does better with them. A greedy decoder that loops can
    rank the cooled-down weights below an earlier epoch's that the beam with CTC scoring does worse with."""
    best = run.run_dir / "best.pt"
    if not run.info.is_main or not best.is_file() or len(run.dev_set) == 0:
        return
    cfg = run.cfg
    model, _ = load_for_decoding(best, run.device)
    lev, rate, hyps, refs = _dev_with_test_decoder(run, model, "dev with best.pt")
    decoder = f"test.py's decoder ({decoding_description(cfg.decoding)})"
    run.log.line(f"best.pt on {cfg.data.dev_partition} ({len(hyps)} utts) with {decoder}: "
                 f"mean Levenshtein {lev:.2f}, CER {rate:.3f}")
    if cfg.training.final_check and cfg.training.dev_decoder == "greedy" and not final_is_best:
        final_lev, final_rate, final_hyps, _ = _dev_with_test_decoder(run, run.core, "dev with the final weights")
        keep = final_lev < lev
        run.log.line(f"the final weights with {decoder}: mean Levenshtein {final_lev:.2f}, CER {final_rate:.3f}"
                     f"{': they are best.pt now' if keep else ''} (training.final_check)")
        if keep:
            save_best(run, {"epoch": epoch_position(run), "dev_lev_test_decoder": final_lev,
                            "dev_cer_test_decoder": final_rate})
            hyps = final_hyps
    for name, ref, hyp in list(zip(run.dev_set.names, refs, hyps))[:n_examples]:
        run.log.line(f"  {name}\n    ref: {ref}\n    hyp: {hyp}")
