"""config.yaml and the README's config block stay identical to the dataclasses."""
from pathlib import Path

from src.config import Config, load_config, render_yaml

ROOT = Path(__file__).resolve().parents[1]


def readme_config_block() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- config.yaml begins -->")
    end = text.index("<!-- config.yaml ends -->")
    block = text[start:end].split("```yaml\n", 1)[1]
    return block.rsplit("```", 1)[0]


def test_config_yaml_is_the_rendered_defaults():
    assert load_config(ROOT / "config.yaml") == Config()
    body = (ROOT / "config.yaml").read_text()
    assert render_yaml(Config()) in body, "regenerate: python -m src.config --write"


def test_readme_documents_every_key_as_config_yaml_does():
    assert readme_config_block() == render_yaml(Config()), "README's config block differs from src/config.py"
