"""The adapter's logging: LOG(FATAL) ends the process, ERROR and WARNING lines are only recorded.

``ADP_LOG(FATAL)`` alone only writes a log line (tf_adapter/common/adapter_logger.h:55,78: a log
level); the checks that abort pair it with TensorFlow's ``LOG(FATAL)``, which prints and calls
abort(). :func:`fatal` is that pair: the message on stderr, an entry in the call log, then
``os.abort()`` (SIGABRT, exit status 134 in a shell, -6 from subprocess).
"""
import os
import sys

from npu_bridge import record


def fatal(message, source):
    """LOG(FATAL) << message, at ``source`` (adapter file:line)."""
    record("fatal", message=message, source=source)
    sys.stdout.flush()
    sys.stderr.write("F [fake_npu {}] {}\n".format(source, message))
    sys.stderr.flush()
    os.abort()


def error(message, source):
    """LOG(ERROR) << message: the run goes on."""
    record("log_error", message=message, source=source)


def warning(message, source):
    """LOG(WARNING) << message: the run goes on."""
    record("log_warning", message=message, source=source)
