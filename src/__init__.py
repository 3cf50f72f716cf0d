"""Attention-based speech recognition: Listen, Attend and Spell and friends.

Shape legend, used in every docstring and at every reshape in this package:

    B   batch (utterances)
    T   input frames (10 ms each); T' frames after the listener's reduction
    U   output steps (characters, including <sos>/<eos> where stated)
    D   feature dimension (n_mels, 28 for the competition)
    H   hidden size of a recurrent layer (2H for a bidirectional one)
    A   attention key/value dimension
    V   vocabulary size (31)
    K   beam size; N = B * K rows of a beam search
    t   positions decoded so far (a decoder's key/value cache)
    d   model width of the transformer family; h heads of dh = d / h each
    C   channels of a convolution; F features per frame inside a layer

Lengths are integer tensors of shape (B,); masks are built from lengths,
never from pad values.
"""
