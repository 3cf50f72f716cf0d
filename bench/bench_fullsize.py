"""The competition's full size on this machine: start-up, memory, what the data pipeline delivers,
one epoch, the test decode, a kill mid-epoch.

    python bench/bench_fullsize.py                                   # every part (about 45 minutes on 2 cores)
    python bench/bench_fullsize.py --parts startup,pipeline,need     # the loader figures only (minutes)
    python bench/bench_fullsize.py --parts epoch,test,resume

Runs on ``--data`` (default bench/out/fullsize), made first when absent by
``python -m src.corpus.fullsize`` (the competition's counts and lengths, no speech; an existing
folder is used as it is, e.g. one made with ``--scale``). Parts:

- ``startup``: ``python train.py`` on the corpus, from the command to the first optimiser step, with
  the data check's stamp removed (default settings) and with it in place; the default settings (cpu-las here)
  and each ``--presets`` GPU preset with its data settings (batch caps, 2 loader workers) and the
  tiny model of bench/gpu_check.py on the CPU (a full-size GPU model's first step on 2 CPU cores
  would time the CPU, not the start-up). Peak resident memory (VmHWM) of the main process and of
  its loader workers, read from /proc every 0.2 s while the run starts and trains
  ``--train-seconds`` more. A worker's figure includes the pages it shares with the main process.
- ``pipeline``: batches and utterances per second that the DataLoader alone delivers (reading,
  per-utterance normalisation, padding, in the sampler's order; a GPU preset's loader as on CUDA,
  where train.py leaves the normalisation to the device) with 0, 1, 2 and 4 workers, for
  the default batch caps and each preset's, over ``--pipeline-seconds`` after the first batch.
- ``need``: what each GPU preset consumes on a T4, an A100 and an H100 by bench/gpu_estimate.py's
  FLOP estimate (its utilisations; not measured), in utterances and batches per second.
- ``epoch``: one epoch of ``python train.py`` with the default settings but a small LAS
  (``--small``), the end-of-run dev report included; wall time of each phase, peak memory.
- ``test``: ``python test.py`` with that run's best.pt on all of test-clean: wall time, utt/s.
- ``resume``: the tiny LAS trains one epoch straight, then the same run is killed (kill -9) half way
  through the epoch and resumed to its end; the final weights must equal the straight run's.

Prints markdown tables and writes them to ``--out`` (default bench/out/fullsize.md).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from cli_args import positive, preset_list  # bench/, this script's folder, is on sys.path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).parent), str(ROOT)]

PARTS = ("startup", "pipeline", "need", "epoch", "test", "resume")
SMALL = ["model.las.conv_channels=64", "model.las.listener_hidden=64", "model.las.attention_dim=64",
         "model.las.embedding_dim=64", "model.las.speller_hidden=128"]
QUIET = ["logging.wandb=disabled"]
TEST_BAR = r"^test-clean \(s of audio\):"  # test.py's decode bar (the data check's bars name the split too)
WORKERS = (0, 1, 2, 4)
NEED_GPUS = ("T4", "A100", "H100")


# --------------------------------------------------------------------------
# A child process, watched: its output lines with the time each arrived, and peak memory


class Watched:
    """``python ARGV`` in ROOT; output lines (stdout and stderr, split at \\n and \\r) with their
    arrival times; VmHWM (kB) of the process and of each descendant, polled every 0.2 s."""

    def __init__(self, argv: list[str]):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.began = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.lines: list[tuple[float, str]] = []
        self.peaks: dict[int, int] = {}  # pid -> VmHWM kB
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._reader.start()
        self._poller.start()

    def _read(self) -> None:
        buf = b""
        while chunk := self.proc.stdout.read1(65536):
            buf += chunk
            *done, buf = re.split(rb"[\r\n]", buf)
            now = time.monotonic() - self.began
            self.lines += [(now, ln.decode(errors="replace")) for ln in done if ln.strip()]
        if buf.strip():
            self.lines.append((time.monotonic() - self.began, buf.decode(errors="replace")))

    def _poll(self) -> None:
        while self.proc.poll() is None:
            for pid in [self.proc.pid, *descendants(self.proc.pid)]:
                hwm = status_kb(pid)
                if hwm:
                    self.peaks[pid] = max(self.peaks.get(pid, 0), hwm)
            time.sleep(0.2)

    def wait_for(self, pattern: str, timeout: float) -> float | None:
        """Seconds from the start to the first line matching ``pattern``; None if the process ended or timed out."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for t, line in self.lines[seen:]:
                if re.search(pattern, line):
                    return t
            seen = len(self.lines)
            if self.proc.poll() is not None and not self._reader.is_alive():
                return None
            time.sleep(0.1)
        return None

    def finish(self, sig: int | None = None, timeout: float = 7200) -> int:
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(10)
        return rc

    def line(self, pattern: str) -> tuple[float, str] | None:
        return next(((t, ln) for t, ln in self.lines if re.search(pattern, ln)), None)

    def memory(self) -> tuple[float, float, int]:
        """(main GiB, largest worker GiB, workers seen)."""
        main = self.peaks.get(self.proc.pid, 0)
        workers = [v for pid, v in self.peaks.items() if pid != self.proc.pid]
        return main / 2**20, max(workers, default=0) / 2**20, len(workers)

    def tail(self, n: int = 5) -> str:
        return " | ".join(ln for _, ln in self.lines[-n:])


def descendants(pid: int) -> list[int]:
    children, out = {}, []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def status_kb(pid: int, field: str = "VmHWM") -> int:
    """A memory field of /proc/PID/status in kB (VmHWM: the peak resident set; VmRSS: now); 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def clock(text: str) -> float:
    """tqdm's [[h:]mm:ss] -> seconds."""
    seconds = 0.0
    for part in text.split(":"):
        seconds = 60 * seconds + float(part)
    return seconds


def eta_at(w: "Watched", bar: str, share: float) -> str:
    """What the progress bar ``bar`` (a regex for its description) predicted at ``share`` of its
    total: elapsed + time left, beside the time the bar took in the end."""
    seen = []
    for _, line in w.lines:
        m = re.search(bar + r".*?(\d+)%\|.*\| *([\d.]+)/([\d.]+) \[([\d:]+)<([\d:?]+)", line)
        if m and "?" not in m.group(5):
            seen.append((int(m.group(1)), clock(m.group(4)), clock(m.group(5))))
    at = next(((e, left) for pct, e, left in seen if pct >= 100 * share), None)
    if at is None or not seen:
        return "no bar seen"
    return f"at {share:.0%}: {(at[0] + at[1]) / 60:.1f} min predicted, {seen[-1][1] / 60:.1f} min taken"


def train_args(data: Path, run_dir: Path, *extra: str, preset: str = "default") -> list[str]:
    """``train.py`` on ``data``; a GPU preset with its data settings, 2 loader workers and a tiny model on the CPU."""
    if preset == "default":  # what python train.py picks on this machine
        return ["train.py", f"data.root={data}", f"logging.run_dir={run_dir}", *QUIET, *extra]
    from gpu_check import TINY_MODELS

    family = settings(preset).model.family
    return ["train.py", "--preset", preset, f"data.root={data}", f"logging.run_dir={run_dir}", *QUIET, *extra,
            "training.device=cpu", "training.amp=none", "data.num_workers=2", *TINY_MODELS[family]]


def settings(preset: str):
    """The resolved config of ``preset`` ('default': the one train.py picks on this machine)."""
    from src.config import choose_preset, load_config

    name = choose_preset("auto", ROOT / "config.yaml", [])[0] if preset == "default" else preset
    return load_config(ROOT / "config.yaml", ["training.device=cpu"], preset=name)


def clear_check_stamps(data: Path) -> None:
    from src.data.check import STAMP_NAME

    for stamp in data.glob(f"*/{STAMP_NAME}"):
        stamp.unlink()


# --------------------------------------------------------------------------
# Parts


def part_startup(data: Path, work: Path, presets: list[str], train_seconds: float) -> list[str]:
    rows = ["| settings | data check | to the first step (s) | its phases (train.py's start-up line) | "
            "peak main (GiB) | peak worker (GiB) | workers |", "|---|---|---|---|---|---|---|"]
    for preset in ["default", *presets]:
        for cached in ((False, True) if preset == "default" else (True,)):  # the check is the same for every preset
            if not cached:
                clear_check_stamps(data)
            run_dir = work / f"startup-{preset}"
            shutil.rmtree(run_dir, ignore_errors=True)
            w = Watched(train_args(data, run_dir, "training.resume=false", preset=preset))
            first = w.wait_for(r"start-up: first optimiser step", timeout=1800)
            if first is not None:
                time.sleep(train_seconds)
            w.finish(signal.SIGTERM)
            said = w.line(r"start-up: ")
            phases = said[1].split("(", 1)[1].rstrip(")") if said else f"no start-up line: {w.tail()}"
            main, worker, n = w.memory()
            rows.append(f"| {preset} | {'stamped' if cached else 'full (stamp removed)'} | "
                        f"{'-' if first is None else f'{first:.1f}'} | {phases} | {main:.2f} | {worker:.2f} | {n} |")
            print(rows[-1], flush=True)
            shutil.rmtree(run_dir, ignore_errors=True)
    return rows


def part_pipeline(data: Path, presets: list[str], seconds: float) -> list[str]:
    import dataclasses

    import torch

    from src.data.dataset import SpeechDataset, make_loader
    from src.training.setup import normalize_on_device

    rows = ["| settings | batch caps (utts / frames) | mean utts per batch | "
            + " | ".join(f"{w} workers: batches/s (utt/s)" for w in WORKERS) + " |",
            "|---|---|---|" + "---|" * len(WORKERS)]
    for preset in ["default", *presets]:
        cfg = settings(preset)
        # a GPU preset's loader as on CUDA: the per-utterance normalisation left to the device
        on_device = preset != "default" and normalize_on_device(cfg, torch.device("cuda"))
        dataset = SpeechDataset(data, cfg.data.train_partition, n_mels=cfg.data.n_mels,
                                normalize="none" if on_device else cfg.data.normalize)
        cells = []
        for workers in WORKERS:
            loader = make_loader(dataset, dataclasses.replace(cfg.data, num_workers=workers), shuffle=True,
                                 seed=cfg.training.seed, epoch=1)
            sizes = [len(b) for b in loader.batch_sampler]
            it = iter(loader)
            next(it)
            start, batches, utts = time.monotonic(), 0, 0
            for batch in it:
                batches += 1
                utts += len(batch)
                if time.monotonic() - start >= seconds:
                    break
            elapsed = time.monotonic() - start
            del it
            cells.append(f"{batches / elapsed:.1f} ({utts / elapsed:.0f})")
            print(f"pipeline {preset} {workers} workers: {cells[-1]}", flush=True)
        rows.append(f"| {preset} | {cfg.data.max_utterances_per_batch} / {cfg.data.max_frames_per_batch} | "
                    f"{sum(sizes) / len(sizes):.1f} | " + " | ".join(cells) + " |")
    return rows


def part_need(data: Path, presets: list[str]) -> list[str]:
    from gpu_estimate import GPUS, assumed_utilisation, preset_estimate

    from src.data.dataset import LengthBucketSampler, SpeechDataset

    rows = ["| preset | GFLOP per utt | assumed utilisation | mean utts per batch | "
            + " | ".join(f"{g}: batches/s (utt/s)" for g in NEED_GPUS) + " |", "|---|---|---|---|" + "---|" * len(NEED_GPUS)]
    peaks = {name: peak for name, peak, _ in GPUS}
    for preset in presets:
        cfg, flops, _, _ = preset_estimate(preset)
        util = assumed_utilisation(cfg.model.family)
        lengths = SpeechDataset(data, cfg.data.train_partition, n_mels=cfg.data.n_mels).frame_lengths
        sizes = [len(b) for b in LengthBucketSampler(lengths, cfg.data.max_frames_per_batch,
                                                     cfg.data.max_utterances_per_batch, seed=0).all_batches()]
        per_batch = sum(sizes) / len(sizes)
        cells = []
        for gpu in NEED_GPUS:
            utt_s = peaks[gpu] * util / flops
            cells.append(f"{utt_s / per_batch:.1f} ({utt_s:.0f})")
        rows.append(f"| {preset} | {flops / 1e9:.1f} | {util:.0%} | {per_batch:.1f} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


def part_epoch(data: Path, work: Path) -> tuple[list[str], Path]:
    run_dir = work / "epoch"
    shutil.rmtree(run_dir, ignore_errors=True)
    w = Watched(train_args(data, run_dir, "training.epochs=1", *SMALL))
    rc = w.finish()
    end = time.monotonic() - w.began
    first = w.line(r"start-up: first optimiser step")
    epoch = w.line(r"^epoch 1/1 ")
    if rc != 0 or first is None or epoch is None:
        raise SystemExit(f"the epoch run failed (exit {rc}): {w.tail()}")
    m = re.search(r"([\d.]+) utt/s", epoch[1])
    n_train = len(list((data / "train-clean-100" / "mfcc").glob("*.npy")))
    train_s = n_train / float(m.group(1))
    main, worker, _ = w.memory()
    rows = ["| phase | wall time (min) |", "|---|---|",
            f"| start-up to the first step | {first[0] / 60:.1f} |",
            f"| training, {n_train} utterances ({float(m.group(1)):.1f} utt/s) | {train_s / 60:.1f} |",
            f"| dev-clean scored (greedy), checkpoints | {(epoch[0] - first[0] - train_s) / 60:.1f} |",
            f"| the end-of-run report (dev with test.py's decoder) | {(end - epoch[0]) / 60:.1f} |",
            f"| all of python train.py | {end / 60:.1f} |",
            "", f"The epoch's progress bar, {eta_at(w, r'^epoch 1/1:', 0.1)}; {eta_at(w, r'^epoch 1/1:', 0.5)}.",
            "", f"Peak resident memory: main process {main:.2f} GiB, loader workers {worker:.2f} GiB.",
            "", "train.py's lines: " + " / ".join(ln for _, ln in w.lines if re.match(r"(start-up|epoch 1/1 |done|data )", ln))]
    print("\n".join(rows), flush=True)
    return rows, run_dir


def part_test(data: Path, run_dir: Path) -> list[str]:
    out = run_dir / "submission.csv"
    w = Watched(["test.py", "--checkpoint", str(run_dir / "best.pt"), "--output", str(out),
                 f"data.root={data}", f"logging.run_dir={run_dir}"])
    rc = w.finish()
    end = time.monotonic() - w.began
    wrote = w.line(r"^wrote ")
    if rc != 0 or wrote is None:
        raise SystemExit(f"test.py failed (exit {rc}): {w.tail()}")
    n = int(re.search(r": (\d+) rows", wrote[1]).group(1))
    main, _, _ = w.memory()
    rows = ["| python test.py | utterances | wall time (min) | s per utterance | peak main (GiB) |", "|---|---|---|---|---|",
            f"| {w.line(r'^test: ')[1].split('decoding: ', 1)[-1]} | {n} | {end / 60:.1f} | {end / n:.3f} | {main:.2f} |",
            "", f"test.py's line: {wrote[1]}",
            "", f"Its progress bar (seconds of audio), {eta_at(w, TEST_BAR, 0.1)}; {eta_at(w, TEST_BAR, 0.5)}."]
    print("\n".join(rows), flush=True)
    return rows


def speed_of(epoch_line: str) -> str:
    m = re.search(r"[\d.]+ utt/s", epoch_line)
    return m.group(0) if m else "?"


def part_resume(data: Path, work: Path) -> list[str]:
    import torch

    from gpu_check import TINY_MODELS

    args = ["training.epochs=1", "training.dev_max_utterances=100", "training.final_check=false",
            "training.checkpoint_every_minutes=0.25", *TINY_MODELS["las"]]
    straight_dir, killed_dir = work / "resume-straight", work / "resume-killed"
    for d in (straight_dir, killed_dir):
        shutil.rmtree(d, ignore_errors=True)
    w = Watched(train_args(data, straight_dir, *args))
    if w.finish() != 0:
        raise SystemExit(f"the straight run failed: {w.tail()}")
    first, epoch = w.line(r"start-up: first"), w.line(r"^epoch 1/1 ")
    kill_at = (first[0] + epoch[0]) / 2  # half way through the epoch's batches
    k = Watched(train_args(data, killed_dir, *args))
    k.wait_for(r"start-up: first", timeout=1800)
    time.sleep(max(0.0, kill_at - (time.monotonic() - k.began)))
    k.finish(signal.SIGKILL)
    if not (killed_dir / "last.pt").is_file():
        raise SystemExit(f"no last.pt when the run was killed: {k.tail()}")
    saved = torch.load(killed_dir / "last.pt", weights_only=False, map_location="cpu")["train_state"]
    r = Watched(train_args(data, killed_dir, *args))
    if r.finish() != 0:
        raise SystemExit(f"the resumed run failed: {r.tail()}")
    resumed = r.line(r"^resumed from ")

    def weights(d: Path) -> dict:
        return torch.load(d / "last.pt", weights_only=False, map_location="cpu")["model"]

    a, b = weights(straight_dir), weights(killed_dir)
    same = a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    rows = ["| check | result |", "|---|---|",
            f"| one epoch straight (tiny LAS, {speed_of(epoch[1])}) | "
            f"ended {epoch[0] / 60:.1f} min after the start |",
            f"| kill -9 at | {kill_at / 60:.1f} min after the start; last.pt then at batch {saved.get('batch')} "
            f"of epoch {saved.get('epoch', 0) + 1} |",
            f"| resumed | {resumed[1] if resumed else 'no resume line'} |",
            f"| final weights equal the straight run's, tensor for tensor | {'yes' if same else 'NO'} |"]
    print("\n".join(rows), flush=True)
    return rows


def part_list(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"no part {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / "bench" / "out" / "fullsize"), help="the stand-in corpus")
    parser.add_argument("--parts", default=list(PARTS), type=part_list, help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--presets", default="gpu-las,gpu-transformer,gpu-ds2", type=preset_list,
                        help="GPU presets for startup, pipeline and need")
    parser.add_argument("--train-seconds", type=positive, default=20.0,
                        help="startup: seconds of training after the first step, for the workers' memory")
    parser.add_argument("--pipeline-seconds", type=positive, default=15.0, help="pipeline: seconds per figure")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "fullsize.md"))
    args = parser.parse_args()
    parts = args.parts
    from host import describe, host_load

    from src.corpus.fullsize import make_fullsize

    data, work = Path(args.data), Path(args.out).parent / "fullsize-runs"
    work.mkdir(parents=True, exist_ok=True)
    if not data.exists():
        make_fullsize(data)  # the full size; an existing --data is used as it is
    report = [f"# bench/bench_fullsize.py --parts {','.join(parts)}", "", describe(host_load())]
    epoch_dir = work / "epoch"
    for part in parts:
        started = time.monotonic()
        if part == "startup":
            rows = part_startup(data, work, args.presets, args.train_seconds)
        elif part == "pipeline":
            rows = part_pipeline(data, args.presets, args.pipeline_seconds)
        elif part == "need":
            rows = part_need(data, args.presets)
        elif part == "epoch":
            rows, epoch_dir = part_epoch(data, work)
        elif part == "test":
            rows = part_test(data, epoch_dir)
        else:
            rows = part_resume(data, work)
        report += ["", f"## {part} ({(time.monotonic() - started) / 60:.1f} min)", "", *rows]
    report += ["", describe(host_load())]
    Path(args.out).write_text("\n".join(report) + "\n")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    from src.errors import run_cli

    run_cli(main)
