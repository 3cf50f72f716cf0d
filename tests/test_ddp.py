"""Two processes under torchrun (gloo, CPU) train to identical weights; only rank 0 writes.

The test launches this file as the torchrun script; each rank trains a tiny
model on a tiny corpus and saves its final weights to OUT/rank<r>.pt.
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _worker(data_root: str, out_dir: str) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    import torch

    torch.set_num_threads(1)
    from test_resume import tiny_config

    from src.training import train

    cfg = tiny_config(Path(data_root), Path(out_dir) / "run", "training.epochs=2")
    run = train(cfg)
    torch.save(run.core.state_dict(), Path(out_dir) / f"rank{run.info.rank}.pt")


def test_two_process_gloo_run_gives_identical_weights(tmp_path):
    import torch

    from test_resume import make_corpus

    data = make_corpus(tmp_path / "corpus", n_train=18, n_dev=4)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           __file__, str(data), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)  # tensors only; the default from torch 2.6
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ckpt["train_state"]["epoch"] == 2
    from src.data.dataset import LengthBucketSampler, SpeechDataset

    lengths = SpeechDataset(data, "train-clean-100").frame_lengths
    per_rank = [len(LengthBucketSampler(lengths, 60000, 4, seed=11785, num_replicas=2, rank=r)) for r in (0, 1)]
    assert per_rank[0] == per_rank[1] and ckpt["train_state"]["global_step"] == 2 * per_rank[0]
    for k in a:
        assert torch.equal(ckpt["model"][k], a[k]), k
    assert proc.stdout.count("epoch 2/2") == 1  # only rank 0 logs


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
