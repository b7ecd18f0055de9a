"""The launcher's worker environments: ASCEND_DEVICE_ID is the logical index among the devices a worker
sees (the rank table's device_id is physical), and extra variables reach every worker."""
import pytest

from backends.npu import launcher
from backends.npu.rank_table import build_rank_table, validate_rank_table
from unet3d_core.errors import ConfigError


def _table(device_ids, server_id="node_0"):
    addresses = {device: "192.168.10{}.1".format(device) for device in range(8)}
    return validate_rank_table(build_rank_table(server_id, device_ids, addresses))


def _workers(device_ids, base, device_folder="/nonexistent-device-folder", **keywords):
    return launcher.worker_environments(table=_table(device_ids), server_id="node_0", table_path="/run/t.json",
                                        job_id="job", model_dir="/run", base=base, device_folder=device_folder,
                                        **keywords)


def _device_folder(tmp_path, numbers):
    folder = tmp_path / "dev"
    folder.mkdir()
    for name in ["davinci{}".format(number) for number in numbers] + ["davinci_manager", "devmm_svm", "hisi_hdc"]:
        (folder / name).write_text("")
    return str(folder)


def _ids(workers):
    return [(w.rank, w.device_id, w.environment["ASCEND_DEVICE_ID"], w.log_path) for w in workers]


def test_a_container_holding_davinci4_to_7_gets_logical_ids_0_to_3():
    workers = launcher.worker_environments(table=_table([4, 5, 6, 7]), server_id="node_0", table_path="/run/t.json",
                                           job_id="job", model_dir="/run", base={"ASCEND_VISIBLE_DEVICES": "4-7"})
    assert _ids(workers) == [(0, 4, "0", "/run/Device-4/train.log"), (1, 5, "1", "/run/Device-5/train.log"),
                             (2, 6, "2", "/run/Device-6/train.log"), (3, 7, "3", "/run/Device-7/train.log")]
    assert [worker.logical_device_id for worker in workers] == [0, 1, 2, 3]
    assert [worker.environment["RANK_ID"] for worker in workers] == ["0", "1", "2", "3"]


def test_without_the_variable_the_dev_davinci_files_say_what_is_visible(tmp_path):
    folder = _device_folder(tmp_path, [4, 5, 6, 7])
    assert [w.environment["ASCEND_DEVICE_ID"] for w in _workers([6, 7], {}, folder)] == ["2", "3"]
    assert launcher.visible_devices({}, folder).physical == [4, 5, 6, 7]


def test_device_names_of_the_docker_runtime_and_lists_are_understood():
    assert launcher.visible_devices({"ASCEND_VISIBLE_DEVICES": "Ascend910-5,Ascend910-4"}).physical == [4, 5]
    assert launcher.visible_devices({"ASCEND_VISIBLE_DEVICES": "0-1,6"}).physical == [0, 1, 6]
    assert launcher.visible_devices({"ASCEND_VISIBLE_DEVICES": "void"}).physical == []


def test_ascend_rt_visible_devices_narrows_by_logical_id(tmp_path):
    host = _device_folder(tmp_path, range(8))
    workers = _workers([6, 7], {"ASCEND_RT_VISIBLE_DEVICES": "4,5,6,7"}, host)
    assert [w.environment["ASCEND_DEVICE_ID"] for w in workers] == ["2", "3"]
    # In a container holding davinci4-7, logical 2,3 are physical 6,7.
    container = {"ASCEND_VISIBLE_DEVICES": "4,5,6,7", "ASCEND_RT_VISIBLE_DEVICES": "2,3"}
    assert [w.environment["ASCEND_DEVICE_ID"] for w in _workers([6, 7], container)] == ["0", "1"]
    assert workers[0].environment["ASCEND_RT_VISIBLE_DEVICES"] == "4,5,6,7"  # the workers see the same


def test_a_rank_table_device_not_visible_is_one_line_before_launch():
    with pytest.raises(ConfigError) as raised:
        _workers([0, 1, 2, 3], {"ASCEND_VISIBLE_DEVICES": "4-7"})
    message = str(raised.value)
    assert message == ("rank 0 on server node_0: device 0 is not visible here: this process sees physical "
                       "device(s) 4,5,6,7 (ASCEND_VISIBLE_DEVICES=4-7); use those in --device_ids / the rank table, "
                       "or give the container that device")


@pytest.mark.parametrize("environment, message", [
    ({"ASCEND_VISIBLE_DEVICES": "4-x"}, "ASCEND_VISIBLE_DEVICES=4-x: '4-x' is not a device id"),
    ({"ASCEND_RT_VISIBLE_DEVICES": "0, 1"}, "ASCEND_RT_VISIBLE_DEVICES=0, 1: expected ascending logical"),
    ({"ASCEND_RT_VISIBLE_DEVICES": "1,0"}, "ascending order only"),
    ({"ASCEND_VISIBLE_DEVICES": "4-7", "ASCEND_RT_VISIBLE_DEVICES": "3,4"},
     r"logical id 4 does not exist; this process sees 4 device\(s\) \(ASCEND_VISIBLE_DEVICES=4-7\)"),
    ({"ASCEND_VISIBLE_DEVICES": "void"}, r"sees physical device\(s\) none"),
])
def test_malformed_visibility_variables_are_refused(environment, message):
    with pytest.raises(ConfigError, match=message):
        _workers([0], environment)


def test_with_nothing_to_go_by_logical_is_physical_and_a_note_says_so(capsys):
    assert [w.environment["ASCEND_DEVICE_ID"] for w in _workers([2, 3], {"PATH": "/bin"})] == ["2", "3"]
    assert "[npu] note: no ASCEND_VISIBLE_DEVICES and no /nonexistent-device-folder/davinciN" in \
        capsys.readouterr().err


def test_extra_environment_reaches_every_worker_but_cannot_replace_the_launchers_variables():
    workers = _workers([0, 1], {"PATH": "/bin"}, extra_environment={"HCCL_EXEC_TIMEOUT": 1836},
                       hccl_connect_timeout=600)
    assert [w.environment["HCCL_EXEC_TIMEOUT"] for w in workers] == ["1836", "1836"]
    assert workers[1].environment["HCCL_CONNECT_TIMEOUT"] == "600" and workers[1].environment["PATH"] == "/bin"
    with pytest.raises(ConfigError, match="extra worker environment: RANK_ID is set by the launcher itself"):
        _workers([0, 1], {}, extra_environment={"RANK_ID": "3"})
    with pytest.raises(ConfigError, match="HCCL_CONNECT_TIMEOUT is set by the launcher"):
        _workers([0, 1], {}, extra_environment={"HCCL_CONNECT_TIMEOUT": "300"}, hccl_connect_timeout=600)
    with pytest.raises(ConfigError, match="CM_CHIEF_IP set in the environment"):
        _workers([0, 1], {}, extra_environment={"CM_CHIEF_IP": "10.0.0.1"})


def test_one_process_gets_the_logical_id_of_its_device():
    visibility = launcher.visible_devices({"ASCEND_VISIBLE_DEVICES": "4-7"})
    assert launcher.logical_device_id(5, visibility) == 1
    with pytest.raises(ConfigError, match="device 3 is not visible here"):
        launcher.logical_device_id(3, visibility)
