"""Calibration of the cost model: the published timings, the rows left out and why, and the least-squares fit.

The timings are ``timings.csv`` next to this module (a copy of /work/shared/design/timings.csv); ``fit_timings``
refits the constants that ``planning.cost`` hard-codes (a test checks they agree), and ``main`` prints the tables
of docs/COST_MODEL.md. Pure Python at import time: the fit imports numpy when it runs.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path

from reelbatch.models.registry import FAMILIES, ModelFamily
from reelbatch.planning.cost import (
    CLASS_BASE_SECONDS,
    DEFAULT_COST_MODEL,
    REFERENCE_TOKENS,
    CostModel,
    gpu_name,
)
from reelbatch.planning.rules import candidate_plans, plan_violations, preference_key
from reelbatch.schemas import BucketKey, ParallelPlan


def timings_csv() -> str:
    """The published timings shipped with the package (``planning/timings.csv``)."""
    return files("reelbatch.planning").joinpath("timings.csv").read_text(encoding="utf-8")


# Published model name -> (speed class, registry family for the token count, passes per step).
# HunyuanVideo's guidance is distilled (embedded): one pass. SkyReels-V1 and Wan run true CFG: two passes.
CALIBRATION_MODELS: dict[str, tuple[str, str, int]] = {
    "skyreels-v1-t2v": ("hunyuan-13b", "skyreels-v1-t2v", 2),
    "hunyuanvideo": ("hunyuan-13b", "hunyuanvideo", 1),
    "hunyuanvideo-xdit": ("hunyuanvideo-xdit-skyreels-readme", "hunyuanvideo", 1),
    "skyreels-v1-t2v-fp8-offload": ("skyreels-v1-fp8-offload", "skyreels-v1-t2v", 2),
    "wan2.1-t2v-14b": ("wan2.1-14b", "wan2.1-t2v-14b", 2),
    "wan2.1-t2v-1.3b": ("wan2.1-1.3b", "wan2.1-t2v-1.3b", 2),
    "wan2.2-t2v-a14b": ("wan2.2-a14b", "wan2.2-t2v-a14b", 2),
}
EXCLUDED_MODELS = {
    "consisid": "not a reelbatch family (CogVideoX-based, its own token law); its rows would only add a base",
}
# (model, height, width, frames) -> why its rows are left out of the fit.
EXCLUDED_VIDEOS = {
    ("skyreels-v1-t2v", 960, 960, 193): (
        "offloaded: 176,400 tokens need ~87 GiB per GPU with cfg2 (memory model), so no 2-GPU plan fits 80 GiB; "
        "both rows are ~2x slower than every other HunyuanVideo-family row predicts"
    ),
}


@dataclass
class CalibrationRow:
    source: str
    model: str
    gpu: str
    height: int
    width: int
    frames: int
    steps: int
    gpus: int
    parallel: str
    seconds: float
    plan: ParallelPlan | None = None
    speed_class: str | None = None
    family: str | None = None
    passes: int = 0
    tokens: int = 0
    excluded: str | None = None  # why the row is not part of the fit
    predicted: float | None = None

    @property
    def error(self) -> float | None:
        """Relative error of the model, (predicted - measured) / measured."""
        return None if self.predicted is None else self.predicted / self.seconds - 1.0


def _published_plan(text: str) -> ParallelPlan:
    if text in ("none", "offload"):  # offload: one GPU with CPU offload of idle modules (Wan2.2 README)
        return ParallelPlan()
    degrees: dict[str, int] = {}
    for part in text.split("+"):
        name = part.rstrip("0123456789")
        degrees[name] = int(part[len(name) :])
    return ParallelPlan(**degrees)


def _unknown_plan(row: CalibrationRow, family: ModelFamily) -> ParallelPlan | None:
    """An "unknown" plan: the best plan our rules allow that splits one video over all the row's GPUs.

    Best follows the field's order (CFG parallel, then Ulysses, then ring); memory is not checked (the article's
    runs used offloading on small GPUs). None when no such plan exists: the row cannot be explained.
    """
    bucket = BucketKey(
        model=family.name,
        height=row.height,
        width=row.width,
        num_frames=row.frames,
        num_inference_steps=row.steps,
        guidance_scale=5.0 if row.passes == 2 else 1.0,
    )
    plans = [
        p
        for p in candidate_plans(row.gpus)
        if p.dp == 1 and not plan_violations(bucket, family, p, world_size=row.gpus, backend="native", device="cuda")
    ]
    return min(plans, key=preference_key) if plans else None


def calibration_rows(source: str | os.PathLike[str] | None = None) -> list[CalibrationRow]:
    """The timings (``timings.csv`` or a file), each with its plan, class, tokens, or the reason it is excluded."""
    text = timings_csv() if source is None else Path(source).read_text(encoding="utf-8")
    rows = []
    for record in csv.DictReader(io.StringIO(text)):
        row = CalibrationRow(
            source=record["source"],
            model=record["model"],
            gpu=gpu_name(record["gpu"]),
            height=int(record["height"]),
            width=int(record["width"]),
            frames=int(record["frames"]),
            steps=int(record["steps"]),
            gpus=int(record["gpus"]),
            parallel=record["parallel"],
            seconds=float(record["seconds"]),
        )
        rows.append(row)
        if row.model in EXCLUDED_MODELS:
            row.excluded = EXCLUDED_MODELS[row.model]
            continue
        if row.model not in CALIBRATION_MODELS:
            row.excluded = "model not mapped to a speed class (CALIBRATION_MODELS)"
            continue
        row.speed_class, row.family, row.passes = CALIBRATION_MODELS[row.model]
        family = FAMILIES[row.family]
        row.tokens = family.tokens(row.height, row.width, row.frames)
        if row.parallel == "unknown":
            row.plan = _unknown_plan(row, family)
            if row.plan is None:
                row.excluded = (
                    f"plan unknown, and no plan our rules allow splits one {row.tokens:,}-token video "
                    f"over {row.gpus} GPUs (e.g. cfg2 x ulysses{row.gpus // 2} needs an even token count)"
                )
                continue
        else:
            row.plan = _published_plan(row.parallel)
        if row.plan.world_size != row.gpus:
            row.excluded = f"plan {row.parallel} does not use the row's {row.gpus} GPUs"
        reason = EXCLUDED_VIDEOS.get((row.model, row.height, row.width, row.frames))
        if reason:
            row.excluded = reason
    return rows


@dataclass
class CalibrationFit:
    model: CostModel
    rows: list[CalibrationRow]

    @property
    def fitted(self) -> list[CalibrationRow]:
        return [r for r in self.rows if r.excluded is None]

    def rms_log_error(self) -> float:
        errors = []
        for r in self.fitted:
            assert r.predicted is not None, "fit_timings predicts every row it fits"
            errors.append(math.log(r.predicted / r.seconds))
        return math.sqrt(sum(e * e for e in errors) / len(errors))

    def parameters_markdown(self) -> str:
        m = self.model
        lines = ["| parameter | value |", "|---|---|", f"| tokens_exponent | {m.tokens_exponent:.4f} |"]
        for name, value in m.base_seconds.items():
            lines.append(f"| base_seconds[{name}] (s per pass-step at 100k tokens, H100) | {value:.3f} |")
        for name in ("h100", "a800", "rtx4090"):
            lines.append(f"| gpu_factors[{name}] | {m.gpu_factors[name]:.3f} |")
        for name in ("h100", "a800", "rtx4090"):
            lines.append(f"| comm_factors[{name}] | {m.comm_factors[name]:.2f} |")
        lines += [
            f"| cfg_loss | {m.cfg_loss:.4f} |",
            f"| sp_loss | {m.sp_loss:.4f} |",
            f"| ring_penalty | {m.ring_penalty:.3f} |",
        ]
        fitted = self.fitted
        worst = max(fitted, key=lambda r: abs(r.error or 0))
        lines.append(f"| rows fitted / excluded | {len(fitted)} / {len(self.rows) - len(fitted)} |")
        lines.append(f"| RMS of log error | {self.rms_log_error():.3f} |")
        lines.append(f"| worst fitted row | {worst.model} {worst.gpu} {worst.gpus} GPU(s): {worst.error:+.1%} |")
        return "\n".join(lines)

    def rows_markdown(self) -> str:
        header = (
            "| source | model | GPU | HxWxF | steps | GPUs | published | plan used | measured s | model s | error | |"
        )
        lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            plan = r.plan.short() if r.plan else "-"
            predicted = f"{r.predicted:,.1f}" if r.predicted is not None else "-"
            error = f"{r.error:+.1%}" if r.error is not None else "-"
            note = f"excluded: {r.excluded}" if r.excluded else ""
            lines.append(
                f"| {r.source} | {r.model} | {r.gpu} | {r.height}x{r.width}x{r.frames} | {r.steps} | "
                f"{r.gpus} | {r.parallel} | {plan} | {r.seconds:,.2f} | {predicted} | {error} | {note} |"
            )
        return "\n".join(lines)


def _design(row: CalibrationRow, classes: list[str], kappa: Mapping[str, float]) -> tuple[list[float], float]:
    """One row of the log-linear system: log(seconds * group / (steps * passes)) = x . beta.

    seconds * group = single / efficiency, so the losses enter with +comm_factor and the ring penalty with -1.
    """
    plan = row.plan
    assert plan is not None and row.speed_class is not None
    k = kappa.get(row.gpu, 1.0)
    x = [1.0 if c == row.speed_class else 0.0 for c in classes]
    x += [
        math.log(row.tokens / REFERENCE_TOKENS),
        1.0 if row.gpu == "a800" else 0.0,
        1.0 if row.gpu == "rtx4090" else 0.0,
        k * (plan.cfg - 1),
        k * (plan.ulysses * plan.ring - 1),
        -1.0 if plan.ring > 1 else 0.0,
    ]
    group = plan.cfg * plan.ulysses * plan.ring
    y = math.log(row.seconds * group / (row.steps * row.passes))
    return x, y


def fit_timings(source: str | os.PathLike[str] | None = None) -> CalibrationFit:
    """Least squares in log space over the rows that are not excluded.

    Linear unknowns: log base per class, tokens exponent, log GPU factors (A800, RTX 4090; H100 = 1), CFG and
    sequence-parallel losses, log ring penalty. The communication factors (A800, RTX 4090; H100 = 1) multiply the
    losses, so they are found by a grid search (0.05 steps, then 0.01) around the linear solve.
    """
    import numpy as np

    rows = calibration_rows(source)
    fitted = [r for r in rows if r.excluded is None]
    classes = sorted({r.speed_class for r in fitted if r.speed_class})

    def solve(ka: float, kr: float):
        kappa = {"a800": ka, "rtx4090": kr}
        system = [_design(r, classes, kappa) for r in fitted]
        x = np.array([s[0] for s in system])
        y = np.array([s[1] for s in system])
        beta = np.linalg.lstsq(x, y, rcond=None)[0]
        return float(np.sum((x @ beta - y) ** 2)), beta

    grid = [0.25 + 0.05 * i for i in range(156)]  # 0.25 .. 8.0
    best = min((solve(ka, kr)[0], ka, kr) for ka in grid[::5] for kr in grid[::5])
    _, ka0, kr0 = best
    near_a = [g for g in grid if abs(g - ka0) <= 0.5]
    near_r = [g for g in grid if abs(g - kr0) <= 0.5]
    _, ka1, kr1 = min((solve(ka, kr)[0], ka, kr) for ka in near_a for kr in near_r)
    fine_a = [round(ka1 + 0.01 * i, 2) for i in range(-5, 6) if ka1 + 0.01 * i > 0]
    fine_r = [round(kr1 + 0.01 * i, 2) for i in range(-5, 6) if kr1 + 0.01 * i > 0]
    _, ka, kr = min((solve(a, r)[0], a, r) for a in fine_a for r in fine_r)
    beta = solve(ka, kr)[1]
    n = len(classes)
    base = {c: round(math.exp(b), 3) for c, b in zip(classes, beta[:n], strict=True)}
    alpha, log_a800, log_4090, cfg_loss, sp_loss, log_ring = (float(v) for v in beta[n:])
    model = CostModel(
        tokens_exponent=round(alpha, 4),
        base_seconds={**{c: base[c] for c in CLASS_BASE_SECONDS if c in base}, **base},
        gpu_factors={"h100": 1.0, "a800": round(math.exp(log_a800), 3), "rtx4090": round(math.exp(log_4090), 3)},
        comm_factors={"h100": 1.0, "a800": round(ka, 2), "rtx4090": round(kr, 2)},
        cfg_loss=round(cfg_loss, 4),
        sp_loss=round(sp_loss, 4),
        ring_penalty=round(math.exp(log_ring), 3),
    )
    for row in rows:
        if row.plan is None or row.speed_class is None:
            continue
        bucket = BucketKey(
            model=row.family or row.model,
            height=row.height,
            width=row.width,
            num_frames=row.frames,
            num_inference_steps=row.steps,
            guidance_scale=5.0 if row.passes == 2 else 1.0,
        )
        family = replace(FAMILIES[row.family or ""], name=row.speed_class)  # the class's base, not the registry's
        row.predicted = model.sample_seconds(bucket, family, row.plan, gpu=row.gpu)
    return CalibrationFit(model=model, rows=rows)


def load_time_markdown(model: CostModel = DEFAULT_COST_MODEL) -> str:
    lines = ["| family | weights GiB | local s | s3 s |", "|---|---|---|---|"]
    for family in FAMILIES.values():
        if family.builtin_tiny:
            continue
        lines.append(
            f"| {family.name} | {family.param_memory_gib:.1f} | {model.load_seconds(family, 'local'):.0f} | "
            f"{model.load_seconds(family, 's3'):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:  # python -m reelbatch.planning.calibration [timings.csv]
    import sys

    fit = fit_timings(sys.argv[1] if len(sys.argv) > 1 else None)
    print("## Fitted parameters\n")
    print(fit.parameters_markdown())
    print("\n## Every published row\n")
    print(fit.rows_markdown())
    print("\n## Model load time per job (estimates)\n")
    print(load_time_markdown(fit.model))


if __name__ == "__main__":
    main()
