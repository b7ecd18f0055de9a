import io
import json

from unet3d_core.logger import RunLogger


def test_log_file_uses_dllogger_json_lines(tmp_path):
    path = tmp_path / "log.json"
    stdout = io.StringIO()
    logger = RunLogger(str(path), stream=stdout)
    logger.parameters({"batch_size": 2})
    logger.metrics(10, {"loss": 0.5})
    logger.close()
    lines = path.read_text().splitlines()
    assert all(line.startswith("DLLL ") for line in lines)
    records = [json.loads(line[5:]) for line in lines]
    assert records[0]["type"] == "PARAMETER" and records[0]["data"] == {"batch_size": 2}
    assert records[1]["step"] == 10 and records[1]["data"] == {"loss": 0.5}
    assert {"timestamp", "datetime", "elapsedtime"} <= set(records[1])
    assert "step 10: loss 0.5000" in stdout.getvalue()


def test_non_chief_logger_writes_nothing(tmp_path):
    stdout = io.StringIO()
    logger = RunLogger(str(tmp_path / "log.json"), enabled=False, stream=stdout)
    logger.metrics(1, {"loss": 1.0})
    assert not (tmp_path / "log.json").exists() and stdout.getvalue() == ""
