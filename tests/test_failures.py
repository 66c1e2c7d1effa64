"""Failure classification, retry decisions and fault injection: canned logs, then real torchrun jobs on CPU.

The torchrun tests make a 2-rank tiny-wan job fail on purpose (``REELBATCH_FAULT``, engine/faults.py) and check
that ``classify`` names the kind and the rank, that the other ranks go down within seconds and that no process
of the job is left behind.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from reelbatch.contract import RANK_ENTRY, JobSpec, read_results
from reelbatch.engine.faults import Fault, FaultInjector, FaultSpecError, parse_faults
from reelbatch.identity import expand_row
from reelbatch.infra.failures import Failure, RetryPolicy, RetryRule, classify, verify_video
from reelbatch.infra.launcher import (
    LaunchResult,
    _job_environment,
    _tagged_pids,
    free_port,
    launch,
    new_launch_id,
    torchrun_command,
)
from reelbatch.planning.buckets import bucket_key
from reelbatch.schemas import ManifestRow, ParallelPlan

# --- canned logs, in the exact shapes torchrun 2.x and the ranks print ---------------------------------------


def report(root: tuple[int, int, int], *others: tuple[int, int, int]) -> list[str]:
    """torchrun's closing report; each entry is (rank, exitcode, pid)."""

    def entry(i, rank, code, pid):
        sig = f"  (SIG{'TERM' if code == -15 else 'KILL'})" if code < 0 else " "
        return [f"[{i}]:", "  time      : 2025-01-01_00:00:00", "  host      : localhost",
                f"  rank      : {rank} (local_rank: {rank})", f"  exitcode  : {code} (pid: {pid}){sig}",
                "  error_file: <N/A>", "  traceback : To enable traceback see: https://pytorch.org/docs/"]  # fmt: skip

    lines = ["Traceback (most recent call last):", '  File "run.py", line 1, in <module>',
             "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ", "=" * 60,
             "reelbatch.engine.rank FAILED", "-" * 60, "Failures:"]  # fmt: skip
    for i, other in enumerate(others, start=1):
        lines += entry(i, *other)
    if not others:
        lines.append("  <NO_OTHER_FAILURES>")
    return lines + ["-" * 60, "Root Cause (first observed failure):", *entry(0, *root), "=" * 60]


def sigterm(pid: int) -> str:
    return (
        "W0101 00:00:00.000000 1 torch/distributed/elastic/multiprocessing/api.py:1028] "
        f"Sending process {pid} closing signal SIGTERM"
    )


def traceback(rank: int, *last: str) -> list[str]:
    return [f"[rank{rank}]:[rank{rank}]: Traceback (most recent call last):",
            f'[rank{rank}]:[rank{rank}]:   File "/work/reelbatch/engine/rank.py", line 145, in run_job',
            f"[rank{rank}]:[rank{rank}]:     results = run_batch(spec, ctx, sampler, real)",
            *(f"[rank{rank}]:[rank{rank}]: {line}" for line in last)]  # fmt: skip


def event(rank: int, name: str) -> str:
    return f'[rank{rank}]:REELBATCH_EVENT {{"event": "{name}", "rank": {rank}}}'


GLOO_CLOSED = (
    "RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
    "[127.0.0.1]:10166. This is typically caused by a remote worker crashing."
)
LOADED = [event(0, "loading"), event(1, "loading"), event(0, "loaded"), event(1, "loaded")]


def failed(first_failed_rank=None, returncode=1, timed_out=False, log_path=Path("/nonexistent/ranks.log")):
    return LaunchResult(returncode, timed_out, 3.0, log_path, first_failed_rank, ["torchrun's last line"])


def test_success_is_not_a_failure():
    assert classify(failed(returncode=0), ["[rank0]:RuntimeError: ignored, the job succeeded"]) is None


def test_oom_on_one_rank_wins_over_its_peers_connection_error():
    log = [*LOADED, *traceback(1, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."),
           *traceback(0, GLOO_CLOSED), sigterm(100), *report((1, 1, 101), (0, -15, 100))]  # fmt: skip
    got = classify(failed(1), log)
    assert (got.kind, got.rank) == ("oom", 1)
    assert "CUDA out of memory" in got.message
    assert got.tail[-1].startswith("torch.OutOfMemoryError")  # the rank's own lines, prefixes stripped
    assert not any(line.startswith("[rank") for line in got.tail)


@pytest.mark.parametrize(
    "text",
    ["RuntimeError: CUDA error: out of memory", "NCCL WARN Cuda failure 2 'out of memory'",
     ("RuntimeError: [enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried "
      "to allocate 123 bytes")],
)  # fmt: skip
def test_other_out_of_memory_texts(text):
    assert classify(failed(0), [*LOADED, *traceback(0, text)]).kind == "oom"


def test_crash_is_blamed_on_the_crashing_rank_even_when_torchrun_names_its_peer():
    # torchrun's failure times have 1 s resolution: the peer that died of the lost connection can be the "root".
    log = [*LOADED, *traceback(1, "ValueError: bad latent shape"), *traceback(0, GLOO_CLOSED),
           *report((0, 1, 100), (1, 1, 101))]  # fmt: skip
    got = classify(failed(0), log)
    assert (got.kind, got.rank) == ("rank_crash", 1)
    assert "ValueError: bad latent shape" in got.message and "rank 0 lost the connection" in got.message


def test_silent_death_by_signal_is_a_rank_crash_not_a_collective_failure():
    log = [*LOADED, *traceback(0, GLOO_CLOSED), sigterm(100), *report((1, -9, 101), (0, -15, 100))]
    got = classify(failed(1), log)
    assert (got.kind, got.rank) == ("rank_crash", 1)
    assert "SIGKILL" in got.message


def test_nccl_watchdog_timeout_is_a_collective_timeout_of_the_reporting_rank():
    watchdog = ("[rank1]:[E0101 00:30:00.0 ProcessGroupNCCL.cpp:632] [Rank 1] Watchdog caught collective "
                "operation timeout: WorkNCCL(SeqNum=7, OpType=ALLGATHER) ran for 1800083 milliseconds")  # fmt: skip
    log = [*LOADED, watchdog, sigterm(100), *report((1, -6, 101), (0, -15, 100))]
    got = classify(failed(1), log)
    assert (got.kind, got.rank) == ("collective_timeout", 1)
    assert "Watchdog caught collective operation timeout" in got.message


def test_master_port_in_use_is_a_collective_timeout_of_torchrun_itself():
    log = ["Traceback (most recent call last):", '  File "run.py", line 1',
           ("torch.distributed.DistNetworkError: The server socket has failed to listen on any local network "
            "address. port: 29500, useIpv6: false, code: -98, name: EADDRINUSE, "
            "message: address already in use")]  # fmt: skip
    got = classify(failed(None), log)
    assert (got.kind, got.rank) == ("collective_timeout", None)
    assert "EADDRINUSE" in got.message and got.tail[-1].startswith("torch.distributed.DistNetworkError")


def test_our_wall_clock_is_a_timeout():
    log = [*LOADED, sigterm(100), sigterm(101),
           "torch.distributed.elastic.multiprocessing.api.SignalException: Process 9 got signal: 15"]  # fmt: skip
    got = classify(failed(None, returncode=1, timed_out=True), log)
    assert (got.kind, got.rank) == ("timeout", None)


@pytest.mark.parametrize(
    "text",
    [("reelbatch.engine.checks.PlanNotRunnable: job j (plan dp=1,cfg=1,ulysses=3,ring=1): ulysses=3 must divide "
      "the model's 4 attention heads"), "pydantic_core._pydantic_core.ValidationError: 1 validation error for JobSpec",
     "RuntimeError: plan dp=4,cfg=1,ulysses=1,ring=1 needs 4 ranks but the job was launched with 2"],
)  # fmt: skip
def test_engine_refusals_are_bad_input(text):
    log = [*traceback(0, text), *traceback(1, text), sigterm(100), *report((1, 1, 101), (0, -15, 100))]
    got = classify(failed(1), log)
    assert (got.kind, got.rank) == ("bad_input", 1)


def test_failure_between_loading_and_loaded_is_model_load_and_the_peer_still_loading_is_not_blamed():
    log = [event(0, "loading"), event(1, "loading"),
           *traceback(1, "OSError: Error no file named diffusion_pytorch_model.safetensors found in directory"),
           sigterm(100), *report((1, 1, 101), (0, -15, 100))]  # fmt: skip
    got = classify(failed(1), log)
    assert (got.kind, got.rank) == ("model_load", 1)
    # The same error after "loaded" is an ordinary crash.
    assert classify(failed(1), [*LOADED, *log[2:]]).kind == "rank_crash"


def test_a_line_glued_after_a_progress_bar_still_counts_for_its_rank():
    # tqdm ends its text with "\r": torchrun's copy glues the next line of any rank onto it (seen in real logs).
    glued = "[rank0]:Loading pipeline components...:   0%|          | 0/5 [00:00<?, ?it/s]" + event(1, "loaded")
    log = [event(0, "loading"), event(1, "loading"), glued, sigterm(100), *report((1, 1, 101), (0, -15, 100))]
    got = classify(failed(1), log)
    assert (got.kind, got.rank) == ("rank_crash", 1)  # not model_load: rank 1 had loaded
    assert got.tail[-1] == 'REELBATCH_EVENT {"event": "loaded", "rank": 1}'


def test_exit_code_alone_falls_back_to_torchrun_root_cause_then_unknown():
    got = classify(failed(None), report((1, 3, 101)))
    assert (got.kind, got.rank, got.message) == ("rank_crash", 1, "rank 1 exited with code 3 without an error message")
    assert got.tail[-1].startswith("=====")  # rank 1 printed nothing: torchrun's report is what there is
    got = classify(failed(None), [])
    assert (got.kind, got.rank) == ("unknown", None)
    assert got.tail == ["torchrun's last line"]  # nothing else to show


def test_the_log_file_is_streamed_when_no_lines_are_given(tmp_path):
    log_path = tmp_path / "ranks.log"
    noise = [f"[rank0]:step {i}" for i in range(5000)]  # far more than any tail
    log_path.write_text("\n".join([*LOADED, *noise, *traceback(1, "torch.OutOfMemoryError: CUDA out of memory.")]))
    got = classify(failed(1, log_path=log_path))
    assert (got.kind, got.rank) == ("oom", 1)
    assert len(got.tail) <= 20


# --- retry policy --------------------------------------------------------------------------------------------


def of(kind: str) -> Failure:
    return Failure(kind, 0, "", [])


def test_default_retry_policy():
    policy = RetryPolicy()
    assert not policy.decide(of("bad_input"), 1).retry
    crash = [policy.decide(of("rank_crash"), attempt) for attempt in (1, 2, 3)]
    assert [d.retry for d in crash] == [True, True, False]
    assert [d.delay_s for d in crash[:2]] == [5.0, 10.0]  # exponential backoff
    assert policy.decide(of("collective_timeout"), 2).delay_s == 10.0
    oom = policy.decide(of("oom"), 1)
    assert oom.retry and oom.lower_memory and not policy.decide(of("oom"), 2).retry
    assert policy.decide(of("timeout"), 1).retry and not policy.decide(of("timeout"), 2).retry
    assert policy.decide(of("model_load"), 1).retry and not policy.decide(of("model_load"), 2).retry
    assert not policy.decide(None, 1).retry


def test_retry_policy_from_dict():
    policy = RetryPolicy.from_dict(
        {"rank_crash": {"max_attempts": 5, "backoff_s": 1, "factor": 3, "max_delay_s": 4}, "timeout": 1}
    )
    assert [policy.decide(of("rank_crash"), a).delay_s for a in (1, 2, 3, 4)] == [1, 3, 4, 4]
    assert not policy.decide(of("rank_crash"), 5).retry
    assert not policy.decide(of("timeout"), 1).retry
    assert policy.rules["oom"] == RetryPolicy().rules["oom"]  # the rest keep their defaults
    for bad in ({"crash": 2}, {"oom": {"retries": 2}}, {"oom": 0}, {"oom": True}):
        with pytest.raises((ValueError, TypeError)):
            RetryPolicy.from_dict(bad)
    with pytest.raises(ValueError):
        RetryRule(max_attempts=2, factor=0.5)


# --- the fault grammar ---------------------------------------------------------------------------------------


def test_fault_grammar():
    assert parse_faults("crash:rank=1:sample=0, hang:rank=0:sample=1:attempt=1 ,corrupt") == [
        Fault("crash", 1, 0, None), Fault("hang", 0, 1, 1), Fault("corrupt", None, 0, None)
    ]  # fmt: skip
    for bad in ("explode:rank=1", "crash:rank=x", "crash:rank=1:rank=2", "crash:node=1", "crash:rank"):
        with pytest.raises(FaultSpecError):
            parse_faults(bad)
    env = {"REELBATCH_FAULT": "crash:rank=1:attempt=1,oom:rank=0"}
    assert [f.kind for f in FaultInjector.from_env(1, env).faults] == ["crash"]
    assert not FaultInjector.from_env(1, {**env, "REELBATCH_ATTEMPT": "2"})  # fires on the first attempt only
    assert [f.kind for f in FaultInjector.from_env(0, {**env, "REELBATCH_ATTEMPT": "2"}).faults] == ["oom"]
    assert not FaultInjector.from_env(0, {})
    FaultInjector.from_env(0, {}).before_batch(0, 1)  # no fault: a no-op


def test_verify_video_rejects_garbage_and_missing_files(tmp_path):
    garbage = tmp_path / "x.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    assert not verify_video(garbage)
    assert not verify_video(tmp_path / "missing.mp4")


# --- real torchrun jobs (tiny-wan, 32x32x5, 2 steps, CPU/gloo) ----------------------------------------------

PROMPTS = ["a cat walks on a sunny street", "waves crash on a rocky shore"]


def write_job(tmp: Path, name: str, model_path: Path, plan: ParallelPlan, samples: int = 1) -> Path:
    rows = [
        ManifestRow(row=i + 2, prompt=p, model="tiny-wan", height=32, width=32, num_frames=5,
                    num_inference_steps=2, guidance_scale=5.0, seed=7 + i)
        for i, p in enumerate(PROMPTS[:samples])
    ]  # fmt: skip
    expanded = [s for r in rows for s in expand_row(r)]
    folder = tmp / name
    folder.mkdir(parents=True)
    spec = JobSpec(
        job_id=name, bucket=bucket_key(rows[0]), model_path=str(model_path), family="wan", plan=plan,
        samples=expanded, padded_slots=-len(expanded) % plan.dp, output_dir=str(folder / "staging"),
        results_path=str(folder / "results.jsonl"),
    )  # fmt: skip
    (folder / "job.json").write_text(spec.model_dump_json())
    return folder / "job.json"


def run(job: Path, fault: str | None, *, attempt: int = 1, timeout_s: float = 120, **kwargs):
    """Launch; returns (result, seconds, launch id)."""
    env = {"REELBATCH_ATTEMPT": str(attempt), **({"REELBATCH_FAULT": fault} if fault else {})}
    launch_id = new_launch_id()
    started = time.monotonic()
    result = launch(
        RANK_ENTRY, [str(job)], nproc_per_node=JobSpec.model_validate_json(job.read_text()).plan.world_size,
        log_path=job.parent / f"ranks-{attempt}.log", timeout_s=timeout_s, env=env, launch_id=launch_id,
        grace_s=5, **kwargs,
    )  # fmt: skip
    assert not _tagged_pids(launch_id), "a process of the job outlived it"
    return result, time.monotonic() - started, launch_id


def fired_at(result: LaunchResult) -> float:
    """Wall-clock time the injected fault fired (the rank prints it)."""
    match = re.search(r"REELBATCH_FAULT injecting \w+ on rank \d+ .* at ([\d.]+)", result.log_path.read_text())
    assert match, "the fault never fired"
    return float(match.group(1))


CFG2 = ParallelPlan(dp=1, cfg=2)  # the pair exchanges activations every step: a peer waits in all_gather


@pytest.mark.torchrun
def test_crash_is_classified_fails_fast_and_succeeds_when_retried(tmp_path, tiny_models):
    job = write_job(tmp_path, "crash", tiny_models["tiny-wan"], CFG2, samples=2)
    # One launch saved: the retry also writes a corrupt video (attempt 2 only), which only verify_video catches.
    faults = "crash:rank=1:sample=0:attempt=1,corrupt:rank=0:sample=0:attempt=2"
    result, seconds, _ = run(job, faults)
    returned = time.time()
    failure = classify(result)
    assert (failure.kind, failure.rank) == ("rank_crash", 1), failure
    assert "injected crash on rank 1" in failure.message
    assert seconds < 30
    assert returned - fired_at(result) < 10  # rank 0, waiting in all_gather, went down with it (~1.5 s here)

    decision = RetryPolicy().decide(failure, attempt=1)
    assert decision.retry and not decision.lower_memory
    again, _, _ = run(job, faults, attempt=2)
    assert again.returncode == 0 and classify(again) is None
    spec = JobSpec.model_validate_json(job.read_text())
    assert [r.status for r in read_results(spec.results_path)] == ["done", "done"]  # the rank cannot tell ...
    first, second = (Path(spec.output_dir) / s.output_key for s in spec.samples)
    assert first.stat().st_size > 0 and not verify_video(first)  # ... the collector must decode
    assert verify_video(second, frames=5, height=32, width=32)


@pytest.mark.torchrun
def test_hang_hits_the_wall_clock_and_leaves_no_process(tmp_path, tiny_models):
    job = write_job(tmp_path, "hang", tiny_models["tiny-wan"], CFG2)
    # Starting 2 ranks and loading takes ~5 s on a 2-core machine: a shorter limit would not reach the hang.
    result, seconds, launch_id = run(job, "hang:rank=0:sample=0", timeout_s=15)
    assert result.timed_out and seconds < 15 + 5 + 5
    fired_at(result)  # it was the hang, not slow start-up, that ran out the clock
    assert classify(result).kind == "timeout"
    assert not _tagged_pids(launch_id)


@pytest.mark.torchrun
def test_oom_is_classified_and_retried_with_less_memory(tmp_path, tiny_models):
    result, _, _ = run(write_job(tmp_path, "oom", tiny_models["tiny-wan"], CFG2), "oom:rank=1:sample=0")
    failure = classify(result)
    assert (failure.kind, failure.rank) == ("oom", 1), failure
    assert "CUDA out of memory. Tried to allocate" in failure.message
    assert RetryPolicy().decide(failure, 1).lower_memory


@pytest.mark.torchrun
def test_rank_vanishing_mid_collective_is_a_crash_of_that_rank(tmp_path, tiny_models):
    result, _, _ = run(write_job(tmp_path, "coll", tiny_models["tiny-wan"], CFG2), "collective:rank=1:sample=0")
    failure = classify(result)
    # Rank 1 exits 1 with no text; rank 0 may print gloo's "Connection closed by peer" before torchrun's SIGTERM
    # reaches it. The dead rank is the cause, the peer's collective error the consequence: rank_crash, rank 1.
    assert (failure.kind, failure.rank) == ("rank_crash", 1), failure
    assert "without an error message" in failure.message
    assert time.time() - fired_at(result) < 10


@pytest.mark.torchrun
def test_plan_the_engine_refuses_is_bad_input(tmp_path, tiny_models):
    job = write_job(tmp_path, "bad", tiny_models["tiny-wan"], ParallelPlan(ulysses=3))  # 4 heads
    result, _, _ = run(job, None)
    failure = classify(result)
    assert failure.kind == "bad_input" and failure.rank in (0, 1, 2), failure
    assert "ulysses=3 must divide the model's 4 attention heads" in failure.message
    assert not RetryPolicy().decide(failure, 1).retry


@pytest.mark.torchrun
def test_failure_while_loading_is_model_load(tmp_path, tiny_models):
    result, _, _ = run(write_job(tmp_path, "load", tiny_models["tiny-wan"], CFG2), "load:rank=1")
    failure = classify(result)
    assert (failure.kind, failure.rank) == ("model_load", 1), failure


@pytest.mark.torchrun
def test_master_port_taken_is_a_collective_failure(tmp_path, tiny_models):
    with socket.socket() as holder:
        holder.bind(("", 0))
        holder.listen()
        job = write_job(tmp_path, "port", tiny_models["tiny-wan"], CFG2)
        result, seconds, _ = run(job, None, master_port=holder.getsockname()[1])
    failure = classify(result)
    assert (failure.kind, failure.rank) == ("collective_timeout", None), failure
    assert "EADDRINUSE" in failure.message and seconds < 30


@pytest.mark.torchrun
def test_ranks_die_with_their_torchrun_agent(tmp_path, tiny_models):
    """SIGKILL only the agent: without the rank-side guard its ranks would run on (rank 1 in all_gather, 30 min)."""
    job = write_job(tmp_path, "agent", tiny_models["tiny-wan"], CFG2)
    launch_id = new_launch_id()
    command = torchrun_command(RANK_ENTRY, [str(job)], nproc_per_node=2, master_port=free_port(),
                               rank_log_dir=tmp_path / "rank-logs")  # fmt: skip
    log_path = tmp_path / "agent.log"
    with open(log_path, "w") as log:
        agent = subprocess.Popen(
            command, env=_job_environment({"REELBATCH_FAULT": "hang:rank=0:sample=0"}, launch_id),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "injecting hang" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        ranks = [pid for pid in _tagged_pids(launch_id) if pid != agent.pid]
        assert len(ranks) == 2
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait()
        killed = time.monotonic()
        while _tagged_pids(launch_id) and time.monotonic() - killed < 5:
            time.sleep(0.05)
        assert not _tagged_pids(launch_id)
    finally:
        for pid in _tagged_pids(launch_id):
            os.kill(pid, signal.SIGKILL)
