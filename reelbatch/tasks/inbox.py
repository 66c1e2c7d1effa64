"""The manifest inbox: a local folder or an fsspec prefix (s3://bucket/incoming) where people drop manifests.

Each file is known by its URI and a fingerprint of its content (size plus ETag or modification time), and its
processing is recorded in the database (``inbox_manifests``): the uploader's files are never moved, renamed or
written. A file replaced under the same name has a new fingerprint, so it is a new manifest.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import fsspec

from reelbatch.infra.db import Database
from reelbatch.infra.storage import is_local, normalize_root
from reelbatch.manifest import MANIFEST_FORMATS
from reelbatch.markdown import cell
from reelbatch.redact import redact_text, redact_url

# A fingerprint column holds 128 characters; longer ones (odd ETags) are hashed down.
_FINGERPRINT_CHARS = 128
# Storage backends name the same facts differently; the first one present wins.
_VERSION_KEYS = ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "last_modified", "updated")
_MODIFIED_KEYS = ("mtime", "LastModified", "last_modified", "updated", "modified")


@dataclass(frozen=True)
class InboxEntry:
    uri: str  # what generate-dataset reads and the database records
    fingerprint: str
    size: int
    modified: float | None  # seconds since the epoch, when the backend says


def _seconds(value: Any) -> float | None:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def fingerprint(info: dict[str, Any]) -> str:
    """size plus the backend's content version (ETag, md5, generation) or, failing that, the modification time."""
    size = int(info.get("size") or 0)
    version = next((info[key] for key in _VERSION_KEYS if info.get(key) not in (None, "")), "")
    if isinstance(version, datetime):
        version = version.isoformat()
    elif isinstance(version, float):
        version = repr(version)  # full precision: two saves in one second still differ
    text = f"{size}:{str(version).strip(chr(34))}"
    if len(text) > _FINGERPRINT_CHARS:
        text = f"{size}:sha256:{hashlib.sha256(text.encode()).hexdigest()}"
    return text


def _under(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def list_manifests(
    inbox: str,
    exclude: list[str] | None = None,
    settle_seconds: float = 0.0,
    now: float | None = None,
) -> list[InboxEntry]:
    """Manifest files (CSV, JSONL, Parquet by extension) anywhere under ``inbox``, oldest first.

    Hidden files and folders (``.name``, ``_name``: upload tools' temporary files, reelbatch's own work folder)
    are skipped, and so is everything under ``exclude`` (an output folder inside the inbox would otherwise feed
    its own ``metadata.csv`` back in). A file modified less than ``settle_seconds`` ago may still be being
    written; it waits for the next pass.
    """
    root = normalize_root(inbox)
    fs, base = fsspec.core.url_to_fs(root)
    # A long-lived process (prefect serve, a worker) keeps s3fs instances: a cached listing would hide new files.
    fs.invalidate_cache()
    if not fs.exists(base):
        raise FileNotFoundError(f"inbox {redact_url(root)} does not exist")
    excluded = [fsspec.core.url_to_fs(normalize_root(e))[1] for e in exclude or []]
    now = time.time() if now is None else now
    found = []
    for path, info in fs.find(base, detail=True, withdirs=False).items():
        relative = path[len(base.rstrip("/")) + 1 :] if path != base else path.rsplit("/", 1)[-1]
        if any(part.startswith((".", "_")) for part in relative.split("/")):
            continue
        if not path.lower().endswith(tuple(MANIFEST_FORMATS)) or _under(path, excluded):
            continue
        modified = next((s for key in _MODIFIED_KEYS if (s := _seconds(info.get(key))) is not None), None)
        if settle_seconds and modified is not None and now - modified < settle_seconds:
            continue
        uri = path if is_local(root) else fs.unstrip_protocol(path)
        found.append(
            InboxEntry(uri=uri, fingerprint=fingerprint(info), size=int(info.get("size") or 0), modified=modified)
        )
    return sorted(found, key=lambda e: (e.modified or 0.0, e.uri))


def release_stale_claims(db: Database, inbox: str, older_than_hours: float | None) -> list[str]:
    """Mark ``running`` claims older than ``older_than_hours`` failed, so the next pass claims them again.

    A claim stays ``running`` forever when the process holding it died (worker lost, machine rebooted); without
    this such a manifest would never run. Returns the URIs released.
    """
    if older_than_hours is None:
        return []
    limit = datetime.now(UTC) - timedelta(hours=older_than_hours)
    return db.release_stale_inbox_claims(
        normalize_root(inbox),
        limit,
        f"claim abandoned (still running after {older_than_hours:g} h); released for a retry",
    )


def claim_manifests(db: Database, inbox: str, entries: list[InboxEntry]) -> list[InboxEntry]:
    """The entries this caller now owns: new ones and ones whose earlier run failed.

    Claiming is one database transaction per file, so two passes at the same time never both run a manifest.
    """
    key = normalize_root(inbox)
    return [e for e in entries if db.claim_inbox_manifest(key, e.uri, e.fingerprint)]


def finish_manifest(
    db: Database, entry: InboxEntry, status: str, run_id: str | None = None, error: str | None = None
) -> None:
    db.finish_inbox_manifest(
        entry.uri, entry.fingerprint, status, run_id=run_id, error=redact_text(error, entry.uri) if error else None
    )


def outcome(report: Any) -> tuple[str, str | None]:
    """(inbox status, error) for a generate-dataset report.

    Only a run whose every accepted video is done is ``processed``. A partial or refused run is ``failed``, so the
    next pass runs the manifest again, which resumes: finished videos are reused, only the missing ones run.
    """
    if report.status == "done":
        return "processed", None
    if report.status == "refused":
        return (
            "failed",
            f"refused: {len(report.rejected)} rejected rows and strict mode (fix the file and upload it again)",
        )
    return "failed", f"run {report.run_id} ended {report.status}: {report.failed} videos failed, {report.done} done"


def summary_markdown(inbox: str, results: list[dict[str, Any]], skipped: int) -> str:
    """The pass as a markdown table for the run's artifact."""
    lines = [
        f"# Inbox {cell(redact_url(inbox))}",
        "",
        f"{len(results)} manifests run, {skipped} already processed or being processed elsewhere.",
        "",
    ]
    if results:
        lines += ["| manifest | status | run | error |", "|---|---|---|---|"]
        for r in results:
            lines.append(
                f"| {cell(redact_url(r['uri']))} | {r['status']} | {r.get('run_id') or '-'} | "
                f"{cell(r.get('error') or '')} |"
            )
    return "\n".join(lines) + "\n"


# Prefect is imported last so that everything above reads, and is tested, as plain Python.
from reelbatch.tasks.step import step  # noqa: E402

list_manifests_task = step("list-inbox", list_manifests)
release_stale_claims_task = step("release-stale-inbox-claims", release_stale_claims)
claim_manifests_task = step("claim-inbox-manifests", claim_manifests)
finish_manifest_task = step("finish-inbox-manifest", finish_manifest)
