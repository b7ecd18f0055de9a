"""The docs cannot drift from the code.

- README.md's tour runs as written: its commands are read from the file and run
  in a fresh folder, with the suite's tiny shapes appended (argparse keeps the
  last value of a repeated flag), and what each leaves behind is checked.
- Every ``--flag`` named in README.md and docs/ exists: in a ``cli.py``
  command line (a code block or inline code), in that very subcommand; in
  prose, in some subcommand of the CLI, in a script under benchmarks/ or
  tools/, or in the short list of other programs' flags below.
- ``make demo`` leaves a report with curves and case overlays, and its console
  output stays short.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re
import shlex

import pytest
from conftest import ROOT, TINY_MODEL, TINY_SHAPE, run_cli

DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
TOUR_MARK = "<!-- tour:"
# The tour's commands at the suite's sizes: 10 cases of 32x32x24 (2 held out in fold 0), 2 steps.
TINY = {"synth": ["--cases", "10", "--shape"] + [str(size) for size in TINY_SHAPE],
        "train": ["--max_steps", "2", "--batch_size", "1"] + TINY_MODEL}
# Flags of programs other than cli.py and our scripts that the docs quote, each with its program.
OTHER_PROGRAMS = {
    "--framework": "atc", "--model": "atc", "--output": "atc", "--soc_version": "atc",
    "--input_format": "atc", "--out_nodes": "atc", "--no-deps": "pip", "--no-build-isolation": "pip",
}
# Misspellings troubleshooting.md shows on purpose, with the "did you mean" the CLI answers (tests/test_first_day.py
# checks those answers); --data-dir is the hyphenated spelling the CLI takes as --data_dir.
SHOWN_MISTAKES = {"--aug", "--agument", "--data-dir"}
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9_-]*)")
# A shell line that runs the CLI: python cli.py ..., unet3d ..., or a launcher (horovodrun, mpirun) in front.
CLI_CALL = re.compile(r"^(?:\$\s*)?(?:(?:horovodrun|mpirun)\s.*?\s)?(?:(?:\S*python\S*\s+)?(?:\S*/)?cli\.py|unet3d)"
                      r"\s+(.*)$")


def _read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _code_blocks(text):
    """(language, lines) of every fenced block."""
    blocks, language, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if language is None:
                language, lines = line[3:].strip() or "text", []
            else:
                blocks.append((language, lines))
                language = None
        elif language is not None:
            lines.append(line)
    return blocks


def _joined(lines):
    """Shell lines with backslash continuations joined."""
    joined, current = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
        else:
            joined.append(current + line)
            current = ""
    return joined


def _cli_arguments(line):
    """The arguments after ``cli.py`` (or ``unet3d``) of a shell line, comments dropped; None if it calls neither."""
    match = CLI_CALL.search(line.strip())
    if match is None:
        return None
    text = match.group(1)
    try:
        words = shlex.split(text, comments=True)
    except ValueError:  # a quote opened in the line and closed after it (inline code in prose)
        words = text.split("#", 1)[0].split()
    if words and words[0].isupper():  # python cli.py COMMAND --help
        return None
    return [word for word in words if word != "..."]


def _tour(text):
    """The tour's commands: the cli.py lines of the first code block after the tour mark."""
    start = text.index(TOUR_MARK)
    language, lines = _code_blocks(text[start:])[0]
    return [arguments for arguments in map(_cli_arguments, _joined(lines)) if arguments]


def _parser_options(parser, path=()):
    """{subcommand path: its option strings} for the parser and every subparser below it."""
    found = {path: {option for action in parser._actions for option in action.option_strings}}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.update(_parser_options(child, path + (name,)))
    return found


@pytest.fixture(scope="module")
def cli_options():
    import cli

    return _parser_options(cli.build_parser(cli.load_backends()))


def _defined_flags(texts):
    """Flags that ``add_argument("--x", ...)`` calls in these texts define."""
    return {flag for text in texts for flag in re.findall(r"add_argument\(\s*\"(--[a-z][a-z0-9_-]*)\"", text)}


def _script_flags():
    """Flags of the scripts under benchmarks/ and tools/."""
    return _defined_flags(_read(path) for folder in ("benchmarks", "tools")
                          for path in glob.glob(os.path.join(ROOT, folder, "*.py")))


def _plugin_flags():
    """Flags of backends that are not installed here: the examples/ plugins and those the docs write out."""
    sources = [_read(path) for path in glob.glob(os.path.join(ROOT, "examples", "**", "*.py"), recursive=True)]
    sources += ["\n".join(lines) for path in DOCS for language, lines in _code_blocks(_read(path))
                if language == "python"]
    return _defined_flags(sources)


def _command_path(arguments, options):
    """(the longest subcommand path the arguments start with, the arguments after it); () when none."""
    path = ()
    while arguments and path + (arguments[0],) in options:
        path, arguments = path + (arguments[0],), arguments[1:]
    return path, arguments


def test_the_readme_tour_runs_as_written(tmp_path, monkeypatch):
    commands = _tour(_read(os.path.join(ROOT, "README.md")))
    stages = [arguments[0] for arguments in commands]
    assert set(stages) >= {"synth", "preprocess", "train", "evaluate", "predict", "score", "report"}, stages
    assert len(commands) <= 10, "the tour is meant to stay about ten lines"
    monkeypatch.chdir(tmp_path)
    for arguments in commands:
        run_cli(arguments + TINY.get(arguments[0], []))

    with open("records/manifest.json") as handle:
        manifest = json.load(handle)
    assert len(manifest["cases"]) == 10
    held_out = sorted(case["id"] for case in manifest["cases"] if case["fold"] == 0)
    with open("run/eval_results.json") as handle:
        results = json.load(handle)
    assert sorted(results["cases"]) == held_out and results["checkpoint_step"] == 2
    assert all(0.0 <= results["mean"]["Dice_" + region] <= 1.0 for region in ("WT", "TC", "ET"))
    assert sorted(name[:-len(".nii.gz")] for name in os.listdir("pred") if name.endswith(".nii.gz")) == held_out
    with open("pred/metrics.csv") as handle:
        scored = [row["case"] for row in csv.DictReader(handle)]
    assert sorted(scored) == held_out
    index = _read("run/report/index.md")
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", index)
    assert "curves.png" in pictures and any(name.startswith("case-") for name in pictures)
    assert all(os.path.getsize(os.path.join("run", "report", name)) > 1000 for name in pictures)


def test_every_command_line_in_the_docs_uses_flags_its_subcommand_has(cli_options):
    problems = []
    for path in DOCS:
        text = _read(path)
        lines = [line for language, block in _code_blocks(text) if language in ("sh", "bash", "console")
                 for line in _joined(block)]
        lines += re.findall(r"`([^`\n]*cli\.py [^`\n]*)`", text)
        plugins = _plugin_flags()
        for line in lines:
            arguments = _cli_arguments(line)
            if not arguments:
                continue
            command, rest = _command_path(arguments, cli_options)
            if not command:
                problems.append("{}: no such command: {}".format(os.path.basename(path), line.strip()))
                continue
            for word in rest:
                flag = word.split("=", 1)[0]
                if FLAG.fullmatch(flag) and flag not in cli_options[command] | plugins:
                    problems.append("{}: cli.py {} has no {}: {}".format(
                        os.path.basename(path), " ".join(command), flag, line.strip()))
    assert not problems, "\n".join(problems)


def test_every_flag_the_docs_name_exists(cli_options):
    known = set().union(*cli_options.values()) | _script_flags() | _plugin_flags() | set(OTHER_PROGRAMS) | \
        SHOWN_MISTAKES
    problems = ["{}: {}".format(os.path.relpath(path, ROOT), flag)
                for path in DOCS for flag in sorted(set(FLAG.findall(_read(path)))) if flag not in known]
    assert not problems, "flags named in the docs that nothing defines:\n" + "\n".join(problems)


def _help_entries(parser, path=()):
    """(subcommand path, flag or command name, help text) of everything ``--help`` lists, recursively."""
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                yield path, name, helps.get(name, "")
                yield from _help_entries(child, path + (name,))
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                yield path, option, action.help or ""


def test_everything_the_help_lists_is_in_the_docs():
    """The reverse of the tests above: each flag ``--help`` shows (hidden ones aside) and each command is
    named in the README or docs/, and the commands' one-line help says what the docs say they write."""
    import cli

    text = "\n".join(_read(path) for path in DOCS)
    named = set(FLAG.findall(text))
    entries = list(_help_entries(cli.build_parser(cli.load_backends())))
    def documented(path, item):
        if item.startswith("--"):
            return item in named
        command = " ".join(path + (item,))
        return re.search(r"(cli\.py|unet3d) {}\b|`{}`".format(command, command), text) is not None

    missing = sorted("{} {}".format(" ".join(path) or "cli.py", item) for path, item, _ in entries
                     if not documented(path, item))
    assert not missing, "shown by --help but named nowhere in README.md or docs/:\n" + "\n".join(missing)
    helps = {item: help_text for path, item, help_text in entries if path == ()}
    assert "ONNX" in helps["export"] and "ONNX" in text


def test_the_readme_links_every_docs_page_and_every_link_resolves():
    readme = _read(os.path.join(ROOT, "README.md"))
    assert len(readme.splitlines()) <= 210
    linked = set(re.findall(r"\]\((docs/[^)#]+)", readme))
    pages = {os.path.relpath(path, ROOT) for path in DOCS[1:]}
    assert pages <= linked, "docs pages the README does not link: {}".format(sorted(pages - linked))
    for path in DOCS:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", _read(path)):
            if "://" in target:
                continue
            linked_file = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
            assert os.path.exists(linked_file), "{}: broken link {}".format(os.path.relpath(path, ROOT), target)
            if anchor and linked_file.endswith(".md"):
                assert anchor in _heading_anchors(_read(linked_file)), "{}: no heading #{} in {}".format(
                    os.path.relpath(path, ROOT), anchor, os.path.relpath(linked_file, ROOT))


def _heading_anchors(text):
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    fenced = {line for _, lines in _code_blocks(text) for line in lines}
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in text.splitlines() if line.startswith("#") and line not in fenced}


def test_the_demo_prints_a_line_per_stage_and_leaves_a_report(tmp_path, capsys):
    workdir = tmp_path / "demo"
    assert run_cli(["demo", "--workdir", workdir, "--max_steps", 3]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) <= 10, lines
    stages = [line.split()[2] for line in lines if line.startswith("[demo ") and "/" in line.split()[1]]
    assert stages == ["synth", "preprocess", "train", "predict", "report"]
    dice = re.search(r"Dice on the 4 held-out cases: WT (\S+)  TC (\S+)  ET (\S+)", "\n".join(lines))
    with open(workdir / "run" / "eval_results.json") as handle:
        mean = json.load(handle)["mean"]
    assert [float(value) for value in dice.groups()] == [round(mean["Dice_" + name], 3) for name in ("WT", "TC", "ET")]
    assert lines[-1] == "[demo] report: {}".format(workdir / "run" / "report" / "index.md")
    report = (workdir / "run" / "report")
    assert (report / "curves.png").stat().st_size > 1000 and len(list(report.glob("case-*.png"))) == 3
    assert sorted(os.listdir(workdir / "logs")) == ["predict.log", "preprocess.log", "report.log", "synth.log",
                                                   "train.log"]
    assert "Dice_WT" in (workdir / "logs" / "train.log").read_text()
