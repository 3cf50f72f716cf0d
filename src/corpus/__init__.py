"""Building corpora in the competition layout (apart from src/data/, which training reads).

    prepare.py  LibriSpeech, LJSpeech, Common Voice and CSV lists -> the layout (python -m src.corpus.prepare)
    synth.py    an espeak-ng/flite/festival multi-speaker corpus (python -m src.corpus.synth)
    long.py     a split's utterances joined into 25-35 s ones (python -m src.corpus.long)
    fullsize.py a stand-in of the competition's full size, no speech (python -m src.corpus.fullsize)
    english.py  general English text from Debian packages, for the character LM (python -m src.lm build --english)
    text.py     text normalisation to the vocabulary
    pool.py     the worker pool both run their jobs in
"""
