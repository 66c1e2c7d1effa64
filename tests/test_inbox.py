"""The manifest inbox: listing (local folder and s3://), fingerprints, claims, and one nightly pass end to end."""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest
import s3fs
from sqlalchemy import update

from reelbatch.infra.db import Database, InboxManifestRecord
from reelbatch.tasks.inbox import (
    claim_manifests,
    fingerprint,
    finish_manifest,
    list_manifests,
    release_stale_claims,
)

GOOD = "prompt,model,height,width,num_frames,num_inference_steps,guidance_scale\na cat,tiny-wan,32,32,5,2,1.0\n"


def _names(entries, root):
    return sorted(e.uri.removeprefix(str(root)).lstrip("/") for e in entries)


def test_local_listing_skips_hidden_other_files_and_the_output(tmp_path):
    inbox = tmp_path / "inbox"
    for name in (
        "a.csv",
        "b.jsonl",
        "sub/c.parquet",
        "notes.txt",
        ".upload.csv.tmp",
        ".hidden.csv",
        "_partial/d.csv",
        "videos/metadata.csv",
        "videos/.reelbatch/r/job.csv",
    ):
        (inbox / name).parent.mkdir(parents=True, exist_ok=True)
        (inbox / name).write_text(GOOD)
    entries = list_manifests(str(inbox), exclude=[str(inbox / "videos")])
    assert _names(entries, inbox.resolve()) == ["a.csv", "b.jsonl", "sub/c.parquet"]
    assert all(os.path.isabs(e.uri) for e in entries)  # generate-dataset and the DB see one spelling


def test_missing_inbox_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_manifests(str(tmp_path / "nope"))


def test_fingerprint_follows_content_not_name(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text(GOOD)
    os.utime(path, (1_700_000_000, 1_700_000_000))
    [first] = list_manifests(str(tmp_path))
    path.write_text(GOOD.replace("cat", "dog"))  # same size, new content
    os.utime(path, (1_700_000_100, 1_700_000_100))
    [second] = list_manifests(str(tmp_path))
    assert first.uri == second.uri and first.fingerprint != second.fingerprint
    assert fingerprint({"size": 3, "ETag": '"abc"', "mtime": 1.0}) == "3:abc"  # ETag wins over time
    assert len(fingerprint({"size": 1, "ETag": "x" * 400})) <= 128


def test_files_still_being_written_wait(tmp_path):
    (tmp_path / "old.csv").write_text(GOOD)
    os.utime(tmp_path / "old.csv", (time.time() - 600, time.time() - 600))
    (tmp_path / "new.csv").write_text(GOOD)
    assert _names(list_manifests(str(tmp_path), settle_seconds=120), tmp_path.resolve()) == ["old.csv"]


def test_s3_listing_uses_etags(s3_bucket):
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.pipe(f"{s3_bucket}/incoming/a.csv", GOOD.encode())
    fs.pipe(f"{s3_bucket}/incoming/deep/b.csv", GOOD.encode())
    fs.pipe(f"{s3_bucket}/incoming/readme.md", b"drop CSVs here")
    fs.pipe(f"{s3_bucket}/elsewhere.csv", GOOD.encode())
    inbox = f"s3://{s3_bucket}/incoming/"
    entries = list_manifests(inbox)
    assert [e.uri for e in entries] == [f"s3://{s3_bucket}/incoming/a.csv", f"s3://{s3_bucket}/incoming/deep/b.csv"]
    etag = fs.info(f"{s3_bucket}/incoming/a.csv")["ETag"].strip('"')
    assert entries[0].fingerprint == f"{len(GOOD)}:{etag}"
    # A file uploaded again under the same key with new content is a new manifest; the listing is not cached.
    fs.pipe(f"{s3_bucket}/incoming/a.csv", GOOD.replace("cat", "dog").encode())
    again = {e.uri: e.fingerprint for e in list_manifests(inbox)}
    assert again[entries[0].uri] != entries[0].fingerprint


def test_claims_run_each_manifest_once_and_retry_failures(tmp_path, database):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.csv").write_text(GOOD)
    (inbox / "b.csv").write_text(GOOD)
    entries = list_manifests(str(inbox))
    a, b = entries

    assert claim_manifests(database, str(inbox), entries) == entries
    assert claim_manifests(database, str(inbox), entries) == []  # claimed: a second pass leaves them
    finish_manifest(database, a, "processed")
    finish_manifest(database, b, "failed", error="boom")
    assert claim_manifests(database, str(inbox), entries) == [b]  # only the failed one comes back

    (inbox / "a.csv").write_text(GOOD + "a dog,tiny-wan,32,32,5,2,1.0\n")  # replaced under the same name
    changed = [e for e in list_manifests(str(inbox)) if e.uri == a.uri]
    assert claim_manifests(database, str(inbox), changed) == changed
    rows = database.inbox_manifests(str(inbox.resolve()))
    assert sorted((r["uri"].rsplit("/", 1)[1], r["status"]) for r in rows) == [
        ("a.csv", "processed"),
        ("a.csv", "running"),
        ("b.csv", "running"),
    ]


def test_abandoned_claims_are_released(tmp_path, database):
    (tmp_path / "a.csv").write_text(GOOD)
    entries = list_manifests(str(tmp_path))
    claim_manifests(database, str(tmp_path), entries)
    assert release_stale_claims(database, str(tmp_path), 48) == []
    table = InboxManifestRecord.__table__
    with database.engine.begin() as connection:
        connection.execute(update(table).values(updated_at=datetime.now(UTC) - timedelta(hours=49)))
    assert release_stale_claims(database, str(tmp_path), 48) == [entries[0].uri]
    assert claim_manifests(database, str(tmp_path), entries) == entries


@pytest.mark.slow
@pytest.mark.torchrun
def test_nightly_pass_runs_new_manifests_and_marks_them(tmp_path, tiny_models):
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from reelbatch.config import RunConfig
    from reelbatch.flows.nightly import nightly_dataset

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "good.csv").write_text(GOOD)
    (inbox / "broken.csv").write_bytes(b"text,other\n1,2\n")
    db_file = tmp_path / "state.db"
    with Database(f"sqlite:///{db_file}") as db:
        db.upgrade()
    params = dict(
        inbox=str(inbox),
        config=RunConfig(output=str(tmp_path / "videos"), db_url=f"sqlite:///{db_file}", gpus_per_node=2),
        settle_seconds=0,
    )

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        first = nightly_dataset(**params, return_state=True)
        assert first.is_failed() and "broken.csv" in first.message  # one bad file fails the pass, not the others
        with sqlite3.connect(db_file) as con:
            inbox_rows = {
                uri.rsplit("/", 1)[1]: status for uri, status in con.execute("select uri, status from inbox_manifests")
            }
            assert inbox_rows == {"broken.csv": "failed", "good.csv": "processed"}
            [(run_id, manifest, status)] = con.execute("select id, manifest_source, status from runs").fetchall()
            assert manifest == str((inbox / "good.csv").resolve()) and status == "done"
            assert con.execute("select count(*) from samples where status = 'done'").fetchone()[0] == 1
            assert con.execute("select run_id from inbox_manifests where status = 'processed'").fetchone()[0] == run_id

        # The next pass skips what was processed and runs the fixed file (a new fingerprint). Its prompt is the
        # one good.csv already made into the same output, so the video is reused, not generated again.
        (inbox / "broken.csv").write_text(GOOD)
        second = nightly_dataset(**params, return_state=True)
        assert second.is_completed(), second.message
        assert [(r["uri"].rsplit("/", 1)[1], r["status"]) for r in second.result()] == [("broken.csv", "processed")]
    with sqlite3.connect(db_file) as con:
        assert con.execute("select count(*) from runs").fetchone()[0] == 2
        reused = con.execute("select reused_from_run from samples where run_id != ?", (run_id,)).fetchall()
        assert reused == [(run_id,)]
