"""Where a run's manifest comes from: a path or URL, or CSV text pasted into the Prefect UI's run form.

Pasted text is stored under the output's ``.reelbatch/manifests/`` folder, named by its SHA-256, and read from
there like any other manifest: the run records a real location, so `reelbatch resume` and a re-run of the same
text find it again (same name, same videos reused).
"""

from __future__ import annotations

import hashlib
import uuid

import fsspec

from reelbatch.infra.storage import is_local
from reelbatch.manifest import ManifestError
from reelbatch.tasks.step import step

# The Prefect API refuses larger parameter payloads (PREFECT_SERVER_API_MAX_PARAMETER_SIZE, 512 KB by default).
MAX_INLINE_MANIFEST_BYTES = 512 * 1024
SUBMIT_HINT = (
    "upload the file instead: `reelbatch submit manifest.csv --deployment generate-dataset` copies it to the "
    "manifest store and starts the run with its location, or put it on s3:// (or a shared folder) and pass "
    "that location as `manifest`"
)


def inline_manifest_location(output: str, digest: str) -> str:
    root = output.removeprefix("file://").rstrip("/") if is_local(output) else output
    return f"{root.rstrip('/')}/.reelbatch/manifests/{digest}.csv"


def resolve_manifest(manifest: str | None, manifest_text: str | None, output: str) -> str:
    """The location to read: ``manifest`` itself, or where the pasted ``manifest_text`` was stored."""
    if manifest and manifest_text:
        raise ManifestError("give either `manifest` (a path or URL) or `manifest_text` (pasted CSV), not both")
    if manifest:
        return manifest
    if not manifest_text or not manifest_text.strip():
        raise ManifestError("no manifest: give `manifest` (a path or URL) or paste the CSV into `manifest_text`")
    data = manifest_text.encode("utf-8")
    if len(data) > MAX_INLINE_MANIFEST_BYTES:
        raise ManifestError(
            f"the pasted manifest is {len(data) / 1024:,.0f} KB; a run parameter holds at most "
            f"{MAX_INLINE_MANIFEST_BYTES // 1024} KB: {SUBMIT_HINT}"
        )
    location = inline_manifest_location(output, hashlib.sha256(data).hexdigest())
    fs, path = fsspec.core.url_to_fs(location)
    if not fs.exists(path):
        folder = path.rsplit("/", 1)[0]
        fs.makedirs(folder, exist_ok=True)
        # Written under a name of its own, then moved: a run reading the same text at the same time never sees half.
        partial = f"{folder}/.{uuid.uuid4().hex}.partial"
        with fs.open(partial, "wb") as f:
            f.write(data)
        fs.mv(partial, path)
    return location


resolve_manifest_task = step("store-pasted-manifest", resolve_manifest)
