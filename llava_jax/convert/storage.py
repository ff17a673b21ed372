"""Where checkpoints go: local disk, NFS, a bucket mounted with FUSE (gcsfuse), or `gs://` directly.

Two ways to make a checkpoint appear only complete ("atomicity"):

- `rename`: write everything under a temporary name, then rename the directory. One atomic
  step on local disks and NFS; orbax's default there.
- `commit_file`: write in place and write a marker file last; readers ignore a directory
  without it. Object stores have no directory rename (a flat-namespace bucket cannot rename a
  directory with children, and gcsfuse emulates it object by object, if at all), so this is
  the only safe way on `gs://` and on FUSE mounts of buckets.

`auto` picks `commit_file` for remote URLs and FUSE mounts (fstype `fuse` / `fuse.*` in
/proc/mounts, e.g. `fuse.gcsfuse`), `rename` elsewhere. Remote paths are handled with
`etils.epath` only, never `os.path` (which would take `gs://b/x` for a relative local path).
"""

from __future__ import annotations

import os
import re

from etils import epath

ATOMICITY_MODES = ("auto", "rename", "commit_file")
MOUNTS_FILE = "/proc/mounts"


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URL such as `gs://bucket/dir` (any `scheme://`), False for a filesystem path."""
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", os.fspath(path)) is not None


def as_path(path: str | os.PathLike) -> epath.Path:
    """An `epath.Path` for `path`: a URL as given, a filesystem path made absolute."""
    text = os.fspath(path)
    return epath.Path(text if is_remote(text) else os.path.abspath(text))


def _unescape(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash in mount points as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_type(path: str | os.PathLike, mounts_file: str | None = None) -> str | None:
    """The filesystem type (`ext4`, `nfs4`, `fuse.gcsfuse`, ...) of the mount holding local `path`.

    The path need not exist yet (the mount of its nearest existing parent counts). None when the
    mount table cannot be read (not Linux).
    """
    real = os.path.realpath(os.fspath(path))
    try:
        with open(mounts_file or MOUNTS_FILE) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best, best_type = "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point, fstype = _unescape(fields[1]), fields[2]
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # the last of equal mount points is the one on top
            best, best_type = point, fstype
    return best_type


def resolve_atomicity(mode: str, path: str | os.PathLike, *, mounts_file: str | None = None) -> str:
    """`rename` or `commit_file` for writing checkpoints under `path` (module docstring).

    Raises `ValueError` for an unknown mode, or for `rename` on a URL (object stores cannot
    rename a directory).
    """
    if mode not in ATOMICITY_MODES:
        raise ValueError(f"checkpoint atomicity {mode!r}: expected one of {', '.join(ATOMICITY_MODES)}")
    remote = is_remote(path)
    if mode == "rename" and remote:
        raise ValueError(
            f"checkpoint atomicity 'rename' for {os.fspath(path)}: object stores cannot rename a directory; "
            f"use 'commit_file' or 'auto'"
        )
    if mode != "auto":
        return mode
    if remote:
        return "commit_file"
    fstype = mount_type(path, mounts_file) or ""
    return "commit_file" if fstype == "fuse" or fstype.startswith("fuse.") else "rename"
