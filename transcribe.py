"""Transcribe audio files: python transcribe.py CHECKPOINT audio.wav [more files] [key=value ...]"""
from src.errors import run_cli
from src.transcribe import main

if __name__ == "__main__":
    run_cli(main)
