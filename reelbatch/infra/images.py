"""Reading the ``image`` / ``last_image`` cells of image-to-video rows, safely.

A manifest may come from anyone (pasted into a web UI), so a cell is only a request: it is checked against an
``ImagePolicy`` (the manifest's own folder or prefix plus the operator's ``--image-root`` places) before anything
is opened. Accepted images are copied into a content-addressed store, so ranks read a local, verified file and the
sha256 is the image's identity (the same picture under two names is one image).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

import fsspec
from fsspec.utils import get_protocol

from reelbatch.engine.inputs import IMAGE_FORMATS
from reelbatch.infra.staging import Outcomes, StagingProblem, store_once
from reelbatch.infra.storage import is_local
from reelbatch.redact import INLINE_SOURCE, redact_text, redact_url

if TYPE_CHECKING:
    from PIL import Image as PILImage

_ROOT_OPTION = "--image-root"


# Operator configuration, never a run parameter: a manifest pasted into the UI must not widen where it may read.
IMAGE_ROOTS_ENV = "REELBATCH_IMAGE_ROOTS"


def configured_roots() -> list[str]:
    """The places image cells may read from besides the manifest's folder: ``REELBATCH_IMAGE_ROOTS``, comma-separated
    local folders and URL prefixes (``reelbatch run --image-root`` sets it for its run)."""
    return [root.strip() for root in os.environ.get(IMAGE_ROOTS_ENV, "").split(",") if root.strip()]


class ImageProblem(StagingProblem):
    """An image cell that cannot be used: ``rule`` (short id), ``message`` (one sentence naming the cell,
    credentials redacted) and ``fix`` (what to do)."""


def _strip_userinfo(url: str) -> str:
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rsplit('@', 1)[-1]}{slash}{path}"


def _redact(cell: str) -> str:
    # Chained URLs (a::b://...) can carry credentials in any link, not only the first.
    return "::".join(redact_url(part) for part in cell.split("::"))


def _has_credentials(cell: str) -> bool:
    return any("@" in part.partition("://")[2].partition("/")[0] for part in cell.split("::") if "://" in part)


def _bad_segments(path: str) -> bool:
    """Whether a remote key has segments some back end might normalise ("..", ".", "//", encoded slashes)."""
    for segment in path.split("/"):
        decoded = unquote(segment)
        if decoded in ("", ".", "..") or "/" in decoded or "\\" in decoded:
            return True
    return False


def _local_path(location: str) -> str:
    return location.split("://", 1)[1] if "://" in location else location


def _normalise_root(root: str) -> str:
    if is_local(root):
        return os.path.realpath(os.path.expanduser(_local_path(root)))
    shown = _redact(root)
    if "::" in root or _has_credentials(root):
        raise ValueError(f"{_ROOT_OPTION} {shown} must be a plain URL prefix without credentials or '::' chains")
    authority, _, path = root.partition("://")[2].partition("/")
    path = path.rstrip("/")
    if not authority or (path and _bad_segments(path)):
        raise ValueError(f"{_ROOT_OPTION} {shown} must name a bucket/host and a prefix without '..', '.' or '//'")
    return f"{get_protocol(root)}://{authority}/{path + '/' if path else ''}"


def _inside(path: str, root: str) -> bool:
    # Components, not string prefixes: /data/img2 is not inside /data/img.
    return os.path.commonpath([path, root]) == root


@dataclass(frozen=True)
class ImagePolicy:
    roots: tuple[str, ...]  # absolute real local folders, or URL prefixes ending in "/"
    max_bytes: int = 32 * 1024**2
    max_side: int = 4096
    base: str | None = None  # the manifest's own folder/prefix: relative cells resolve against it

    @classmethod
    def for_manifest(
        cls,
        manifest_source: str | None,
        roots: Sequence[str] = (),
        *,
        max_bytes: int = 32 * 1024**2,
        max_side: int = 4096,
    ) -> ImagePolicy:
        """Allowed = the manifest's own folder/prefix (when ``manifest_source`` is a real path/URL, not
        "<inline>") + ``roots``. Relative cells resolve against the manifest's folder (or are refused without one)."""
        base = None
        if manifest_source and manifest_source != INLINE_SOURCE:
            if is_local(manifest_source):
                local = os.path.expanduser(_local_path(manifest_source))
                base = os.path.realpath(os.path.dirname(os.path.abspath(local)))
            else:
                # The manifest may be read with credentials in its URL; images never are (see _has_credentials).
                try:
                    base = _normalise_root(_strip_userinfo(manifest_source).rsplit("/", 1)[0] + "/")
                except ValueError:
                    base = None  # a location that cannot be a root (a chained URL...): only the roots given
        normalised = dict.fromkeys(([base] if base else []) + [_normalise_root(r) for r in roots])
        return cls(tuple(normalised), max_bytes=max_bytes, max_side=max_side, base=base)

    def describe(self) -> str:
        """The allowed places in words, for messages."""
        others = [r for r in self.roots if r != self.base]
        parts = [f"the manifest's folder {self.base}"] if self.base in self.roots else []
        if others:
            parts.append(f"an {_ROOT_OPTION} ({', '.join(others)})")
        return " or ".join(parts) or f"nowhere (the manifest has no folder and no {_ROOT_OPTION} was given)"

    def protocols(self) -> set[str]:
        return {"file" if is_local(r) else get_protocol(r) for r in self.roots}


@dataclass(frozen=True)
class StagedImage:
    url: str  # the cell as the user wrote it, credentials redacted (what messages and the database show)
    sha256: str  # hex digest of the file's bytes: the image's identity
    path: str  # <store_dir>/<sha256[:2]>/<sha256>
    width: int
    height: int
    format: str  # "PNG", "JPEG", ...


class ImageStager:
    def __init__(self, policy: ImagePolicy, store_dir: str | Path):
        self.policy = policy
        self.store_dir = Path(store_dir)
        self._outcomes = Outcomes(self._stage)

    def stage(self, cell: str) -> StagedImage:
        """Check ``cell`` against the policy, read at most max_bytes+1 bytes, check it decodes as an image within
        the limits, hash it and copy it atomically into the store; once per distinct cell. Raises ImageProblem."""
        return self._outcomes(cell)

    def _stage(self, cell: str) -> StagedImage:
        shown = _redact(cell.strip())
        data = _Reader(self.policy, cell.strip(), shown).read()
        width, height, fmt = _check_image(data, shown, self.policy.max_side)
        digest = hashlib.sha256(data).hexdigest()
        path = store_once(self.store_dir, data, digest)
        return StagedImage(url=shown, sha256=digest, path=str(path), width=width, height=height, format=fmt)


class _Reader:
    """Resolves one cell against the policy and reads its bytes; every check happens before anything is opened."""

    def __init__(self, policy: ImagePolicy, cell: str, shown: str):
        self.policy, self.cell, self.shown = policy, cell, shown

    def problem(self, rule: str, what: str, fix: str) -> ImageProblem:
        return ImageProblem(rule, f"Image {self.shown!r} {what}.", fix)

    def not_allowed(self, why: str = "is outside the allowed places") -> ImageProblem:
        return self.problem(
            "image_not_allowed",
            f"{why}; images may only come from {self.policy.describe()}",
            f"move the image there, or ask the operator to add its folder with {_ROOT_OPTION}",
        )

    def missing(self, why: str) -> ImageProblem:
        return self.problem("image_missing", why, "check the path or URL and that the image is there and readable")

    def too_large(self, size: int) -> ImageProblem:
        return self.problem(
            "image_too_large",
            f"has {size} bytes, more than the limit of {self.policy.max_bytes}",
            "shrink or recompress the image",
        )

    def read(self) -> bytes:
        cell, policy = self.cell, self.policy
        if not cell:
            raise self.missing("is empty")
        if "\x00" in cell:
            raise self.not_allowed("contains a NUL character")
        if _has_credentials(cell):
            raise self.problem(
                "image_credentials_in_url",
                "has a user name or password in its URL",
                "remove user:password@ from the URL and give credentials through the standard "
                "AWS variables (AWS_ACCESS_KEY_ID, ...) or a profile",
            )
        allowed = sorted(policy.protocols())
        if "::" in cell:
            raise self.problem(
                "image_scheme_not_allowed",
                "is a chained URL ('::'), which is never allowed",
                f"write a plain URL or path ({', '.join(allowed) or 'none'} allowed here)",
            )
        url = cell
        if "://" not in cell and not os.path.isabs(cell):
            if policy.base is None:
                raise self.problem(
                    "image_relative_without_base",
                    "is a relative path but the manifest has no folder to resolve it against",
                    "write an absolute path or URL inside an allowed place",
                )
            url = os.path.join(policy.base, cell) if is_local(policy.base) else policy.base + cell
        protocol = "file" if is_local(url) else get_protocol(url)
        if protocol not in allowed:
            kind = "local files" if protocol == "file" else f"{protocol}:// URLs"
            raise self.problem(
                "image_scheme_not_allowed",
                f"uses {kind}, which are not allowed here (allowed: {', '.join(allowed) or 'none'})",
                f"put the image in {policy.describe()}",
            )
        return self._read_local(_local_path(url)) if protocol == "file" else self._read_remote(url)

    def _read_local(self, path: str) -> bytes:
        if not os.path.isabs(path):
            raise self.not_allowed("is a file:// URL without an absolute path")
        real = os.path.realpath(path)  # follows every symlink and "..": the check is on where the bytes really are
        roots = [r for r in self.policy.roots if is_local(r)]
        if not any(_inside(real, root) for root in roots):
            raise self.not_allowed()  # the resolved target is not shown: it would map the server's disks
        try:
            # NOFOLLOW + the /proc check below: a symlink swapped in after realpath() is not followed unnoticed.
            # NONBLOCK: a FIFO planted in a root must not hang the reader.
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError as error:
            raise self.missing(f"cannot be opened ({error.strerror})") from None
        try:
            opened = _opened_path(fd) or real
            if not any(_inside(opened, root) for root in roots):
                raise self.not_allowed("changed while being opened and now points outside the allowed places")
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise self.missing("is not a regular file")
            if info.st_size > self.policy.max_bytes:
                raise self.too_large(info.st_size)
            handle = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        with handle:
            data = handle.read(self.policy.max_bytes + 1)
        if len(data) > self.policy.max_bytes:
            raise self.too_large(len(data))
        return data

    def _read_remote(self, url: str) -> bytes:
        authority, _, key = url.partition("://")[2].partition("/")
        if not authority or not key or _bad_segments(key):
            raise self.not_allowed("has empty, '.' or '..' path segments")
        if not any(url.startswith(r) for r in self.policy.roots if not is_local(r)):
            raise self.not_allowed()
        try:
            fs, path = fsspec.core.url_to_fs(url)
            info = fs.info(path)
            if info.get("type") == "directory":
                raise self.missing("is a folder, not a file")
            # Size from metadata first, so a huge remote file is refused without being downloaded.
            if (info.get("size") or 0) > self.policy.max_bytes:
                raise self.too_large(info["size"])
            with fs.open(path, "rb") as handle:
                data = handle.read(self.policy.max_bytes + 1)
        except ImageProblem:
            raise
        except FileNotFoundError:
            raise self.missing("does not exist") from None
        except Exception as error:  # noqa: BLE001 - every back end fails its own way; the user needs one sentence
            raise self.missing(f"cannot be read ({redact_text(str(error), url)[:200]})") from None
        if len(data) > self.policy.max_bytes:
            raise self.too_large(len(data))
        return data


def _opened_path(fd: int) -> str | None:
    """The path the kernel actually opened (Linux), to catch a folder swapped for a symlink after the check."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _open_image(data: bytes, max_side: int, formats: Sequence[str] = IMAGE_FORMATS) -> PILImage.Image:
    """Open lazily (header only), refusing huge dimensions before any pixel is decoded."""
    from PIL import Image

    image = Image.open(io.BytesIO(data), formats=list(formats))
    if max(image.size) > max_side:
        raise _TooManyPixels(image.size)
    return image


class _TooManyPixels(Exception):
    def __init__(self, size: tuple[int, int]):
        super().__init__(f"{size[0]}x{size[1]}")
        self.size = size


def _check_image(data: bytes, shown: str, max_side: int) -> tuple[int, int, str]:
    from PIL import Image, UnidentifiedImageError

    try:
        # Decompression bombs: Pillow's own limit becomes an error, on top of max_side checked before decoding.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            _open_image(data, max_side).verify()  # checksums, structure
            image = _open_image(data, max_side)
            image.load()  # verify() misses truncated JPEGs; a full decode does not
    except (_TooManyPixels, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        size = error.size if isinstance(error, _TooManyPixels) else None
        what = f"is {size[0]}x{size[1]} pixels" if size else "is a decompression bomb (far too many pixels)"
        raise ImageProblem(
            "image_too_large",
            f"Image {shown!r} {what}, over the limit of {max_side} per side.",
            f"resize the image to at most {max_side}x{max_side} pixels",
        ) from None
    except UnidentifiedImageError:
        raise _undecodable(shown, f"is not an image in a supported format ({', '.join(IMAGE_FORMATS)})") from None
    except Exception as error:  # noqa: BLE001 - Pillow raises many types for corrupt data
        raise _undecodable(shown, f"cannot be decoded ({type(error).__name__}: {str(error)[:120]})") from None
    return image.width, image.height, image.format or "?"


def _undecodable(shown: str, what: str) -> ImageProblem:
    return ImageProblem(
        "image_not_decodable",
        f"Image {shown!r} {what}.",
        "re-export the image as PNG or JPEG and check that it opens in an image viewer",
    )
