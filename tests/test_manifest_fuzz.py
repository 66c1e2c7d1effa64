"""Property-based fuzzing of the manifest reader (2,000 examples in CI; bench/fuzz_manifest.py runs more)."""

from hypothesis import HealthCheck, given, settings

from tests.manifest_fuzz import check_reader, hostile_manifests


@settings(max_examples=2000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(hostile_manifests)
def test_hostile_manifests_give_rows_rejections_or_one_clean_error(data):
    check_reader(data)
