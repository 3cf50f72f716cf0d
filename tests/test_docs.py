"""The documentation stays true: config.yaml is the rendered defaults, and the README and docs/
show commands that parse, links that resolve and config lines that exist."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from src.config import Config, load_config, render_yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED = [*DOCS, ROOT / "RESULTS.md"]  # RESULTS.md's commands are those of their day; its links are checked

COMMAND = re.compile(r"python (?:train|test)\.py\b[^`\n]*|torchrun [^`\n]*?train\.py\b[^`\n]*")
OVERRIDE = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)+=")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+?)\s*#*\s*$", re.M)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def github_anchor(heading: str) -> str:
    """GitHub's heading anchor: lowercase, spaces to '-', punctuation other than '-' and '_' dropped."""
    text = re.sub(r"`|\*\*|\*", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())  # a '#' line inside a code block is no heading
    return {github_anchor(h) for h in HEADING.findall(text)}


def commands(path: Path) -> list[str]:
    """Every `python train.py ...`, `python test.py ...` and `torchrun ... train.py ...` in the file,
    continuation lines joined, trailing comments dropped."""
    text = path.read_text().replace("\\\n", " ")
    found = []
    for match in COMMAND.finditer(text):
        found.append(re.split(r"\s#", match.group(0), maxsplit=1)[0].strip())
    return found


def overrides_of(command: str) -> list[str]:
    return [token for token in shlex.split(command) if OVERRIDE.match(token)]


def documented_commands() -> list[tuple[str, str]]:
    return [(doc_id(path), command) for path in DOCS for command in commands(path) if overrides_of(command)]


def test_config_yaml_is_the_rendered_defaults():
    assert load_config(ROOT / "config.yaml") == Config()
    body = (ROOT / "config.yaml").read_text()
    assert render_yaml(Config()) in body, "regenerate: python -m src.config --write"


def test_the_docs_show_commands_with_overrides():
    # The parse test below must have something to check.
    assert len(documented_commands()) >= 20


@pytest.mark.parametrize(("doc", "command"), documented_commands())
def test_documented_overrides_parse(doc, command):
    load_config(ROOT / "config.yaml", overrides_of(command))


@pytest.mark.parametrize("path", LINKED, ids=doc_id)
def test_links_resolve(path):
    text = FENCE.sub("", path.read_text())
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
            continue
        if anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor in {doc_id(linked)}")
    assert not broken, f"{doc_id(path)}: " + "; ".join(broken)


def test_github_anchor_rule():
    # On headings of the kinds RESULTS.md uses.
    assert github_anchor("2026-12-02: LAS, the final weights (final_check), 20 and 60 minutes") == \
        "2026-12-02-las-the-final-weights-final_check-20-and-60-minutes"
    assert github_anchor("LAS, the beam's length penalty") == "las-the-beams-length-penalty"


@pytest.mark.parametrize("path", DOCS, ids=doc_id)
def test_yaml_blocks_show_config_yaml_lines(path):
    config_lines = set()
    for line in (ROOT / "config.yaml").read_text().splitlines():
        config_lines.add(line.rstrip())
        config_lines.add(line.split("  #", 1)[0].rstrip())  # the same line without its comment
    for lang, body in FENCE.findall(path.read_text()):
        if lang != "yaml":
            continue
        missing = [line for line in body.splitlines() if line.strip() and line.rstrip() not in config_lines]
        assert not missing, f"{doc_id(path)}: yaml block lines not in config.yaml: {missing}"


def test_readme_names_no_commit_outside_results_links():
    text = (ROOT / "README.md").read_text()
    text = re.sub(r"\]\(RESULTS\.md[^)]*\)", "]()", text)
    hashes = [h for h in re.findall(r"\b[0-9a-f]{7,40}\b", text) if re.search(r"[a-f]", h) and re.search(r"\d", h)]
    assert not hashes, f"README.md names commits {hashes}: they belong in RESULTS.md"
