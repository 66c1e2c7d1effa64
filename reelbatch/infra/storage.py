"""Where finished files go: a local folder or any fsspec URL (s3://bucket/prefix, ...).

Ranks always write to local staging; ``OutputStore.publish`` moves a finished file to its final key. Only after
``publish`` returns may the sample be marked done.
"""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
from fsspec.spec import AbstractFileSystem
from fsspec.utils import get_protocol

LOCAL_PROTOCOLS = ("file", "local")


def is_local(location: str) -> bool:
    """Whether ``location`` is a path on this machine (a plain path or file://), not an object store URL."""
    return get_protocol(location) in LOCAL_PROTOCOLS


def normalize_root(output: str) -> str:
    """One spelling per output location (absolute local path, URL without trailing slash): runs that share a
    location must compare equal, so a re-run finds the videos an earlier run left there."""
    if is_local(output):
        return str(Path(output.removeprefix("file://")).expanduser().resolve())
    return output.rstrip("/")


def work_root(output: str) -> Path:
    """Local folder for job specs, rank logs, results files and staged outputs of runs writing to ``output``.

    Next to a local output folder (so publishing is a rename on the same file system); for remote outputs, under
    the user's cache (``REELBATCH_WORK_DIR`` overrides both).
    """
    if override := os.environ.get("REELBATCH_WORK_DIR"):
        return Path(override)
    if is_local(output):
        return Path(output.removeprefix("file://")) / ".reelbatch"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(cache) / "reelbatch" / "work"


def images_root(output: str) -> Path:
    """Where runs writing to ``output`` stage their input images, named by content hash (ranks read them here)."""
    return work_root(output) / "images"


class OutputStore:
    def __init__(self, root: str):
        self.root = root.rstrip("/") or "/"
        self.is_local = is_local(root)
        self._fs: AbstractFileSystem | None = None if self.is_local else fsspec.filesystem(get_protocol(root))

    @property
    def _remote(self) -> AbstractFileSystem:
        assert self._fs is not None, "only a remote store has a file system"
        return self._fs

    def url(self, key: str) -> str:
        if self.is_local:
            return str(Path(self.root.removeprefix("file://")).resolve() / key)
        return f"{self.root}/{key}"

    def publish(self, staged: Path, key: str) -> str:
        """Move a complete local file to ``key``; returns its final location."""
        target = self.url(key)
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)  # same file system in the default layout: atomic
        else:
            self._remote.put_file(str(staged), target)
            staged.unlink()
        return target

    def exists(self, key: str) -> bool:
        if self.is_local:
            return Path(self.url(key)).exists()
        return self._remote.exists(self.url(key))
