"""tools/check_structure.py: each check on small planted trees, the baseline ratchet, and the real repository."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "check_structure.py")
# The check reads the sources with Python 3.8's ast (end line numbers); `make lint` runs it in the TF 2.15
# environment, so the TF 1.15 suite (Python 3.7) has nothing of it to test.
pytestmark = pytest.mark.skipif(sys.version_info < (3, 8), reason="tools/check_structure.py needs Python 3.8+")

HOOKSPECS = '''\
from __future__ import annotations

import pluggy

_hookspec = pluggy.HookspecMarker("unet3d")


@_hookspec(firstresult=True)
def unet3d_backend_info() -> object:
    """Describe the backend."""


@_hookspec
def unet3d_validate_options(options: object) -> None:
    """Check the options."""


def helper(anything):
    return anything
'''

BASE_TREE = {
    "cli.py": "import argparse\n\nfrom unet3d_core import a\n\n\ndef main(options):\n    return a.thing(options)\n",
    "unet3d_core/__init__.py": "",
    "unet3d_core/a.py": "from unet3d_core import b\n\n\ndef thing(options):\n    return b.other(options.fold)\n",
    "unet3d_core/b.py": "def other(value):\n    return value\n",
    "unet3d_core/hookspecs.py": HOOKSPECS,
    "backends/__init__.py": "",
    "backends/x/__init__.py": "",
    "backends/x/plugin.py": "from unet3d_core.b import other\n\n\ndef hook(options):\n    return other(options)\n",
}


def write_tree(root, files):
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return root


def check(root, *arguments):
    result = subprocess.run([sys.executable, TOOL, "--root", str(root)] + list(arguments),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def tree(tmp_path):
    return write_tree(tmp_path, BASE_TREE)


def function_source(name, lines, decorated=False):
    """A function exactly ``lines`` lines long from its def line (a decorator above it does not count)."""
    decorator = "@staticmethod\n" if decorated else ""
    return decorator + "def %s():\n" % name + "    x = 1\n" * (lines - 2) + "    return x\n"


def test_a_clean_tree_passes(tree):
    code, output = check(tree)
    assert code == 0, output
    assert "structure: 0 new violations, 0 known" in output


@pytest.mark.parametrize("local_import", [
    "import unet3d_core.a",
    "from unet3d_core import a",
    "from . import a",
    "from .a import thing",
])
def test_a_cycle_through_a_function_local_import_fails(tree, local_import):
    write_tree(tree, {"unet3d_core/b.py": "def other(value):\n    %s\n    return value\n" % local_import})
    code, output = check(tree)
    assert code == 1, output
    cycle_lines = [line for line in output.splitlines() if line.startswith("import cycle: ")]
    assert len(cycle_lines) == 1, output
    assert "unet3d_core.a -> unet3d_core.b -> unet3d_core.a" in cycle_lines[0]
    assert "unet3d_core/b.py:2" in cycle_lines[0]


def test_a_cycle_between_backend_modules_through_relative_imports_fails(tree):
    write_tree(tree, {
        "backends/x/plugin.py": "from . import helpers\n",
        "backends/x/helpers.py": "def table():\n    from .plugin import hook\n    return hook\n",
    })
    code, output = check(tree)
    assert code == 1, output
    assert "import cycle: backends.x.helpers -> backends.x.plugin -> backends.x.helpers" in output


def test_options_write_in_a_core_module_fails_but_passes_in_cli(tree):
    planted = "\n\ndef resolve(options):\n    options.fold = 1\n"
    write_tree(tree, {"unet3d_core/b.py": BASE_TREE["unet3d_core/b.py"] + planted})
    code, output = check(tree)
    assert code == 1, output
    assert "unet3d_core/b.py:6: writes into parsed options (options.fold)" in output

    write_tree(tree, {"unet3d_core/b.py": BASE_TREE["unet3d_core/b.py"], "cli.py": BASE_TREE["cli.py"] + planted})
    code, output = check(tree)
    assert code == 0, output


@pytest.mark.parametrize("source, shown", [
    ("import argparse\n\n\ndef copy(flags):\n    return argparse.Namespace(**flags)\n", "5: uses argparse.Namespace"),
    ("from argparse import Namespace\n", "1: uses from argparse import Namespace"),
])
def test_the_parsed_namespace_outside_cli_fails(tree, source, shown):
    write_tree(tree, {"unet3d_core/b.py": source})
    code, output = check(tree)
    assert code == 1, output
    assert "unet3d_core/b.py:" + shown in output
    write_tree(tree, {"unet3d_core/b.py": BASE_TREE["unet3d_core/b.py"], "cli.py": BASE_TREE["cli.py"] + source})
    assert check(tree)[0] == 0


@pytest.mark.parametrize("statement, shown", [
    ("setattr(options, 'fold', 3)", "options.fold"),
    ("setattr(args, name, 3)", "setattr(args, name)"),
    ("args.steps += 1", "args.steps"),
    ("namespace.a, (namespace.b, rest) = 1, (2, 3)", "namespace.b"),
    ("vars(options)['fold'] = 3", "options.fold"),
    ("vars(options).update(fold=3)", "vars(options).update"),
    ("del options.fold", "options.fold"),
])
def test_other_ways_of_writing_options_are_caught(tree, statement, shown):
    write_tree(tree, {"backends/x/plugin.py": "def hook(options, args, namespace, name):\n    %s\n" % statement})
    code, output = check(tree)
    assert code == 1, output
    assert "backends/x/plugin.py:2: writes into parsed options (%s)" % shown in output


def test_reading_options_and_writing_other_objects_passes(tree):
    source = ("def hook(options, config):\n    fold = options.fold\n    config.fold = fold\n"
              "    config.gpu_options.allow_growth = True\n    return dict(vars(options))\n")
    write_tree(tree, {"backends/x/plugin.py": source})
    code, output = check(tree)
    assert code == 0, output


@pytest.mark.parametrize("spec, expected, absent", [
    ("\n\n@_hookspec(firstresult=True)\ndef unet3d_launch(options, worker_command: list):\n    pass\n",
     ["unet3d_core/hookspecs.py:23: unet3d_launch: parameter 'options' has no annotation",
      "unet3d_launch: no return annotation"],
     ["worker_command", "helper"]),  # helper: not a hook specification
    ("\n\n@_hookspec\ndef unet3d_prepare_environment(options: object, *extra: int, **more: str):\n    pass\n",
     ["unet3d_prepare_environment: no return annotation"], ["parameter"]),
])
def test_hookspec_without_annotations_fails(tree, spec, expected, absent):
    write_tree(tree, {"unet3d_core/hookspecs.py": HOOKSPECS + spec})
    code, output = check(tree)
    assert code == 1, output
    for line in expected:
        assert line in output
    for word in absent:
        assert word not in output


def test_function_length_limit(tree):
    methods = "class Box:\n" + textwrap.indent(function_source("method", 81), "    ")
    write_tree(tree, {"unet3d_core/b.py": function_source("fits", 80, decorated=True) + methods})
    code, output = check(tree)
    assert code == 1, output
    assert "unet3d_core/b.py:83: Box.method is 81 lines (limit 80)" in output
    assert "fits" not in output

    write_tree(tree, {"unet3d_core/b.py": function_source("fits", 80, decorated=True)})
    assert check(tree)[0] == 0


def test_nested_function_names_are_qualified(tree):
    outer = "def outer():\n" + textwrap.indent(function_source("inner", 81), "    ") + "    return inner\n"
    write_tree(tree, {"cli.py": outer})
    code, output = check(tree)
    assert code == 1, output
    assert "cli.py:1: outer is 83 lines (limit 80)" in output
    assert "cli.py:2: outer.inner is 81 lines (limit 80)" in output


def test_module_length_limit_applies_to_the_core_only(tree):
    write_tree(tree, {"unet3d_core/sub/__init__.py": "", "unet3d_core/sub/big.py": "x = 1\n" * 451,
                      "unet3d_core/fits.py": "x = 1\n" * 450, "backends/x/big.py": "x = 1\n" * 451})
    code, output = check(tree)
    assert code == 1, output
    assert "unet3d_core/sub/big.py is 451 lines (limit 450)" in output
    assert "fits.py" not in output and "backends/x/big.py" not in output


ROOMS_TREE = {
    "unet3d_core/errors.py": "class DataError(Exception):\n    pass\n",
    "unet3d_core/data/__init__.py": "",
    "unet3d_core/data/records.py": "from unet3d_core.errors import DataError\n\nFORMAT = 2\n",
    "unet3d_core/engine/__init__.py": "",
    "unet3d_core/engine/trainer.py": "from unet3d_core.data import records\n\nSTEPS = records.FORMAT\n",
}


def test_rooms_import_only_downwards(tree):
    write_tree(tree, ROOMS_TREE)
    code, output = check(tree)
    assert code == 0, output
    # A data module reaching up into the engine, and a top-level module into a room, inside a function.
    write_tree(tree, {"unet3d_core/data/records.py": "FORMAT = 2\n\n\ndef steps():\n"
                                                     "    from unet3d_core.engine import trainer\n"
                                                     "    return trainer.STEPS\n",
                      "unet3d_core/errors.py": "from unet3d_core.data.records import FORMAT\n"})
    code, output = check(tree)
    assert code == 1, output
    assert ("unet3d_core/data/records.py:5: unet3d_core.data.records (in unet3d_core.data) imports "
            "unet3d_core.engine.trainer (in unet3d_core.engine, a room above it)") in output
    assert "unet3d_core.errors (in the top-level modules) imports unet3d_core.data.records" in output


def test_annotation_only_imports_do_not_count_as_room_imports(tree):
    write_tree(tree, ROOMS_TREE)
    write_tree(tree, {"unet3d_core/data/records.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                                                     "    from unet3d_core.engine.trainer import STEPS\n"
                                                     "FORMAT = 2\n",
                      "unet3d_core/engine/trainer.py": "STEPS = 3\n"})
    code, output = check(tree)
    assert code == 0, output


def test_the_baseline_ratchet(tree):
    accepted = "\n\ndef resolve(options):\n    options.fold = 1\n"
    write_tree(tree, {"unet3d_core/b.py": BASE_TREE["unet3d_core/b.py"] + accepted})
    assert check(tree)[0] == 1
    code, output = check(tree, "--write-baseline")
    assert code == 0, output
    baseline = tree / "tools" / "structure_baseline.json"
    assert json.loads(baseline.read_text()) == [{"kind": "options_write", "key": "unet3d_core/b.py:options.fold"}]

    # Known violations pass, also after the code moved.
    write_tree(tree, {"unet3d_core/b.py": "\n\n" + BASE_TREE["unet3d_core/b.py"] + accepted})
    code, output = check(tree)
    assert code == 0, output
    assert "structure: 0 new violations, 1 known (tools/structure_baseline.json)" in output

    # A new one fails, and only it is printed.
    write_tree(tree, {"cli.py": BASE_TREE["cli.py"] + function_source("long", 81)})
    code, output = check(tree)
    assert code == 1, output
    assert "cli.py:8: long is 81 lines (limit 80)" in output
    assert "options.fold" not in output
    assert "1 new violation, 1 known" in output
    assert check(tree, "--write-baseline")[0] == 0
    assert check(tree)[0] == 0

    # A fixed entry is reported, not failed.
    write_tree(tree, {"unet3d_core/b.py": BASE_TREE["unet3d_core/b.py"]})
    code, output = check(tree)
    assert code == 0, output
    assert "fixed: options_write unet3d_core/b.py:options.fold" in output
    assert "0 new violations, 1 known (tools/structure_baseline.json), 1 fixed - remove them with --write-baseline" \
        in output


def test_other_baseline_files(tree, tmp_path_factory):
    write_tree(tree, {"unet3d_core/b.py": "x = 1\n" * 451})
    other = tmp_path_factory.mktemp("elsewhere") / "accepted.json"
    assert check(tree, "--baseline", str(other))[0] == 1  # a missing baseline accepts nothing
    assert check(tree, "--baseline", str(other), "--write-baseline")[0] == 0
    assert check(tree, "--baseline", str(other))[0] == 0
    assert check(tree, "--baseline", str(other), "--no-baseline")[0] == 1
    assert not (tree / "tools").exists()


def test_a_syntax_error_is_one_line_and_exit_2(tree):
    write_tree(tree, {"backends/x/plugin.py": "def broken(:\n    pass\n"})
    code, output = check(tree)
    assert code == 2, output
    assert output.strip().splitlines() == ["error: backends/x/plugin.py:1: syntax error: invalid syntax"]


def test_the_repository_passes_against_its_baseline():
    result = subprocess.run([sys.executable, TOOL], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, timeout=60)
    assert result.returncode == 0, result.stdout
    assert "structure: 0 new violations" in result.stdout
