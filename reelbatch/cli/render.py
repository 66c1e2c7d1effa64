"""What the commands print: rich tables and lines. Data goes to stdout (`out`), messages to stderr (`console`).

Cells that come from a manifest or the database are escaped: a prompt like "[red]" is text, never rich markup.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(stderr=True)
out = Console()


def print_error(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)


def print_rejections(rejections) -> None:
    if not rejections:
        return
    table = Table(title=f"{len(rejections)} rejected", title_justify="left", show_lines=False)
    for column in ("line", "column", "rule", "problem", "fix"):
        table.add_column(column, overflow="fold")
    for r in sorted(rejections, key=lambda r: r.row):
        table.add_row(str(r.row), escape(r.column or ""), r.rule, escape(r.message), escape(r.fix))
    console.print(table)


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def print_plan(run_plan, gpus: int) -> None:
    from reelbatch.schemas import ParallelPlan

    table = Table(title=f"Plan for {gpus} ranks per node", title_justify="left")
    columns = (
        "job",
        "model",
        "HxWxF",
        "steps",
        "guidance",
        "plan",
        "samples",
        "padded",
        "tokens",
        "GPU-s",
        "wall",
        "notes",
    )
    for column in columns:
        table.add_column(column, no_wrap=column in ("job", "plan", "HxWxF"))
    footnotes: list[str] = []
    for job in run_plan.jobs:
        b = job.bucket
        marks = []
        why_not = [
            f"{ParallelPlan(**{k: v for k, v in r['plan'].items() if k != 'world_size'}).short()} refused"
            f" ({r['rule']}): {r['message']}"
            for r in job.refused
        ]
        for note in [*job.notes, *job.warnings, *why_not]:
            if note not in footnotes:
                footnotes.append(note)
            marks.append(f"[{footnotes.index(note) + 1}]")
        table.add_row(
            job.job_id,
            b.model,
            f"{b.height}x{b.width}x{b.num_frames}",
            str(b.num_inference_steps),
            f"{b.guidance_scale:g}",
            job.plan.short(),
            str(len(job.samples)),
            str(job.padded_slots),
            str(job.tokens),
            f"{job.estimated_gpu_seconds:,.0f}",
            duration(job.estimated_seconds),
            " ".join(marks),
        )
    out.print(table)
    for number, note in enumerate(footnotes, 1):
        out.print(f"[{number}] {note}", highlight=False)
    print_rejections(run_plan.rejected)
    s = run_plan.summary()
    out.print(
        f"{run_plan.rows} rows, {run_plan.accepted} accepted, {len(run_plan.rejected)} rejected; "
        f"{s['jobs']} jobs, {s['samples']} samples, {s['padded_slots']} padded slots ({s['padding_ratio']:.1%}); "
        f"about {s['estimated_gpu_seconds'] / 3600:,.2f} H100 GPU-hours of compute (model loads not included)."
    )


def print_fleet(fleet: dict) -> None:
    hours = fleet["makespan_s"] / 3600
    out.print(
        f"On {fleet['nodes']} x {fleet['gpus_per_node']} {fleet['gpu'].upper()} ({fleet['storage']} weights): "
        f"about {duration(fleet['makespan_s'])} of wall time ({hours:,.2f} h, lower bound "
        f"{duration(fleet['lower_bound_s'])}), {fleet['gpu_hours']:,.2f} GPU-hours, "
        f"GPU utilisation {fleet['gpu_utilization']:.0%}.",
        highlight=False,
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
    console.print(table)
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
    out.print(table)


def print_status(summary, jobs: list[dict], samples: list[dict]) -> None:
    from reelbatch.schemas import ParallelPlan

    c = summary.counts
    out.print(
        f"run {summary.id}  [bold]{summary.status}[/]  manifest {summary.manifest_source}  "
        f"output {summary.output_root}\n"
        f"done {c.get('done', 0)}, failed {c.get('failed', 0)}, rejected {c.get('rejected', 0)}, "
        f"pending {c.get('pending', 0) + c.get('running', 0)}"
    )
    table = Table(title="Jobs", title_justify="left")
    for column in ("job", "status", "plan", "backend", "samples", "padded", "tokens", "seconds", "attempts"):
        table.add_column(column, no_wrap=column == "job")
    for j in jobs:
        plan = ParallelPlan(dp=j["dp"], cfg=j["cfg"], ulysses=j["ulysses"], ring=j["ring"]).short()
        seconds = f"{j['seconds']:.1f}" if j["seconds"] is not None else "-"
        table.add_row(
            j["id"],
            j["status"],
            plan,
            j["backend"],
            str(j["samples_count"]),
            str(j["padded_slots"]),
            str(j["tokens"]),
            seconds,
            str(j["attempts"]),
        )
    out.print(table)
    failed = [s for s in samples if s["status"] in ("failed", "rejected")]
    if failed:
        problems = Table(title="Failed and rejected rows", title_justify="left")
        for column in ("line", "status", "prompt", "problem"):
            problems.add_column(column, overflow="fold")
        for s in failed:
            problem = s["error"] or ""
            if s["reject_fix"]:
                problem += f" (fix: {s['reject_fix']})"
            problems.add_row(str(s["row"]), s["status"], escape((s["prompt"] or "")[:60]), escape(problem))
        out.print(problems)


def print_models(rows: list[tuple[str, str, str, str, str]]) -> None:
    """rows: (model, pipeline, inputs, heads, source); a source may carry rich markup (an error in red)."""
    table = Table(title_justify="left")
    for column in ("model", "pipeline", "inputs", "heads", "source"):
        table.add_column(column, no_wrap=column in ("model", "pipeline"))
    for row in rows:
        table.add_row(*row)
    out.print(table)


def print_facts(title: str, facts: dict) -> None:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in facts.items():
        shown = ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
        table.add_row(key, shown)
    out.print(table)
