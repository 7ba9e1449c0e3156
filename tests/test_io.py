"""Atomic writes: all or nothing, and the permissions an ordinary write would give."""

import os
import stat

import pytest

from zebra_llm.io import atomic_directory, write_json_atomic, write_text_atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_file_gets_the_umask_mode_not_tempfiles_private_one(tmp_path, umask_022):
    path = write_json_atomic(tmp_path / "sub" / "r.json", {"a": 1})
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert _mode(path) == 0o644


def test_existing_file_keeps_its_mode(tmp_path, umask_022):
    path = tmp_path / "r.txt"
    path.write_text("old")
    os.chmod(path, 0o640)
    write_text_atomic(path, "new")
    assert path.read_text() == "new"
    assert _mode(path) == 0o640


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    path.write_text("old")

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)  # the new bytes are written, the rename fails
    with pytest.raises(OSError, match="disk gone"):
        write_text_atomic(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_atomic_directory_replaces_only_on_success(tmp_path, umask_022):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as d:
        (d / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    assert _mode(target) == 0o755

    with pytest.raises(RuntimeError), atomic_directory(target) as d:
        (d / "a").write_text("2")
        raise RuntimeError("crash")
    assert (target / "a").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]

    with pytest.raises(FileExistsError), atomic_directory(target, overwrite=False):
        pass


def test_atomic_directory_over_a_file_leaves_no_hidden_copy(tmp_path):
    target = tmp_path / "out"
    target.write_text("a file")
    with atomic_directory(target) as d:
        (d / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_regular_file_checks_name_the_kind(tmp_path):
    from zebra_llm.io import check_regular_file, read_text_file

    with pytest.raises(ValueError, match=r"config: /dev/null is not a regular file \(it is a character device\)"):
        check_regular_file("/dev/null", "config")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ValueError, match=r"is not a regular file \(it is a FIFO\)"):
        read_text_file(tmp_path / "pipe")  # never blocks reading the pipe
    with pytest.raises(FileNotFoundError, match="data: .*missing does not exist"):
        read_text_file(tmp_path / "missing")
    (tmp_path / "crlf.txt").write_bytes(b"a\r\nb\rc\n")
    assert read_text_file(tmp_path / "crlf.txt") == "a\nb\nc\n"  # universal newlines, as read_text gave
