"""No lock waits forever (issue 12): a lock file that cannot exist is an error at once,
and a lock held by a live process is waited on with a line about who holds it."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.attention.extract import extract_attention
from harness.core.errors import HarnessError
from harness.core.fs import holder, waiting_lock

REPO = Path(__file__).resolve().parents[1]


def test_lock_in_a_folder_that_refuses_files_is_an_error(tmp_path):
    """/proc/1 exists and even root cannot create files in it (chmod cannot stand in for
    this: the tests run as root, who ignores permission bits)."""
    started = time.monotonic()
    with pytest.raises(HarnessError) as info:
        with waiting_lock(Path("/proc/1/x.lock"), "the test entry", "cache_dir"):
            pytest.fail("acquired a lock that cannot exist")
    assert time.monotonic() - started < 5
    assert str(info.value) == (
        "cannot create the lock file /proc/1/x.lock for the test entry (its folder refuses new "
        "files); choose a writable folder for cache_dir"
    )


def test_lock_path_that_is_a_folder_is_an_error(tmp_path):
    (tmp_path / "x.lock").mkdir()
    with pytest.raises(HarnessError, match=r"x\.lock for the test entry \(is a directory\)"):
        with waiting_lock(tmp_path / "x.lock", "the test entry", "cache_dir"):
            pytest.fail("acquired a folder as a lock")


def test_holder_is_recorded_while_held_and_removed_after(tmp_path):
    lock = tmp_path / "x.lock"
    assert holder(lock) == "an unknown process"
    with waiting_lock(lock, "the test entry", "cache_dir"):
        text = holder(lock)
        assert text.startswith(f"pid {os.getpid()} on host {socket.gethostname()} (since ")
    assert not (tmp_path / "x.lock.holder").exists()
    assert holder(lock) == "an unknown process"


def test_lock_held_by_a_live_process_is_waited_on_with_messages(tmp_path, caplog):
    lock = tmp_path / "x.lock"
    holder_script = textwrap.dedent(
        f"""\
        import sys, time
        from pathlib import Path
        from harness.core.fs import waiting_lock
        with waiting_lock(Path({str(lock)!r}), "the test entry", "cache_dir"):
            print("held", flush=True)
            time.sleep(2.5)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder_script],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        caplog.set_level(logging.WARNING, logger="harness")
        started = time.monotonic()
        with waiting_lock(lock, "the test entry", "cache_dir", wait_log_s=0.5):
            waited = time.monotonic() - started
            assert proc.poll() is not None or proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()
    assert 1.0 < waited < 10
    lines = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]
    assert len(lines) >= 2, lines
    assert f"for the test entry: pid {proc.pid} on host {socket.gethostname()}" in lines[0]
    assert str(lock) in lines[0]


def test_extract_attention_cache_dir_that_refuses_files(tiny_bert, one_thread):
    started = time.monotonic()
    with pytest.raises(HarnessError) as info:
        extract_attention(str(tiny_bert), ["a sentence"], max_len=8, cache_dir="/proc/1")
    assert time.monotonic() - started < 10
    assert str(info.value).startswith(
        "attention cache folder /proc/1 is not writable (its file system refuses new files); "
        "choose another folder for cache_dir"
    )


def test_extract_attention_cache_dir_under_a_file(tmp_path, tiny_bert, one_thread):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    with pytest.raises(HarnessError) as info:
        extract_attention(str(tiny_bert), ["a sentence"], max_len=8, cache_dir=blocker / "cache")
    assert f"is under a file ({blocker} is a regular file)" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
