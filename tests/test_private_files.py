"""Files the toolkit writes respect the user: a private crash-log folder no planted link can redirect, and outputs
whose permissions follow the umask (the reference: a file ``open()`` creates under the same umask). In-process."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

import toolkit.cli
from toolkit import crash_log
from toolkit.atomic import current_umask, write_text
from toolkit.cli import main


@pytest.fixture
def tmpdir_(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$TMPDIR`` for this test (tempfile caches the folder it found)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _crash(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Path:
    def crash(args: list[str], argv: list[str] | None) -> None:
        raise RuntimeError("boom")

    monkeypatch.delenv("TOOLKIT_TRACEBACK", raising=False)
    monkeypatch.setattr(toolkit.cli, "_dispatch", crash)
    with pytest.raises(SystemExit):
        main(["fit"])
    line = capsys.readouterr().err.strip()
    return Path(line.rsplit("full traceback: ", 1)[1].rstrip(")"))


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_the_crash_log_is_private(tmpdir_, capsys, monkeypatch) -> None:
    log = _crash(capsys, monkeypatch)
    folder = tmpdir_ / f"toolkit-errors-{os.getuid()}"
    assert log.parent == folder and "RuntimeError: boom" in log.read_text()
    assert _mode(folder) == 0o700 and _mode(log) == 0o600


def test_a_link_planted_under_the_next_log_name_is_not_followed(tmpdir_, capsys, monkeypatch) -> None:
    folder = tmpdir_ / f"toolkit-errors-{os.getuid()}"
    folder.mkdir(mode=0o700)
    victim, dangling = tmpdir_ / "victim.txt", tmpdir_ / "created-through-a-link"
    victim.write_text("precious\n")
    monkeypatch.setattr(crash_log.time, "strftime", lambda _: "20260101-000000")
    stem = f"20260101-000000-{os.getpid()}"
    (folder / f"{stem}.log").symlink_to(victim)
    (folder / f"{stem}-1.log").symlink_to(dangling)  # a link to a file that does not exist yet
    log = _crash(capsys, monkeypatch)
    assert log == folder / f"{stem}-2.log" and "boom" in log.read_text()
    assert victim.read_text() == "precious\n" and not dangling.exists()


def test_a_planted_crash_folder_is_not_used(tmpdir_, capsys, monkeypatch) -> None:
    """The folder's name as a link to another folder: the log goes to a fresh private file instead."""
    elsewhere = tmpdir_ / "elsewhere"
    elsewhere.mkdir()
    (tmpdir_ / f"toolkit-errors-{os.getuid()}").symlink_to(elsewhere)
    log = _crash(capsys, monkeypatch)
    assert log.parent == tmpdir_ and log.name.startswith("toolkit-error-") and _mode(log) == 0o600
    assert not list(elsewhere.iterdir())


@pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another user needs root")
def test_a_crash_folder_of_another_user_is_not_used(tmpdir_, capsys, monkeypatch) -> None:
    folder = tmpdir_ / f"toolkit-errors-{os.getuid()}"
    folder.mkdir(mode=0o777)
    os.chown(folder, 4242, 4242)
    log = _crash(capsys, monkeypatch)
    assert log.parent == tmpdir_ and not list(folder.iterdir())


def test_an_open_crash_folder_of_ours_is_made_private_again(tmpdir_, capsys, monkeypatch) -> None:
    folder = tmpdir_ / f"toolkit-errors-{os.getuid()}"
    folder.mkdir()
    folder.chmod(0o777)
    assert _crash(capsys, monkeypatch).parent == folder and _mode(folder) == 0o700


@pytest.mark.parametrize("umask", [0o077, 0o022, 0o002, 0o027])
def test_outputs_honour_the_umask(tmp_path: Path, umask: int) -> None:
    from toolkit.weights._convert import _write_atomically

    old = os.umask(umask)
    try:
        assert current_umask() == umask
        (tmp_path / "reference").write_text("x")  # what open() makes under this umask
        write_text(tmp_path / "table.md", "x")
        _write_atomically(tmp_path / "weights.pth", lambda tmp: Path(tmp).write_text("x"))
    finally:
        os.umask(old)
    expected = _mode(tmp_path / "reference")
    assert expected == 0o666 & ~umask
    assert _mode(tmp_path / "table.md") == _mode(tmp_path / "weights.pth") == expected
