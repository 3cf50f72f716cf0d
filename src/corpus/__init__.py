"""Building corpora in the competition layout (apart from src/data/, which training reads).

    prepare.py  LibriSpeech, LJSpeech, Common Voice and CSV lists -> the layout (python -m src.corpus.prepare)
    synth.py    an espeak-ng/flite multi-speaker corpus (python -m src.corpus.synth)
    text.py     text normalisation to the vocabulary
    pool.py     the worker pool both run their jobs in
"""
