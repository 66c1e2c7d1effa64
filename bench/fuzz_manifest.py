"""Fuzz the manifest reader longer than CI does: python bench/fuzz_manifest.py [--examples N] (default 10,000).

Prints how many inputs ran, how long it took and the peak memory; exits non-zero on the first misbehaviour
(any exception other than one ManifestError, or a rejection without a rule, message and fix).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests.manifest_fuzz import check_reader, hostile_manifests  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=10_000)
    args = parser.parse_args()
    count = 0

    @settings(max_examples=args.examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(hostile_manifests)
    def fuzz(data: bytes) -> None:
        nonlocal count
        count += 1
        check_reader(data)

    started = time.perf_counter()
    fuzz()
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"manifest fuzzing: {count:,} inputs in {seconds:.1f} s, no misbehaviour; peak RSS {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
