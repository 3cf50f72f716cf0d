"""Decode test-clean into submission/submission.csv, or score a split (--split dev-clean).

    python test.py [--checkpoint PATH] [--split dev-clean] [--config config.yaml] [key=value ...]

Everything lives in src/inference.py; see its docstring.
"""
from src.errors import run_cli
from src.inference import main

if __name__ == "__main__":
    run_cli(main)
