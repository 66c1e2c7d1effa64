import os
import sys

print(f"ARGV {sys.argv[1:]!r}")
print(f"ENV {os.environ.get('OMP_NUM_THREADS')!r} {os.environ.get('REELBATCH_TEST_VALUE')!r}")
