"""Download a dataset file once, verify it, and unpack zip archives safely.

Files are streamed to a temporary name next to the target and renamed into place only after the
checksum (or, when the publisher gives none, the announced size) is verified, so an interrupted or
corrupt download never looks like a finished one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from gr_lightning.data.errors import DownloadError

_CHUNK = 1 << 20


def _open_url(url: str, timeout: float):
    """Open ``url`` for reading; a module-level seam so tests can serve files without a network."""
    return urllib.request.urlopen(url, timeout=timeout)


def download(url: str, target: Path, *, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``target`` unless it already exists.

    Args:
        url: ``https://`` or ``file://`` address.
        target: Final path; its folder is created.
        md5: Expected hex digest of the downloaded bytes. Without one, the byte count is checked
            against the server's ``Content-Length`` when it sends one.
        timeout: Socket timeout in seconds.

    Returns:
        ``target``.

    Raises:
        DownloadError: The transfer failed or the checksum or size does not match (nothing is left
            behind in that case).

    """
    if target.is_file():
        return target
    if not url.startswith(("https://", "http://", "file://")):
        raise DownloadError(f"refusing to download {url!r}: only http(s):// and file:// URLs are supported")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    digest = hashlib.md5()
    received = 0
    try:
        with os.fdopen(fd, "wb") as out, _open_url(url, timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length else None
            columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                       TransferSpeedColumn(), TimeRemainingColumn())
            with Progress(*columns, transient=True) as progress:
                task = progress.add_task(f"downloading {target.name}", total=total)
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    progress.update(task, advance=len(chunk))
        if md5 is not None and digest.hexdigest() != md5.lower():
            raise DownloadError(
                f"checksum mismatch for {url}: expected md5 {md5}, got {digest.hexdigest()}; "
                "the file was removed, try again or check the URL"
            )
        if md5 is None and total is not None and received != total:
            raise DownloadError(f"incomplete download of {url}: got {received} of {total} bytes; removed")
        os.replace(tmp, target)
    except DownloadError:
        tmp.unlink(missing_ok=True)
        raise
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"cannot download {url} to {target}: {err}") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _member_target(member: zipfile.ZipInfo, dest: Path, strip_components: int) -> Path | None:
    """Where ``member`` goes inside ``dest``; None to skip it; raises on an unsafe member."""
    name = member.filename
    mode = member.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise DownloadError(f"refusing to extract symbolic link {name!r}")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DownloadError(f"refusing to extract absolute path {name!r}")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise DownloadError(f"refusing to extract {name!r}: it leaves the target folder")
    parts = parts[strip_components:]
    if not parts:
        return None
    path = (dest / Path(*parts)).resolve()
    if not path.is_relative_to(dest.resolve()):
        raise DownloadError(f"refusing to extract {name!r}: it resolves outside {dest}")
    return path


def extract_zip(archive: Path, dest: Path, *, strip_components: int = 0) -> list[Path]:
    """Extract ``archive`` into ``dest``, refusing members that could escape it.

    Every member is checked before anything is written: absolute paths, ``..`` components, paths
    that resolve outside ``dest`` and symbolic links are rejected with :class:`DownloadError`.

    Args:
        archive: The zip file.
        dest: Target folder (created).
        strip_components: Leading path components to drop (``ml-1m/ratings.dat`` -> ``ratings.dat``).

    Returns:
        The extracted files.

    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{archive} is not a valid zip archive ({err})") from err
    with zf:
        plan = [(m, _member_target(m, dest, strip_components)) for m in zf.infolist()]
        written = []
        for member, path in plan:
            if path is None or member.is_dir():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.part")
            with zf.open(member) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
            os.replace(tmp, path)
            written.append(path)
    return written
