"""Sleep forever; with --ignore-sigterm only SIGKILL can end this rank."""

import signal
import sys
import time

from rank_scripts.common import rank, write_pid

if "--ignore-sigterm" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
write_pid(f"rank{rank()}")
print(f"rank {rank()} hanging", flush=True)
time.sleep(3600)
