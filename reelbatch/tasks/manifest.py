"""The Prefect step that reads and validates a run's manifest (``reelbatch.manifest.read_manifest``)."""

from __future__ import annotations

from reelbatch.manifest import read_manifest
from reelbatch.tasks.step import step

read_manifest_task = step("read-and-validate-manifest", read_manifest)
