"""`llava_jax.convert.storage`: which atomicity a checkpoint directory gets, from its URL or its mount."""

import os

import pytest

from llava_jax.convert import storage
from tests.convert.storage_guards import forbid_os_calls_on_urls


@pytest.fixture
def mounts(tmp_path):
    table = tmp_path / "mounts"
    table.write_text(
        "/dev/sda1 / ext4 rw,relatime 0 0\n"
        "server:/export /shared nfs4 rw 0 0\n"
        "my-bucket /mnt/disks/gcs/my-bucket fuse.gcsfuse rw,nosuid,nodev 0 0\n"
        "other /mnt/disks/gcs/my-bucket/local ext4 rw 0 0\n"  # a mount inside the mount
        "gcs /mnt/with\\040space fuse rw 0 0\n"
        "ntfs /mnt/usb fuseblk rw 0 0\n"
    )
    return str(table)


@pytest.mark.parametrize(
    ("path", "fstype", "mode"),
    [
        ("/home/me/run/checkpoints", "ext4", "rename"),
        ("/shared/runs/a", "nfs4", "rename"),
        ("/mnt/disks/gcs/my-bucket/runs/a/checkpoints", "fuse.gcsfuse", "commit_file"),
        ("/mnt/disks/gcs/my-bucket", "fuse.gcsfuse", "commit_file"),
        ("/mnt/disks/gcs/my-bucket/local/x", "ext4", "rename"),
        ("/mnt/disks/gcs/my-bucketx/y", "ext4", "rename"),  # a prefix of the name is not the mount
        ("/mnt/with space/run", "fuse", "commit_file"),
        ("/mnt/usb/run", "fuseblk", "rename"),  # a local disk through FUSE renames fine
    ],
)
def test_auto_follows_the_mount(mounts, path, fstype, mode):
    assert storage.mount_type(path, mounts) == fstype
    assert storage.resolve_atomicity("auto", path, mounts_file=mounts) == mode


def test_urls_get_commit_files_without_touching_the_local_filesystem(monkeypatch):
    calls = forbid_os_calls_on_urls(monkeypatch)
    assert storage.is_remote("gs://bucket/run") and not storage.is_remote("/gs:/bucket")
    assert not storage.is_remote("runs/gs://x")
    assert str(storage.as_path("gs://bucket/run/ckpt")) == "gs://bucket/run/ckpt"
    assert storage.resolve_atomicity("auto", "gs://bucket/run") == "commit_file"
    assert storage.resolve_atomicity("commit_file", "gs://bucket/run") == "commit_file"
    assert calls == []
    assert str(storage.as_path("runs/a")) == os.path.abspath("runs/a")


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"atomicity 'atomic': expected one of auto, rename, commit_file"):
        storage.resolve_atomicity("atomic", "/tmp/x")
    with pytest.raises(ValueError, match=r"'rename' for gs://b/x: object stores cannot rename a directory"):
        storage.resolve_atomicity("rename", "gs://b/x")


def test_an_unreadable_mount_table_means_rename(tmp_path):
    assert storage.mount_type("/x", str(tmp_path / "missing")) is None
    assert storage.resolve_atomicity("auto", "/x", mounts_file=str(tmp_path / "missing")) == "rename"
