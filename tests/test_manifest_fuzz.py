"""Property-based fuzzing of the manifest reader (as many examples as the Hypothesis profile draws: `ci` in
`make test`, 2,000 in `make test-nightly`; bench/fuzz_manifest.py runs more)."""

from hypothesis import HealthCheck, given, settings

from tests.manifest_fuzz import check_reader, hostile_manifests


@settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(hostile_manifests)
def test_hostile_manifests_give_rows_rejections_or_one_clean_error(data):
    check_reader(data)
