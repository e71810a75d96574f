"""The README and docs/ stay true: the README is short and holds exactly the two commands
(the test command is the one CI runs), links lead to files, study files named exist and
parse, module paths exist, and every ``harness …`` command in a bash block is a real
(sub)command with real flags."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from harness.cli import main
from harness.cli.parser import build_parser
from harness.studyfile import load_config, parse_study

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "BENCHMARKS.md"]

RUN_COMMAND = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install -c constraints.txt -e . "
    "&& HARNESS_DATA_DIR=../shared/data harness study run studies/babe-quick.yaml"
)
TEST_COMMAND = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install -c constraints.txt -e ".[dev]" '
    "&& HARNESS_DATA_DIR=../shared/data pytest"
)

FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```$", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
STUDY_FILE = re.compile(r"studies/[\w.-]+\.yaml")
MODULE_PATH = re.compile(r"\bharness/[\w/]+\.py\b")
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=\S*")
HARNESS_CALL = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*=\S*\s+)*harness(\s|$)")


def blocks(path: Path, language: str) -> list[str]:
    """The bodies of the fenced code blocks of ``language`` in a Markdown file."""
    return [body for lang, body in FENCE.findall(path.read_text()) if lang == language]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_readme_is_short_and_has_exactly_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    assert [body.strip() for body in blocks(README, "bash")] == [RUN_COMMAND, TEST_COMMAND]


def test_readme_test_command_is_what_ci_runs():
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert lines[-1] == TEST_COMMAND


def test_readme_study_example_parses():
    (example,) = blocks(README, "yaml")
    config = parse_study(example, "README.md")
    assert config.name and config.search.classifier


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_point_to_existing_files(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"(https?|mailto):", target) or target.startswith("#"):
            continue
        if not (page.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert broken == []


def test_docs_have_pages_and_an_index_that_links_them_all():
    index = (ROOT / "docs" / "README.md").read_text()
    linked = {target.split("#", 1)[0] for target in LINK.findall(index)}
    missing = [p.name for p in DOCS if p.name != "README.md" and p.name not in linked]
    assert len(DOCS) >= 10 and missing == []


def _study_files() -> list[str]:
    return sorted({m for page in PAGES for m in STUDY_FILE.findall(page.read_text())})


@pytest.mark.parametrize("study_file", _study_files())
def test_study_files_mentioned_exist_and_parse(study_file):
    path = ROOT / study_file
    assert path.is_file(), f"{study_file} is mentioned in the docs but does not exist"
    config = load_config(path)  # validates only: no data, encoder or store is touched
    assert config.name


def test_module_paths_mentioned_exist():
    missing = sorted(
        {
            f"{rel(page)}: {m}"
            for page in PAGES
            for m in MODULE_PATH.findall(page.read_text())
            if not (ROOT / m).is_file()
        }
    )
    assert missing == []


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _harness_commands() -> list[tuple[str, list[str]]]:
    """(page, words after ``harness``) of every harness command in a docs bash block;
    continued lines are joined, comments dropped, ``&&``/``;``/``|`` split commands."""
    found = []
    for page in PAGES:
        for body in blocks(page, "bash"):
            for line in body.replace("\\\n", " ").splitlines():
                for part in re.split(r"&&|;|\|", line.split(" #", 1)[0]):
                    if not HARNESS_CALL.match(part):
                        continue
                    words = shlex.split(part, comments=True)
                    while words and ENV_ASSIGNMENT.fullmatch(words[0]):
                        words.pop(0)
                    if words and words[0] == "harness":
                        found.append((rel(page), words[1:]))
    return found


HARNESS_COMMANDS = _harness_commands()


def test_docs_show_harness_commands():
    assert len(HARNESS_COMMANDS) >= 10


@pytest.mark.parametrize(
    ("page", "words"), HARNESS_COMMANDS, ids=[f"{p}:{' '.join(w)}" for p, w in HARNESS_COMMANDS]
)
def test_harness_commands_in_docs_are_real(page, words, capsys):
    parser, path = build_parser(), []
    for word in words:
        choices = _subcommands(parser)
        if not choices:
            break
        assert word in choices, f"{page}: 'harness {' '.join(words)}': no command {word!r}"
        parser, path = choices[word], [*path, word]
    assert path and not _subcommands(parser), f"{page}: 'harness {' '.join(words)}' is partial"
    flags = {w.split("=", 1)[0] for w in words if w.startswith("--")}
    unknown = sorted(flags - set(parser._option_string_actions))
    assert unknown == [], f"{page}: 'harness {' '.join(path)}' has no option {unknown}"
    with pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    assert done.value.code == 0
    assert f"usage: harness {' '.join(path)}" in capsys.readouterr().out
