"""Finding, loading and calling backends.

Backends are modules registered under the ``unet3d.backends`` entry-point
group (the built-in cpu, gpu and npu ones too). Each backend gets its own
pluggy manager holding the core defaults plus that backend, so hooks of one
backend never run for another. The core calls hooks only through
:class:`Backend` methods.

Several backends may share flags: a backend names the option plugins it
shares in its module's ``UNET3D_SHARED_OPTIONS`` (e.g. the cpu and gpu
backends both name backends/horovod.py's ``--hosts``). A shared option plugin
implements only ``unet3d_add_options``; it gets an argument group of its own,
titled by its ``title`` attribute, once per parser however many loaded
backends name it, so no flag is defined twice.

Set ``UNET3D_BACKENDS=cpu,npu`` to load only the named backends (tests, debugging).
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import pluggy

from unet3d_core import ENTRY_POINT_GROUP, PROJECT_NAME, defaults, hookspecs
from unet3d_core.errors import BackendError, UNet3DError
from unet3d_core.types import BackendInfo, CoreSettings, DistributedStrategy, StepRunner, WrappedOptimizer

try:  # Python >= 3.8
    from importlib import metadata as importlib_metadata
except ImportError:  # Python 3.7: the backport pluggy itself depends on
    import importlib_metadata  # type: ignore

FILTER_VARIABLE = "UNET3D_BACKENDS"
SHARED_OPTIONS_ATTRIBUTE = "UNET3D_SHARED_OPTIONS"
# Hooks of the contract before the typed one (docs/writing-a-backend.md, "Moving from the old hooks").
RENAMED_HOOKS = {
    "unet3d_training_loop": "is now unet3d_step_runner(session, train_op, options) and returns "
                            "unet3d_core.StepRunner(op, steps_per_run) instead of a tuple",
    "unet3d_validate_options": "is now unet3d_backend_options(flags, core): check the flags there and return "
                               "them frozen (unet3d_core.types.BackendOptions(core, flags) or your own frozen "
                               "dataclass); every later hook receives that object, not the parsed flags",
}


@dataclass
class Backend:
    """One loaded backend: its info, where it came from, and its hooks."""

    info: BackendInfo
    module: object
    distribution: str = "local"
    version: str = ""
    manager: pluggy.PluginManager = field(default=None, repr=False)
    # The dests of the flags this backend's group (and its shared option plugins' groups) added to a parser.
    flag_names: Optional[Tuple[str, ...]] = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def hooks(self) -> List[str]:
        """Names of the hooks this backend implements itself."""
        implemented = self.manager.get_hookcallers(self.module) or []
        return sorted(caller.name for caller in implemented)

    def _call(self, hook_name: str, **kwargs):
        caller = getattr(self.manager.hook, hook_name)
        try:
            return caller(**kwargs)
        except (BackendError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:
            if isinstance(error, UNet3DError):
                raise
            raise BackendError(
                "backend '{}' ({}) failed in hook {}: {}: {}".format(
                    self.name, self.distribution, hook_name, type(error).__name__, error)
            ) from error

    @property
    def shared_options(self) -> List[object]:
        """The option plugins this backend shares with others (its module's ``UNET3D_SHARED_OPTIONS``)."""
        return list(getattr(self.module, SHARED_OPTIONS_ATTRIBUTE, ()))

    def add_options(self, parser: argparse.ArgumentParser, shared_flags: Tuple[str, ...] = ()) -> None:
        """Add the backend's group to ``parser``; ``shared_flags``: the dests its shared option plugins added."""
        group = parser.add_argument_group("{} backend".format(self.name), self.info.summary)
        self._call("unet3d_add_options", group=group)
        # dict.fromkeys: one entry per dest (two flags may set one, e.g. --hcom_parallel / --no_hcom_parallel).
        dests = tuple(shared_flags) + tuple(action.dest for action in group._group_actions)
        self.flag_names = tuple(dict.fromkeys(dests))

    def _flag_names(self) -> Tuple[str, ...]:
        if self.flag_names is None:  # no parser built in this process (a test): build a throw-away one
            parser = argparse.ArgumentParser(add_help=False)
            shared = ()
            for plugin in self.shared_options:
                shared += _add_shared_options(plugin, parser)
            self.add_options(parser, shared)
        return self.flag_names

    def backend_options(self, parsed: Mapping[str, Any], core: CoreSettings) -> Any:
        """The backend's frozen options (``unet3d_backend_options``) from its own flags among the command's
        ``parsed`` values (``cli.py``'s CommandFlags)."""
        flags = {name: parsed[name] for name in self._flag_names() if name in parsed}
        answer = self._call("unet3d_backend_options", flags=flags, core=core)
        params = getattr(answer, "__dataclass_params__", None)
        if not dataclasses.is_dataclass(answer) or isinstance(answer, type) or not params.frozen or not hasattr(
                answer, "core"):
            raise BackendError("backend '{}' ({}): unet3d_backend_options must return a frozen dataclass with a "
                               "'core' field (e.g. unet3d_core.types.BackendOptions), got {} (see "
                               "docs/writing-a-backend.md)".format(self.name, self.distribution,
                                                                    type(answer).__name__))
        return answer

    def add_commands(self, commands) -> None:
        self._call("unet3d_add_commands", commands=commands)

    def _typed(self, hook_name: str, answer, expected: type):
        """``answer`` when it is an ``expected``; else the one-line error naming the hook and the type."""
        if isinstance(answer, expected):
            return answer
        raise BackendError("backend '{}' ({}): {} must return unet3d_core.{}, got {} (see docs/writing-a-backend.md)"
                           .format(self.name, self.distribution, hook_name, expected.__name__,
                                   type(answer).__name__))

    def step_runner(self, session, train_op, options) -> StepRunner:
        return self._typed("unet3d_step_runner", self._call(
            "unet3d_step_runner", session=session, train_op=train_op, options=options), StepRunner)

    def launch(self, options, worker_command: List[str]) -> Optional[int]:
        return self._call("unet3d_launch", options=options, worker_command=list(worker_command))

    def prepare_environment(self, options) -> None:
        self._call("unet3d_prepare_environment", options=options)

    def distributed_strategy(self, options) -> DistributedStrategy:
        return self._typed("unet3d_distributed_strategy", self._call("unet3d_distributed_strategy", options=options),
                           DistributedStrategy)

    def session_config(self, config, options, strategy, phase: str = "training"):
        return self._call("unet3d_session_config", config=config, options=options, strategy=strategy, phase=phase)

    def mixed_precision(self, optimizer, options, strategy) -> WrappedOptimizer:
        return self._typed("unet3d_mixed_precision", self._call(
            "unet3d_mixed_precision", optimizer=optimizer, options=options, strategy=strategy), WrappedOptimizer)

    def layer_ops(self, options):
        """The backend's :class:`unet3d_core.layers.LayerOps` (the textbook ones by default)."""
        return self._call("unet3d_layer_ops", options=options)


def _new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    manager.register(defaults, name="unet3d-core-defaults")
    return manager


def _add_shared_options(plugin, parser: argparse.ArgumentParser) -> Tuple[str, ...]:
    """Call a shared option plugin's ``unet3d_add_options`` in a group titled by its ``title``; the dests it
    added."""
    title = getattr(plugin, "title", type(plugin).__name__)
    manager = pluggy.PluginManager(PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    try:
        manager.register(plugin, name=title)
        manager.check_pending()
    except pluggy.PluginValidationError as error:
        raise BackendError("shared options '{}': invalid plugin: {}".format(
            title, " ".join(str(error).split()))) from error
    group = parser.add_argument_group(title)
    try:
        manager.hook.unet3d_add_options(group=group)
    except (BackendError, KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:
        raise BackendError("shared options '{}' failed in hook unet3d_add_options: {}: {}".format(
            title, type(error).__name__, error)) from error
    return tuple(action.dest for action in group._group_actions)


def load_backend(module, entry_name: str, distribution: str = "local", version: str = "") -> Backend:
    """Register one backend module in its own manager and validate it.

    Raises:
        BackendError: the module implements an unknown hook, a hook with a
            wrong signature, no ``unet3d_backend_info``, or a name that
            differs from its entry point.
    """
    origin = "backend '{}' ({})".format(entry_name, distribution)
    for old_name, change in RENAMED_HOOKS.items():
        if callable(getattr(module, old_name, None)):
            raise BackendError("{}: implements {}, a hook of the old contract: it {} (docs/writing-a-backend.md)"
                               .format(origin, old_name, change))
    manager = _new_manager()
    try:
        manager.register(module, name=entry_name)
        manager.check_pending()
    except pluggy.PluginValidationError as error:
        # pluggy's message spans lines; a user error is one line.
        raise BackendError("{}: invalid plugin: {}".format(origin, " ".join(str(error).split()))) from error
    if "unet3d_backend_info" not in [c.name for c in (manager.get_hookcallers(module) or [])]:
        raise BackendError("{}: does not implement the required hook unet3d_backend_info".format(origin))
    try:
        info = manager.hook.unet3d_backend_info()
    except Exception as error:
        raise BackendError("{}: unet3d_backend_info failed: {}: {}".format(
            origin, type(error).__name__, error)) from error
    if not isinstance(info, BackendInfo):
        raise BackendError("{}: unet3d_backend_info must return unet3d_core.BackendInfo, got {!r}".format(
            origin, info))
    if info.name != entry_name:
        raise BackendError("{}: calls itself '{}'; the entry-point name and BackendInfo.name must match".format(
            origin, info.name))
    return Backend(info=info, module=module, distribution=distribution, version=version, manager=manager)


def _selected_names() -> Optional[List[str]]:
    raw = os.environ.get(FILTER_VARIABLE, "").strip()
    if not raw:
        return None
    return [name.strip() for name in raw.split(",") if name.strip()]


def _entry_points():
    found = importlib_metadata.entry_points()
    if hasattr(found, "select"):
        return list(found.select(group=ENTRY_POINT_GROUP))
    return list(found.get(ENTRY_POINT_GROUP, []))


def _distribution_of(entry_point):
    dist = getattr(entry_point, "dist", None)
    if dist is not None:
        return dist.metadata["Name"], dist.version
    return "unknown", ""


class BackendRegistry:
    """All installed backends, by name."""

    def __init__(self, backends: Optional[Dict[str, Backend]] = None):
        self.backends = dict(backends or {})

    @classmethod
    def discover(cls) -> "BackendRegistry":
        """Load every backend of the ``unet3d.backends`` entry-point group.

        Raises:
            BackendError: two distributions claim the same backend name, or a
                plugin is invalid (naming the plugin).
        """
        wanted = _selected_names()
        claimed = {}  # name -> (distribution, entry point); two claims is an error
        for entry_point in _entry_points():
            if wanted is not None and entry_point.name not in wanted:
                continue
            distribution, version = _distribution_of(entry_point)
            if entry_point.name in claimed:
                previous = claimed[entry_point.name]
                if (previous[0], previous[1].value) == (distribution, entry_point.value):
                    continue  # the same distribution seen twice on sys.path
                raise BackendError(
                    "backend name '{}' is claimed by two installed distributions: {} ({}) and {} ({}); "
                    "uninstall one of them".format(entry_point.name, previous[0], previous[1].value,
                                                   distribution, entry_point.value))
            claimed[entry_point.name] = (distribution, entry_point)
        registry = cls()
        for name, (distribution, entry_point) in sorted(claimed.items()):
            try:
                module = entry_point.load()
            except Exception as error:
                raise BackendError("backend '{}' ({}): cannot import {}: {}: {}".format(
                    name, distribution, entry_point.value, type(error).__name__, error)) from error
            version = _distribution_of(entry_point)[1]
            registry.add(load_backend(module, name, distribution, version))
        return registry

    def add(self, backend: Backend) -> None:
        if backend.name in self.backends:
            existing = self.backends[backend.name]
            raise BackendError("backend name '{}' is claimed by two plugins: {} and {}".format(
                backend.name, existing.distribution, backend.distribution))
        self.backends[backend.name] = backend

    @property
    def names(self) -> List[str]:
        return sorted(self.backends)

    def get(self, name: str) -> Backend:
        """Return an available backend, or raise a one-line BackendError saying why not."""
        if name not in self.backends:
            close = [known for known in self.names if known.lower() == name.lower()] or \
                difflib.get_close_matches(name, self.names, n=1, cutoff=0.6)
            raise BackendError("backend '{}' is not available (plugin not installed?) — installed: {}{}".format(
                name, ", ".join(self.names) or "none", "; did you mean {}?".format(close[0]) if close else ""))
        backend = self.backends[name]
        if not backend.info.available:
            others = ["{}: {}".format(other.name, "usable" if other.info.available else other.info.reason)
                      for other in self.backends.values() if other.name != name]
            raise BackendError("backend '{}' is installed but unusable here: {} (other backends: {})".format(
                name, backend.info.reason, "; ".join(others) or "none"))
        return backend

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        """Each shared option plugin's group once, then each backend's group."""
        shared = []  # (plugin, the dests it added)
        for name in self.names:
            for plugin in self.backends[name].shared_options:
                if not any(plugin is seen for seen, _ in shared):
                    shared.append((plugin, ()))
        shared = [(plugin, _add_shared_options(plugin, parser)) for plugin, _ in shared]
        for name in self.names:
            backend = self.backends[name]
            flags = sum((dests for plugin, dests in shared if any(plugin is own for own in backend.shared_options)),
                        ())
            backend.add_options(parser, flags)

    def add_commands(self, commands) -> None:
        for name in self.names:
            self.backends[name].add_commands(commands)
