"""Where dataset files may be read from: one rule for `data pack`, training's JSON source and evaluation.

An example's `"image"` field is a reference *relative to an image root* (the
`IMAGE_ROOT` of `llava-jax data pack`, `data.image_root` in training, a
benchmark's image folder). `ImageRoot.resolve` refuses a reference that leaves
the root, so a hostile or mistaken JSON cannot copy `/etc/passwd` into a pack:

- absolute paths (`/etc/passwd`);
- `..` components that climb out (`../../etc/hostname`);
- symbolic links (anywhere on the way) that lead outside the root.

`allow_outside_root=True` (CLI `--allow-outside-root`, config
`data.allow_outside_root`) turns the check off for datasets that deliberately
link elsewhere.

`read_image_file` then reads only regular files (not `/dev/zero`, which grows
until memory runs out, nor a FIFO, which blocks forever) and at most
`max_bytes` of them; `check_image_file` applies the same rule by `stat` where
the file is decoded later (training). Both raise `ImageFileError`, whose
`reason` is the skip reason callers count (`missing_image`,
`image_outside_root`, `not_a_regular_file`, `image_too_large`,
`corrupt_image`).
"""

from __future__ import annotations

import os
import stat

# Far above any real photo (LLaVA's images are JPEGs of well under 10 MB): the cap exists to stop
# reads that never end (a huge or endless file), not to judge photos.
DEFAULT_MAX_IMAGE_BYTES = 256 * 2**20
OUTSIDE_ROOT_HINT = "pass --allow-outside-root (config: data.allow_outside_root=True) to allow it"


class ImageFileError(ValueError):
    """An image reference or file that must not or cannot be read; `reason` names the skip reason."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class ImageRoot:
    """The folder image references are relative to, with the containment rule of the module docstring.

    Args:
      root: the image folder.
      allow_outside_root: skip the containment checks (absolute paths, `..`, symlinks).
      hint: what the error tells the user to do to allow such references.
    """

    def __init__(self, root: str | os.PathLike, *, allow_outside_root: bool = False, hint: str = OUTSIDE_ROOT_HINT):
        self.root = os.fspath(root)
        self.allow_outside_root = allow_outside_root
        self.hint = hint
        self._abs = os.path.abspath(self.root)
        self._real = os.path.realpath(self.root)

    def resolve(self, ref: str) -> str:
        """The path of image reference `ref` under the root; `ImageFileError` if it may not be read.

        The returned path is the root joined with `ref` (not the symlink-resolved one), so
        messages and packed metadata show what the dataset names.
        """
        if not isinstance(ref, str) or not ref or "\x00" in ref:
            raise ImageFileError("malformed", f"bad image reference {ref!r}")
        if self.allow_outside_root:
            return os.path.join(self.root, ref)
        if os.path.isabs(ref):
            raise ImageFileError(
                "image_outside_root", f"image {ref!r} is an absolute path, not one under {self.root}; {self.hint}"
            )
        path = os.path.join(self.root, ref)
        if not _within(os.path.normpath(os.path.join(self._abs, ref)), self._abs):
            raise ImageFileError("image_outside_root", f"image {ref!r} climbs out of {self.root} ('..'); {self.hint}")
        real = os.path.realpath(path)
        if not _within(real, self._real):
            raise ImageFileError(
                "image_outside_root",
                f"image {ref!r} is a symbolic link (or lies under one) to {real}, outside {self.root}; {self.hint}",
            )
        return path

    def __repr__(self) -> str:
        return f"ImageRoot({self.root!r}, allow_outside_root={self.allow_outside_root})"


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def _check_stat(path: str, st: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ImageFileError("not_a_regular_file", f"{path}: a {_kind(st.st_mode)}, not a regular file")
    if st.st_size > max_bytes:
        raise ImageFileError(
            "image_too_large", f"{path}: {st.st_size} bytes, above the {max_bytes}-byte cap per image file"
        )


def check_image_file(path: str, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> None:
    """`ImageFileError` unless `path` is a non-empty regular file of at most `max_bytes` (by `stat`)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ImageFileError("missing_image", f"{path}: {e.strerror}") from None
    _check_stat(path, st, max_bytes)
    if st.st_size == 0:
        raise ImageFileError("corrupt_image", f"empty file {path}")


def read_image_file(path: str, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> bytes:
    """The bytes of the regular file `path` (at most `max_bytes`); `ImageFileError` otherwise.

    Opened non-blocking, so a FIFO is refused instead of waiting for a writer; the
    read stops at `max_bytes + 1` even if the file grows after the size check.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ImageFileError("missing_image", f"{path}: {e.strerror}") from None
    try:
        _check_stat(path, os.fstat(fd), max_bytes)
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise ImageFileError("missing_image", f"{path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if size > max_bytes:
        raise ImageFileError("image_too_large", f"{path}: grew past the {max_bytes}-byte cap per image file")
    return b"".join(chunks)
