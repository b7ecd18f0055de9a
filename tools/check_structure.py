"""Check the source structure of the project: ``python tools/check_structure.py``.

The checked files are ``cli.py`` and every ``*.py`` under ``unet3d_core/`` and
``backends/`` (not ``tests/``, ``tools/`` or ``benchmarks/``). The script only
reads them with :mod:`ast`: it imports neither the project nor anything outside
the standard library, so it runs before any dependency is installed. It needs
Python 3.8 or newer (for the end line numbers of the syntax tree).

The checks, each with the key that identifies a violation in the baseline:

1. ``cycle`` - import cycles among the project's modules (``cli``,
   ``unet3d_core.engine.run_config``, ``backends.npu.plugin``...). Every import
   statement counts, also one inside a function or under ``if``/``try``, and
   ``from X import Y`` counts as importing ``X.Y`` when that is a module of the
   project (and as importing ``X`` for the names that are not). Relative
   imports are resolved. Each strongly connected component of the import graph
   is one violation, printed as a shortest cycle through it with the lines
   of the imports; its key is the sorted member list, ``a <-> b <-> c``.
2. ``hookspec`` - every hook specification in ``unet3d_core/hookspecs.py``
   (a function decorated with the module's ``pluggy.HookspecMarker``, e.g.
   ``@_hookspec`` or ``@_hookspec(firstresult=True)``) annotates every
   parameter and its return value. Key: ``hook:parameter`` or ``hook:return``.
3. ``options_write`` - no module but ``cli.py`` writes into the parsed
   command-line options: assigning (also ``+=``, unpacking, ``for``, ``with
   ... as``) or deleting an attribute of a name called ``options``, ``args`` or
   ``namespace``, ``setattr(options, ...)``, ``vars(options)[...] = ...``,
   ``options.__dict__[...] = ...`` and ``vars(options).update(...)``. Key:
   ``path:options.attribute``.
4. ``function_length`` - no function or method is longer than 80 lines, from
   its ``def`` line to the last line of its body (decorators not counted). Key:
   ``path:qualified.name`` (``Class.method``, ``outer.inner``).
5. ``module_length`` - no module under ``unet3d_core/`` is longer than 450
   lines. Key: the path.
6. ``room`` - the core's packages by stage import only downwards. The order,
   lowest first: the top-level modules of ``unet3d_core`` (the plugin API and
   what every stage shares: errors, types, hook specs, layers, folders...),
   then ``data``, ``model``, ``evaluation``, ``engine`` (``ROOMS``). A module
   may import its own room and the rooms below it; a top-level module only
   other top-level modules. Imports under ``if TYPE_CHECKING:`` (annotations
   only) do not count. Key: ``importer -> imported``.

7. ``namespace`` - no module but ``cli.py`` uses argparse's ``Namespace``
   (``argparse.Namespace`` or a ``from argparse import Namespace``): the core
   and the backends read the command line as ``CommandFlags`` (read-only) or
   as the backend's own frozen options, never as the parsed Namespace. Key:
   ``path:argparse.Namespace``.

The ratchet: ``tools/structure_baseline.json`` lists the violations accepted
when the checks were introduced, by kind and key (no line numbers, so moving
code does not disturb it). A violation whose key is in the baseline is
*known* and passes; any other is *new*, is printed, and makes the script exit
with status 1. A baseline entry that is no longer found is reported as
*fixed* (status 0): shrink the baseline with ``--write-baseline``, which
rewrites it with exactly the current violations, so that it cannot come back.
Only accept new violations that way on purpose.

Options: ``--root DIR`` checks another tree, ``--baseline FILE`` reads (or
writes) another baseline (a missing file is an empty baseline), and
``--no-baseline`` reports every violation. Exit status: 0 nothing new, 1 new
violations, 2 a checked file does not parse or the baseline is unreadable.
"""
from __future__ import annotations

import argparse
import ast
import collections
import json
import os
import sys

FUNCTION_LIMIT = 80
MODULE_LIMIT = 450
PACKAGES = ("unet3d_core", "backends")
TOP_LEVEL_FILES = ("cli.py",)
CLI_FILE = "cli.py"
HOOKSPECS_FILE = "unet3d_core/hookspecs.py"
LENGTH_CHECKED_PACKAGE = "unet3d_core/"
OPTIONS_NAMES = frozenset(("options", "args", "namespace"))
DEFAULT_HOOKSPEC_MARKERS = frozenset(("_hookspec", "hookspec"))
BASELINE_NAME = os.path.join("tools", "structure_baseline.json")
KINDS = ("cycle", "hookspec", "options_write", "function_length", "module_length", "room", "namespace")
# The core's rooms (packages by stage), lowest first; the top-level modules of unet3d_core are below them all.
CORE = "unet3d_core"
ROOMS = ("data", "model", "evaluation", "engine")

Violation = collections.namedtuple("Violation", "kind key path line message")
SourceFile = collections.namedtuple("SourceFile", "path module is_package tree lines")


class StructureError(Exception):
    """A problem that stops the check (exit status 2), one line per entry of ``lines``."""

    def __init__(self, lines):
        super().__init__("\n".join(lines))
        self.lines = lines


# --- reading the tree -------------------------------------------------------

def checked_paths(root):
    """The checked files, as sorted '/'-separated paths relative to ``root``."""
    paths = [name for name in TOP_LEVEL_FILES if os.path.isfile(os.path.join(root, name))]
    for package in PACKAGES:
        top = os.path.join(root, package)
        for folder, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            relative = os.path.relpath(folder, root).replace(os.sep, "/")
            paths.extend(relative + "/" + name for name in sorted(files) if name.endswith(".py"))
    return sorted(paths)


def module_name(path):
    """``unet3d_core/data/records.py`` -> ``unet3d_core.data.records``; a package's ``__init__.py`` -> the package."""
    parts = path[:-len(".py")].split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def count_lines(data):
    """Lines in a file's bytes, the way ``wc -l`` counts them plus an unterminated last line."""
    if not data:
        return 0
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def read_sources(root):
    """Parse every checked file; raise StructureError naming each file that does not parse."""
    sources, errors = [], []
    for path in checked_paths(root):
        with open(os.path.join(root, path), "rb") as handle:
            data = handle.read()
        try:
            tree = ast.parse(data, filename=path)
        except SyntaxError as error:
            errors.append("%s:%s: syntax error: %s" % (path, error.lineno or 0, error.msg))
            continue
        except (ValueError, UnicodeDecodeError) as error:
            errors.append("%s: cannot parse: %s" % (path, error))
            continue
        sources.append(SourceFile(path, module_name(path), path.endswith("/__init__.py"), tree, count_lines(data)))
    if errors:
        raise StructureError(errors)
    if not sources:
        raise StructureError(["no files to check under %s (expected %s, %s/ or %s/)"
                              % (root, CLI_FILE, PACKAGES[0], PACKAGES[1])])
    return sources


# --- 1. import cycles ---------------------------------------------------------

def longest_known(name, modules):
    """The longest dotted prefix of ``name`` that is a module of the project, or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def from_import_base(node, source):
    """The absolute module a ``from ... import`` statement imports from, or None if it leaves the tree."""
    if not node.level:
        return node.module
    parts = source.module.split(".")
    if not source.is_package:
        parts.pop()
    drop = node.level - 1
    if drop > len(parts):
        return None
    parts = parts[:len(parts) - drop]
    if node.module:
        parts.extend(node.module.split("."))
    return ".".join(parts) or None


def imported_modules(node, source, modules):
    """The project modules one import statement loads."""
    if isinstance(node, ast.Import):
        return {longest_known(alias.name, modules) for alias in node.names} - {None}
    base = from_import_base(node, source)
    if base is None:
        return set()
    found, names_from_base = set(), False
    for alias in node.names:
        submodule = base + "." + alias.name
        if alias.name != "*" and submodule in modules:
            found.add(submodule)
        else:
            names_from_base = True
    if names_from_base:
        found.add(longest_known(base, modules))
    return found - {None}


def import_graph(sources):
    """{module: {imported module: line of the first such import}} over the project's modules."""
    modules = {source.module for source in sources}
    graph = {module: {} for module in modules}
    for source in sources:
        for node in ast.walk(source.tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in imported_modules(node, source, modules):
                if target != source.module:
                    graph[source.module].setdefault(target, node.lineno)
    return graph


def finish_order(graph):
    """Modules in the order a depth-first search finishes them (iterative, no recursion limit)."""
    order, seen = [], set()
    for start in sorted(graph):
        if start in seen:
            continue
        seen.add(start)
        stack = [(start, iter(sorted(graph[start])))]
        while stack:
            node, children = stack[-1]
            child = next((c for c in children if c not in seen), None)
            if child is None:
                stack.pop()
                order.append(node)
            else:
                seen.add(child)
                stack.append((child, iter(sorted(graph[child]))))
    return order


def cyclic_components(graph):
    """The strongly connected components with more than one module (Kosaraju), each sorted."""
    reverse = {module: set() for module in graph}
    for module, targets in graph.items():
        for target in targets:
            reverse[target].add(module)
    seen, components = set(), []
    for start in reversed(finish_order(graph)):
        if start in seen:
            continue
        seen.add(start)
        group, stack = [], [start]
        while stack:
            module = stack.pop()
            group.append(module)
            for importer in reverse[module] - seen:
                seen.add(importer)
                stack.append(importer)
        if len(group) > 1:
            components.append(sorted(group))
    return sorted(components)


def shortest_cycle_from(graph, start, members):
    """A shortest import path from ``start`` back to itself inside ``members`` (breadth first)."""
    parents, queue = {start: None}, collections.deque([start])
    while queue:
        module = queue.popleft()
        for target in sorted(graph[module]):
            if target == start:
                path = [module]
                while parents[path[-1]] is not None:
                    path.append(parents[path[-1]])
                return list(reversed(path)) + [start]
            if target in members and target not in parents:
                parents[target] = module
                queue.append(target)
    return None


def shortest_cycle(graph, component):
    """The shortest cycle through the component, the first by module name among equals."""
    members = set(component)
    cycles = [shortest_cycle_from(graph, module, members) for module in component]
    return min((cycle for cycle in cycles if cycle), key=len)


def check_cycles(sources):
    """One violation per cyclic component, shown as a shortest cycle with its import lines."""
    graph = import_graph(sources)
    paths = {source.module: source.path for source in sources}
    violations = []
    for component in cyclic_components(graph):
        cycle = shortest_cycle(graph, component)
        where = ", ".join("%s:%d" % (paths[a], graph[a][b]) for a, b in zip(cycle, cycle[1:]))
        message = "import cycle: %s (%s)" % (" -> ".join(cycle), where)
        if len(component) > len(cycle) - 1:
            message += "; %d modules import each other in a circle: %s" % (len(component), ", ".join(component))
        violations.append(Violation("cycle", " <-> ".join(component), paths[cycle[0]], 0, message))
    return violations


# --- 2. hook specifications ---------------------------------------------------

def hookspec_markers(tree):
    """Names bound at module level to a ``HookspecMarker(...)``, plus the usual spellings."""
    markers = set(DEFAULT_HOOKSPEC_MARKERS)
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            function = node.value.func
            called = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
            if called == "HookspecMarker":
                markers.update(target.id for target in node.targets if isinstance(target, ast.Name))
    return markers


def is_hookspec(function, markers):
    """Whether a function is decorated with one of the markers, called or not."""
    for decorator in function.decorator_list:
        if isinstance(decorator, ast.Call):
            decorator = decorator.func
        if isinstance(decorator, ast.Name) and decorator.id in markers:
            return True
    return False


def spec_functions(tree):
    """(function, is_method) for the module's functions and the methods of its classes."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, False
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield item, True


def unannotated(function, is_method):
    """The names ('*args' style for variadics) of a function's parameters without annotation."""
    arguments = function.args
    positional = list(getattr(arguments, "posonlyargs", [])) + list(arguments.args)
    if is_method and positional:
        positional = positional[1:]
    named = [("", arg) for arg in positional + list(arguments.kwonlyargs)]
    named += [("*", arguments.vararg), ("**", arguments.kwarg)]
    return [(stars + arg.arg, arg.arg) for stars, arg in named if arg is not None and arg.annotation is None]


def check_hookspecs(sources):
    """Every parameter and the return value of every hook specification is annotated."""
    violations = []
    for source in sources:
        if source.path != HOOKSPECS_FILE:
            continue
        markers = hookspec_markers(source.tree)
        for function, is_method in spec_functions(source.tree):
            if not is_hookspec(function, markers):
                continue
            prefix = "%s:%d: %s: " % (source.path, function.lineno, function.name)
            for shown, name in unannotated(function, is_method):
                violations.append(Violation("hookspec", "%s:%s" % (function.name, name), source.path,
                                            function.lineno, prefix + "parameter '%s' has no annotation" % shown))
            if function.returns is None:
                violations.append(Violation("hookspec", function.name + ":return", source.path, function.lineno,
                                            prefix + "no return annotation"))
    return violations


# --- 3. writes into the parsed options ------------------------------------------

def options_name(node):
    """The name if ``node`` is a bare name called like the parsed options, else None."""
    if isinstance(node, ast.Name) and node.id in OPTIONS_NAMES:
        return node.id
    return None


def options_dict(node):
    """The options name if ``node`` is ``vars(options)`` or ``options.__dict__``, else None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "vars":
        return options_name(node.args[0]) if len(node.args) == 1 else None
    if isinstance(node, ast.Attribute) and node.attr == "__dict__":
        return options_name(node.value)
    return None


def constant_string(node):
    """The value of a string literal, else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def written_options(target):
    """(line, description such as 'options.fold') for the option attributes an assignment target writes."""
    if isinstance(target, (ast.Tuple, ast.List)):
        return [found for element in target.elts for found in written_options(element)]
    if isinstance(target, ast.Starred):
        return written_options(target.value)
    if isinstance(target, ast.Attribute) and options_name(target.value):
        return [(target.lineno, "%s.%s" % (target.value.id, target.attr))]
    if isinstance(target, ast.Subscript) and options_dict(target.value):
        index = target.slice
        if type(index).__name__ == "Index":  # Python 3.8 wraps the subscript
            index = index.value
        key, name = constant_string(index), options_dict(target.value)
        return [(target.lineno, "%s.%s" % (name, key) if key is not None else "vars(%s)[...]" % name)]
    return []


def written_by_call(call):
    """The option attribute a ``setattr(options, ...)`` or ``vars(options).update(...)`` call writes."""
    function = call.func
    if isinstance(function, ast.Name) and function.id == "setattr" and call.args and options_name(call.args[0]):
        name = call.args[0].id
        attribute = constant_string(call.args[1]) if len(call.args) > 1 else None
        if attribute is not None:
            return ["%s.%s" % (name, attribute)]
        dynamic = call.args[1].id if len(call.args) > 1 and isinstance(call.args[1], ast.Name) else "..."
        return ["setattr(%s, %s)" % (name, dynamic)]
    if isinstance(function, ast.Attribute) and function.attr in ("update", "setdefault", "__setitem__"):
        name = options_dict(function.value)
        if name:
            return ["vars(%s).%s" % (name, function.attr)]
    return []


def assignment_targets(node):
    """The targets a statement binds or deletes."""
    if isinstance(node, (ast.Assign, ast.Delete)):
        return node.targets
    if isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor, ast.comprehension)):
        return [node.target]
    if isinstance(node, ast.withitem) and node.optional_vars is not None:
        return [node.optional_vars]
    return []


def nodes_outside_cli(sources):
    """(source, node) for every syntax node of every checked module but cli.py."""
    for source in sources:
        if source.path != CLI_FILE:
            for node in ast.walk(source.tree):
                yield source, node


def check_options_writes(sources):
    """No module but cli.py writes into the parsed options."""
    violations = []
    for source, node in nodes_outside_cli(sources):
        written = [found for target in assignment_targets(node) for found in written_options(target)]
        if isinstance(node, ast.Call):
            written += [(node.lineno, description) for description in written_by_call(node)]
        for line, description in written:
            violations.append(Violation("options_write", "%s:%s" % (source.path, description), source.path,
                                        line, "%s:%d: writes into parsed options (%s)"
                                        % (source.path, line, description)))
    return violations


# --- 4. and 5. lengths ------------------------------------------------------------

def functions_with_names(node, prefix=""):
    """(qualified name, node) for every function below ``node``: Class.method, outer.inner."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = prefix + child.name
            yield name, child
            yield from functions_with_names(child, name + ".")
        elif isinstance(child, ast.ClassDef):
            yield from functions_with_names(child, prefix + child.name + ".")
        else:
            yield from functions_with_names(child, prefix)


def check_function_lengths(sources):
    """No function is longer than FUNCTION_LIMIT lines, from ``def`` to the end of its body."""
    violations = []
    for source in sources:
        for name, function in functions_with_names(source.tree):
            length = function.end_lineno - function.lineno + 1
            if length > FUNCTION_LIMIT:
                violations.append(Violation("function_length", "%s:%s" % (source.path, name), source.path,
                                            function.lineno, "%s:%d: %s is %d lines (limit %d)"
                                            % (source.path, function.lineno, name, length, FUNCTION_LIMIT)))
    return violations


def check_module_lengths(sources):
    """No module under unet3d_core/ is longer than MODULE_LIMIT lines."""
    return [Violation("module_length", source.path, source.path, 0,
                      "%s is %d lines (limit %d)" % (source.path, source.lines, MODULE_LIMIT))
            for source in sources
            if source.path.startswith(LENGTH_CHECKED_PACKAGE) and source.lines > MODULE_LIMIT]


# --- 6. rooms -------------------------------------------------------------------

def room_rank(module):
    """0 for unet3d_core and its top-level modules, 1.. for the rooms in ROOMS order, None outside the core."""
    parts = module.split(".")
    if parts[0] != CORE:
        return None
    if len(parts) > 1 and parts[1] in ROOMS:
        return ROOMS.index(parts[1]) + 1
    return 0 if len(parts) <= 2 else None  # a package that is no room is not ranked


def is_type_checking(test):
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(tree):
    """Every import statement of ``tree`` except those under ``if TYPE_CHECKING:``."""
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_type_checking(child.test):
                pending.extend(child.orelse)
            else:
                pending.append(child)


def room_name(rank):
    return "the top-level modules" if rank == 0 else "unet3d_core." + ROOMS[rank - 1]


def check_rooms(sources):
    """A core module imports only its own room and the rooms below it."""
    modules = {source.module for source in sources}
    violations = []
    for source in sources:
        rank = room_rank(source.module)
        if rank is None:
            continue
        seen = set()
        for node in sorted(runtime_imports(source.tree), key=lambda n: n.lineno):
            for target in sorted(imported_modules(node, source, modules)):
                target_rank = room_rank(target)
                if target_rank is None or target_rank <= rank or target in seen:
                    continue
                seen.add(target)
                violations.append(Violation(
                    "room", "%s -> %s" % (source.module, target), source.path, node.lineno,
                    "%s:%d: %s (in %s) imports %s (in %s, a room above it); move the helper it needs down"
                    % (source.path, node.lineno, source.module, room_name(rank), target, room_name(target_rank))))
    return violations


def check_namespace_uses(sources):
    """No module but cli.py uses argparse.Namespace."""
    violations = []
    for source, node in nodes_outside_cli(sources):
        used = None
        if (isinstance(node, ast.Attribute) and node.attr == "Namespace" and isinstance(node.value, ast.Name)
                and node.value.id == "argparse"):
            used = "argparse.Namespace"
        elif isinstance(node, ast.ImportFrom) and node.module == "argparse" and any(
                alias.name == "Namespace" for alias in node.names):
            used = "from argparse import Namespace"
        if used:
            violations.append(Violation("namespace", "%s:%s" % (source.path, used), source.path, node.lineno,
                                        "%s:%d: uses %s (read CommandFlags or the backend's options)"
                                        % (source.path, node.lineno, used)))
    return violations


def find_violations(sources):
    """Every violation of every check, in a stable order."""
    violations = (check_cycles(sources) + check_hookspecs(sources) + check_options_writes(sources)
                  + check_function_lengths(sources) + check_module_lengths(sources) + check_rooms(sources)
                  + check_namespace_uses(sources))
    return sorted(violations, key=lambda v: (KINDS.index(v.kind), v.path, v.line))  # stable: keeps check order


# --- the baseline -------------------------------------------------------------------

def load_baseline(path):
    """The set of (kind, key) pairs a baseline file accepts; a missing file accepts nothing."""
    if not os.path.exists(path):
        return set()
    try:
        with open(path, encoding="utf-8") as handle:
            entries = json.load(handle)
        if isinstance(entries, dict):
            entries = entries["violations"]
        return {(entry["kind"], entry["key"]) for entry in entries}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StructureError(["%s: not a structure baseline: %s" % (path, error)]) from None


def write_baseline(path, violations):
    """Write the current violations as the baseline, one sorted JSON object per line."""
    keys = sorted({(v.kind, v.key) for v in violations}, key=lambda pair: (KINDS.index(pair[0]), pair[1]))
    lines = [json.dumps({"kind": kind, "key": key}) for kind, key in keys]
    text = "[\n" + ",\n".join(lines) + ("\n" if lines else "") + "]\n"
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return len(keys)


def plural(count, word):
    return "%d %s%s" % (count, word, "" if count == 1 else "s")


def report(violations, baseline, label):
    """Print the new and the fixed violations and a summary line; return the exit status."""
    found = {(v.kind, v.key) for v in violations}
    new = [v for v in violations if (v.kind, v.key) not in baseline]
    fixed = sorted(baseline - found, key=lambda pair: (KINDS.index(pair[0]) if pair[0] in KINDS else 99, pair[1]))
    for violation in new:
        print(violation.message)
    for kind, key in fixed:
        print("fixed: %s %s (still in the baseline)" % (kind, key))
    summary = "structure: %s, %d known (%s)" % (plural(len(new), "new violation"), len(baseline & found), label)
    if fixed:
        summary += ", %d fixed - remove them with --write-baseline" % len(fixed)
    if new:
        summary += "; fix the new ones (the baseline is for violations that predate the check)"
    print(summary)
    return 1 if new else 0


# --- command line ---------------------------------------------------------------------

def parse_arguments(argv):
    parser = argparse.ArgumentParser(description="Check the project's source structure (see the module docstring).")
    parser.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        help="the tree to check (default: the repository this script is in)")
    parser.add_argument("--baseline", help="the baseline file (default: ROOT/%s)" % BASELINE_NAME)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-baseline", action="store_true", help="report every violation, ignoring the baseline")
    group.add_argument("--write-baseline", action="store_true",
                       help="rewrite the baseline with the current violations and exit 0")
    return parser.parse_args(argv)


def display_path(path, root):
    """``path`` relative to ``root`` when it lies inside it."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    return path if relative.startswith("..") else relative.replace(os.sep, "/")


def run(options):
    """Check the tree; return the exit status."""
    root = options.root
    baseline_path = options.baseline or os.path.join(root, BASELINE_NAME)
    violations = find_violations(read_sources(root))
    label = display_path(baseline_path, root)
    if options.write_baseline:
        count = write_baseline(baseline_path, violations)
        print("structure: wrote %s to %s" % (plural(count, "known violation"), label))
        return 0
    if options.no_baseline:
        for violation in violations:
            print(violation.message)
        print("structure: %s (baseline ignored)" % plural(len(violations), "violation"))
        return 1 if violations else 0
    return report(violations, load_baseline(baseline_path), label)


def main(argv=None):
    if sys.version_info < (3, 8):
        print("check_structure.py needs Python 3.8 or newer", file=sys.stderr)
        return 2
    options = parse_arguments(argv)
    try:
        return run(options)
    except StructureError as error:
        for line in error.lines:
            print("error: " + line, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
