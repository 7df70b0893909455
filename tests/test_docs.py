"""The docs never drift from the code: every `mae-transfer ...` command line in README.md, docs/ and the commands'
own --help examples goes through the real parser (parse only: nothing runs), and every --flag the prose names
exists on its command."""
import argparse
import re
import shlex
from pathlib import Path

import pytest

from mae_transfer import cli
from mae_transfer.cli.common import Parser
from mae_transfer.engine.config import ConfigError, resolve_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


class Parsed(Exception):
    """Raised by the parser once the command line parsed: the command itself never runs."""

    def __init__(self, namespace):
        super().__init__()
        self.namespace = namespace


class Built(Exception):
    def __init__(self, parser):
        self.parser = parser


def _command_lines(text: str):
    """(line number, argv) of each `mae-transfer ...` line in the fenced code blocks of a page (a trailing `\\`
    joins the next line; `# ...` comments dropped)."""
    out, fenced, start, buf = [], False, 0, ""
    for i, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced, buf = not fenced, ""
            continue
        if not fenced:
            continue
        if not buf:
            start = i
        buf += line.rstrip().removesuffix("\\") + " "
        if line.rstrip().endswith("\\"):
            continue
        words, buf = buf, ""
        if words.split() and Path(words.split()[0]).name == "mae-transfer":
            out.append((start, shlex.split(words, comments=True)[1:]))
    return out


def _help_lines(doc: str):
    """The example command lines of a command's --help text (indented, `\\`-continued)."""
    return [argv for _, argv in _command_lines("```\n" + doc + "\n```")]


def _inline_spans(text: str):
    """`mae-transfer <command> ...` spans in the prose: grammar with placeholders, so only their --flags are checked."""
    return re.findall(r"`(?:\.venv/bin/)?mae-transfer ([a-z-]+)([^`]*)`", text)


def parser_of(name: str, monkeypatch) -> argparse.ArgumentParser:
    def capture(self, *a, **k):
        raise Built(self)
    for method in ("parse_args", "parse_intermixed_args"):
        monkeypatch.setattr(Parser, method, capture)
    with pytest.raises(Built) as e:
        cli.command(name)([])
    monkeypatch.undo()
    return e.value.parser


def parse_only(argv, monkeypatch, capsys, where: str):
    """Parse `argv` (`mae-transfer` left out) through the command's own parser; a mistake fails with its line."""
    assert argv and argv[0] in cli.COMMANDS, f"{where}: `mae-transfer {' '.join(argv)}`: unknown command"
    for method in ("parse_args", "parse_intermixed_args"):
        original = getattr(Parser, method)

        def parsed(self, *a, _original=original, **k):
            raise Parsed(_original(self, *a, **k))
        monkeypatch.setattr(Parser, method, parsed)
    try:
        cli.command(argv[0])(argv[1:])
    except Parsed as e:
        config = getattr(e.namespace, "config", None)
        if config and not config.endswith(".py"):  # a shipped config by name: it must exist
            kind = {"submit-pretrain": "pretrain", "predict": argv[1], "export": argv[1]}.get(argv[0], argv[0])
            try:
                resolve_config(config, kind)
            except ConfigError as err:
                pytest.fail(f"{where}: `mae-transfer {shlex.join(argv)}`: {err}")
        return
    except SystemExit:
        pytest.fail(f"{where}: `mae-transfer {shlex.join(argv)}`: {capsys.readouterr().err.strip()}")
    finally:
        monkeypatch.undo()
    pytest.fail(f"{where}: `mae-transfer {shlex.join(argv)}` was not parsed by its command's parser")


def test_every_documented_command_line_parses(monkeypatch, capsys):
    found = 0
    for page in PAGES:
        for line, argv in _command_lines(page.read_text()):
            parse_only(argv, monkeypatch, capsys, f"{page.relative_to(ROOT)}:{line}")
            found += 1
    assert found >= 25  # the main path and every stage's page show their commands


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_help_example_parses(name, monkeypatch, capsys):
    examples = _help_lines(parser_of(name, monkeypatch).description or "")
    assert examples, f"`mae-transfer {name} --help` shows no example"
    for argv in examples:
        parse_only(argv, monkeypatch, capsys, f"mae-transfer {name} --help")


def test_every_flag_the_prose_names_exists(monkeypatch):
    flags = {}
    for page in PAGES:
        for name, rest in _inline_spans(page.read_text()):
            assert name in cli.COMMANDS or name == "<command>", f"{page.name}: `mae-transfer {name}`: unknown command"
            if name not in cli.COMMANDS:
                continue
            if name not in flags:
                flags[name] = set(parser_of(name, monkeypatch)._option_string_actions)
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
                assert flag in flags[name], f"{page.name}: `mae-transfer {name}` has no {flag}"
    assert flags  # the prose does name commands


def test_a_renamed_flag_would_fail(monkeypatch, capsys):
    """The check itself can fail: a flag the parser lacks is a failure naming the page and the line."""
    with pytest.raises(pytest.fail.Exception, match=r"page.md:3: .*unrecognized arguments: --data-pth"):
        parse_only(["pretrain", "--data-pth", "x"], monkeypatch, capsys, "page.md:3")


def test_the_command_lists_name_every_command():
    """docs/commands.md's list and the README's table name every command the entry point has, and no other."""
    import re

    from mae_transfer.cli import COMMANDS

    intro = (ROOT / "docs/commands.md").read_text().split("Every training command")[0]
    assert set(re.findall(r"`([a-z-]+)`", intro.split("with the commands", 1)[1])) == set(COMMANDS)
    table = (ROOT / "README.md").read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    named = {c for row in re.findall(r"^\| (`[^|]+) \|", table, re.M) for c in re.findall(r"`([a-z-]+)`", row)}
    assert named == set(COMMANDS), set(COMMANDS) ^ named


@pytest.mark.slow
def test_the_test_counts_in_development_md_are_the_suites():
    """docs/development.md's counts of the whole suite and of the quick tier are what pytest collects."""
    import re
    import subprocess
    import sys

    text = " ".join((ROOT / "docs/development.md").read_text().split())
    whole, quick = re.search(r"everything \((\d+) tests:", text), re.search(r'`-m "not slow"` runs (\d+) of them', text)
    assert whole and quick, "docs/development.md no longer states the counts"

    def collected(*args):
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", *args,
                            str(ROOT / "tests")], capture_output=True, text=True, timeout=600, cwd=ROOT)
        return int(re.search(r"(\d+)(?:/\d+)? tests? (?:collected|selected)", r.stdout).group(1))

    assert (int(whole.group(1)), int(quick.group(1))) == (collected(), collected("-m", "not slow"))
