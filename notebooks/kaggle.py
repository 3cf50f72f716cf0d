# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Attention-based speech recognition on Kaggle (or Colab)
#
# Train a model on the competition's data within one session, then decode test-clean into
# `/kaggle/working/submission.csv`, where Kaggle's "Submit" finds it. Run the cells top to
# bottom, or the whole file as a script (`python notebooks/kaggle.py`).
#
# Before running on Kaggle: **Add data** -> the competition `attention-based-speech-recognition`
# (and, to continue an earlier run, a dataset holding its `last.pt`); **Accelerator** -> a GPU;
# **Internet** on if the code is cloned or a package is missing (not needed when the repository is
# attached as a dataset and the image has the packages). See notebooks/README.md.
#
# Every path and budget below can be changed with an environment variable (the test suite runs
# this file on the bundled sample with a budget of seconds):
#
# | variable | default | what |
# |---|---|---|
# | `ASR_INPUT` | `/kaggle/input` | searched for the folder holding `train-clean-100/mfcc`, and for an earlier `last.pt` |
# | `ASR_DATA` | (searched) | the data root itself; skips the search |
# | `ASR_WORKING` | `/kaggle/working` | run folder (`runs/ASR_RUN`) and `submission.csv` |
# | `ASR_CODE` | the repository holding this file | the repository to run; `ASR_REPO` (a git URL) is cloned when none is found |
# | `ASR_PRESET` | `auto` | `train.py --preset`: gpu-FAMILY with a GPU, cpu-FAMILY without |
# | `ASR_RUN` | `kaggle` | the run's folder name under `ASR_WORKING/runs/` |
# | `ASR_MINUTES` | `660` | training minutes of this session (11 of Kaggle's 12 hours; the rest decodes) |
# | `ASR_RESUME` | (searched) | a checkpoint to continue from; `none`: start over |
# | `ASR_EXTRA` | (none) | more `key=value` overrides for train.py and test.py, e.g. `model.family=transformer` |
# | `ASR_PIP` | `1` | `0`: install nothing |

# %%
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path


def setting(name: str, default: str) -> str:
    """An environment variable, or its default when unset or empty."""
    return os.environ.get(name) or default


ON_COLAB = "google.colab" in sys.modules or (Path("/content").is_dir() and not Path("/kaggle").is_dir())
INPUT = Path(setting("ASR_INPUT", "/content" if ON_COLAB else "/kaggle/input"))
WORKING = Path(setting("ASR_WORKING", "/content/drive/MyDrive/asr" if ON_COLAB else "/kaggle/working"))
PRESET = setting("ASR_PRESET", "auto")
RUN_DIR = WORKING / "runs" / setting("ASR_RUN", "kaggle")
MINUTES = float(setting("ASR_MINUTES", "660"))
EXTRA = shlex.split(setting("ASR_EXTRA", ""))
SUBMISSION = WORKING / "submission.csv"
SKIP_DIRS = {"mfcc", "transcripts", ".git", "__pycache__"}  # never walked into: 28,539 files each
print(f"input {INPUT}, working {WORKING}, run {RUN_DIR}, preset {PRESET}, {MINUTES:g} training minutes")


def walk(top: Path, max_depth: int = 4):
    """(folder, its subfolder names, its file names) under ``top``, at most ``max_depth`` levels
    down, never inside feature or transcript folders."""
    if not top.is_dir():
        return
    base = len(top.parts)
    for folder, dirs, files in os.walk(top, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        if len(Path(folder).parts) - base >= max_depth:
            dirs[:] = []
        yield Path(folder), dirs, files


# %% [markdown]
# ## The code
#
# This file's repository when it runs from a checkout; else `ASR_CODE`, a repository attached as a
# dataset (found under `ASR_INPUT` by its `train.py` and `src/training/`), or a clone of `ASR_REPO`.
# A read-only copy (an attached dataset) is copied to `ASR_WORKING/asr` first.

# %%
def is_repository(folder: Path) -> bool:
    return (folder / "train.py").is_file() and (folder / "src" / "training").is_dir()


def find_code() -> Path:
    if os.environ.get("ASR_CODE"):
        candidates = [Path(os.environ["ASR_CODE"])]
    else:
        here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
        candidates = [here.parent, here, Path.cwd()] + [f for f, _, _ in walk(INPUT, 3)]
    for folder in candidates:
        if is_repository(folder):
            return folder
    if os.environ.get("ASR_REPO"):
        target = WORKING / "asr"
        if not is_repository(target):
            subprocess.run(["git", "clone", "--depth", "1", os.environ["ASR_REPO"], str(target)], check=True)
        return target
    raise SystemExit(f"no copy of the repository found (looked in {', '.join(map(str, candidates[:4]))} and under "
                     f"{INPUT}): attach it as a dataset, set ASR_CODE to its folder, or ASR_REPO to a git URL")


CODE = find_code()
if not os.access(CODE, os.W_OK):  # an attached dataset: the run writes caches next to the code
    copy = WORKING / "asr"
    shutil.copytree(CODE, copy, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git", "runs", "__pycache__"))
    CODE = copy
os.chdir(CODE)
sys.path.insert(0, str(CODE))
print(f"code: {CODE}")

# %% [markdown]
# ## Packages
#
# `requirements.txt` less torch and torchaudio: the image's torch is built for its GPU and stays as
# it is (training needs no torchaudio). Only the packages that are missing are installed, so a
# session without internet works when the image already has them.

# %%
from importlib import metadata  # noqa: E402


def missing_requirements(path: Path) -> list[str]:
    wanted = []
    for line in path.read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        name = spec.split("[", 1)[0]
        for sep in "<>=!~; ":
            name = name.split(sep, 1)[0]
        if not spec or name.lower() in ("torch", "torchaudio"):
            continue
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            wanted.append(spec)
    return wanted


if setting("ASR_PIP", "1") != "0":
    wanted = missing_requirements(CODE / "requirements.txt")
    if wanted:
        print("installing", " ".join(wanted))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted], check=False)
    else:
        print("every package of requirements.txt is installed (torch and torchaudio left as they are)")
import torch  # noqa: E402

gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (training on the CPU: slow)"
print(f"torch {torch.__version__}, GPU: {gpu}")

# %% [markdown]
# ## The data
#
# The folder under `ASR_INPUT` that holds `train-clean-100/mfcc` (the competition's
# `11-785-f23-hw4p2/`, wherever Kaggle mounts it; of several, the one with the most utterances);
# the bundled sample `data/sample` when there is none, so the notebook runs end to end anywhere.

# %%
def find_data() -> Path:
    if os.environ.get("ASR_DATA"):
        return Path(os.environ["ASR_DATA"])
    found = [folder for folder, dirs, _ in walk(INPUT)
             if "train-clean-100" in dirs and (folder / "train-clean-100" / "mfcc").is_dir()]
    if not found:
        print(f"no train-clean-100/mfcc under {INPUT}: using the bundled sample")
        return CODE / "data" / "sample"
    # the most utterances: the competition's data, not the sample inside an attached copy of the code
    return max(found, key=lambda folder: sum(1 for _ in os.scandir(folder / "train-clean-100" / "mfcc")))


DATA = find_data()
print(f"data: {DATA}")

# %% [markdown]
# ## Resuming
#
# A session that stops (the 12-hour limit, a restart) leaves `last.pt` in the run folder. To go on
# in a new session, save the notebook's output as a dataset and attach it: the newest `last.pt`
# under `ASR_INPUT` is picked up (or name one with `ASR_RESUME`). A `last.pt` already in this
# session's run folder comes first: train.py resumes from it by itself.
#
# The budget `training.max_minutes` counts the run's training minutes over all its sessions, so it
# is set to the checkpoint's minutes so far plus this session's `ASR_MINUTES`. With a time budget the
# learning-rate schedule spans that budget (`training.anneal_by_time`): each session's end is a
# cool-down, and a resumed run climbs back to the peak rate before its own.

# %%
def find_resume() -> Path | None:
    if (RUN_DIR / "last.pt").is_file():
        return None  # train.py continues from it
    chosen = os.environ.get("ASR_RESUME", "")
    if chosen == "none":
        return None
    if chosen:
        return Path(chosen)
    found = [folder / "last.pt" for folder, _, files in walk(INPUT) if "last.pt" in files]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def minutes_so_far(checkpoint: Path | None) -> float:
    if checkpoint is None or not checkpoint.is_file():
        return 0.0
    from src.checkpoint import load_checkpoint

    return float(load_checkpoint(checkpoint)["train_state"]["elapsed_minutes"])


RESUME = find_resume()
earlier = minutes_so_far(RESUME or RUN_DIR / "last.pt")
budget = earlier + MINUTES
print(f"resume: {RESUME or (RUN_DIR / 'last.pt' if earlier else 'none, a new run')}; "
      f"{earlier:.1f} minutes so far, budget {budget:g} (training.max_minutes)")

# %% [markdown]
# ## Train
#
# `train.py` checks the data, tries the largest batches once on the GPU, trains until the budget,
# saves `last.pt` (also every `training.checkpoint_every_minutes`), scores dev and keeps `best.pt`.

# %%
train_cmd = [sys.executable, "train.py", "--preset", PRESET, f"data.root={DATA}", f"logging.run_dir={RUN_DIR}",
             f"training.max_minutes={budget:g}", "logging.wandb=offline", *EXTRA]
if RESUME is not None:
    train_cmd.append(f"training.resume_from={RESUME}")
print(" ".join(map(shlex.quote, train_cmd)), flush=True)
subprocess.run(train_cmd, check=True)

# %% [markdown]
# ## Decode test-clean into the submission
#
# With the run's own resolved config (`RUN_DIR/config.yaml`: the preset's decoding settings) and
# `best.pt`. The file is written atomically and checked: one row per test utterance, `index` in
# sorted file order, only `A`-`Z`, apostrophe and space.

# %%
checkpoint = RUN_DIR / ("best.pt" if (RUN_DIR / "best.pt").is_file() else "last.pt")
test_cmd = [sys.executable, "test.py", "--config", str(RUN_DIR / "config.yaml"), "--checkpoint", str(checkpoint),
            "--output", str(SUBMISSION), f"data.root={DATA}", *EXTRA]
print(" ".join(map(shlex.quote, test_cmd)), flush=True)
subprocess.run(test_cmd, check=True)
print(f"submission: {SUBMISSION}; run folder (save it as a dataset to resume): {RUN_DIR}")
