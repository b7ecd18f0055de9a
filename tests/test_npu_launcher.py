"""The launcher's worker environments: ASCEND_DEVICE_ID is the logical index among the devices a worker
sees (the rank table's device_id is physical), and extra variables reach every worker."""
import os
import sys

import pytest

from backends.npu import host_cpus, launcher
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


def _nodes(tmp_path, cpulists):
    folder = tmp_path / "node"
    for index, cpulist in enumerate(cpulists):
        (folder / "node{}".format(index)).mkdir(parents=True)
        (folder / "node{}".format(index) / "cpulist").write_text(cpulist + "\n")
    (folder / "possible").write_text("0-{}\n".format(len(cpulists) - 1))  # not a node
    return str(folder)


def test_eight_ranks_on_a_four_node_kunpeng_host_get_24_cores_each_within_their_node(tmp_path):
    """An Atlas 800 (Kunpeng 920, 192 cores, 4 NUMA nodes of 48): two ranks per node, 24 cores each, in device
    order, as the reference's taskset lines bind them."""
    nodes = host_cpus.numa_nodes(_nodes(tmp_path, ["0-47", "48-95", "96-143", "144-191"]))
    assert [len(node) for node in nodes] == [48] * 4
    sets = host_cpus.rank_cpu_sets(8, range(192), nodes)
    assert [host_cpus.format_cpu_list(cpus) for cpus in sets] == [
        "0-23", "24-47", "48-71", "72-95", "96-119", "120-143", "144-167", "168-191"]
    # A container's cpuset narrows what there is to share: two nodes' worth, four ranks.
    sets = host_cpus.rank_cpu_sets(4, list(range(0, 16)) + list(range(48, 64)), nodes)
    assert [host_cpus.format_cpu_list(cpus) for cpus in sets] == ["0-7", "8-15", "48-55", "56-63"]
    # Fewer ranks than nodes: each rank takes whole nodes.
    sets = host_cpus.rank_cpu_sets(2, range(192), nodes)
    assert [host_cpus.format_cpu_list(cpus) for cpus in sets] == ["0-95", "96-191"]
    # No NUMA information: the cores the launcher may use, split evenly; fewer cores than ranks: no binding.
    assert [host_cpus.format_cpu_list(cpus) for cpus in host_cpus.rank_cpu_sets(2, range(6), [])] == ["0-2", "3-5"]
    assert host_cpus.rank_cpu_sets(4, range(2), []) is None
    assert host_cpus.parse_cpu_list("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]
    with pytest.raises(ConfigError, match="UNET3D_NPU_CPUS: '3-1' has a range running backwards"):
        host_cpus.parse_cpu_list("3-1", "UNET3D_NPU_CPUS")


def test_bound_workers_carry_their_cores_and_read_them_back_once(tmp_path):
    workers = _workers([0, 1], {"PATH": "/bin", "UNET3D_NPU_CPUS": "0-191"}, cpu_sets=[[0, 1, 2], [3, 4, 5]])
    assert [w.environment["UNET3D_NPU_CPUS"] for w in workers] == ["0-2", "3-5"]
    assert [w.cpus for w in workers] == [(0, 1, 2), (3, 4, 5)]
    assert launcher.launched_rank(workers[1].environment).cpus == (3, 4, 5)
    # Unbound: an inherited value does not pass for a binding.
    unbound = _workers([0, 1], {"UNET3D_NPU_CPUS": "0-191"})
    assert all("UNET3D_NPU_CPUS" not in w.environment and w.cpus == () for w in unbound)
    assert launcher.launched_rank(unbound[0].environment).cpus == ()
    with pytest.raises(ConfigError, match="UNET3D_NPU_CPUS is set by the launcher itself"):
        _workers([0, 1], {}, extra_environment={"UNET3D_NPU_CPUS": "0"})
    # A rank's session pools: its bound cores, else the host's cores shared by the ranks on it.
    assert host_cpus.session_threads((0, 1, 2), 8) == 3
    assert host_cpus.session_threads((), 1) == len(os.sched_getaffinity(0))
    assert host_cpus.session_threads((), 10 ** 6) == 1


def test_a_bound_worker_process_runs_on_its_cores(tmp_path):
    """The launcher binds each worker before it starts (the worker sees only its cores)."""
    mine = sorted(os.sched_getaffinity(0))
    workers = _workers([0], {"PATH": os.environ.get("PATH", "")}, cpu_sets=[mine[:1]])
    workers[0].log_path = str(tmp_path / "Device-0" / "train.log")
    with open(os.devnull, "w") as quiet:
        show = "import os; print(sorted(os.sched_getaffinity(0)))"
        code = launcher.run_workers(workers, [sys.executable, "-c", show], stream=quiet)
    assert code == 0
    assert (tmp_path / "Device-0" / "train.log").read_text().strip() == str(mine[:1])
