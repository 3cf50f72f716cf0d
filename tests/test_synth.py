"""src.corpus.synth: layout, determinism, disjoint or shared voices, disjoint sentences, the bundled sample."""
import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from src.corpus import synth
from src.data.features import log_mel
from src.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
NAME = re.compile(r"^\d+-\d+-\d{4}$")
ALPHABET = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")
TINY = {"train-clean-100": 4, "dev-clean": 1, "test-clean": 1}

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
needs_fortunes = pytest.mark.skipif(not synth.FORTUNES_DIR.is_dir(), reason="fortunes are not installed")


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sentences():
    if not synth.FORTUNES_DIR.is_dir():
        pytest.skip("fortunes are not installed")
    return synth.load_sentences()


@needs_espeak
@needs_fortunes
def test_tiny_corpus_layout_and_byte_identical_for_a_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    totals = synth.synthesize_corpus(a, TINY, seed=5, workers=1, progress=False)
    synth.synthesize_corpus(b, TINY, seed=5, workers=1, progress=False)
    synth.synthesize_corpus(c, TINY, seed=6, workers=1, progress=False)
    assert {s: n for s, (n, _) in totals.items()} == TINY
    fa, fb = files(a), files(b)
    assert fa == fb  # same seed: byte-identical features, transcripts and metadata
    assert fa != files(c)
    for split, n in TINY.items():
        feats = sorted((a / split / "mfcc").glob("*.npy"))
        assert len(feats) == n
        for path in feats:
            assert NAME.match(path.stem), path.name
            x = np.load(path)
            assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 28 and np.isfinite(x).all()
            if split == "test-clean":
                assert not (a / split / "transcripts").exists()
                continue
            tokens = np.load(a / split / "transcripts" / path.name)
            assert tokens.ndim == 1 and tokens[0] == "<sos>" and tokens[-1] == "<eos>"
            assert all(len(t) == 1 and t in ALPHABET for t in tokens[1:-1])
    assert not list(a.rglob("*.tmp"))
    with pytest.raises(UserError, match="already has files"):
        synth.synthesize_corpus(a, TINY, seed=5, workers=1, progress=False)


@needs_espeak
@needs_fortunes
def test_features_are_log_mel_of_the_spoken_wave_and_float16_option(tmp_path, sentences):
    jobs = synth.plan_corpus({"train-clean-100": 1}, seed=3, sentences=sentences)
    synth.synthesize_corpus(tmp_path, {"train-clean-100": 1}, seed=3, workers=1, dtype="float16", progress=False)
    wave, sr = synth.speak(jobs[0])
    stored = np.load(tmp_path / "train-clean-100" / "mfcc" / f"{jobs[0].name}.npy")
    assert stored.dtype == np.float16
    np.testing.assert_array_equal(stored, log_mel(wave, sr).astype(np.float16))
    tokens = np.load(tmp_path / "train-clean-100" / "transcripts" / f"{jobs[0].name}.npy")
    assert "".join(tokens[1:-1]) == jobs[0].text


@needs_espeak
def test_plan_keeps_dev_and_test_voices_and_sentences_out_of_training(sentences):
    counts = dict(synth.PRESETS["heldout"]["counts"])
    jobs = synth.plan_corpus(counts, seed=11, sentences=sentences)
    assert jobs == synth.plan_corpus(counts, seed=11, sentences=sentences)  # pure function of the seed
    by_split = {s: [j for j in jobs if j.split == s] for s in counts}
    assert {s: len(js) for s, js in by_split.items()} == counts
    names = [j.name for j in jobs]
    assert len(set(names)) == len(names) and all(NAME.match(n) for n in names)
    train = by_split["train-clean-100"] + by_split["train-clean-360"]
    train_combos = {j.speaker.combo for j in train}
    train_texts = {j.text for j in train}
    for split in ("dev-clean", "test-clean"):
        assert not train_combos & {j.speaker.combo for j in by_split[split]}, split
        assert not train_texts & {j.text for j in by_split[split]}, split
    assert not {j.speaker.combo for j in by_split["dev-clean"]} & {j.speaker.combo for j in by_split["test-clean"]}
    speakers = {j.speaker for j in jobs}
    assert len({s.speaker_id for s in speakers}) == len(speakers)
    for s in speakers:
        assert 130 <= s.speed <= 200 and 20 <= s.pitch <= 80
        assert str(s.speaker_id) == next(j.name for j in jobs if j.speaker == s).split("-")[0]


@needs_espeak
def test_shared_voice_plan_gives_every_split_the_same_voices_and_new_sentences(sentences):
    preset = synth.PRESETS["sample"]
    options = {k: preset[k] for k in ("shared_voices", "english_only", "max_words")}
    counts = dict(preset["counts"])
    jobs = synth.plan_corpus(counts, seed=11, sentences=sentences, **options)
    assert jobs == synth.plan_corpus(counts, seed=11, sentences=sentences, **options)  # pure function of the seed
    by_split = {s: [j for j in jobs if j.split == s] for s in counts}
    assert {s: len(js) for s, js in by_split.items()} == counts
    names = [j.name for j in jobs]
    assert len(set(names)) == len(names) and all(NAME.match(n) for n in names)
    voices = {s: {j.speaker.combo for j in js} for s, js in by_split.items()}
    assert len(voices["train-clean-100"]) == preset["shared_voices"]
    assert voices["dev-clean"] == voices["test-clean"] == voices["train-clean-100"]  # every voice in every split
    assert all(c[0] == "flite" or c[1] in synth.ESPEAK_ENGLISH for c in voices["train-clean-100"])
    train_texts = {j.text for j in by_split["train-clean-100"] + by_split["train-clean-360"]}
    for split in ("dev-clean", "test-clean"):
        assert not train_texts & {j.text for j in by_split[split]}, split  # sentences never heard in training
    assert all(len(j.text.split()) <= preset["max_words"] for j in jobs)


def test_sentence_filter_keeps_plain_sentences_only():
    assert synth._speakable("If you fall in a pond, check your pockets for fish.") == (
        "IF YOU FALL IN A POND CHECK YOUR POCKETS FOR FISH", "if you fall in a pond, check your pockets for fish.")
    for bad in ["Call 911 now, please.", "The IBM manual is long.", "Dr. Who is here today.",
                "Go.", "no capital letter here.", "No full stop here", "A: The elephants are coming.",
                "word " * 30 + "end."]:
        assert synth._speakable(bad) is None, bad


@needs_espeak
@needs_fortunes
def test_channel_copy_says_what_its_split_says_through_the_drawn_channels(tmp_path):
    import zlib

    from src.corpus.channels import KINDS, through_channel

    counts = {"train-clean-100": 2, "dev-clean": 3}
    synth.synthesize_corpus(tmp_path, counts, seed=5, workers=1, progress=False)
    totals = synth.synthesize_corpus(tmp_path, counts, seed=5, workers=1, progress=False, channel="dev-clean")
    assert list(totals) == ["dev-clean-channel"] and totals["dev-clean-channel"][0] == 3
    clean, copy = tmp_path / "dev-clean", tmp_path / "dev-clean-channel"
    assert files(clean / "transcripts") == files(copy / "transcripts")
    with open(tmp_path / "dev-clean-channel.tsv") as f:
        drawn = {row["name"]: row["channel"] for row in csv.DictReader(f, delimiter="\t")}
    jobs = [j for j in synth.plan_corpus(counts, seed=5) if j.split == "dev-clean"]
    assert sorted(drawn) == sorted(j.name for j in jobs)
    for job in jobs:  # the features are log-mel of the spoken wave through the channel the tsv names
        wave, sr = synth.speak(job)
        wave, sr, what = through_channel(wave, sr, np.random.default_rng([5, zlib.crc32(job.name.encode()), 1]))
        assert what == drawn[job.name] and what.split(":")[0] in KINDS
        stored = np.load(copy / "mfcc" / f"{job.name}.npy")
        np.testing.assert_allclose(stored, log_mel(wave, sr), atol=1e-5)
        assert not np.allclose(stored, np.load(clean / "mfcc" / f"{job.name}.npy"))
    with pytest.raises(UserError, match="already has files"):
        synth.synthesize_corpus(tmp_path, counts, seed=5, workers=1, progress=False, channel="dev-clean")
    with pytest.raises(UserError, match="not the utterances this plan makes"):
        synth.synthesize_corpus(tmp_path, counts, seed=6, workers=1, progress=False, channel="dev-clean")


def test_noise_has_the_requested_snr():
    rng = np.random.default_rng(0)
    wave = np.sin(np.linspace(0, 2000, 200_000)).astype(np.float32)
    noisy = synth.add_noise(wave, 10.0, rng)
    snr = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean((noisy - wave).astype(np.float64) ** 2))
    assert abs(snr - 10.0) < 0.1


def test_cli_rejects_bad_counts(tmp_path):
    with pytest.raises(UserError, match="unknown split"):
        synth.main([str(tmp_path), "--counts", "train-clean-999=3"])
    with pytest.raises(UserError, match="SPLIT=N"):
        synth.main([str(tmp_path), "--counts", "dev-clean"])


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="data/sample is not generated")
def test_bundled_sample_matches_its_preset():
    counts = synth.PRESETS["sample"]["counts"]
    for split, n in counts.items():
        feats = sorted((SAMPLE / split / "mfcc").glob("*.npy"))
        assert len(feats) == n, split
        assert np.load(feats[0]).dtype == np.float16
        if split == "test-clean":
            assert not (SAMPLE / split / "transcripts").exists()
        else:
            assert sorted(p.name for p in (SAMPLE / split / "transcripts").glob("*.npy")) == [p.name for p in feats]
    with open(SAMPLE / "speakers.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    combos = {}
    for row in rows:
        combos.setdefault(row["split"], set()).add((row["engine"], row["voice"], row["variant"]))
    # the first-run sample: dev and test are new sentences spoken by the voices of training
    assert combos["dev-clean"] == combos["test-clean"] == combos["train-clean-100"]
    with open(SAMPLE / "test_reference.csv") as f:
        ref = list(csv.DictReader(f))
    assert [int(r["index"]) for r in ref] == list(range(counts["test-clean"]))
    assert all(set(r["label"]) <= ALPHABET for r in ref)


@needs_espeak
def test_paragraph_plan_is_shaped_like_librispeech_and_keeps_voices_and_text_out_of_training(sentences):
    counts = dict(synth.PRESETS["paragraphs"]["counts"])
    combos = synth.available_combos(tuple(synth.ENGINE_SHARES))
    jobs = synth.plan_corpus(counts, seed=7, sentences=sentences, combos=combos, paragraphs=True)
    assert jobs == synth.plan_corpus(counts, seed=7, sentences=sentences, combos=combos, paragraphs=True)
    by_split = {s: [j for j in jobs if j.split == s] for s in counts}
    assert {s: len(js) for s, js in by_split.items()} == counts
    names = [j.name for j in jobs]
    assert len(set(names)) == len(names) and all(NAME.match(n) for n in names)
    # lengths: LibriSpeech's transcripts average 187 characters in train-clean-100 (at most 400) and 109 in
    # dev/test (a tail to 518; ../shared/competition-data.md)
    train_chars = np.array([len(j.text) for j in by_split["train-clean-100"]])
    eval_chars = np.array([len(j.text) for s in ("dev-clean", "test-clean") for j in by_split[s]])
    assert 170 <= train_chars.mean() <= 205 and train_chars.max() <= 400
    assert 90 <= eval_chars.mean() <= 130 and eval_chars.max() > 250 and eval_chars.max() <= 520
    # a paragraph is whole sentences of the pool, and a split's sentences are never read in another split
    known = {text for text, _ in sentences}
    split_sentences = {}
    for split, js in by_split.items():
        for j in js:
            parts = re.split(r"(?<=[.!?]) ", j.spoken)
            assert all(p.endswith((".", "!", "?")) for p in parts)
            # the transcript is the spoken text in the competition's alphabet
            assert j.text == " ".join(re.sub(r"[,.!?]", "", j.spoken).upper().split())
            split_sentences.setdefault(split, set()).update(" ".join(re.sub(r"[,.!?]", "", p).upper().split())
                                                            for p in parts)
        assert split_sentences[split] <= known, split
    for split in ("dev-clean", "test-clean"):
        assert not split_sentences[split] & split_sentences["train-clean-100"], split
    # voices: every installed engine speaks; held-out flite/festival voices only in dev and test; espeak-ng's
    # combinations differ between all splits
    engines = {c[0] for c in combos}
    train = {j.speaker.combo for j in by_split["train-clean-100"]}
    assert {c[0] for c in train} == engines
    assert not train & synth.HELD_OUT_VOICES
    for split in ("dev-clean", "test-clean"):
        held = {j.speaker.combo for j in by_split[split]}
        assert all(c in synth.HELD_OUT_VOICES for c in held if c[0] != "espeak"), split
        assert not train & held, split
    dev_espeak = {c for c in (j.speaker.combo for j in by_split["dev-clean"]) if c[0] == "espeak"}
    assert not dev_espeak & {j.speaker.combo for j in by_split["test-clean"]}
    # no engine dominates the training speakers
    speakers = {j.speaker for j in by_split["train-clean-100"]}
    for engine in engines:
        share = sum(s.engine == engine for s in speakers) / len(speakers)
        assert 0.1 <= share <= 0.7, (engine, share)


@pytest.mark.skipif(not synth.festival_voices(), reason="festival and its voices are not installed")
@needs_fortunes
def test_festival_voices_speak_with_their_speed_and_pitch(sentences):
    text, spoken = next(pair for pair in sentences if len(pair[0]) > 40)
    for voice in synth.festival_voices():
        def length(speed: int, pitch: int = 50) -> float:
            speaker = synth.Speaker(1, "train-clean-100", "festival", voice, "", speed, pitch)
            job = synth.Job("train-clean-100", "1-1-0000", text, spoken, speaker)
            wave, sr = synth.speak(job)
            assert wave.ndim == 1 and np.isfinite(wave).all() and np.abs(wave).max() > 0.01
            np.testing.assert_array_equal(wave, synth.speak(job)[0])  # deterministic: a seed gives one corpus
            return wave.size / sr
        assert length(130) > 1.15 * length(200), voice  # slower speech is longer
