"""What `render` writes, against links in its output folder and a full disk (issue 29, items 4
and 7), and the room check on a nearly full file system (item 9), on real mounts in a private
mount namespace (tests/helpers.py's `Namespace`):

- a symbolic link named like an output is replaced by the output, its target left as it was
  (a dangling link too): every output is written to a temporary file renamed over the name
  (render/files.py);
- a full disk while a PNG, a VTP or an HTML page is written is one line naming the path and the
  cause, exit 1, and leaves no partial or empty file and no temporary file;
- the room check compares the need with the free space first: on a real ext4 file system (a
  loop mount) asking for more than is free takes no block from other writers, and the line
  reports the free space measured before the check.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from losslandscape.errors import UserError
from losslandscape.frontends import cli
from losslandscape.render import render
from losslandscape.surfacefile import room

from helpers import BIN, PX, PY, Namespace, assert_one_line_error, paraboloid, write_surface

VICTIM = "precious\n"


@pytest.fixture
def surface(tmp_path) -> Path:
    loss = paraboloid()
    return write_surface(tmp_path / "s.h5", PX, PY, {"train_loss": loss}, {"train_done": np.ones_like(loss)})


@pytest.fixture
def ns():
    n = Namespace()
    yield n
    n.close()


def test_a_link_named_like_an_output_is_replaced_and_its_target_kept(surface, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text(VICTIM)
    (out / "s_train_loss.vtp").symlink_to(victim)
    (out / "s_train_loss_heatmap.png").symlink_to(tmp_path / "nowhere" / "x.png")  # dangling
    written = render([surface], out, kinds=["vtp", "heatmap"])
    assert sorted(p.name for p in written) == ["s_train_loss.vtp", "s_train_loss_heatmap.png"]
    assert victim.read_text() == VICTIM and not (tmp_path / "nowhere").exists()
    for path in written:
        assert path.is_file() and not path.is_symlink() and path.stat().st_size > 1000
    assert (out / "s_train_loss_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["s_train_loss.vtp", "s_train_loss_heatmap.png"]


@pytest.mark.slow
def test_a_full_disk_while_rendering_is_one_line_and_leaves_nothing(ns, surface, tmp_path, capsys):
    """A tmpfs with one page free: every output is bigger (the VTP of this 21 x 15 grid, the PNG,
    the HTML page), so each write starts and fails part-way."""
    mnt = tmp_path / "mnt"
    ns.mount(mnt, 256)
    ns.fill(mnt, leave_pages=1)
    free = ns.free(mnt)
    # a real process: exit 1 and one line
    args = ["render", str(surface), "--kind", "heatmap", "--out", str(mnt / "pictures")]
    proc = ns.run([str(BIN / "losslandscape"), *args], cwd=tmp_path)
    line = assert_one_line_error(proc, f"{mnt / 'pictures' / 's_train_loss_heatmap.png'}", "No space left on device")
    assert line.startswith("losslandscape: error: --out: cannot write "), line
    seen = ns.outside(mnt)
    assert sorted(p.name for p in seen.iterdir()) == ["fill"], "the folder it made goes too"
    # the same code in this process, for the VTP and the HTML page
    for kind, name in (("vtp", "s_train_loss.vtp"), ("html", "s.html")):
        assert cli.main(["render", str(surface), "--kind", kind, "--out", str(seen)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert f"--out: cannot write {seen / name}: No space left on device" in err, err
        assert sorted(p.name for p in seen.iterdir()) == ["fill"], kind
    assert ns.free(mnt) == free


def _ext4(ns: Namespace, tmp_path: Path) -> Path:
    """A fresh 8 MiB ext4 file system (a loop mount in the namespace), seen from here."""
    if shutil.which("mkfs.ext4") is None or not Path("/dev/loop-control").exists():
        pytest.skip("mkfs.ext4 and loop devices are needed for an ext4 mount")
    image, mnt = tmp_path / "ext4.img", tmp_path / "ext4"
    mnt.mkdir()
    ns.sh(f"truncate -s 8M {image} && mkfs.ext4 -q -F {image} && mount -o loop {image} {mnt}")
    return ns.outside(mnt)


@pytest.mark.slow
def test_the_room_check_takes_no_room_from_others_and_reports_the_free_space_before(ns, tmp_path):
    folder = _ext4(ns, tmp_path)
    path = folder / "s.h5"
    free = room.free_bytes(folder)
    with pytest.raises(UserError) as err:
        room.check_room(path, free + (1 << 20), what="the new file")
    line = str(err.value)
    assert f"no room for the new file {path}: No space left on device: it needs about " in line, line
    assert f", {room.human(free)} free in {folder}" in line, line
    assert room.free_bytes(folder) == free and sorted(p.name for p in folder.iterdir()) == ["lost+found"]

    # another writer on the same file system meanwhile never sees a full disk
    refused, stop = [], threading.Event()

    def other_job():
        while not stop.is_set():
            try:
                (folder / "other").write_bytes(b"x" * 65536)
            except OSError as exc:
                refused.append(exc.errno)

    writer = threading.Thread(target=other_job)
    writer.start()
    try:
        for _ in range(50):
            with pytest.raises(UserError):
                room.check_room(path, free + (1 << 20), what="the new file")
    finally:
        stop.set()
        writer.join()
    assert errno.ENOSPC not in refused, f"{refused.count(errno.ENOSPC)} writes of another job found the disk full"

    # what fits is reserved, and only that: freed at once
    (folder / "other").unlink()
    room.check_room(path, free // 2, what="the new file")
    assert room.free_bytes(folder) == free and sorted(p.name for p in folder.iterdir()) == ["lost+found"]
