"""The sync_mode workaround touches the installation only when its cce_build.py needs it, leaves no lock
behind, and says precisely what it found."""
import os
import sys

import pytest
from conftest import ROOT

from backends.npu import sync_mode
from unet3d_core.errors import BackendError

EARLY_CANN = "def build(sync_mode=2):\n    return sync_mode\n"


@pytest.fixture
def cce_build(tmp_path):
    """Writes te/platform/cce_build.py of a toolkit with the given text; returns its path."""
    path = tmp_path / "site" / "te" / "platform" / "cce_build.py"
    path.parent.mkdir(parents=True)

    def write(text=EARLY_CANN):
        path.write_text(text)
        return str(path)

    return write


def _files(path):
    return sorted(os.listdir(os.path.dirname(path)))


def test_a_cann_without_sync_mode_2_is_only_read_even_when_the_toolkit_is_read_only(cce_build, monkeypatch):
    path = cce_build("def build(sync_mode=1):\n    return sync_mode\n")
    folder = os.path.dirname(path)
    os.chmod(folder, 0o555)  # a root-owned toolkit, as a user sees it (root writes anyway: see os.access)
    monkeypatch.setattr(sync_mode.os, "access", lambda *args: False)
    try:
        assert sync_mode.patch(path) == "not affected (this CANN has no sync_mode=2 in cce_build.py)"
        assert _files(path) == ["cce_build.py"]  # no lock file, no backup
    finally:
        os.chmod(folder, 0o755)


def test_a_file_patched_by_hand_is_reported_as_already_patched(cce_build):
    path = cce_build("def build(sync_mode=0):\n    return sync_mode\n")
    assert sync_mode.patch(path) == "already patched (sync_mode=0 present)"
    assert _files(path) == ["cce_build.py"]


def test_patching_says_where_the_backup_is_and_leaves_no_lock(cce_build):
    path = cce_build()
    assert sync_mode.patch(path) == "needs the patch: patched (backup at {}.unet3d-orig)".format(path)
    assert _files(path) == ["cce_build.py", "cce_build.py.unet3d-orig"]
    assert "sync_mode=0" in open(path).read() and "sync_mode=2" not in open(path).read()
    assert sync_mode.patch(path) == "already patched (sync_mode=0 present)"
    assert sync_mode.unpatch(path) == "restored"
    assert _files(path) == ["cce_build.py"] and open(path).read() == EARLY_CANN


def test_a_missing_file_is_reported_not_raised(tmp_path):
    assert sync_mode.patch(str(tmp_path / "cce_build.py")) == "no cce_build.py found"
    assert sync_mode.unpatch(str(tmp_path / "cce_build.py")) == "no backup"


def test_a_read_only_installation_that_needs_the_patch_gives_the_command_for_root(cce_build, monkeypatch):
    path = cce_build()
    monkeypatch.setattr(sync_mode.os, "access", lambda *args: False)
    with pytest.raises(BackendError) as raised:
        sync_mode.patch(path)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("sync_mode patch: {} is not writable; this CANN needs the patch".format(path))
    assert "run once as root: sudo {} {} npu patch --path {}".format(
        sys.executable, os.path.join(ROOT, "cli.py"), path) in message
    assert _files(path) == ["cce_build.py"] and open(path).read() == EARLY_CANN


def test_a_lock_file_removed_by_the_previous_holder_is_not_trusted(cce_build, monkeypatch):
    """A rank that waited on a lock file its holder then removed locks the fresh one instead."""
    path = cce_build()
    lock_path = path + sync_mode.LOCK_SUFFIX
    real_flock, stale = sync_mode.fcntl.flock, []

    def flock(handle, operation):
        if not stale:  # the first lock acquired: pretend its holder removed the file meanwhile
            stale.append(handle)
            os.remove(lock_path)
        real_flock(handle, operation)

    monkeypatch.setattr(sync_mode.fcntl, "flock", flock)
    assert sync_mode.patch(path).startswith("needs the patch: patched")
    assert stale[0].closed and not os.path.exists(lock_path)
