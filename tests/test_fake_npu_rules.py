"""The fake CANN adapter (tests/fake_npu) refuses what the real adapter refuses, rule by rule.

Each test names the adapter rule it proves (tests/fake_npu/README.md lists them with their sources). Rules the
adapter enforces with LOG(FATAL) end the process, so those run in a subprocess; the others run in-process
through the ``fake_npu`` fixture, which gives every test a fresh load of the fake.
"""
import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf
from conftest import ROOT

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_npu")
tf1 = tf.compat.v1
# Variables that steer the fake (and the real adapter); each test starts without them.
STEERING = ("ASCEND_DEVICE_ID", "DEVICE_ID", "RANK_TABLE_FILE", "RANK_SIZE", "RANK_ID", "JOB_ID", "CM_CHIEF_IP",
            "CM_CHIEF_PORT", "CM_CHIEF_DEVICE", "CM_WORKER_SIZE", "CM_WORKER_IP", "HCCL_CONNECT_TIMEOUT",
            "HCCL_EXEC_TIMEOUT", "FAKE_NPU_VISIBLE_DEVICES", "FAKE_NPU_CALLS", "FAKE_HCCL_DIR",
            "FAKE_HCCL_WAIT_SECONDS", "AOE_MODE", "TF_CONFIG")


def npu_config(**parameters):
    """A ConfigProto with an NpuOptimizer; a value (field, value) sets that AttrValue field explicitly."""
    import tensorflow as tf

    config = tf.compat.v1.ConfigProto()
    optimizer = config.graph_options.rewrite_options.custom_optimizers.add()
    optimizer.name = "NpuOptimizer"
    for key, value in parameters.items():
        field = optimizer.parameter_map[key]
        if isinstance(value, tuple):
            setattr(field, value[0], value[1])
        elif isinstance(value, bool):
            field.b = value
        elif isinstance(value, int):
            field.i = value
        else:
            field.s = value.encode()
    return config


HELPERS = "\n" + inspect.getsource(npu_config)  # the same function in the subprocess scripts


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for name in STEERING:
        monkeypatch.delenv(name, raising=False)


def _calls(name):
    import npu_bridge

    return [call for call in npu_bridge.calls if call["call"] == name]


def _rank_table(tmp_path, devices=(0,)):
    table = {"status": "completed", "version": "1.0", "server_count": "1", "server_list": [{
        "server_id": "127.0.0.1", "device": [{"device_id": str(device), "device_ip": "192.168.10{}.101".format(device),
                                              "rank_id": str(rank)} for rank, device in enumerate(devices)]}]}
    path = tmp_path / "rank_table.json"
    path.write_text(json.dumps(table))
    return str(path)


def _aborts(script, tmp_path, **environment):
    """Run ``script`` with the fake importable; it must die of SIGABRT. Returns (stderr, fatal call entries)."""
    calls = tmp_path / "calls.jsonl"
    env = {key: value for key, value in os.environ.items() if key not in STEERING}
    env.update(PYTHONPATH=FAKE, TF_CPP_MIN_LOG_LEVEL="2", FAKE_NPU_CALLS=str(calls), **environment)
    code = "import tensorflow as tf\ntf1 = tf.compat.v1\n" + HELPERS + textwrap.dedent(script) + \
        "\nprint('NOT ABORTED')\n"
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=240)
    assert result.returncode == -signal.SIGABRT, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    assert "NOT ABORTED" not in result.stdout
    entries = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    return result.stderr, [entry for entry in entries if entry["call"] == "fatal"]


# --- loading the adapter ------------------------------------------------------------------------------------


def test_importing_npu_bridge_loads_the_adapter_and_counts_the_sessions_that_exist_already(fake_npu):
    graph, step, train_op = _counting_graph()
    earlier = tf1.Session(graph=graph, config=npu_config(iterations_per_loop=4))
    import npu_bridge
    from npu_bridge.estimator.npu import util

    assert [entry["call"] for entry in npu_bridge.load_log][0] == "adapter_loaded"
    (host,) = [entry for entry in npu_bridge.load_log if entry["call"] == "host_sessions"]
    assert host["count"] >= 1
    # That session never went through the adapter: no device loop, one step per run.
    with graph.as_default():
        earlier.run(tf1.global_variables_initializer())
        loop = util.set_iteration_per_loop(earlier, train_op, 4)
    earlier.run(loop)
    assert earlier.run(step) == 1
    assert not [call for call in npu_bridge.calls if call["call"] in ("session", "compile_graph")]
    earlier.close()


def test_a_session_with_the_npu_optimizer_is_recorded_with_typed_parameters(fake_npu):
    import npu_bridge  # noqa: F401

    config = npu_config(use_off_line=True, precision_mode="allow_fp32_to_fp16", iterations_per_loop=1,
                        hcom_parallel=False, enable_data_pre_proc=False, mix_compile_mode=False,
                        graph_memory_max_size="1024", enable_small_channel=1, op_select_implmode="high_precision")
    with tf1.Session(graph=tf.Graph(), config=config):
        pass
    (session,) = _calls("session")
    assert session["parameters"] == {"use_off_line": True, "precision_mode": "allow_fp32_to_fp16",
                                     "iterations_per_loop": 1, "hcom_parallel": False, "enable_data_pre_proc": False,
                                     "mix_compile_mode": False, "graph_memory_max_size": "1024",
                                     "enable_small_channel": 1, "op_select_implmode": "high_precision"}
    assert session["types"]["enable_small_channel"] == "i" and session["types"]["hcom_parallel"] == "b"
    assert session["args"]["parameters"] == session["parameters"]  # the arguments are also under "args"
    assert not _calls("ignored_parameter")
    (start,) = _calls("ge_initialize")
    assert start["logical_device"] == 0 and start["physical_device"] == 0 and not start["use_hcom"]


def test_without_the_npu_optimizer_a_session_runs_on_the_host(fake_npu):
    import npu_bridge  # noqa: F401

    with tf1.Session(graph=tf.Graph()):
        pass
    assert _calls("host_session") and not _calls("session") and not _calls("ge_initialize")


def test_npu_init_makes_every_session_an_npu_session(fake_npu):
    from npu_bridge import npu_init  # noqa: F401

    config = tf1.ConfigProto()
    with tf1.Session(graph=tf.Graph(), config=config):
        pass
    (session,) = _calls("session")
    assert session["parameters"] == {}
    # npu_config.py sets memory_optimization = RewriterConfig.OFF, a Toggle (2): as a MemOptType that is MANUAL.
    assert session["rewrite_options"] == {"remapping": "OFF", "memory_optimization": "MANUAL"}
    assert session["allow_soft_placement"] is True
    assert [entry.name for entry in config.graph_options.rewrite_options.custom_optimizers] == ["NpuOptimizer"]


def test_after_the_fixture_the_hooks_left_on_tensorflow_do_nothing():
    """Runs after the tests above: a config the fake would refuse goes through TensorFlow untouched."""
    with tf1.Session(graph=tf.Graph(), config=npu_config(enable_small_channel=True)):
        pass


# --- parameter_map: one accessor per key --------------------------------------------------------------------


@pytest.mark.parametrize("key, value, accessor, line", [
    ("enable_small_channel", True, "i", 2382),
    ("iterations_per_loop", "2", "i", 2228),
    ("hcom_parallel", 1, "b", 2041),
    ("enable_data_pre_proc", "true", "b", 2218),
    ("mix_compile_mode", 0, "b", 2225),
    ("precision_mode", 1, "s", 2189),
    ("graph_memory_max_size", 1024, "s", 2044),
    ("variable_memory_max_size", ("f", 1.0), "s", 2047),
    ("dump_step", 5, "s", 2085),
    ("op_debug_level", ("f", 2.0), "i", 2145),
    ("export_compile_stat", True, "i", 2590),
])
def test_a_key_set_through_another_field_than_the_adapter_reads_is_refused(fake_npu, key, value, accessor, line):
    import npu_bridge  # noqa: F401

    with pytest.raises(ValueError) as raised:
        tf1.Session(graph=tf.Graph(), config=npu_config(**{key: value}))
    message = str(raised.value)
    assert "parameter_map['{}']".format(key) in message
    assert ".{}()".format(accessor) in message and "npu_attrs.cc:{}".format(line) in message
    assert not _calls("session")


def test_jit_compile_of_another_type_is_the_adapters_own_invalid_argument(fake_npu):
    import npu_bridge  # noqa: F401

    with pytest.raises(tf.errors.InvalidArgumentError, match="The data type of jit_compile is invalid"):
        tf1.Session(graph=tf.Graph(), config=npu_config(jit_compile=True))


def test_unknown_keys_are_ignored_and_recorded(fake_npu):
    import npu_bridge  # noqa: F401

    with tf1.Session(graph=tf.Graph(), config=npu_config(precision_mod="force_fp32", iterations_per_loop=1)):
        pass
    assert [(call["key"], call["type"]) for call in _calls("ignored_parameter")] == [("precision_mod", "s")]


# --- parameter_map: values --------------------------------------------------------------------------------


@pytest.mark.parametrize("parameters, error, message", [
    ({"precision_mode": "fp16"}, tf.errors.InvalidArgumentError,
     "option precision_mode value 'fp16' is invalid, it should be one of the list:['force_fp32',"),
    ({"precision_mode_v2": "allow_mix_precision"}, tf.errors.InvalidArgumentError,
     "option precision_mode_v2 value 'allow_mix_precision' is invalid"),
    ({"precision_mode": "allow_mix_precision", "precision_mode_v2": "mixed_float16"}, tf.errors.InternalError,
     "'precision_mode' and 'precision_mode_v2' can not be assigned at the same time."),
    ({"precision_mode": "force_fp16", "modify_mixlist": "ops.json"}, tf.errors.InternalError,
     "modify_mixlist is assigned, please ensure that precision_mode is assigned to 'allow_mix_precision'"),
    ({"enable_dump": True}, tf.errors.InternalError, "if use dump function, dump_path must be set."),
    ({"aoe_mode": "3"}, tf.errors.InternalError, "aoe mode:3 is invalid"),
    ({"enable_exception_dump": 3}, tf.errors.InternalError, "enable_exception_dump should be one of 0, 1 and 2."),
    ({"graph_max_parallel_model_num": 0}, tf.errors.InternalError, "should not be less than 1"),
    ({"variable_use_1g_huge_page": 3}, tf.errors.InvalidArgumentError, "variable_use_1g_huge_page value '3'"),
    ({"graph_slice": "auto_slice"}, tf.errors.InternalError, "graph_slice must be in ['auto', 'manual']"),
    ({"dump_data": "all"}, tf.errors.InternalError, "dump_data should be 'tensor' or 'stats'."),
])
def test_values_the_adapter_refuses_with_a_status_are_refused(fake_npu, parameters, error, message):
    import npu_bridge  # noqa: F401

    with pytest.raises(error) as raised:
        tf1.Session(graph=tf.Graph(), config=npu_config(**parameters))
    assert message in raised.value.message and "npu_attrs.cc:" in raised.value.message


@pytest.mark.parametrize("dump_step, problem", [
    ("0|5|10-20", None), ("10-5", "the first step is >= second step"), ("1-2-3", "dump_step string style is error"),
    ("a", "dump_step string style is error"), ("|".join(map(str, range(101))), "at most"),
])
def test_dump_step_format(fake_npu, tmp_path, dump_step, problem):
    import npu_bridge  # noqa: F401

    config = npu_config(enable_dump=True, dump_path=str(tmp_path), dump_step=dump_step)
    if problem is None:
        tf1.Session(graph=tf.Graph(), config=config).close()
        return
    with pytest.raises(tf.errors.InternalError) as raised:
        tf1.Session(graph=tf.Graph(), config=config)
    assert (problem if problem != "at most" else "dump_step only support dump <= 100 sets of data") in \
        raised.value.message


def test_graph_run_mode_0_forces_the_small_channel_on(fake_npu):
    import npu_bridge  # noqa: F401

    with tf1.Session(graph=tf.Graph(), config=npu_config(graph_run_mode=0, enable_small_channel=0)):
        pass
    assert _calls("session")[0]["effective"] == {"enable_small_channel": 1}


@pytest.mark.parametrize("parameters, message", [
    ({"op_select_implmode": "fast"}, "op select impl mode should be one of the list:[high_precision,"),
    ({"graph_run_mode": 2}, "graph_run_mode value must be 0 or 1"),
    ({"buffer_optimize": "l1_optimize"}, "buffer_optimize is valid, should be one of [l2_optimize, off_optimize]"),
    ({"optypelist_for_implmode": "Pooling"}, "when use optypelist_for_implmode, op_select_implmode must be set."),
])
def test_values_the_adapter_refuses_with_log_fatal_abort_the_process(tmp_path, parameters, message):
    stderr, fatal = _aborts("""
        import npu_bridge
        tf1.Session(graph=tf.Graph(), config=npu_config(**{!r}))
        """.format(parameters), tmp_path)
    assert message in stderr and "npu_attrs.cc:" in stderr
    assert len(fatal) == 1 and fatal[0]["message"].startswith(message)


# --- the one-shot-iterator rule and the device loop ---------------------------------------------------------


def test_a_one_shot_iterator_with_a_loop_over_1_aborts_the_process(tmp_path):
    stderr, fatal = _aborts("""
        import npu_bridge
        graph = tf.Graph()
        with graph.as_default():
            batch = tf1.data.make_one_shot_iterator(tf1.data.Dataset.range(10)).get_next()
        with tf1.Session(graph=graph, config=npu_config(iterations_per_loop=2)) as session:
            session.run(batch)
        """, tmp_path)
    assert "iterator_per_loop only support 1 when using OneShotIterator" in stderr
    assert "om_partition_subgraphs_pass.cc:2440-2443" in stderr
    assert [entry["message"] for entry in fatal] == ["iterator_per_loop only support 1 when using OneShotIterator"]


def test_a_one_shot_iterator_with_a_loop_of_1_runs(fake_npu):
    import npu_bridge  # noqa: F401

    graph = tf.Graph()
    with graph.as_default():
        batch = tf1.data.make_one_shot_iterator(tf1.data.Dataset.range(10)).get_next()
    with tf1.Session(graph=graph, config=npu_config(iterations_per_loop=1)) as session:
        assert session.run(batch) == 0


def _counting_graph():
    graph = tf.Graph()
    with graph.as_default():
        step = tf1.train.get_or_create_global_step()
        train_op = tf1.assign_add(step, 1).op
    return graph, step, train_op


def test_iterations_per_loop_runs_that_many_steps_in_one_session_run(fake_npu):
    from npu_bridge.estimator.npu import util

    graph, step, train_op = _counting_graph()
    with tf1.Session(graph=graph, config=npu_config(iterations_per_loop=4)) as session:
        session.run(tf1.global_variables_initializer())
        loop = util.set_iteration_per_loop(session, train_op, 4)
        assert loop.name == "IterationOp"
        with graph.as_default():
            runconfig = {v.op.name: v for v in tf1.local_variables() if v.op.name.startswith("npu_runconfig/")}
            with tf.control_dependencies([loop]):
                after = tf.identity(step.read_value())
        assert sorted(runconfig) == ["npu_runconfig/iterations_per_loop", "npu_runconfig/loop_cond",
                                     "npu_runconfig/one", "npu_runconfig/zero"]
        assert session.run(runconfig["npu_runconfig/iterations_per_loop"]) == 3  # loaded with N - 1
        session.run(loop)
        assert session.run(step) == 4
        assert session.run(after) == 8  # the IterationOp reached through a control dependency loops as well
    (compiled,) = [call for call in _calls("compile_graph") if call["targets"] == ["IterationOp"]]
    assert compiled["iterations_per_run"] == 4


def test_the_loop_needs_iterations_per_loop_in_the_session_config(fake_npu):
    from npu_bridge.estimator.npu import util

    graph, step, train_op = _counting_graph()
    with tf1.Session(graph=graph, config=npu_config(iterations_per_loop=1)) as session:
        session.run(tf1.global_variables_initializer())
        session.run(util.set_iteration_per_loop(session, train_op, 4))
        assert session.run(step) == 1  # GeOp hands GE no loop when the session's iterations_per_loop is 1


def test_set_iteration_per_loop_checks_its_arguments_like_the_adapter(fake_npu):
    from npu_bridge.estimator.npu import util

    graph, step, train_op = _counting_graph()
    with tf1.Session(graph=graph) as session:
        assert util.set_iteration_per_loop(session, train_op, 1) is train_op
        assert not [v for v in graph.get_collection(tf1.GraphKeys.LOCAL_VARIABLES)]  # nothing created for 1
        with pytest.raises(ValueError, match="The incoming 'train_op' type is 'int64'"):
            util.set_iteration_per_loop(session, step.read_value(), 2)
        with pytest.raises(TypeError, match="iterations_per_loop must be int"):
            util.set_iteration_per_loop(session, train_op, 2.0)
        with pytest.raises(ValueError, match="iterations_per_loop must be positive, got 0"):
            util.set_iteration_per_loop(session, train_op, 0)


def test_each_distinct_run_is_one_device_graph_compiled_once(fake_npu):
    import npu_bridge  # noqa: F401

    graph = tf.Graph()
    with graph.as_default():
        a = tf.constant(1.0, name="a")
        b = tf.constant(2.0, name="b")
        x = tf1.placeholder(tf.float32, [], name="x")
        total = tf.add(a, x, name="total")
    with tf1.Session(graph=graph, config=npu_config()) as session:
        session.run(a)
        session.run(a)
        session.run([a, b])
        session.run({"first": b, "second": [a]})  # the same tensors in another structure: the same graph
        session.run([b, a])
        session.run(total, {x: 1.0})
        session.run(total, {x: 2.0})
    compiled = _calls("compile_graph")
    assert [call["graphs"] for call in compiled] == [1, 2, 3]
    assert [call["fetches"] for call in compiled] == [["a:0"], ["a:0", "b:0"], ["total:0"]]
    assert compiled[2]["feeds"] == ["x:0"]
    assert len({call["session"] for call in compiled}) == 1


# --- the loss-scaling optimizer --------------------------------------------------------------------------------


def test_the_loss_scale_optimizer_has_no_finite_flag_attribute_and_forwards_the_rest(fake_npu):
    from npu_bridge.npu_init import FixedLossScaleManager, NPULossScaleOptimizer

    graph = tf.Graph()
    with graph.as_default():
        step = tf1.train.get_or_create_global_step()
        weight = tf1.get_variable("w", initializer=[1e30, 2e30])
        inner = tf1.train.GradientDescentOptimizer(0.1)
        optimizer = NPULossScaleOptimizer(inner, FixedLossScaleManager(2.0 ** 32))
        train_op = optimizer.minimize(tf.reduce_sum(weight * weight), global_step=step)
        init = tf1.global_variables_initializer()
    assert not hasattr(optimizer, "_is_overall_finite")
    with pytest.raises(AttributeError, match="GradientDescentOptimizer"):
        optimizer._is_overall_finite  # noqa: B018
    assert optimizer._learning_rate == 0.1  # not the wrapper's: the wrapped optimizer's, through __getattr__
    assert optimizer._name == "NPULossScaleOptimizermodule"
    assert [op.name for op in graph.get_operations() if op.name.endswith("overflow_status_reduce_all")]
    with tf1.Session(graph=graph) as session:
        session.run(init)
        session.run(train_op)
        assert session.run(step) == 0  # overflow: no update, no global-step increment
        assert session.run(weight).tolist() == pytest.approx([1e30, 2e30])


def test_the_dynamic_loss_scale_follows_the_adapters_update_rule(fake_npu):
    from npu_bridge.npu_init import ExponentialUpdateLossScaleManager

    graph = tf.Graph()
    with graph.as_default():
        finite = tf1.placeholder(tf.bool, [])
        manager = ExponentialUpdateLossScaleManager(init_loss_scale=8.0, incr_every_n_steps=2,
                                                    decr_every_n_nan_or_inf=2, incr_ratio=2.0, decr_ratio=0.5)
        update = manager.update_loss_scale(finite)
        state = [manager.get_loss_scale(), manager._num_good_steps, manager._num_bad_steps]
        init = tf1.global_variables_initializer()
    with tf1.Session(graph=graph) as session:
        session.run(init)
        seen = []
        for value in (False, True, True, False, False):
            session.run(update, {finite: value})
            seen.append([float(number) for number in session.run(state)])
    # A finite step keeps the bad-step count; growth and shrinking reset both counts.
    assert seen == [[8.0, 0, 1], [8.0, 1, 1], [16.0, 0, 0], [16.0, 0, 1], [8.0, 0, 0]]


# --- environment: devices and HCCL ---------------------------------------------------------------------------


def test_ascend_device_id_is_a_logical_index_into_the_visible_devices(fake_npu, monkeypatch):
    import npu_bridge  # noqa: F401

    monkeypatch.setenv("FAKE_NPU_VISIBLE_DEVICES", "4,5")
    monkeypatch.setenv("ASCEND_DEVICE_ID", "1")
    tf1.Session(graph=tf.Graph(), config=npu_config()).close()
    (start,) = _calls("ge_initialize")
    assert start["logical_device"] == 1 and start["physical_device"] == 5


@pytest.mark.parametrize("environment, message", [
    ({"FAKE_NPU_VISIBLE_DEVICES": "4,5", "ASCEND_DEVICE_ID": "4"}, "this process sees 2 device(s), physical 4,5"),
    ({"ASCEND_DEVICE_ID": "8"}, "ASCEND_DEVICE_ID is the logical id 8"),
    ({"ASCEND_DEVICE_ID": "-1"}, "ASCEND_DEVICE_ID should be >= 0."),
    ({"ASCEND_DEVICE_ID": "one"}, "ASCEND_DEVICE_ID is invalid, should be int, such as 0, 1, 2."),
])
def test_a_device_the_runtime_cannot_open_aborts_the_process(tmp_path, environment, message):
    stderr, fatal = _aborts("""
        import npu_bridge
        tf1.Session(graph=tf.Graph(), config=npu_config())
        """, tmp_path, **environment)
    assert message in stderr and "ge_plugin.cc:" in stderr
    assert len(fatal) == 1


def test_hccl_starts_with_the_rank_table_and_answers_until_shutdown(fake_npu, monkeypatch, tmp_path):
    from npu_bridge import npu_init

    monkeypatch.setenv("RANK_TABLE_FILE", _rank_table(tmp_path, devices=(3,)))
    monkeypatch.setenv("RANK_SIZE", "1")
    monkeypatch.setenv("RANK_ID", "0")
    monkeypatch.setenv("HCCL_CONNECT_TIMEOUT", "120")
    monkeypatch.setenv("HCCL_EXEC_TIMEOUT", "600")
    with pytest.raises(ValueError, match=r"get rank id error. ret\["):
        npu_init.get_rank_id()
    graph = tf.Graph()
    with graph.as_default():
        start, stop = npu_init.npu_ops.initialize_system(), npu_init.npu_ops.shutdown_system()
    with tf1.Session(graph=graph) as session:
        session.run(start)
        assert (npu_init.get_rank_id(), npu_init.get_rank_size(), npu_init.get_local_rank_id()) == (0, 1, 0)
        (ge,) = _calls("ge_initialize")
        assert ge["use_hcom"] and ge["hccl"]["exec_timeout"] == 544  # applied in multiples of 68 s
        session.run(stop)
    with pytest.raises(ValueError, match=r"get rank size error. ret\["):
        npu_init.get_rank_size()


def test_the_gradient_split_strategy_follows_hcclsplit_api_and_needs_hccl_started(fake_npu, monkeypatch, tmp_path):
    from npu_bridge import npu_init

    # Checked before libhcomm is called (hccl/split/api.py), whether HCCL started or not.
    for call, message in [((npu_init.set_split_strategy_by_idx, [5, 3]), "idx in idxList is not ascending"),
                          ((npu_init.set_split_strategy_by_idx, [1, 1]), "idx in idxList is not ascending"),
                          ((npu_init.set_split_strategy_by_idx, []), "idxList length is 0"),
                          ((npu_init.set_split_strategy_by_idx, (1, 2)), "idxList must be a python list"),
                          ((npu_init.set_split_strategy_by_idx, [1.0]), r"idx val\[1.0\] in idxList is not python int"),
                          ((npu_init.set_split_strategy_by_idx, [-1]), "out-of-range value"),
                          ((npu_init.set_split_strategy_by_size, [60, 30]), "size percentage list sum is not 100%"),
                          ((npu_init.set_split_strategy_by_size, [120, -20]), "cannot be a negative number"),
                          ((npu_init.set_split_strategy_by_size, ["50", 50]), "is not python int or float")]:
        function, values = call
        with pytest.raises(ValueError, match=message):
            function(values)
    with pytest.raises(ValueError, match="group name is empty"):
        npu_init.set_split_strategy_by_idx([1], group="")
    # Well-formed, but before HCCL started: libhcomm's call fails.
    with pytest.raises(ValueError, match=r"split error. ret\["):
        npu_init.set_split_strategy_by_idx([1, 90, 99])
    monkeypatch.setenv("RANK_TABLE_FILE", _rank_table(tmp_path, devices=(3,)))
    monkeypatch.setenv("RANK_SIZE", "1")
    monkeypatch.setenv("RANK_ID", "0")
    graph = tf.Graph()
    with graph.as_default():
        start, stop = npu_init.npu_ops.initialize_system(), npu_init.npu_ops.shutdown_system()
    with tf1.Session(graph=graph) as session:
        session.run(start)
        npu_init.set_split_strategy_by_idx([1, 90, 99])
        npu_init.set_split_strategy_by_size([80, 20.0])
        session.run(stop)
    assert [(c["by"], c["values"]) for c in _calls("set_split_strategy")] == [("idx", [1, 90, 99]),
                                                                             ("size", [80, 20.0])]


@pytest.mark.parametrize("environment, message", [
    ({"HCCL_CONNECT_TIMEOUT": "60"}, "HCCL_CONNECT_TIMEOUT[60] is invalid: it must be an integer in [120, 7200]"),
    ({"HCCL_CONNECT_TIMEOUT": "7201"}, "HCCL_CONNECT_TIMEOUT[7201] is invalid"),
    ({"HCCL_EXEC_TIMEOUT": "0"}, "HCCL_EXEC_TIMEOUT[0] is invalid"),
    ({"RANK_ID": "1"}, "RANK_ID 1 / RANK_SIZE 1 do not match"),
])
def test_hccl_settings_out_of_range_abort_the_start_of_ge(tmp_path, environment, message):
    settings = dict(RANK_TABLE_FILE=_rank_table(tmp_path), RANK_SIZE="1", RANK_ID="0")
    settings.update(environment)
    stderr, fatal = _aborts("""
        import npu_bridge
        tf1.Session(graph=tf.Graph(), config=npu_config())
        """, tmp_path, **settings)
    assert "[GePlugin] Initialize ge failed" in stderr and message in stderr
    assert len(fatal) == 1


def test_collectives_need_hccl_started(fake_npu):
    from npu_bridge.hccl import hccl_ops

    graph = tf.Graph()
    with graph.as_default():
        total = hccl_ops.allreduce(tf.constant([1.0]), "sum")
        with pytest.raises(ValueError, match="Attr 'reduction' of 'HcomAllReduce'"):
            hccl_ops.allreduce(tf.constant([1.0]), "mean")
        with pytest.raises(TypeError, match="DataType float64 not in list of allowed values"):
            hccl_ops.allreduce(tf.constant([1.0], tf.float64), "sum")
        with pytest.raises(ValueError, match="broadcast fusion must be 0"):
            hccl_ops.broadcast([tf.constant(1.0)], 0, fusion=1)
    with tf1.Session(graph=graph) as session:
        with pytest.raises(tf.errors.UnknownError, match="HCCL is not started"):
            session.run(total)


def test_the_fakes_gradient_allreduces_run_in_one_order_whatever_the_graph_optimisers_do(fake_npu, monkeypatch):
    """Not an adapter rule: the fake's blocking collectives must run in the same order on every rank, or two
    ranks wait on each other forever (TensorFlow's constant folding once dropped a control-dependency chain here
    and a two-rank run hung in CI). The order is the gradients' order, though the last layer's is ready first."""
    from npu_bridge.estimator.npu.npu_loss_scale_manager import FixedLossScaleManager
    from npu_bridge.estimator.npu.npu_loss_scale_optimizer import NPULossScaleOptimizer
    from npu_bridge.estimator.npu.npu_optimizer import NPUDistributedOptimizer
    from npu_bridge.hccl import hccl_ops

    monkeypatch.setenv("RANK_SIZE", "2")
    monkeypatch.setenv("JOB_ID", "10086")
    order = []
    monkeypatch.setattr(hccl_ops, "_exchange", lambda key, value: order.append(key) or [value, value])
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(1)
        features = tf.ones([4, 8])
        for index in range(6):
            features = tf.nn.relu(tf1.layers.dense(features, 8, name="dense{}".format(index)))
        loss = tf.reduce_mean(tf.square(features))
        optimizer = NPULossScaleOptimizer(NPUDistributedOptimizer(tf1.train.GradientDescentOptimizer(0.1)),
                                          FixedLossScaleManager(1024), is_distributed=True)
        grads_and_vars = optimizer.compute_gradients(loss)
        train = optimizer.apply_gradients(grads_and_vars)
        created = [op.name for op in graph.get_operations() if op.type == "PyFunc"]
        chain = [op for op in graph.get_operations() if op.type == "PyFunc" and "_Allreduce/" in op.name]
        initialise = tf1.global_variables_initializer()
    with tf1.Session(graph=graph, config=tf1.ConfigProto(inter_op_parallelism_threads=1)) as session:
        session.run(initialise)
        for _ in range(3):
            session.run(train)
    gradients = [name.split("/")[-1] for name in created if "_Allreduce/" in name]
    assert len(created) == 13 and len(gradients) == 12  # and the overflow flags
    assert [key.split("/")[-1] for key in order[:12]] == gradients
    assert "_Allreduce/" not in order[12] and order == order[:13] * 3
    # The order is a data edge (each takes the previous result as an input), which no graph optimiser removes.
    assert all(before.outputs[0] in list(after.inputs) for before, after in zip(chain, chain[1:]))
