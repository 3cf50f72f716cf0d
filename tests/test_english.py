"""src.corpus.english (general English for the LM) and src.lm's --english/--exclude-root."""
import gzip

import numpy as np
import pytest

from src.corpus import english
from src.errors import UserError


def test_decontaminate_drops_sentences_sharing_eight_words_or_contained_whole():
    held_out = ["IT WAS THE BEST OF TIMES IT WAS THE WORST OF TIMES IT WAS THE AGE OF WISDOM", "CALL ME ISHMAEL"]
    sentences = [
        "SO SAID HE IT WAS THE BEST OF TIMES IT WAS THE WORST",  # shares "IT WAS THE BEST OF TIMES IT WAS"
        "IT WAS THE BEST OF TIMES INDEED",                       # 6 shared words only: kept
        "CALL ME ISHMAEL",                                       # short, contained whole: dropped
        "CALL ME LATER",                                         # kept
        "ME ISH",                                                # not a whole-word match: kept
    ]
    kept, removed = english.decontaminate(sentences, held_out)
    assert kept == ["IT WAS THE BEST OF TIMES INDEED", "CALL ME LATER", "ME ISH"] and removed == 2


def test_sentences_are_normalised_and_abbreviation_runs_dropped():
    text = "Call 911 now.  It was a dark and stormy night!  See D. D. L. L. D. here.  Go on."
    assert list(english._sentences(text)) == ["IT WAS A DARK AND STORMY NIGHT"]


def test_gcide_reader_keeps_definitions_without_headwords_etymologies_or_sources(tmp_path):
    path = tmp_path / "gcide.dict.dz"
    content = (
        "This file is part of GCIDE, notices.\n\n"
        'Abdication \\Ab`di*ca"tion\\, n. [L. abdicatio: cf. F.\n'
        "   abdication.]\n"
        "   The act of abdicating; the renunciation of a high office,\n"
        "   dignity, or trust, by its holder. --Bailey.\n"
        "   [1913 Webster]\n\n"
        "   2. (Zool.) The posterior section of the body, behind the\n"
        "      thorax, in insects.\n"
        "      [1913 Webster]\n"
    )
    with gzip.open(path, "wt") as f:
        f.write(content)
    assert list(english.gcide(path)) == [
        "THE ACT OF ABDICATING", "THE RENUNCIATION OF A HIGH OFFICE DIGNITY OR TRUST BY ITS HOLDER",
        "THE POSTERIOR SECTION OF THE BODY BEHIND THE THORAX IN INSECTS"]


def test_unknown_or_missing_source_is_one_line(monkeypatch):
    with pytest.raises(UserError, match="unknown source 'wiki'"):
        english.english_sentences(["wiki"])
    monkeypatch.setattr(english, "GCIDE", english.GCIDE.with_name("missing.dict.dz"))
    with pytest.raises(UserError, match="apt-get install dict-gcide"):
        english.english_sentences(["gcide"])


def test_lm_build_leaves_out_the_held_out_text(tmp_path):
    from src.decoding.lm import CharNgramLM
    from src import lm as lm_cli

    root = tmp_path / "corpus"
    (root / "dev-clean" / "transcripts").mkdir(parents=True)
    (root / "dev-clean" / "mfcc").mkdir(parents=True)
    secret = "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG AGAIN"
    np.save(root / "dev-clean" / "transcripts" / "1-1-0000.npy", np.array(["<sos>", *secret, "<eos>"]))
    np.save(root / "dev-clean" / "mfcc" / "1-1-0000.npy", np.zeros((5, 28), np.float32))
    (root / "test_reference.csv").write_text("index,label\n0,A STITCH IN TIME\n")
    text = tmp_path / "text.txt"
    text.write_text(f"{secret.lower()}.\nA stitch in time.\nSomething else entirely here.\n")
    out = tmp_path / "lm.npz"
    assert lm_cli.main(["build", "--text", str(text), "--order", "3", "--out", str(out),
                        "--exclude-root", str(root)]) == 0
    built, reference = CharNgramLM.load(out), CharNgramLM.build(["SOMETHING ELSE ENTIRELY HERE"], 3)
    for level, expected in zip(built.table, reference.table, strict=True):  # the counts of the kept sentence only
        assert level.keys() == expected.keys()
        for context, (tokens, counts) in expected.items():
            np.testing.assert_array_equal(level[context][0], tokens)
            np.testing.assert_array_equal(level[context][1], counts)
