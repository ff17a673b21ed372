"""Guards for storage tests: record directory renames under a root; refuse `os` calls on `gs://` paths."""

from __future__ import annotations

import builtins
import os
import pathlib
import shutil

import pytest


def forbid_directory_renames(monkeypatch: pytest.MonkeyPatch, root) -> list[tuple[str, str]]:
    """Make renaming a directory under `root` raise (as on a flat-namespace bucket); returns the attempts.

    Covers `os.rename`, `os.replace`, `shutil.move` and `pathlib.Path.rename` / `replace`
    (epath's local backend and orbax go through these). Files may still be renamed.
    """
    root = os.path.realpath(os.fspath(root))
    attempts: list[tuple[str, str]] = []

    def check(src, dst):
        path = os.path.realpath(os.fspath(src))
        if os.path.isdir(path) and (path == root or path.startswith(root + os.sep)):
            attempts.append((os.fspath(src), os.fspath(dst)))
            raise OSError(f"test: directory rename forbidden on this storage: {src} -> {dst}")

    def guarded(original):
        def wrapper(src, dst, *args, **kwargs):
            check(src, dst)
            return original(src, dst, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(os, "rename", guarded(os.rename))
    monkeypatch.setattr(os, "replace", guarded(os.replace))
    monkeypatch.setattr(shutil, "move", guarded(shutil.move))
    monkeypatch.setattr(pathlib.Path, "rename", guarded(pathlib.Path.rename))
    monkeypatch.setattr(pathlib.Path, "replace", guarded(pathlib.Path.replace))
    return attempts


def forbid_os_calls_on_urls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make `os` / `open` / `shutil` calls on a `gs://` path raise (they would treat it as a local path).

    Returns the offending calls. Code must reach such paths through `etils.epath` (which a test
    can redirect with `epath.testing.mock_epath`).
    """
    calls: list[str] = []

    def guarded(name, original):
        def wrapper(*args, **kwargs):
            for arg in args[:2]:
                if isinstance(arg, (str, os.PathLike)) and os.fspath(arg).startswith("gs:"):
                    calls.append(f"{name}({os.fspath(arg)!r})")
                    raise AssertionError(f"{name} called on the URL {os.fspath(arg)!r}")
            return original(*args, **kwargs)

        return wrapper

    for module, names in (
        (os, ("stat", "lstat", "makedirs", "mkdir", "listdir", "rename", "replace", "remove", "rmdir", "scandir")),
        (os.path, ("abspath", "realpath")),
        (shutil, ("rmtree", "copy", "copyfile", "copytree", "move")),
        (builtins, ("open",)),
    ):
        for name in names:
            monkeypatch.setattr(module, name, guarded(f"{module.__name__}.{name}", getattr(module, name)))
    return calls
