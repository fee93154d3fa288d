"""Archives of a dataset: extracted once into the cache, safely (no member may land outside it)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from search.config import UserError
from search.data.cache import cache_dir, digest, locked, slug
from search.data.layout import EXPECTED_LAYOUT, Layout, describe
from search.data.readers import find_layout


def materialize(layout: Layout) -> Layout:
    """The unpacked dataset: an archive is extracted into the cache once (reused afterwards).

    Args:
        layout: Any layout; only an ``archive`` one is changed.

    Returns:
        The layout itself, or the one found inside the extracted archive.

    Raises:
        UserError: The archive is unsafe or unreadable, or holds no dataset.
    """
    if layout.kind != "archive":
        return layout
    archive = layout.root
    st = archive.stat()
    key = digest([str(archive.resolve()), st.st_size, st.st_mtime_ns])
    dest = cache_dir() / "extracted" / f"{slug(archive)}-{key[:12]}"
    if not dest.exists():
        with locked(dest.with_name(dest.name + ".lock")):  # makes the folder, or says it cannot
            if not dest.exists():  # another worker may have finished while we waited
                _extract_into(archive, dest)
    found = find_layout(dest)
    if found is None:
        raise UserError(f"archive {archive} holds no dataset ({describe(dest)}); {EXPECTED_LAYOUT}")
    return found


def _extract_into(archive: Path, dest: Path) -> None:
    """Extract beside ``dest``, then rename: a reader never sees half a tree."""
    print(f"resnet-search: extracting {archive} into {dest}", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
    try:
        extract(archive, tmp)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def extract(archive: Path, dest: Path) -> None:
    """Extract a .tar.gz/.tgz/.zip into ``dest``, refusing anything that could land outside it.

    Raises:
        UserError: A member has an absolute path or ``..``, or is a link, device or FIFO;
            or the archive is unreadable.
    """
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, dest)
        else:
            _extract_tar(archive, dest)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        reason = str(e).strip().splitlines()[0].rstrip(":") if str(e).strip() else type(e).__name__
        raise UserError(f"archive {archive} cannot be read ({reason})") from e


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            mode = info.external_attr >> 16
            # Unix mode 0 means a zip made on Windows: a plain file or folder.
            if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UserError(f"archive {archive}: refusing {info.filename!r}: not a plain file or folder")
            _check_member_path(archive, info.filename, dest)
        zf.extractall(dest, members=infos)


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        for m in members:
            if not (m.isfile() or m.isdir()):
                what = "a link" if m.issym() or m.islnk() else "a device or FIFO"
                raise UserError(f"archive {archive}: refusing {m.name!r}: {what}, not a plain file or folder")
            _check_member_path(archive, m.name, dest)
        if hasattr(tarfile, "data_filter"):
            # The "data" filter re-checks all of the above and drops odd permissions.
            tf.extractall(dest, members=members, filter="data")
        else:  # Python before 3.10.12 / 3.11.4: the checks above are the guard
            tf.extractall(dest, members=members)


def _check_member_path(archive: Path, name: str, dest: Path) -> None:
    """Refuse a member name that is absolute or climbs out of ``dest``."""
    posix = name.replace("\\", "/")
    parts = PurePosixPath(posix).parts
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix) or ".." in parts:
        raise UserError(f"archive {archive}: refusing {name!r}: its path leaves the extraction folder")
    target = (dest / posix).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise UserError(f"archive {archive}: refusing {name!r}: its path leaves the extraction folder")
