"""Whole-command speed: `reelbatch plan big.csv` from Python's start to its exit, against a whole-process
``python -c "import pandas; pandas.read_csv(big.csv)"`` of the same file.

    .venv/bin/python bench/plan_command.py                          # 100,000 rows, best of 3
    .venv/bin/python bench/plan_command.py --rows 100000 1000000 --repeat 2 --jobs

For each manifest size (``bench/fleet.py``'s mixed manifest), runs each command ``--repeat`` times in a fresh
process, stdout to a file, and prints the best wall time, that run's CPU time (user + sys) and peak RSS, the
bytes printed, and the wall-time ratio to the pandas baseline. Commands: the summary table, ``--json``, both with
the fleet estimate (``--nodes 4 --gpu h100``), and with ``--jobs`` the job listings too (they hash every
sample id: no target). Targets for the summary commands: ratio <= 3, peak RSS <= 300 MB. The machine's other
load inflates wall times: the CPU column is the steadier figure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import write_mixed_manifest

TARGET_RATIO = 3.0
TARGET_RSS_MB = 300.0
FLEET = ("--nodes", "4", "--gpu", "h100")


def measure(command: list[str], repeat: int, output: Path) -> dict:
    """Best wall time of ``repeat`` runs, with that run's CPU seconds, peak RSS (MB), exit code and output size."""
    best: dict = {}
    for _ in range(repeat):
        with output.open("wb") as sink:
            started = time.perf_counter()
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.DEVNULL)
            _, status, usage = os.wait4(process.pid, 0)
            wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if not best or wall < best["wall"]:
            best = {
                "wall": wall,
                "cpu": usage.ru_utime + usage.ru_stime,
                "rss_mb": usage.ru_maxrss / 1024,  # kilobytes on Linux
                "code": process.returncode,
                "bytes": output.stat().st_size,
            }
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", action="store_true", help="also time --jobs (every job listed; slow)")
    args = parser.parse_args(argv)

    plan = [sys.executable, "-m", "reelbatch.cli", "plan"]
    met = True
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "stdout"
        for rows in args.rows:
            path = Path(folder) / f"manifest-{rows}.csv"
            write_mixed_manifest(path, rows, seed=1)
            print(f"\n{rows:,} rows, {path.stat().st_size / 1e6:.0f} MB CSV; best of {args.repeat}")
            print(f"{'command':44} {'wall s':>7} {'CPU s':>6} {'RSS MB':>7} {'output':>9}  ratio")
            baseline = measure(
                [sys.executable, "-c", "import sys, pandas; pandas.read_csv(sys.argv[1])", str(path)],
                args.repeat,
                output,
            )
            print(
                f"{'python -c pandas.read_csv':44} {baseline['wall']:7.2f} {baseline['cpu']:6.2f} "
                f"{baseline['rss_mb']:7.0f} {'':>9}  1.0x"
            )
            commands = [((), True), (("--json",), True), (FLEET, False), (("--json", *FLEET), False)]
            if args.jobs:
                commands += [(("--jobs",), False), (("--json", "--jobs"), False)]
            for options, targeted in commands:
                result = measure([*plan, str(path), *options], args.repeat, output)
                ratio = result["wall"] / baseline["wall"]
                verdict = ""
                if targeted and rows <= 100_000:
                    ok = ratio <= TARGET_RATIO and result["rss_mb"] <= TARGET_RSS_MB
                    met &= ok
                    verdict = "  met" if ok else f"  MISSED (<= {TARGET_RATIO:g}x, <= {TARGET_RSS_MB:g} MB)"
                name = " ".join(["reelbatch plan big.csv", *options])
                print(
                    f"{name:44} {result['wall']:7.2f} {result['cpu']:6.2f} {result['rss_mb']:7.0f} "
                    f"{result['bytes'] / 1e6:7.1f}MB  {ratio:.1f}x{verdict}"
                    + (f"  (exit {result['code']})" if result["code"] not in (0, 1) else "")
                )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
