"""Decoding a whole split: what test.py, dev scoring and the benchmarks share.

    hyps, refs = decode_dataset(model, dataset, cfg.data, cfg.decoding)    # in dataset order
    decoding_description(cfg.decoding)                                     # "beam 10, ..." for log lines
"""
from __future__ import annotations

from tqdm import tqdm

from src.data.check import FRAME_SECONDS
from src.vocab import decode as ids_to_text


def decode_dataset(model, dataset, data_cfg, decoding_cfg, desc: str = "decode"
                   ) -> tuple[list[str], list[str] | None]:
    """Hypotheses (and references when the dataset has transcripts) in dataset order."""
    from src.data import make_decoding_loader
    from src.decoding import decode_batch

    loader = make_decoding_loader(dataset, data_cfg, decoding_cfg.batch_size)
    hyps: list[str | None] = [None] * len(dataset)
    refs: list[str | None] | None = [None] * len(dataset) if dataset.has_transcripts else None
    # progress in seconds of audio, not utterances: the loader goes shortest first, and a decode's time
    # grows with the audio, so the bar's estimate of the time left holds from the start
    # (whole seconds, rounded on the running sum, so that the bar ends exactly at its total)
    seconds = [float(n) * FRAME_SECONDS for n in dataset.frame_lengths]
    done, heard = 0, 0.0
    with tqdm(total=round(sum(seconds)), desc=f"{desc} (s of audio)", unit="s", dynamic_ncols=True) as bar:
        for batch in loader:
            texts = decode_batch(model, batch, decoding_cfg)
            for j, idx in enumerate(batch.indices.tolist()):
                hyps[idx] = texts[j]
                if refs is not None and batch.tokens is not None:
                    refs[idx] = ids_to_text(batch.tokens[j].tolist())
            done += len(texts)
            bar.set_postfix_str(f"{done}/{len(dataset)} utt", refresh=False)
            before, heard = heard, heard + sum(seconds[i] for i in batch.indices.tolist())
            bar.update(round(heard) - round(before))
    missing = sum(h is None for h in hyps)
    if missing:
        raise RuntimeError(f"decode_dataset: {missing} utterances were never decoded (sampler bug)")
    return hyps, refs  # type: ignore[return-value]


def decoding_description(decoding_cfg) -> str:
    """The decoder in a few words, as log lines and reports name it."""
    if decoding_cfg.method == "greedy":
        return "greedy"
    desc = f"beam {decoding_cfg.beam_size}, length_penalty {decoding_cfg.length_penalty}"
    if decoding_cfg.ctc_weight > 0:
        desc += f", ctc_weight {decoding_cfg.ctc_weight}"
    if decoding_cfg.lm_weight > 0:
        desc += f", lm {decoding_cfg.lm} x {decoding_cfg.lm_weight}"
    if decoding_cfg.length_bonus:
        desc += f", length_bonus {decoding_cfg.length_bonus}"
    return desc
