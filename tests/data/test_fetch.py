"""Download and extraction, served from local file:// URLs (no network)."""

import hashlib
import io
import stat
import zipfile
from typing import ClassVar

import numpy as np
import pytest

from gr_lightning.data import DownloadError, MovieLens100K, download, extract_zip
from gr_lightning.data import fetch as fetch_module


def _zip(path, members: dict[str, bytes], symlink: str | None = None):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def test_download_verifies_md5_and_renames_atomically(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello" * 1000)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    target = tmp_path / "out" / "file.bin"
    assert download(src.as_uri(), target, md5=md5) == target
    assert target.read_bytes() == src.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_download_wrong_checksum_removes_file(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"data")
    target = tmp_path / "out" / "file.bin"
    with pytest.raises(DownloadError, match=r"checksum mismatch.*expected md5 0+"):
        download(src.as_uri(), target, md5="0" * 32)
    assert list(target.parent.iterdir()) == []


def test_download_size_check_without_checksum(tmp_path, monkeypatch):
    class Short(io.BytesIO):
        headers: ClassVar[dict[str, str]] = {"Content-Length": "10"}

    monkeypatch.setattr(fetch_module, "_open_url", lambda url, timeout: Short(b"12345"))
    target = tmp_path / "file.csv"
    with pytest.raises(DownloadError, match="got 5 of 10 bytes"):
        download("https://example.invalid/file.csv", target)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_download_rejects_other_schemes(tmp_path):
    with pytest.raises(DownloadError, match="only http"):
        download("ftp://example.invalid/x", tmp_path / "x")


def test_extract_rejects_parent_escape(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"ml/ok.txt": b"ok", "../evil": b"x"})
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match=r"'\.\./evil'"):
        extract_zip(archive, dest)
    assert not (tmp_path / "evil").exists()
    assert not (dest / "ml" / "ok.txt").exists()  # checked before anything is written


def test_extract_rejects_escape_after_strip(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"top/../../evil": b"x"})
    with pytest.raises(DownloadError, match="leaves the target folder"):
        extract_zip(archive, tmp_path / "dest", strip_components=1)
    assert not (tmp_path / "evil").exists()


def test_extract_rejects_absolute_path(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("x")
        info.filename = "/tmp/evil-abs"  # ZipInfo() would strip the slash; set it afterwards
        zf.writestr(info, b"x")
    with pytest.raises(DownloadError, match="absolute path"):
        extract_zip(archive, tmp_path / "dest")


def test_extract_rejects_symlink(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"ok.txt": b"ok"}, symlink="link")
    with pytest.raises(DownloadError, match="symbolic link 'link'"):
        extract_zip(archive, tmp_path / "dest")


def test_extract_strips_top_folder(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"ml-100k/": b"", "ml-100k/u.data": b"1\t2\t3\t4\n"})
    written = extract_zip(archive, tmp_path / "dest", strip_components=1)
    assert written == [(tmp_path / "dest" / "u.data").resolve()]


def test_source_downloads_missing_files_once(tmp_path, monkeypatch):
    rows = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in [(1, 10, 5, 100), (1, 11, 3, 50), (2, 10, 4, 7)])
    archive = _zip(tmp_path / "ml-100k.zip", {"ml-100k/u.data": rows.encode(), "ml-100k/README": b"r"})
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(MovieLens100K, "url", archive.as_uri())
    monkeypatch.setattr(MovieLens100K, "md5", md5)
    root = tmp_path / "data" / "ml-100k"
    source = MovieLens100K(root=str(root))
    events = source.load_events()
    assert events["item_id"].tolist() == [10, 11, 10]
    assert np.array_equal(events["timestamp"], [100, 50, 7])
    assert (root / "u.data").is_file() and (root / "ml-100k.zip").is_file()
    archive.unlink()  # a second use must not download again
    assert MovieLens100K(root=str(root)).load_events()["user_id"].tolist() == [1, 1, 2]


def test_source_download_with_bad_checksum_fails_cleanly(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "ml-100k.zip", {"ml-100k/u.data": b"1\t2\t3\t4\n"})
    monkeypatch.setattr(MovieLens100K, "url", archive.as_uri())
    monkeypatch.setattr(MovieLens100K, "md5", "f" * 32)
    root = tmp_path / "data" / "ml-100k"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        MovieLens100K(root=str(root)).load_events()
    assert list(root.iterdir()) == []
