"""bench/gpu_estimate.py's FLOP count: recurrent calls by formula (worked out by hand here), whatever
FlopCounterMode makes of them, and everything else as the counter counts it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_estimate  # noqa: E402

from src.models.interface import LossOutput  # noqa: E402


def test_recurrent_calls_are_counted_by_formula():
    lstm = nn.LSTM(32, 64, num_layers=2, batch_first=True, bidirectional=True)
    gru = nn.GRU(16, 8, batch_first=True)
    calls = gpu_estimate.RecurrentCalls()
    with calls:
        lstm(torch.randn(3, 50, 32))  # 150 frames
        packed = nn.utils.rnn.pack_padded_sequence(torch.randn(2, 10, 16), torch.tensor([10, 4]), batch_first=True)
        gru(packed)  # 14 real frames
    flops = [f for _, _, f in calls.calls]
    layer1 = 2 * 4 * (32 + 64) * 64 * 2 * 150  # 2 x gates x (input + hidden) x hidden x directions x frames
    layer2 = 2 * 4 * (128 + 64) * 64 * 2 * 150  # the second layer reads both directions (2 x 64)
    assert flops == [layer1 + layer2, 2 * 3 * (16 + 8) * 8 * 14]


class GRUThenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(28, 32, batch_first=True)
        self.out = nn.Linear(32, 31, bias=False)

    def forward(self, features, feature_lens, tokens, token_lens):
        return LossOutput(self.out(self.gru(features)[0]).square().mean())


def test_a_step_is_the_counted_products_plus_three_times_the_recurrent_forward():
    batch = SimpleNamespace(features=torch.randn(2, 40, 28), feature_lens=torch.tensor([40, 40]),
                            tokens=None, token_lens=None)
    total, recurrent = gpu_estimate.step_flops(GRUThenLinear(), batch, {})
    gru_forward = 2 * 3 * (28 + 32) * 32 * 80
    linear = 2 * 32 * 31 * 80 * 3  # forward, then the gradients of its input and of its weight
    assert recurrent == 3 * gru_forward
    assert total == 3 * gru_forward + linear


def test_a_bad_number_is_a_one_line_error():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_estimate.py"), "--utilisation", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 2 and len(errors) == 1 and "argument --utilisation" in errors[0], proc.stderr


def test_launches_are_the_operators_that_are_not_views():
    a, b = torch.randn(4, 6), torch.randn(6, 3)
    with gpu_estimate.OperatorCount() as count:
        c = (a * 2.0).view(6, 4).t()  # mul launches; view and t do not
        torch.mm(c, b).sum()  # mm and sum launch
    assert count.launches == 3


def test_no_early_end_keeps_eos_out_until_the_expected_length():
    from src.vocab import EOS, VOCAB

    scorer = gpu_estimate.NoEarlyEnd(None, torch.tensor([3, 5]))
    out = scorer.score(4)
    assert out.shape == (2, len(VOCAB))
    assert out[0, EOS] == 0.0 and out[1, EOS] == -1e4  # row 0 may end at 4 characters, row 1 not yet
    assert int((out != 0).sum()) == 1  # nothing else changes
    scorer.select(torch.tensor([1, 1, 0]), torch.tensor([7, 8, 9]))
    assert scorer.expected.tolist() == [5, 5, 3]
