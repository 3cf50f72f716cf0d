"""Moved to src/corpus/prepare.py; this module keeps `python -m src.data.prepare` working."""
from src.corpus.prepare import main
from src.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
