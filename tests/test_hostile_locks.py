"""The write lock against hostile names and files (issue 29, items 2, 3 and 10), with real links
and a real second process holding the lock through the real code (surfacefile/lock.py):

- every name of a file leads to its one lock: a symbolic link to the file, or to a folder above
  it, is refused while another process writes the file; a file with hard links is refused;
- the lock file is never opened through a link: a lock that is a symbolic link, a folder or a
  FIFO is refused in one line, and neither a planted link nor a hard link to another file gets
  that file written;
- a lock is held only while its record lock is: an empty, garbage or oddly shaped lock that
  nobody holds is taken over with a warning; one whose record lock a live process holds is
  refused in one line.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from losslandscape.errors import UserError
from losslandscape.frontends import cli
from losslandscape.surfacefile import lock as writelock

from helpers import write_surface

VICTIM = '{"precious": true}\n'


def hold(target: Path, garbage: bytes | None = None) -> subprocess.Popen:
    """A second process that holds `target`'s lock: through the real code, or (garbage) by a
    record lock on a lock file holding those bytes."""
    if garbage is None:
        code = (f"from losslandscape.surfacefile import lock\nlock.acquire({str(target)!r}, 'holding it for a test')\n")
    else:
        code = (f"import fcntl, os\nfd = os.open({str(writelock.lock_path(target))!r}, os.O_CREAT | os.O_RDWR)\n"
                f"fcntl.lockf(fd, fcntl.LOCK_EX)\nos.write(fd, {garbage!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", code + "print('held', flush=True)\nimport time\ntime.sleep(60)"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def refused(target: Path) -> str:
    """The one line acquiring `target`'s lock is refused with; nothing of ours is left held."""
    held_before = set(writelock._held)  # an earlier test's job in this process may still hold its own
    with pytest.raises(UserError) as err:
        writelock.acquire(target, "test")
    line = str(err.value)
    assert "\n" not in line, line
    assert set(writelock._held) == held_before, "a refused lock is not held"
    return line


@pytest.fixture
def files(tmp_path):
    """real/s.h5 (a surface file), alias.h5 -> real/s.h5, linked -> real, victim.json."""
    (tmp_path / "real").mkdir()
    surface = write_surface(tmp_path / "real" / "s.h5", [0.0, 1.0])
    (tmp_path / "alias.h5").symlink_to(surface)
    (tmp_path / "linked").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "victim.json").write_text(VICTIM)
    return tmp_path


def test_a_link_to_the_file_or_its_folder_is_refused_while_another_process_writes_it(files, capsys):
    surface = files / "real" / "s.h5"
    holder = hold(surface)
    try:
        for name in (files / "alias.h5", files / "linked" / "s.h5"):
            line = refused(name)
            assert f"{name} is being written by host {socket.gethostname()}, pid {holder.pid}" in line, line
            assert f"lock {surface}.lock" in line, line
        # the command line: one line, exit 1
        assert cli.main(["merge", str(files / "alias.h5")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pid {holder.pid}" in err, err
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: the link's writer takes the one lock, beside the real file
    writelock.acquire(files / "alias.h5", "test")
    try:
        assert json.loads((files / "real" / "s.h5.lock").read_text())["pid"] == os.getpid()
        assert not (files / "alias.h5.lock").exists() and not (files / "linked" / "s.h5.lock").is_symlink()
        writelock.acquire(files / "linked" / "s.h5", "test")  # re-entrant: the same file
        writelock.release(files / "linked" / "s.h5")
    finally:
        writelock.release(files / "alias.h5")
    assert not (files / "real" / "s.h5.lock").exists()


def test_a_file_with_hard_links_is_refused_under_every_name(files):
    os.link(files / "real" / "s.h5", files / "hard.h5")
    for name in (files / "hard.h5", files / "real" / "s.h5", files / "alias.h5"):
        line = refused(name)
        assert f"{name} has 2 names (hard links)" in line, line
    assert sorted(p.name for p in (files / "real").iterdir()) == ["s.h5"]
    assert sorted(p.name for p in files.iterdir()) == ["alias.h5", "hard.h5", "linked", "real", "victim.json"]


def test_a_lock_that_is_a_link_a_folder_or_a_fifo_is_refused_and_nothing_is_written_through(files):
    surface = files / "real" / "s.h5"
    lock = files / "real" / "s.h5.lock"
    for make, kind in ((lambda: lock.symlink_to(files / "victim.json"), "a symbolic link"),
                       (lambda: lock.symlink_to(files / "nowhere"), "a symbolic link"),
                       (lock.mkdir, "a folder"), (lambda: os.mkfifo(lock), "a FIFO")):
        make()
        line = refused(surface)
        assert f"the lock {lock} of {surface} is {kind}, not a regular file; remove it" in line, line
        assert (files / "victim.json").read_text() == VICTIM
        assert not (files / "nowhere").exists()
        lock.rmdir() if kind == "a folder" else lock.unlink()
    # the temporary name the lock is made under, planted as a link: replaced, never written through
    planted = files / "real" / f".s.h5.lock.{socket.gethostname()}.{os.getpid()}"
    planted.symlink_to(files / "victim.json")
    writelock.acquire(surface, "test")
    writelock.release(surface)
    assert (files / "victim.json").read_text() == VICTIM
    assert sorted(p.name for p in (files / "real").iterdir()) == ["s.h5"]


@pytest.mark.parametrize("garbage", [b"", b"garbage", b"[1,2]", b'"a string"', b'{"host": 5, "pid": "x"}',
                                     b"[" * 100_000, b'{"host": "node\\nevil", "slurm_job_id": "1; rm"}'])
def test_a_lock_nobody_holds_is_taken_over_whatever_it_says(files, garbage, caplog):
    surface = files / "real" / "s.h5"
    lock = files / "real" / "s.h5.lock"
    lock.write_bytes(garbage)
    with caplog.at_level(logging.WARNING, logger="losslandscape"):
        writelock.acquire(surface, "test")
    try:
        assert f"took over the lock {lock} left by another process (its lock names none)" in caplog.text
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    finally:
        writelock.release(surface)
    assert not lock.exists()


def test_a_garbage_lock_a_live_process_holds_is_refused_in_one_line(files):
    surface = files / "real" / "s.h5"
    holder = hold(surface, garbage=b"[1,2]")
    try:
        line = refused(surface)
        assert f"{surface} is being written by another process (its lock names none)" in line, line
    finally:
        holder.kill()
        holder.wait()
    assert writelock._alive(None, None) is None  # without record locks nobody can tell: refused, naming the lock


def test_a_takeover_writes_nothing_into_the_old_lock(files):
    """A stale lock that is a hard link to another file: the takeover replaces the name, and the
    other file keeps its bytes."""
    lock = files / "real" / "s.h5.lock"
    os.link(files / "victim.json", lock)
    writelock.acquire(files / "real" / "s.h5", "test")
    try:
        assert (files / "victim.json").read_text() == VICTIM
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    finally:
        writelock.release(files / "real" / "s.h5")
