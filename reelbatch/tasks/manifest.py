"""The Prefect step that reads and validates a run's manifest (``reelbatch.manifest.read_manifest``)."""

from __future__ import annotations

from prefect import task

from reelbatch.manifest import read_manifest

read_manifest_task = task(name="read-and-validate-manifest")(read_manifest)
