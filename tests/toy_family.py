"""A toy model family, added through the registry alone: one linear layer from features to CTC.

Importing this module registers family ``toy_ctc``; nothing else in the
repository knows about it. tests/test_family_seam.py trains, resumes and
decodes it with train.py and test.py.
"""
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from src.models.interface import EncoderOutput, LossOutput
from src.models.losses import ctc_loss
from src.models.registry import Family, register_family


@dataclass
class ToyConfig:
    bias: bool = True  # the linear layer's bias


class LinearCTC(nn.Module):
    family = "toy_ctc"

    def __init__(self, n_mels: int, vocab_size: int, cfg: ToyConfig):
        super().__init__()
        self.proj = nn.Linear(n_mels, vocab_size, bias=cfg.bias)

    def encode(self, features, feature_lens) -> EncoderOutput:
        log_probs = F.log_softmax(self.proj(features).float(), dim=-1)  # (B, T, D) -> (B, T, V)
        return EncoderOutput((), feature_lens, log_probs, feature_lens)

    @staticmethod
    def loss_options(training_cfg) -> dict:
        return {}

    def forward(self, features, feature_lens, tokens, token_lens) -> LossOutput:
        encoded = self.encode(features, feature_lens)
        loss = ctc_loss(encoded, tokens, token_lens)
        return LossOutput(loss, {"ctc": float(loss.detach())}, encoded)


register_family(Family("toy_ctc", ToyConfig, lambda cfg, n_mels, vocab_size: LinearCTC(n_mels, vocab_size, cfg)))
