"""Makespan by manifest size: the packed plan against the naive policy and the lower bound, 1 to 100,000 prompts.

    .venv/bin/python bench/fleet_sizes.py                         # 4 x 8 H100, 1 .. 100,000 prompts (about a minute)
    .venv/bin/python bench/fleet_sizes.py --nodes 8 --sizes 1,3,50,12000 --seeds 3
    .venv/bin/python bench/fleet_sizes.py --compile auto            # jobs that pay back a compile compile

Each size is bench/fleet.py's generated mixed manifest (9 shapes, 6 families, 1-4 videos a prompt), read and
validated, planned for the fleet (job widths and lengths fitted to it, ``planning.fleet.fit``), packed and
simulated with the naive policy next to it (one job per prompt, ulysses = G on a whole node). Prints, per size,
makespan packed / naive / lower bound, packed / bound, naive / packed, how many jobs run wider than the chooser's
plan and the seconds planning and simulating took. The targets: packed never slower than naive at any size, and
within 1.05x of the bound from 10,000 prompts up. Figures are the cost model's estimates, not GPU measurements.

``--compile`` is the run's (default ``off`` here: the bound has no compile to pay once per job, so the 1.05 target is
about widths and lengths). With ``auto`` the bound counts compiled jobs' samples at the compiled speed and the
90 s compile per job is overhead like the load: the ratio target is not checked, the naive one still is.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import write_mixed_manifest

SIZES = (1, 2, 3, 5, 10, 20, 50, 100, 300, 1_000, 3_000, 12_000, 30_000, 100_000)
BOUND_TARGET = 1.05  # makespan / lower bound, for manifests of BOUND_FROM prompts or more
BOUND_FROM = 10_000


def measure(prompts: int, seed: int, args: argparse.Namespace) -> dict:
    from reelbatch.manifest import read_manifest
    from reelbatch.models.catalog import ModelCatalog
    from reelbatch.planning.fleet.simulation import simulate
    from reelbatch.schemas import RunDefaults

    catalog = ModelCatalog.from_config()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sizes.csv"
        write_mixed_manifest(path, prompts, seed)
        read = read_manifest(path, RunDefaults(), catalog.names())
        started = time.perf_counter()
        report = simulate(
            read,
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            gpu=args.gpu,
            catalog=catalog,
            compile=args.compile,
        )
        seconds = time.perf_counter() - started
    packed, naive = report.packed, report.naive
    return {
        "prompts": prompts,
        "seed": seed,
        "videos": packed.samples,
        "packed_s": packed.makespan_s,
        "naive_s": naive.makespan_s,
        "bound_s": packed.lower_bound_s,
        "widened_jobs": sum(1 for job in report.run_plan.jobs if any("widened" in n for n in job.notes)),
        "jobs": packed.jobs,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated prompt counts")
    parser.add_argument("--seeds", type=int, default=1, help="manifests per size (generator seeds 0..N-1)")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--gpu", default="h100")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="off", help="the run's --compile")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",") if size]
    print(
        f"fleet {args.nodes} x {args.gpus_per_node} {args.gpu}, --compile {args.compile}; makespans in hours "
        "(cost model estimates)"
    )
    header = ("prompts", "seed", "videos", "packed h", "naive h", "bound h", "packed/bound", "naive/packed")
    print("".join(f"{h:>14}" for h in header) + f"{'widened jobs':>14}{'jobs':>9}{'s':>8}")
    missed = 0
    for prompts in sizes:
        for seed in range(args.seeds):
            m = measure(prompts, seed, args)
            ratio = m["packed_s"] / m["bound_s"] if m["bound_s"] else 0.0
            speedup = m["naive_s"] / m["packed_s"] if m["packed_s"] else 0.0
            slower = m["packed_s"] > m["naive_s"] * (1 + 1e-9)
            loose = args.compile == "off" and prompts >= BOUND_FROM and ratio > BOUND_TARGET
            missed += slower or loose
            print(
                f"{prompts:>14,}{seed:>14}{m['videos']:>14,}{m['packed_s'] / 3600:>14.3f}{m['naive_s'] / 3600:>14.3f}"
                f"{m['bound_s'] / 3600:>14.3f}{ratio:>14.3f}{speedup:>14.3f}{m['widened_jobs']:>14,}{m['jobs']:>9,}"
                f"{m['seconds']:>8.2f}" + ("  SLOWER THAN NAIVE" if slower else "") + ("  ABOVE 1.05" if loose else "")
            )
    print(
        "targets: packed <= naive at every size; packed / bound <= "
        f"{BOUND_TARGET} from {BOUND_FROM:,} prompts -> {'met' if not missed else f'MISSED {missed} time(s)'}"
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
