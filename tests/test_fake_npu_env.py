"""The fake CANN adapter (tests/fake_npu) is importable only while a test asks for it, and leaves nothing behind."""
import importlib.util
import sys

from fake_npu_env import FAKE, TOP_LEVEL, fake_npu_importable, loaded_from_fake, under_fake


def _real_adapter():
    """The spec of an npu_bridge importable here without the fake (CANN installed), or None."""
    spec = importlib.util.find_spec("npu_bridge")
    assert spec is None or not under_fake(spec.origin), "the fake npu_bridge is importable outside a fake_npu test"
    return spec


def _assert_no_trace_of_the_fake(path_before=None):
    assert loaded_from_fake() == []
    assert FAKE not in sys.path and FAKE not in sys.path_importer_cache
    if path_before is not None:
        assert sys.path == path_before
    if _real_adapter() is None:
        assert importlib.util.find_spec("npu_bridge") is None and importlib.util.find_spec("hccl") is None
        assert not [name for name in sys.modules if name.split(".")[0] in TOP_LEVEL]


def test_the_fake_imports_inside_the_block_and_nothing_of_it_is_left_after():
    _assert_no_trace_of_the_fake()
    path_before = list(sys.path)
    real = _real_adapter()
    with fake_npu_importable() as folder:
        assert folder == FAKE and sys.path[0] == FAKE
        import npu_bridge.npu_init  # also imports hccl.manage.api and npu_bridge.estimator.*

        assert under_fake(npu_bridge.__file__) and under_fake(importlib.util.find_spec("npu_bridge").origin)
        loaded = set(loaded_from_fake())
        assert {"npu_bridge", "npu_bridge.npu_init", "npu_bridge.estimator.npu_ops", "npu_bridge.hccl.hccl_ops",
                "hccl", "hccl.manage.api"} <= loaded
    _assert_no_trace_of_the_fake(path_before)
    if real is not None:  # a real adapter is importable again, not the fake
        assert importlib.util.find_spec("npu_bridge").origin == real.origin


def test_each_use_imports_the_fake_afresh():
    with fake_npu_importable():
        import npu_bridge

        npu_bridge.record("first_use")
        first = npu_bridge
    with fake_npu_importable():
        import npu_bridge

        assert npu_bridge is not first and npu_bridge.calls == []
    _assert_no_trace_of_the_fake()


def test_an_exception_in_the_block_still_removes_the_fake():
    path_before = list(sys.path)
    try:
        with fake_npu_importable():
            import hccl.manage.api  # noqa: F401

            raise RuntimeError("test failed inside")
    except RuntimeError:
        pass
    _assert_no_trace_of_the_fake(path_before)


def test_the_fixture_makes_the_fake_importable(fake_npu):
    import npu_bridge

    from backends.npu import plugin

    assert fake_npu == FAKE and under_fake(npu_bridge.__file__)
    assert plugin._adapter_present()


def test_after_the_fixture_test_nothing_of_the_fake_is_left():
    """Runs after the test above (pytest keeps file order): that test's fixture took the fake away again."""
    _assert_no_trace_of_the_fake()
    from backends.npu import plugin

    if _real_adapter() is None:
        assert not plugin._adapter_present()
