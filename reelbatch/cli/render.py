"""What the commands print: rich tables and lines. Data goes to stdout (`out`), messages to stderr (`console`).

Cells that come from a manifest or the database are escaped: a prompt like "[red]" is text, never rich markup.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

console = Console(stderr=True)
out = Console()


def print_table(table: Table, to: Console = out) -> None:
    """A table on a terminal fits its width; piped or redirected, it keeps its natural width (rich would cut
    every cell to fit 80 columns: `st…`)."""
    if not to.is_terminal:
        table.width = Measurement.get(to, to.options.update_width(UNBOUNDED_WIDTH), table).maximum
    to.print(table, crop=to.is_terminal)


UNBOUNDED_WIDTH = 1 << 20
MANY_ROWS = 200  # above this many rows, a listing is plain columns (print_columns), not a rich table


def print_columns(
    columns: Sequence[str], rows: Iterable[Sequence[str]], right: Collection[str] = (), to: Console = out
) -> None:
    """Plain aligned columns, one line per row, never cut and no markup: a long listing to read, grep or sort."""
    cells = [tuple(columns), *rows]
    widths = (
        [max(map(len, column)) for column in zip(*cells, strict=True)] if len(cells) > 1 else list(map(len, columns))
    )
    aligned = [str.rjust if column in right else str.ljust for column in columns]
    write = to.file.write
    for line in cells:
        write("  ".join(align(cell, width) for align, cell, width in zip(aligned, line, widths, strict=True)).rstrip())
        write("\n")


def print_error(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)


def print_rejections(rejections) -> None:
    if not rejections:
        return
    ordered = sorted(rejections, key=lambda r: r.row)
    if len(ordered) > MANY_ROWS:  # a rich table of them all would take minutes
        console.print(f"{len(ordered):,} rejected", highlight=False)
        print_columns(
            ("line", "column", "rule", "problem", "fix"),
            ((str(r.row), r.column or "", r.rule, r.message, r.fix) for r in ordered),
            to=console,
        )
        return
    table = Table(title=f"{len(rejections)} rejected", title_justify="left", show_lines=False)
    for column in ("line", "column", "rule", "problem", "fix"):
        table.add_column(column, overflow="fold")
    for r in ordered:
        table.add_row(str(r.row), escape(r.column or ""), r.rule, escape(r.message), escape(r.fix))
    print_table(table, console)


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def model_cell(model: str, lora_sha256: str | None = None, lora_scale: float | None = None) -> str:
    """A bucket's model, and its LoRA adapter (hash prefix and scale) when it has one."""
    if lora_sha256 is None:
        return model
    return f"{model} + LoRA {lora_sha256[:8]} x{1.0 if lora_scale is None else lora_scale:g}"


def print_plan(run_plan, gpus: int, gpu: str | None = None) -> None:
    """One line per bucket (and plan), footnotes, rejected rows, totals; ``gpu``: the fleet's GPU type, when the
    plan is for a fleet (else this machine's ranks, estimated on H100)."""
    where = f"nodes of {gpus} {gpu.upper()}" if gpu else f"{gpus} ranks per node"
    table = Table(title=f"Plan for {where}, by bucket", title_justify="left")
    numbers = ("jobs", "samples", "padded", "GPU-h", "longest job")
    for column in ("model", "HxWxF", "steps", "guidance", "plan", *numbers, "notes"):
        table.add_column(column, no_wrap=column != "notes", justify="right" if column in numbers else "left")
    footnotes: list[str] = []
    for bucket in run_plan.buckets():
        job = bucket.first
        b = job.bucket
        table.add_row(
            escape(model_cell(b.model, b.lora_sha256, b.lora_scale)),
            f"{b.height}x{b.width}x{b.num_frames}",
            str(b.num_inference_steps),
            f"{b.guidance_scale:g}",
            job.plan.short() + (f" {b.cache}" if b.cache else ""),  # a step cache runs with the plan
            f"{bucket.jobs:,}",
            f"{bucket.samples:,}",
            f"{bucket.padded_slots:,}",
            f"{bucket.estimated_gpu_seconds / 3600:,.1f}",
            duration(bucket.longest_job_seconds),
            " ".join(_marks(_job_notes(job), footnotes)),
        )
    print_table(table)
    for number, note in enumerate(footnotes, 1):
        out.print(f"[{number}] {escape(note)}", highlight=False, soft_wrap=True)
    print_rejections(run_plan.rejected)
    s = run_plan.summary()
    out.print(
        f"{run_plan.rows:,} rows, {run_plan.accepted:,} accepted, {len(run_plan.rejected):,} rejected; "
        f"{s['jobs']:,} jobs, {s['samples']:,} samples, {s['padded_slots']:,} padded slots "
        f"({s['padding_ratio']:.1%}); about {s['estimated_gpu_seconds'] / 3600:,.2f} {(gpu or 'h100').upper()} "
        "GPU-hours of compute (model loads not included; compiles included).",
        highlight=False,
        soft_wrap=True,
    )
    line = speedups_line(s, (gpu or "h100").upper())
    if line:
        out.print(line, highlight=False, soft_wrap=True)


SPEEDUP_NAMES = {"compile": "compile", "step_cache": "step cache", "few_step": "few-step weights"}  # in words


def speedups_line(summary: dict, gpu: str = "H100") -> str | None:
    """``Without compile and step cache: about N GPU-hours (2.10x); saved by compile A, by step cache B.``; None
    when the plan uses no speed-up. A forced compile that does not pay back "adds" its cost."""
    from reelbatch.planning.speedups import SPEEDUPS

    found = summary.get("saved_gpu_seconds") or {}
    saved = {name: found[name] for name in SPEEDUPS if name in found}  # in the order they are taken off
    if not saved:
        return None
    names = [SPEEDUP_NAMES[name] for name in saved]
    what = ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1]
    gains = [f"by {SPEEDUP_NAMES[name]} {seconds / 3600:,.2f}" for name, seconds in saved.items() if seconds >= 0]
    losses = [f"{SPEEDUP_NAMES[name]} adds {-seconds / 3600:,.2f}" for name, seconds in saved.items() if seconds < 0]
    before, after = summary["gpu_seconds_without_speedups"], summary["estimated_gpu_seconds"]
    ratio = f" ({before / after:.2f}x)" if after > 0 else ""
    parts = ([f"saved {', '.join(gains)}"] if gains else []) + losses
    return f"Without {what}: about {before / 3600:,.2f} {gpu} GPU-hours{ratio}; {'; '.join(parts)}."


def print_plan_jobs(run_plan) -> None:
    """Every job, one plain line each (a big manifest has tens of thousands: no rich table)."""
    footnotes: list[str] = []
    print_columns(
        ("job", "model", "HxWxF", "steps", "guidance", "plan", "samples", "padded", "tokens", "GPU-s", "wall", "notes"),
        (
            (
                job.job_id,
                model_cell(job.bucket.model, job.bucket.lora_sha256, job.bucket.lora_scale),
                f"{job.bucket.height}x{job.bucket.width}x{job.bucket.num_frames}",
                str(job.bucket.num_inference_steps),
                f"{job.bucket.guidance_scale:g}",
                job.plan.short(),
                str(len(job.samples)),
                str(job.padded_slots),
                str(job.tokens),
                f"{job.estimated_gpu_seconds:,.0f}",
                duration(job.estimated_seconds),
                " ".join(_marks(_job_notes(job), footnotes)),
            )
            for job in run_plan.jobs
        ),
        right=("steps", "guidance", "samples", "padded", "tokens", "GPU-s", "wall"),
    )
    for number, note in enumerate(footnotes, 1):
        out.file.write(f"[{number}] {note}\n")
    out.file.write("\n")


def _job_notes(job) -> list[str]:
    from reelbatch.schemas import ParallelPlan

    why_not = [
        f"{ParallelPlan(**{k: v for k, v in r['plan'].items() if k != 'world_size'}).short()} refused"
        f" ({r['rule']}): {r['message']}"
        for r in job.refused
    ]
    return [*job.notes, *job.warnings, *why_not]


def _marks(notes: list[str], footnotes: list[str]) -> list[str]:
    """``[n]`` for each note, numbering new notes at the end of ``footnotes``."""
    marks = []
    for note in notes:
        if note not in footnotes:
            footnotes.append(note)
        marks.append(f"[{footnotes.index(note) + 1}]")
    return marks


def print_fleet(fleet: dict) -> None:
    hours = fleet["makespan_s"] / 3600
    out.print(
        f"On {fleet['nodes']} x {fleet['gpus_per_node']} {fleet['gpu'].upper()} ({fleet['storage']} weights): "
        f"about {duration(fleet['makespan_s'])} of wall time ({hours:,.2f} h, lower bound "
        f"{duration(fleet['lower_bound_s'])}), {fleet['gpu_hours']:,.2f} GPU-hours, "
        f"GPU utilisation {fleet['gpu_utilization']:.0%}.",
        highlight=False,
        soft_wrap=True,
    )


def print_report(report) -> None:
    table = Table(title="Run summary", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("run", report.run_id or "-")
    table.add_row("status", report.status)
    table.add_row(
        "rows", f"{report.rows} ({report.accepted} accepted, {len({r.row for r in report.rejected})} rejected)"
    )
    reused = f" ({report.reused} reused from earlier runs)" if report.reused else ""
    table.add_row("videos", f"{report.done} done{reused}, {report.failed} failed")
    table.add_row("jobs", str(report.jobs))
    table.add_row("wall time", f"{report.wall_seconds:.1f} s")
    table.add_row("output", str(Path(report.output).resolve()) if "://" not in report.output else report.output)
    if report.dataset:
        table.add_row("dataset index", report.dataset["metadata"])
        table.add_row("gallery", report.dataset["gallery"])
    print_table(table, console)
    if report.status == "refused":
        console.print("[bold red]--strict:[/] the manifest has bad rows, nothing was launched.")


def print_runs(recent, shown_url: str) -> None:
    table = Table(title=f"Runs in {shown_url}", title_justify="left")
    for column in ("run", "started", "status", "done", "fail", "rej", "pend", "jobs", "manifest"):
        table.add_column(column, overflow="fold", no_wrap=column != "manifest")
    for r in recent:
        c = r.counts
        table.add_row(
            r.id[:12],
            r.created_at.strftime("%m-%d %H:%M"),
            r.status,
            str(c.get("done", 0)),
            str(c.get("failed", 0)),
            str(c.get("rejected", 0)),
            str(c.get("pending", 0) + c.get("running", 0)),
            str(r.jobs),
            r.manifest_source,
        )
    print_table(table)


def print_status(summary, report) -> None:
    """A run's counts, its buckets (jobs and samples by status) and its first failed or rejected rows."""
    from reelbatch.schemas import ParallelPlan

    c, j = summary.counts, report.jobs
    reused = f" ({summary.reused:,} reused)" if summary.reused else ""
    out.print(
        f"run {summary.id}  [bold]{summary.status}[/]  manifest {escape(summary.manifest_source)}  "
        f"output {escape(summary.output_root)}",
        soft_wrap=True,
    )
    out.print(
        f"samples: {c.get('done', 0):,} done{reused}, {c.get('failed', 0):,} failed, {c.get('rejected', 0):,} "
        f"rejected, {c.get('running', 0):,} running, {c.get('pending', 0):,} pending\n"
        f"jobs: {sum(j.values()):,} ({j.get('done', 0):,} done, {j.get('failed', 0):,} failed, "
        f"{j.get('running', 0):,} running, {j.get('pending', 0):,} pending)",
        highlight=False,
        soft_wrap=True,
    )
    if report.buckets:
        table = Table(title="By bucket", title_justify="left")
        numbers = (
            "jobs",
            "jobs done",
            "jobs failed",
            "running",
            "pending",
            "samples",
            "samples done",
            "samples failed",
            "job seconds",
        )
        for column in ("model", "HxWxF", "steps", "guidance", "plan", *numbers):
            table.add_column(column, no_wrap=True, justify="right" if column in numbers else "left")
        for bucket in report.buckets:
            b, jobs, samples = bucket.bucket, bucket.jobs, bucket.samples
            plan = ParallelPlan(dp=b["dp"], cfg=b["cfg"], ulysses=b["ulysses"], ring=b["ring"]).short()
            plan += f" {b['cache']}" if b.get("cache") else ""  # a step cache runs with the plan
            table.add_row(
                escape(model_cell(b["model"], b.get("lora_sha256"), b.get("lora_scale"))),
                f"{b['height']}x{b['width']}x{b['num_frames']}",
                str(b["num_inference_steps"]),
                f"{b['guidance_scale']:g}",
                plan,
                f"{sum(jobs.values()):,}",
                *(f"{jobs.get(status, 0):,}" for status in ("done", "failed", "running", "pending")),
                f"{sum(samples.values()):,}",
                f"{samples.get('done', 0):,}",
                f"{samples.get('failed', 0):,}",
                f"{bucket.seconds:,.0f}",
            )
        print_table(table)
    if report.problems:
        problems = Table(title="Failed and rejected rows", title_justify="left")
        for column in ("line", "status", "prompt", "problem"):
            problems.add_column(column, overflow="fold")
        for s in report.problems:
            problem = s["error"] or ""
            if s["reject_fix"]:
                problem += f" (fix: {s['reject_fix']})"
            problems.add_row(str(s["row"]), s["status"], escape((s["prompt"] or "")[:60]), escape(problem))
        print_table(problems)
        if report.problem_count > len(report.problems):
            out.print(
                f"The first {len(report.problems)} of {report.problem_count:,} failed and rejected rows; "
                f"`reelbatch export {summary.id[:12]} --format csv` has them all.",
                highlight=False,
                soft_wrap=True,
            )


def print_status_jobs(jobs: list[dict]) -> None:
    """Every job of a run, one plain line each."""
    from reelbatch.schemas import ParallelPlan

    print_columns(
        ("job", "status", "model", "HxWxF", "plan", "backend", "samples", "padded", "tokens", "seconds", "attempts"),
        (
            (
                j["id"],
                j["status"],
                j["model"],
                f"{j['height']}x{j['width']}x{j['num_frames']}",
                ParallelPlan(dp=j["dp"], cfg=j["cfg"], ulysses=j["ulysses"], ring=j["ring"]).short(),
                j["backend"],
                str(j["samples_count"]),
                str(j["padded_slots"]),
                str(j["tokens"]),
                f"{j['seconds']:.1f}" if j["seconds"] is not None else "-",
                str(j["attempts"]),
            )
            for j in jobs
        ),
        right=("samples", "padded", "tokens", "seconds", "attempts"),
    )
    out.file.write("\n")


def print_models(rows: list[tuple[str, str, str, str, str]]) -> None:
    """rows: (model, pipeline, inputs, heads, source); a source may carry rich markup (an error in red)."""
    table = Table(title_justify="left")
    for column in ("model", "pipeline", "inputs", "heads", "source"):
        table.add_column(column, no_wrap=column in ("model", "pipeline"))
    for row in rows:
        table.add_row(*row)
    print_table(table)


def print_facts(title: str, facts: dict) -> None:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in facts.items():
        shown = ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
        table.add_row(key, shown)
    print_table(table)
