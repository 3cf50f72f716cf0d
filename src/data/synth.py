"""Moved to src/corpus/synth.py; this module keeps `python -m src.data.synth` working."""
from src.corpus.synth import main
from src.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
