"""Job overhead benchmark: the same N prompts through a reelbatch job and through a bare diffusers loop.

    .venv/bin/python bench/job_overhead.py                       # tiny-wan 32x32x5, 4 steps, N = 8 and 64, 1 rank
    .venv/bin/python bench/job_overhead.py --repeat 2 --ranks 2  # best of 2; the job on 2 torchrun ranks
    .venv/bin/python bench/job_overhead.py --bare-writes none    # the bare loop writes nothing
    .venv/bin/python bench/job_overhead.py --bare-threads 2      # bare loop with 2 OpenMP threads (ranks get 1)
    .venv/bin/python bench/job_overhead.py --real-size           # CUDA only: a Wan2.1-1.3B-sized transformer
    .venv/bin/python bench/job_overhead.py --real-size --dry-check   # CPU: builds the real-size config with
                                                                     # --layers 2 and runs 1-2 samples for wiring

reelbatch path, in a fresh orchestrator process per N (like ``reelbatch run``): a CSV manifest of the N prompts
is read, planned (one job: --max-samples-per-job is N unless given), recorded in a SQLite file, prepared,
executed (real ``torchrun`` ranks, mp4s + sidecars staged, verified, published, rows marked done), finished,
and the dataset index (metadata.csv, samples.parquet, gallery) written: the calls ``flows/generate.py`` makes,
without Prefect around them. Bare path: one fresh Python process that
loads the same folder with ``DiffusionPipeline.from_pretrained`` and calls the pipeline once per prompt with the
same size, frames, steps, guidance and seed, writing the same H.264 mp4s (``--bare-writes none``: nothing).

Both paths start cold for every N (new processes, model loaded once per N) and no warm-up run is excluded from
either, so start-up, imports, the load and first-call costs sit in the intercept. The marginal seconds per extra
prompt, (t_big - t_small) / (big - small), cancels them, torchrun's 5-7 s start included. Target: reelbatch
marginal <= 1.2 x bare marginal + 20 ms. ``--real-size`` prints steady-state throughput (1 / marginal) of both;
target reelbatch >= 0.97 x bare. The best of ``--repeat`` runs (by wall time) is reported, with its CPU seconds
(this process plus its waited-for children), which a shared machine disturbs much less than wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MARGINAL_RATIO = 1.2
MARGINAL_SLACK_S = 0.020
REAL_SIZE_THROUGHPUT_RATIO = 0.97
MODEL_NAME = "bench-model"  # the name the manifest uses; mapped to the folder with --model-path semantics

# Wan2.1-T2V-1.3B's transformer (its diffusers config.json); only the layer count may be overridden (dry checks).
WAN13B_TRANSFORMER = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
}

SUBJECTS = [
    "a red fox",
    "an old lighthouse",
    "a street market",
    "a paper boat",
    "two dancers",
    "a glacier",
    "a robot arm",
    "a koi pond",
]
ACTIONS = [
    "at dawn",
    "in slow motion",
    "under neon lights",
    "seen from a drone",
    "in heavy rain",
    "close up",
    "through fog",
    "time-lapse",
]


@dataclass(frozen=True)
class Settings:
    height: int
    width: int
    num_frames: int
    steps: int
    guidance: float
    fps: int = 8


def prompts(n: int) -> list[str]:
    # Distinct prompts: identical ones would share a sample id, and reelbatch would run them once.
    return [f"{SUBJECTS[i % 8]} {ACTIONS[(i // 8) % 8]}, shot {i}" for i in range(n)]


# --- the bare path (runs in its own process) ---------------------------------------------------------------


def bare_worker(job_path: str) -> int:
    """Entry of the bare process; prints one JSON line of its own timings."""
    started = time.perf_counter()
    job = json.loads(Path(job_path).read_text())
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from diffusers import DiffusionPipeline

    imported = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # what reelbatch's ranks load
    pipe = DiffusionPipeline.from_pretrained(job["model_path"], dtype=dtype, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # UMT5 ships with dropout on; reelbatch's ranks turn it off too
    pipe = pipe.to(device)
    loaded = time.perf_counter()
    s = Settings(**job["settings"])
    out = Path(job["out"])
    write_seconds = 0.0
    for index, prompt in enumerate(job["prompts"]):
        frames = pipe(
            prompt=prompt,
            negative_prompt="",
            height=s.height,
            width=s.width,
            num_frames=s.num_frames,
            num_inference_steps=s.steps,
            guidance_scale=s.guidance,
            generator=torch.Generator("cpu").manual_seed(index),
            output_type="np",
        ).frames[0]
        if job["writes"] == "mp4":
            wrote = time.perf_counter()
            _write_mp4(out / f"{index:05d}.mp4", frames, s.fps)
            write_seconds += time.perf_counter() - wrote
    done = time.perf_counter()
    print(
        json.dumps(
            {
                "import_s": imported - started,
                "load_s": loaded - imported,
                "loop_s": done - loaded,
                "write_s": write_seconds,
            }
        )
    )
    return 0


def _write_mp4(path: Path, frames, fps: int) -> None:
    # The encoder settings reelbatch's ranks use, so the two paths pay for the same bytes.
    import imageio.v3 as iio
    import numpy as np

    pixels = (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    iio.imwrite(path, pixels, plugin="pyav", codec="libx264", fps=fps, out_pixel_format="yuv420p")


def run_bare(n: int, model_path: Path, settings: Settings, writes: str, threads: int, work: Path) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"bare-{n}-", dir=work))
    (folder / "out").mkdir()
    job = {
        "model_path": str(model_path),
        "settings": asdict(settings),
        "prompts": prompts(n),
        "writes": writes,
        "out": str(folder / "out"),
    }
    (folder / "job.json").write_text(json.dumps(job))
    started = time.perf_counter()
    # reelbatch's launcher gives every rank OMP_NUM_THREADS=1; on a few shared cores the thread count alone
    # moves the per-prompt time several-fold, so the bare loop gets the same unless told otherwise.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(
        [sys.executable, __file__, "--bare-worker", str(folder / "job.json")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    total = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"bare loop failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    phases = json.loads(proc.stdout.strip().splitlines()[-1])
    written = len(list((folder / "out").glob("*.mp4")))
    if written != (n if writes == "mp4" else 0):
        raise RuntimeError(f"bare loop wrote {written} mp4s for {n} prompts")
    return {"total_s": total, **phases}


# --- the reelbatch path --------------------------------------------------------------------------------------


def write_manifest(path: Path, n: int, settings: Settings) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["id", "prompt", "model", "height", "width", "num_frames", "num_inference_steps", "guidance_scale", "seed"]
        )
        for index, prompt in enumerate(prompts(n)):
            writer.writerow(
                [
                    f"p{index:05d}",
                    prompt,
                    MODEL_NAME,
                    settings.height,
                    settings.width,
                    settings.num_frames,
                    settings.steps,
                    settings.guidance,
                    index,
                ]
            )


def run_reelbatch(
    n: int, model_path: Path, settings: Settings, ranks: int, max_per_job: int | None, work: Path
) -> dict:
    """One run in a fresh orchestrator process, as ``reelbatch run`` would be: its imports and first-use costs
    (Prefect, pandas, pyarrow for the index) land in every N alike, as the bare process's do."""
    folder = Path(tempfile.mkdtemp(prefix=f"reelbatch-{n}-", dir=work))
    job = {
        "n": n,
        "model_path": str(model_path),
        "settings": asdict(settings),
        "ranks": ranks,
        "max_per_job": max_per_job,
        "folder": str(folder),
    }
    (folder / "bench.json").write_text(json.dumps(job))
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--reelbatch-worker", str(folder / "bench.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    total = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"reelbatch run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"total_s": total, **json.loads(proc.stdout.strip().splitlines()[-1])}


def reelbatch_worker(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    started = time.perf_counter()
    result = _reelbatch_run(
        job["n"],
        Path(job["model_path"]),
        Settings(**job["settings"]),
        job["ranks"],
        job["max_per_job"],
        Path(job["folder"]),
    )
    result["run_s"] = result.pop("total_s")
    result["setup_s"] = time.perf_counter() - started - result["run_s"]  # imports + schema creation
    print(json.dumps(result))
    return 0


def _reelbatch_run(
    n: int, model_path: Path, settings: Settings, ranks: int, max_per_job: int | None, folder: Path
) -> dict:
    from reelbatch.infra.db import Database
    from reelbatch.infra.failures import RetryPolicy
    from reelbatch.manifest import read_manifest
    from reelbatch.models.catalog import ModelCatalog
    from reelbatch.planning.planner import plan_run
    from reelbatch.schemas import RunDefaults
    from reelbatch.tasks.dispatch import prepare_job
    from reelbatch.tasks.execute import execute_job
    from reelbatch.tasks.export import write_dataset_index
    from reelbatch.tasks.record import finish_run, start_run

    manifest, output = folder / "prompts.csv", str(folder / "out")
    db_url = f"sqlite:///{folder / 'reelbatch.db'}"
    write_manifest(manifest, n, settings)
    # Creating the schema is a one-off per database, not per run: outside the run's own clock (run_s).
    with Database(db_url) as db:
        db.upgrade()
    catalog = ModelCatalog.from_config([f"{MODEL_NAME}={model_path}"])
    defaults = RunDefaults(fps=settings.fps)
    clock = {"start": time.perf_counter()}
    read = read_manifest(manifest, defaults, catalog.names())
    # Nothing was made into this fresh output folder, so the done-sample lookup would find nothing: skipped.
    plan = plan_run(read.rows, read.rejections, read.total_rows, catalog, ranks, max_per_job or n)
    if plan.rejected:
        raise RuntimeError(f"the planner rejected rows: {plan.rejected[0].message}")
    with Database(db_url) as db:  # the run's one Database, as the flow holds it
        run_id = start_run(db, read, plan, output, ranks, {"bench": "job_overhead"})
        specs = [prepare_job(job, run_id, output, db, catalog, settings.fps) for job in plan.jobs]
        clock["planned"] = time.perf_counter()
        launch_s, attempts = 0.0, 0
        for spec in specs:
            result = execute_job(spec, db, output, None, RetryPolicy.from_dict(None))
            attempts += result.attempts
            if result.status != "done":
                log = Path(spec.results_path).parent / "ranks.log"
                tail = log.read_text()[-3000:] if log.exists() else ""
                raise RuntimeError(f"job {spec.job_id} {result.status} ({result.failure_kind}):\n{tail}")
            launch_s += sum(a["seconds"] or 0.0 for a in _attempts(db, spec.job_id))
        clock["executed"] = time.perf_counter()
        report = finish_run(db, run_id, plan, output)
        write_dataset_index(db, run_id, output)
    clock["finished"] = time.perf_counter()
    videos = len(list(Path(output).glob("??/*.mp4")))
    if report.done != n or videos != n or attempts != len(specs):
        raise RuntimeError(f"run {run_id}: {report.done} done, {videos} mp4s, {attempts} attempts for {n} prompts")
    return {
        "total_s": clock["finished"] - clock["start"],
        "plan_record_s": clock["planned"] - clock["start"],
        "launch_s": launch_s,  # torchrun start to exit, as the launcher measured it
        "collect_s": clock["executed"] - clock["planned"] - launch_s,  # publish + DB rows + attempt records
        "finish_index_s": clock["finished"] - clock["executed"],
        "jobs": len(specs),
        "plan": str(specs[0].plan.as_dict()),
    }


def _attempts(db, job_id: str) -> list[dict]:
    from sqlalchemy import text

    with db.engine.connect() as connection:
        rows = connection.execute(text("SELECT seconds FROM job_attempts WHERE job_id = :j"), {"j": job_id})
        return [dict(r._mapping) for r in rows]


# --- models --------------------------------------------------------------------------------------------------


def build_real_size(folder: Path, layers: int, device: str) -> dict:
    """A WanPipeline folder whose transformer has Wan2.1-1.3B's shape and random weights.

    The text encoder is a one-layer UMT5 that only has the right output width (4096) and the VAE is tiny: on a
    real run the transformer's 2 x steps forwards per sample are where the time goes.
    """
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    from reelbatch.models.tiny import _train_tokenizer

    torch.manual_seed(0)
    config = {**WAN13B_TRANSFORMER, "num_layers": layers}
    with torch.device("meta"):  # parameter count of the full 30-layer model without allocating it
        full = WanTransformer3DModel(**WAN13B_TRANSFORMER)
    full_params = sum(p.numel() for p in full.parameters())
    del full
    tokenizer = _train_tokenizer()
    # Random init of 1.3B parameters takes minutes on a CPU; on the GPU it takes seconds.
    with torch.device(device):
        transformer = WanTransformer3DModel(**config)
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(tokenizer),
                d_model=4096,
                d_kv=64,
                d_ff=256,
                num_layers=1,
                num_heads=4,
                relative_attention_num_buckets=32,
                dropout_rate=0.0,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        )
        vae = AutoencoderKLWan(
            base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
        )
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler
    )
    if device == "cuda":
        pipe.to(torch.bfloat16)  # what a published checkpoint stores and what the ranks load on CUDA
    pipe.save_pretrained(folder)
    params = sum(p.numel() for p in transformer.parameters())
    del pipe, transformer, text_encoder, vae
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"params": params, "full_params": full_params}


def check_real_size_config(folder: Path, layers: int) -> list[str]:
    """Differences between the saved transformer config and Wan2.1-1.3B's (the layer override aside)."""
    saved = json.loads((folder / "transformer" / "config.json").read_text())
    problems = []
    for key, value in {**WAN13B_TRANSFORMER, "num_layers": layers}.items():
        got = saved.get(key)
        if (list(value) if isinstance(value, tuple) else value) != got:
            problems.append(f"{key}: {got!r} != {value!r}")
    inner = saved["num_attention_heads"] * saved["attention_head_dim"]
    if inner != 1536:
        problems.append(f"inner dim {inner} != 1536")
    return problems


# --- the benchmark -------------------------------------------------------------------------------------------


def _cpu_seconds() -> float:
    # This process (the orchestrator's own work) plus every waited-for descendant: torchrun and its ranks, or
    # the bare process. On a shared VM this moves far less than wall time when other work takes the cores.
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(args: argparse.Namespace, model_path: Path, settings: Settings, counts: list[int], work: Path) -> dict:
    raw: dict[str, dict[int, list[dict]]] = {"reelbatch": {n: [] for n in counts}, "bare": {n: [] for n in counts}}
    for repeat in range(args.repeat):
        for n in counts:
            # Interleaved, so load from other work on a shared machine falls on both paths alike.
            for path in ("reelbatch", "bare") if repeat % 2 == 0 else ("bare", "reelbatch"):
                cpu = _cpu_seconds()
                if path == "reelbatch":
                    result = run_reelbatch(n, model_path, settings, args.ranks, args.max_samples_per_job, work)
                else:
                    result = run_bare(n, model_path, settings, args.bare_writes, args.bare_threads, work)
                result["cpu_s"] = _cpu_seconds() - cpu
                raw[path][n].append(result)
                print(
                    f"  [{repeat + 1}/{args.repeat}] {path:9} N={n:<3} {result['total_s']:8.2f} s wall "
                    f"{result['cpu_s']:8.2f} s cpu",
                    flush=True,
                )
    best = {path: {n: min(runs, key=lambda r: r["total_s"]) for n, runs in by_n.items()} for path, by_n in raw.items()}
    return {"raw": raw, "best": best}


def report(args: argparse.Namespace, results: dict, counts: list[int], settings: Settings, device: str) -> bool:
    small, big = counts
    best = results["best"]
    marginal = {path: (best[path][big]["total_s"] - best[path][small]["total_s"]) / (big - small) for path in best}
    rb, bare = best["reelbatch"], best["bare"]
    print()
    print(
        f"model {args.model_label}; {settings.height}x{settings.width}x{settings.num_frames}, {settings.steps} "
        f"steps, guidance {settings.guidance}; device {device}; reelbatch: {args.ranks} rank(s), plan "
        f"{rb[big]['plan']}, {rb[big]['jobs']} job(s) for N={big}; bare: one process, pipeline __call__ per "
        f"prompt, {'writes the same mp4s' if args.bare_writes == 'mp4' else 'writes nothing'}; OMP_NUM_THREADS "
        f"ranks 1 (reelbatch's launcher), bare {args.bare_threads}"
    )
    print(f"timing: each N is a cold start of both paths (no warm-up excluded from either); best of {args.repeat}")
    print(f"{'':28}{'reelbatch':>12}{'bare':>12}{'ratio':>9}")
    for n in counts:
        print(
            f"{f'total N={n} (s)':28}{rb[n]['total_s']:>12.2f}{bare[n]['total_s']:>12.2f}"
            f"{rb[n]['total_s'] / bare[n]['total_s']:>9.2f}"
        )
    print(
        f"{f'marginal s/prompt ({big}-{small})':28}{marginal['reelbatch']:>12.4f}{marginal['bare']:>12.4f}"
        f"{marginal['reelbatch'] / marginal['bare']:>9.3f}"
    )
    print(f"{'diff per prompt (ms)':28}{1000 * (marginal['reelbatch'] - marginal['bare']):>12.1f}")
    cpu = {path: (best[path][big]["cpu_s"] - best[path][small]["cpu_s"]) / (big - small) for path in best}
    for n in counts:
        print(
            f"{f'cpu N={n} (s)':28}{rb[n]['cpu_s']:>12.2f}{bare[n]['cpu_s']:>12.2f}"
            f"{rb[n]['cpu_s'] / bare[n]['cpu_s']:>9.2f}"
        )
    print(
        f"{'cpu marginal s/prompt':28}{cpu['reelbatch']:>12.4f}{cpu['bare']:>12.4f}"
        f"{cpu['reelbatch'] / cpu['bare']:>9.3f}"
    )
    print("reelbatch phases (s):")
    for key in ("setup_s", "run_s", "plan_record_s", "launch_s", "collect_s", "finish_index_s"):
        per = (rb[big][key] - rb[small][key]) / (big - small)
        print(f"  {key:16}" + "".join(f"  N={n}: {rb[n][key]:7.2f}" for n in counts) + f"   marginal {per:.4f}")
    print("bare phases (s):")
    for key in ("import_s", "load_s", "loop_s", "write_s"):
        per = (bare[big][key] - bare[small][key]) / (big - small)
        print(f"  {key:16}" + "".join(f"  N={n}: {bare[n][key]:7.2f}" for n in counts) + f"   marginal {per:.4f}")
    limit = MARGINAL_RATIO * marginal["bare"] + MARGINAL_SLACK_S
    met = marginal["reelbatch"] <= limit
    print(
        f"target reelbatch marginal <= {MARGINAL_RATIO} x bare + {MARGINAL_SLACK_S * 1000:.0f} ms: "
        f"{marginal['reelbatch']:.4f} <= {limit:.4f} s -> {'met' if met else 'missed'}"
    )
    cpu_limit = MARGINAL_RATIO * cpu["bare"] + MARGINAL_SLACK_S
    print(
        f"(the same on cpu seconds, for reference: {cpu['reelbatch']:.4f} <= {cpu_limit:.4f} s -> "
        f"{'met' if cpu['reelbatch'] <= cpu_limit else 'missed'})"
    )
    if args.real_size:
        steady = {path: 1.0 / marginal[path] if marginal[path] > 0 else float("inf") for path in marginal}
        whole = {path: big / best[path][big]["total_s"] for path in best}
        ratio = steady["reelbatch"] / steady["bare"]
        print(
            f"throughput samples/s: steady state (1 / marginal) reelbatch {steady['reelbatch']:.4f}, bare "
            f"{steady['bare']:.4f}; whole run at N={big} reelbatch {whole['reelbatch']:.4f}, bare "
            f"{whole['bare']:.4f}"
        )
        met_tp = ratio >= REAL_SIZE_THROUGHPUT_RATIO
        print(
            f"target steady-state throughput >= {REAL_SIZE_THROUGHPUT_RATIO} x bare: {ratio:.3f} -> "
            f"{'met' if met_tp else 'missed'}"
        )
        met = met and met_tp
    if args.dry_check:
        print("dry check: wiring only (few layers, tiny shape, tiny N); these figures are not throughput")
    return met


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--bare-worker":
        return bare_worker(sys.argv[2])
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--reelbatch-worker":
        return reelbatch_worker(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--counts",
        type=int,
        nargs=2,
        metavar=("SMALL", "BIG"),
        default=None,
        help="the two N (default 8 64; --real-size 4 16; --dry-check 1 2)",
    )
    parser.add_argument("--model", default="tiny-wan", help="built-in tiny model (ignored with --real-size)")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--ranks", type=int, default=1, help="torchrun ranks of the reelbatch job")
    parser.add_argument(
        "--max-samples-per-job", type=int, default=None, help="default: N, so each N is one job and one torchrun launch"
    )
    parser.add_argument("--bare-writes", choices=["mp4", "none"], default="mp4")
    parser.add_argument(
        "--bare-threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of the bare process (default 1: what reelbatch's launcher gives a rank)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per (path, N); the best is reported")
    parser.add_argument("--real-size", action="store_true", help="Wan2.1-1.3B-sized transformer (CUDA only)")
    parser.add_argument(
        "--dry-check",
        action="store_true",
        help="with --real-size, on any machine: build the config with --layers and run tiny N",
    )
    parser.add_argument("--layers", type=int, default=None, help="transformer layers (default 30; dry check 2)")
    parser.add_argument("--workdir", help="keep the temporary folders here (default: a deleted temp dir)")
    parser.add_argument("--json", action="store_true", help="also print every measurement as JSON")
    args = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    if args.dry_check and not args.real_size:
        parser.error("--dry-check goes with --real-size")
    if args.layers is not None and not args.dry_check:
        parser.error("--layers is for --dry-check only: the real-size figures must come from 30 layers")
    if args.real_size and not args.dry_check and not cuda:
        print(
            "--real-size needs a CUDA GPU (a 1.3B transformer at 480x832 takes minutes per sample on a CPU); "
            "use --real-size --dry-check to check the build and wiring here",
            file=sys.stderr,
        )
        return 2
    if args.real_size and not args.dry_check:
        shape = (480, 832, 17, 10)  # a real size; 17 frames and 10 steps keep N=16 well inside a 10-minute window
        counts = args.counts or [4, 16]
    elif args.dry_check:
        shape = (32, 32, 5, 2)
        counts = args.counts or [1, 2]
    else:
        shape = (32, 32, 5, 4)
        counts = args.counts or [8, 64]
    settings = Settings(
        args.height or shape[0], args.width or shape[1], args.frames or shape[2], args.steps or shape[3], args.guidance
    )
    if counts[1] <= counts[0]:
        parser.error("--counts: BIG must be larger than SMALL")
    device = "cuda" if cuda else "cpu"

    with tempfile.TemporaryDirectory(prefix="job-overhead-", dir=args.workdir) as tmp:
        work = Path(tmp)
        if args.real_size:
            layers = args.layers or (2 if args.dry_check else 30)
            model_path = work / "models" / "wan2.1-1.3b-random"
            started = time.perf_counter()
            built = build_real_size(model_path, layers, device)
            problems = check_real_size_config(model_path, layers)
            print(
                f"built {model_path.name}: {layers} layers, {built['params'] / 1e9:.3f} B transformer parameters "
                f"(30 layers: {built['full_params'] / 1e9:.3f} B) in {time.perf_counter() - started:.1f} s; "
                f"config vs Wan2.1-1.3B: {'; '.join(problems) or 'matches'}"
            )
            if problems:
                return 1
            args.model_label = f"Wan2.1-1.3B-sized random transformer ({layers} layers), tiny text encoder + VAE"
        else:
            from reelbatch.models.tiny import ensure_tiny_model

            model_path = ensure_tiny_model(args.model, work / "models")  # built before any clock starts
            args.model_label = args.model
        print(f"running N = {counts[0]} and {counts[1]}, {args.repeat} time(s) each, both paths:", flush=True)
        results = measure(args, model_path, settings, counts, work)
        met = report(args, results, counts, settings, device)
        if args.json:
            print(json.dumps({"settings": asdict(settings), "counts": counts, "raw": results["raw"]}, indent=2))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
