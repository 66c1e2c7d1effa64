"""Rank 0 leaves a detached grandchild behind (own session, like torchrun's ranks) and exits 0."""

import subprocess
import sys

from rank_scripts.common import rank, write_pid

if rank() == 0:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    write_pid("grandchild", child.pid)
print(f"rank {rank()} done")
