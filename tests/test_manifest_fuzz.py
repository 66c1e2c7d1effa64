"""Property-based fuzzing of the manifest reader: 1,000 examples in `make test` (derandomized: the first thousand
reach every outcome the strategy makes, accepted rows and each file-level error included; 100 reached five of
eleven), twenty times more in `make test-nightly`; bench/fuzz_manifest.py runs more."""

from hypothesis import HealthCheck, given, settings

from tests.hypothesis_budget import scaled
from tests.manifest_fuzz import check_reader, hostile_manifests


@settings(
    max_examples=scaled(1000, most=20000), deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(hostile_manifests)
def test_hostile_manifests_give_rows_rejections_or_one_clean_error(data):
    check_reader(data)
