"""Fleet benchmark: a generated mixed manifest planned, packed and simulated on K nodes of G GPUs.

    .venv/bin/python bench/fleet.py                      # 10,000 prompts on 4 x 8 H100 (the targets below)
    .venv/bin/python bench/fleet.py --prompts 20000 --nodes 8 --gpu a800 --storage s3 --json

Prints the packed policy's figures against the naive one (one job per prompt, ulysses = G on a whole node) and
whether each target is met: padding ratio <= 0.5 %, makespan / lower bound <= 1.05, speed-up vs naive >= 1.3x.
Figures are the cost model's estimates (reelbatch/planning/cost.py), not measurements; nothing runs on a GPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"padding_ratio": 0.005, "ratio": 1.05, "speedup": 1.3}

# (weight, model, height, width, frames, steps, guidance, embedded guidance, sequence_batch)
SHAPES = [
    (25, "wan2.1-t2v-14b", 480, 832, 81, 50, 5.0, None, False),
    (8, "wan2.1-t2v-14b", 720, 1280, 81, 50, 5.0, None, False),  # CFG parallel on 2 GPUs (memory)
    (4, "wan2.1-t2v-14b", 720, 1280, 81, 50, 5.0, None, True),  # sequence_batch: one GPU, passes in turn
    (20, "wan2.1-t2v-1.3b", 480, 832, 81, 50, 5.0, None, False),
    (15, "hunyuanvideo", 544, 960, 97, 50, 1.0, 6.0, False),  # no CFG (distilled guidance only)
    (5, "hunyuanvideo", 720, 1280, 129, 50, 1.0, 6.0, False),
    (10, "skyreels-v1-t2v", 544, 960, 97, 30, 6.0, 1.0, False),
    (8, "wan2.2-ti2v-5b", 704, 1280, 121, 50, 5.0, None, False),
    (5, "wan2.2-t2v-a14b", 480, 832, 81, 40, 4.0, None, False),  # two resident experts: CFG parallel
]
SUBJECTS = [
    "a red fox",
    "an old lighthouse",
    "a street market",
    "a paper boat",
    "two dancers",
    "a glacier",
    "a robot arm",
    "a koi pond",
    "a desert storm",
    "a night train",
    "a bakery",
    "a hummingbird",
]
ACTIONS = [
    "at dawn",
    "in slow motion",
    "under neon lights",
    "seen from a drone",
    "in heavy rain",
    "at golden hour",
    "in a snowstorm",
    "through fog",
    "close up",
    "time-lapse",
]
COLUMNS = [
    "id",
    "prompt",
    "negative_prompt",
    "model",
    "height",
    "width",
    "num_frames",
    "num_inference_steps",
    "guidance_scale",
    "embedded_guidance_scale",
    "seed",
    "num_videos",
    "sequence_batch",
]


def write_mixed_manifest(
    path: str | os.PathLike[str], prompts: int, seed: int = 0, shapes: list[tuple] = SHAPES
) -> None:
    """A CSV of ``prompts`` rows over ``shapes`` (weights), some with several videos and negative prompts."""
    rng = random.Random(seed)
    weights = [s[0] for s in shapes]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for index in range(prompts):
            _, model, height, width, frames, steps, guidance, embedded, sequence_batch = rng.choices(shapes, weights)[0]
            prompt = f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)}, shot {index}, " + " ".join(
                rng.choice(["cinematic", "detailed", "soft light", "35mm", "wide angle", "handheld"])
                for _ in range(rng.randint(3, 12))
            )
            writer.writerow(
                [
                    f"p{index:06d}",
                    prompt,
                    rng.choice(["", "", "blurry, low quality"]),
                    model,
                    height,
                    width,
                    frames,
                    steps,
                    guidance,
                    "" if embedded is None else embedded,
                    index,
                    rng.choice([1, 1, 1, 1, 2, 3, 4]),
                    "true" if sequence_batch else "",
                ]
            )


def run(args: argparse.Namespace) -> dict:
    from reelbatch.manifest import read_manifest
    from reelbatch.models.catalog import ModelCatalog
    from reelbatch.planning.fleet.simulation import simulate
    from reelbatch.schemas import RunDefaults

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fleet.csv"
        write_mixed_manifest(path, args.prompts, args.seed)
        catalog = ModelCatalog.from_config()
        started = time.perf_counter()
        read = read_manifest(path, RunDefaults(), catalog.names())
        report = simulate(
            read,
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            gpu=args.gpu,
            catalog=catalog,
            storage=args.storage,
            target_seconds=args.target_seconds,
            padding=args.padding,
            width=args.width,
        )
        elapsed = time.perf_counter() - started
    doc = report.to_json()
    doc["bench"] = {
        "prompts": args.prompts,
        "rows_accepted": read.total_rows - len(read.rejections),
        "shapes": len({j.bucket for j in report.run_plan.jobs}),
        "families": len({j.bucket.model for j in report.run_plan.jobs}),
        "seconds_to_plan_and_simulate": round(elapsed, 2),
        "targets": {name: {"target": value, "met": _met(name, value, doc, report)} for name, value in TARGETS.items()},
    }
    return doc


def _met(name: str, target: float, doc: dict, report) -> bool:
    if name == "speedup":
        return report.speedup >= target
    return doc[name] <= target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--gpu", default="h100")
    parser.add_argument("--storage", choices=["local", "s3"], default="local")
    parser.add_argument("--target-seconds", type=float, default=1800.0)
    parser.add_argument("--padding", choices=["pad", "fill"], default="pad")
    parser.add_argument("--width", choices=["group", "node"], default="group")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    doc = run(args)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        bench, naive = doc["bench"], doc["naive"]
        fleet = doc["fleet"]
        print(
            f"manifest: {bench['prompts']:,} prompts ({bench['rows_accepted']:,} accepted), {doc['samples']:,} "
            f"videos, {bench['shapes']} shapes, {bench['families']} families; fleet {fleet['nodes']} x "
            f"{fleet['gpus_per_node']} {fleet['gpu']}, weights from {fleet['storage']}; planned and simulated in "
            f"{bench['seconds_to_plan_and_simulate']} s"
        )
        print(f"{'':24}{'packed':>14}{'naive':>14}")
        for key in (
            "makespan_s",
            "lower_bound_s",
            "ratio",
            "gpu_utilization",
            "padding_ratio",
            "gpu_hours",
            "jobs",
            "load_gpu_hours",
        ):
            print(f"{key:24}{doc[key]:>14,}{naive[key]:>14,}")
        print(f"{'speedup_vs_naive':24}{doc['speedup_vs_naive']:>14}")
        for name, result in bench["targets"].items():
            value = doc["speedup_vs_naive"] if name == "speedup" else doc[name]
            sign = ">=" if name == "speedup" else "<="
            print(f"target {name} {sign} {result['target']}: {value} -> {'met' if result['met'] else 'MISSED'}")
        for note in doc["naive_notes"]:
            print(f"naive: {note}")
    return 0 if all(t["met"] for t in doc["bench"]["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
