"""What loading the adapter changes in TensorFlow's sessions: the fake's hooks on Session.__init__ and run.

* A session whose config has an ``NpuOptimizer`` custom optimizer is an NPU session: its parameter map is
  read and checked (npu_attrs.py), GE starts (ge_plugin.py) and the session is recorded
  ``{"call": "session", "session": <id>, "parameters": {...}, ...}``. Any other session created after the
  load runs on the host (``NpuAttrs::GetPassOptions`` finds no NpuOptimizer: job "default", every NPU pass
  skipped, remapping forced off, tf_adapter/util/npu_attrs.cc:896-1008): ``{"call": "host_session"}``.
* Sessions that existed before the load never went through the adapter; they stay on the host.
* Each distinct (feeds, fetches, targets) of an NPU session is one device graph, compiled once, the first time
  it runs: TensorFlow's DirectSession keeps one set of executors per sorted feed/fetch/target key
  (tensorflow/core/common_runtime/direct_session.cc, DirectSession::GetOrCreateExecutors), and the adapter's
  passes and GeOp run when those executors are built. Recorded ``{"call": "compile_graph", "session": <id>,
  "graphs": <count so far in that session>, ...}``.
* Compiling applies the checks of ``OMPartitionSubgraphsPass::ProcessGraph``
  (tf_adapter/optimizers/om_partition_subgraphs_pass.cc:2317-...) to the pruned graph of that run, among
  them the one-shot-iterator rule.
* Float64 on the device: the AI Core has no float64 kernels (hicann/ops-nn: e.g. SoftmaxV2's AI Core
  definition activation/softmax_v2/op_host/softmax_v2_def.cpp lists DT_FLOAT, DT_FLOAT16 and DT_BF16, its
  AI CPU one op_kernel_aicpu/softmax_v2_aicpu_def.cpp adds DT_DOUBLE), so GE places an op reading or
  writing float64 on the AI CPU: one more task per step, and data copied between the two. Each compiled
  device graph records those ops (``"aicpu_float64": [op names]``).
* The device loop: with ``iterations_per_loop`` N > 1 in the parameter map, a graph holding the node named
  ``IterationOp`` is run N times by one ``Session.run`` (GeOp: tf_adapter/kernels/geop_npu.cc:462 reads N,
  :1545-1548 finds IterationOp, :1148-1150 and :1248-1250 hand the loop to GE). The fake runs the
  IterationOp N-1 times, then the fetches once.
"""
import gc
import itertools
import threading

import tensorflow as tf
from tensorflow.python.client import session as tf_session

from npu_bridge import record, record_load
from npu_bridge._tf_adapter import ge_plugin, live, log, npu_attrs

PARTITION = "tf_adapter/optimizers/om_partition_subgraphs_pass.cc"
MARK = "_fake_npu_wraps"  # attribute of the fake's wrappers: the function each one wraps
_ids = itertools.count(1)
_lock = threading.Lock()


class SessionState(object):
    """What the fake adapter knows about one session of this load."""

    def __init__(self, parameters=None, types=None, effective=None):
        self.id = next(_ids)
        self.npu = parameters is not None
        self.parameters = parameters or {}
        self.types = types or {}
        self.effective = effective or {}
        self.graphs = {}  # run key -> (the IterationOp that loops, or None; steps per run)


_OWNER = object()  # this load of the fake; a session's state from an earlier load does not count
STATE = "_fake_npu_state"


def state_of(session):
    """The fake adapter's state of ``session`` for this load, or None (created before the load)."""
    state = session.__dict__.get(STATE)
    return state if state is not None and state.owner is _OWNER else None


def _remember(session, state):
    state.owner = _OWNER
    session.__dict__[STATE] = state


def npu_optimizer_of(config):
    """The NpuOptimizer custom optimizer of a ConfigProto, or None."""
    if config is None:
        return None
    for entry in config.graph_options.rewrite_options.custom_optimizers:
        if entry.name == "NpuOptimizer":
            return entry
    return None


def _rewrite_names(config):
    from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

    rewrite = config.graph_options.rewrite_options
    return {"remapping": RewriterConfig.Toggle.Name(rewrite.remapping),
            "memory_optimization": RewriterConfig.MemOptType.Name(rewrite.memory_optimization)}


def _create(session, original, target, graph, config):
    optimizer = npu_optimizer_of(config)
    if optimizer is None:
        original(session, target, graph, config)
        state = SessionState()
        _remember(session, state)
        # npu_attrs.cc:999-1008: without an NpuOptimizer the adapter turns remapping off in the session options.
        record("host_session", session=state.id, remapping_forced_off=True)
        return
    try:
        parameters, types, ignored, effective = npu_attrs.read_parameter_map(optimizer)
        state = SessionState(parameters, types, effective)
        ge_plugin.initialize("session")
    except Exception:
        session._session = None  # refused before TensorFlow's __init__ ran: let BaseSession.__del__ pass quietly
        raise
    original(session, target, graph, _host_execution(config))
    _remember(session, state)
    record("session", session=state.id, parameters=parameters, types=types, effective=effective,
           rewrite_options=_rewrite_names(config), allow_soft_placement=config.allow_soft_placement)
    for key in ignored:
        record("ignored_parameter", session=state.id, key=key, type=types[key])


def _host_execution(config):
    """The config the fake's host execution of the device graph runs with: under TensorFlow 1.x, one
    inter-op thread.

    Not an adapter rule: on the NPU the graph runs on the device and these pools stay idle. Here TensorFlow
    runs it on the host, and TensorFlow 1.15 with more than one inter-op thread grew the process by about
    6 MB a step (12 GB after 2000 steps of a 16^3 crop; also with MALLOC_ARENA_MAX=1, so not glibc's arenas).
    TensorFlow 2 does not (measured flat over 3500 steps) and keeps its default pool, which the fake's
    blocking collectives need when a step holds independent ones (one thread can start them in a different
    order on each rank and wait forever).
    """
    if config.inter_op_parallelism_threads or not tf.__version__.startswith("1."):
        return config
    copy = type(config)()
    copy.CopyFrom(config)
    copy.inter_op_parallelism_threads = 1
    return copy


def _init_hook(original):
    def __init__(self, target="", graph=None, config=None):
        if not live():
            return original(self, target, graph, config)
        _create(self, original, target, graph, config)

    setattr(__init__, MARK, original)
    return __init__


def _leaves(fetches):
    if isinstance(fetches, dict):
        for value in fetches.values():
            for leaf in _leaves(value):
                yield leaf
    elif isinstance(fetches, (list, tuple)):
        for value in fetches:
            for leaf in _leaves(value):
                yield leaf
    elif fetches is not None:
        yield fetches


def _run_key(graph, fetches, feed_dict):
    """(feeds, fetched tensors, target ops), each sorted by name, as DirectSession keys its executors."""
    tensors, targets = {}, {}
    for leaf in _leaves(fetches):
        element = graph.as_graph_element(leaf, allow_tensor=True, allow_operation=True)
        if isinstance(element, tf.Operation):
            targets[element.name] = element
        else:
            tensors[element.name] = element
    feeds = set()
    for key in (feed_dict or {}):
        try:
            feeds.add(graph.as_graph_element(key, allow_tensor=True, allow_operation=False).name)
        except (TypeError, ValueError):
            feeds.add(str(key))
    key = (tuple(sorted(feeds)), tuple(sorted(tensors)), tuple(sorted(targets)))
    return key, list(tensors.values()), list(targets.values()), feeds


def _pruned(tensors, targets, feeds):
    """The ops a run executes: everything the fetches and targets need, cut at fed tensors."""
    seen, stack = set(), [tensor.op for tensor in tensors] + list(targets)
    while stack:
        op = stack.pop()
        if op in seen:
            continue
        seen.add(op)
        stack.extend(tensor.op for tensor in op.inputs if tensor.name not in feeds)
        stack.extend(op.control_inputs)
    return seen


def _partition(state, ops):
    """OMPartitionSubgraphsPass::ProcessGraph's checks on the pruned graph of one run."""
    p = state.parameters
    job = p.get("job", "localhost")  # npu_attrs.cc:2238-2242
    if job in ("ps", "default"):  # om_partition_subgraphs_pass.cc:2345-2349: not partitioned
        return False
    iterations_per_loop = p.get("iterations_per_loop", 1)
    if iterations_per_loop < 1:
        log.fatal("iterator_per_loop should be int and must >= 1", "{}:2363-2366".format(PARTITION))
    if p.get("task_index", 0) < 0:
        log.fatal("task_index should be int and must >= 0", "{}:2367-2370".format(PARTITION))
    if not p.get("use_off_line", True):  # om_partition_subgraphs_pass.cc:2371-2379: online, no partition
        return False
    if p.get("input_shape") and p.get("dynamic_dims") and p.get("mix_compile_mode"):
        log.fatal("dynamic config can not use with mix compile.", "{}:2385-2389".format(PARTITION))
    for op in ops:
        if op.type == "OneShotIterator" and iterations_per_loop != 1:
            log.fatal("iterator_per_loop only support 1 when using OneShotIterator",
                      "{}:2440-2443".format(PARTITION))
    if p.get("dynamic_input") and p.get("dynamic_graph_execute_mode") == "lazy_recompile" and \
            iterations_per_loop > 1:
        raise npu_attrs.invalid_argument("iterations_per_loop only support 1 in lazy_recompile mode. Current is:{}"
                                         .format(iterations_per_loop), "{}:2481-2485".format(PARTITION))
    if p.get("in_out_pair") and not p.get("mix_compile_mode"):
        raise npu_attrs.internal("mix_compile_mode must be True when use in_out_pair.",
                                 "{}:1063-1066".format(PARTITION))
    return True


def _compile(state, key, tensors, targets, feeds):
    ge_plugin.initialize("GeOp")  # GeOp's constructor starts GE (geop_npu.cc:476); once per process
    ops = _pruned(tensors, targets, feeds)
    on_device = _partition(state, ops)
    loop_op = None
    if on_device:
        loop_op = next((op for op in ops if op.name == "IterationOp"), None)  # geop_npu.cc:1545-1548
    iterations = state.parameters.get("iterations_per_loop", 1) if loop_op is not None else 1
    state.graphs[key] = (loop_op if iterations > 1 else None, iterations if iterations > 1 else 1)
    record("compile_graph", session=state.id, graphs=len(state.graphs), on_device=on_device,
           feeds=list(key[0]), fetches=list(key[1]), targets=list(key[2]),
           iterations_per_run=state.graphs[key][1], aicpu_float64=_float64_ops(ops) if on_device else [])


def _float64_ops(ops):
    """The ops of a device graph that read or write float64: AI CPU's, not AI Core's (see the docstring)."""
    return sorted(op.name for op in ops
                  if any(t.dtype.base_dtype == tf.float64 for t in list(op.inputs) + list(op.outputs)))


def _run_hook(original):
    def run(self, fetches, feed_dict=None, options=None, run_metadata=None):
        state = state_of(self) if live() else None
        if state is None or not state.npu:
            return original(self, fetches, feed_dict, options, run_metadata)
        try:
            key, tensors, targets, feeds = _run_key(self.graph, fetches, feed_dict)
        except (TypeError, ValueError, KeyError):
            return original(self, fetches, feed_dict, options, run_metadata)  # TensorFlow reports the fetch error
        with _lock:
            if key not in state.graphs:
                _compile(state, key, tensors, targets, feeds)
            loop_op, iterations = state.graphs[key]
        for _ in range(iterations - 1):
            original(self, loop_op, feed_dict)
        return original(self, fetches, feed_dict, options, run_metadata)

    setattr(run, MARK, original)
    return run


def _unwrapped(function):
    while hasattr(function, MARK):
        function = getattr(function, MARK)
    return function


REMAKE = "_fake_npu_remake"  # on a Python-level decorator of this load: the function that made it


def install(wrappers):
    """Put ``wrappers`` [(class, name, make_wrapper)] on TensorFlow's classes, replacing an earlier load's.

    The library's hooks sit innermost, next to TensorFlow's own function, as C++ sits below Python; a
    decorator this load's Python put on first (npu_init's, when the TF 2 adapter's ``enable_v1`` loads the
    library after ``npu_init`` was imported) is put back outside them.
    """
    for cls, name, make in wrappers:
        function, decorators = cls.__dict__[name], []
        while hasattr(function, MARK):
            if getattr(function, REMAKE, None) is not None and getattr(function, "_fake_npu_owner", None) is _OWNER:
                decorators.append(getattr(function, REMAKE))
            function = getattr(function, MARK)
        result = make(function)
        for remake in reversed(decorators):
            result = _decorated(remake, result)
        setattr(cls, name, result)


def _decorated(make, function):
    result = make(function)
    setattr(result, REMAKE, make)
    result._fake_npu_owner = _OWNER
    return result


def wrap(cls, name, make):
    """Wrap ``cls.name`` once more (on top of this load's hooks), as npu_init's decorator does."""
    setattr(cls, name, _decorated(make, cls.__dict__[name]))


def load():
    """What loading _tf_adapter.so does here: count the sessions that exist already, hook the session classes."""
    existing = [obj for obj in gc.get_objects() if issubclass(type(obj), tf_session.BaseSession)
                and not obj.__dict__.get("_closed", False)]
    install([(tf_session.Session, "__init__", _init_hook),
             (tf_session.InteractiveSession, "__init__", _init_hook),
             (tf_session.BaseSession, "run", _run_hook)])
    record_load("adapter_loaded", tensorflow=tf.__version__)
    if existing:
        record_load("host_sessions", count=len(existing),
               note="sessions created before npu_bridge was imported run on the host: TensorFlow ignores the "
                    "NpuOptimizer it does not know yet")
