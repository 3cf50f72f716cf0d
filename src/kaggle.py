"""Download the competition data and submit predictions, over the ``kaggle`` package.

    python -m src.kaggle download [--dir data] [--keep-zip]
    python -m src.kaggle submit [--file submission/submission.csv] [--message "beam 10"]

``import kaggle`` authenticates on import (and may print or exit when it
cannot), so it is imported only inside the functions below, after checking
that credentials exist. Nothing else in the project imports kaggle.
"""
from __future__ import annotations

import argparse
import os
import sys
import zipfile
from pathlib import Path

from src.errors import UserError, run_cli

COMPETITION = "attention-based-speech-recognition"
DATA_DIR = "data"
CREDENTIALS_HELP = (
    "no Kaggle credentials: on https://www.kaggle.com/settings -> API -> Create New Token, save the "
    "downloaded kaggle.json to ~/.kaggle/kaggle.json and run chmod 600 ~/.kaggle/kaggle.json "
    "(or set KAGGLE_USERNAME and KAGGLE_KEY)"
)


def credential_source() -> str | None:
    """Where the kaggle package would find credentials, or None: checked without importing it."""
    env = os.environ
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    if env.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    home = Path(os.path.expanduser("~"))
    dirs = [Path(env["KAGGLE_CONFIG_DIR"])] if env.get("KAGGLE_CONFIG_DIR") else []
    xdg = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
    dirs += [home / ".kaggle", xdg / "kaggle"]
    for d in dirs:
        for name in ("kaggle.json", "access_token", "access_token.txt"):
            if (d / name).is_file():
                return str(d / name)
    return None


def _api():
    """An authenticated KaggleApi (imports kaggle); UserError without credentials."""
    if credential_source() is None:
        raise UserError(CREDENTIALS_HELP)
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        raise UserError("the kaggle package is not installed; run: pip install kaggle") from None
    api = KaggleApi()
    try:
        api.authenticate()
    except (Exception, SystemExit) as err:  # it calls exit(1) on bad credentials
        raise UserError(f"Kaggle authentication failed ({err}); {CREDENTIALS_HELP}") from None
    return api


def download(data_dir: str | Path = DATA_DIR, keep_zip: bool = False) -> Path:
    """Download the competition zip into ``data_dir`` and unzip it there; returns the data root."""
    data_dir = Path(data_dir)
    api = _api()
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"kaggle: downloading {COMPETITION} into {data_dir}/ (several GB)", flush=True)
    try:
        api.competition_download_files(COMPETITION, path=str(data_dir), quiet=False)
    except Exception as err:
        raise UserError(f"kaggle: download failed ({err}); accept the competition rules on its Kaggle page "
                        f"(https://www.kaggle.com/competitions/{COMPETITION}) and retry") from None
    archive = data_dir / f"{COMPETITION}.zip"
    if not archive.is_file():
        raise UserError(f"{archive}: not found after the download; look in {data_dir}/ and unzip it by hand")
    unzip(archive, data_dir)
    if not keep_zip:
        archive.unlink()
    root = data_dir / "11-785-f23-hw4p2"
    print(f"kaggle: data ready in {root if root.is_dir() else data_dir}", flush=True)
    return root


def unzip(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest`` with a progress bar (refusing paths that leave ``dest``)."""
    from tqdm import tqdm

    dest = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for m in members:
            target = (dest / m.filename).resolve()
            if dest != target and dest not in target.parents:
                raise UserError(f"{archive}: member {m.filename!r} would extract outside {dest}; not extracting")
        for m in tqdm(members, desc="unzip", unit="file", dynamic_ncols=True):
            zf.extract(m, dest)


def submit(file: str | Path, message: str) -> None:
    """Check ``file`` as a submission, then upload it to the competition."""
    from src.submission import check_submission

    n_rows = check_submission(file)
    api = _api()
    try:
        api.competition_submit(str(file), message, COMPETITION)
    except Exception as err:
        raise UserError(f"kaggle: submission failed ({err})") from None
    print(f"kaggle: submitted {file} ({n_rows} rows) to {COMPETITION}: {message!r}; "
          f"see https://www.kaggle.com/competitions/{COMPETITION}/submissions", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.kaggle", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_dl = sub.add_parser("download", help=f"download and unzip {COMPETITION} into data/")
    p_dl.add_argument("--dir", default=DATA_DIR, help="where to put it (default data/)")
    p_dl.add_argument("--keep-zip", action="store_true", help="keep the zip after unzipping")
    p_sub = sub.add_parser("submit", help="upload a submission file")
    p_sub.add_argument("--file", default="submission/submission.csv")
    p_sub.add_argument("--message", default="LAS", help="submission description shown on Kaggle")
    args = parser.parse_args(argv)
    if args.command == "download":
        download(args.dir, keep_zip=args.keep_zip)
    else:
        submit(args.file, args.message)
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
