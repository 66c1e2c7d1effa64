"""reelbatch.infra.launcher against real torchrun jobs: real processes, no mocks."""

import ast
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from reelbatch.infra.launcher import LaunchResult, free_port, launch, torchrun_command

RANK_SCRIPTS_PARENT = Path(__file__).parent  # so ranks can import rank_scripts.*
REPO_ROOT = Path(__file__).parents[1]


def rank_env(**extra: str) -> dict[str, str]:
    python_path = os.pathsep.join(filter(None, [str(RANK_SCRIPTS_PARENT), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": python_path, **extra}


def is_running(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def recorded_pids(pid_dir: Path) -> dict[str, int]:
    return {path.stem: int(path.read_text()) for path in pid_dir.glob("*.pid")}


def run_job(tmp_path: Path, entry: str, args=(), *, timeout_s=60.0, **kwargs) -> LaunchResult:
    kwargs.setdefault("env", rank_env())
    return launch(
        f"rank_scripts.{entry}",
        list(args),
        nproc_per_node=2,
        log_path=tmp_path / "logs" / f"{entry}.log",
        timeout_s=timeout_s,
        **kwargs,
    )


def test_torchrun_command_format(tmp_path):
    command = torchrun_command(
        "pkg.entry", ["--prompt", "a b"], nproc_per_node=4, master_port=29123, rank_log_dir=tmp_path
    )
    assert command == [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes=1", "--nproc-per-node=4",
        "--rdzv-backend=static", "--master-addr=127.0.0.1", "--master-port=29123",
        "--max-restarts=0", "--tee=3", f"--log-dir={tmp_path}",
        "-m", "pkg.entry", "--prompt", "a b",
    ]  # fmt: skip


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("", port))


@pytest.mark.torchrun
def test_allreduce_lines_reach_log_and_callback_with_rank_prefix(tmp_path):
    seen: list[str] = []
    port = free_port()

    result = run_job(tmp_path, "allreduce", on_line=seen.append, master_port=port)

    assert (result.returncode, result.timed_out, result.first_failed_rank) == (0, False, None)
    expected = ["[rank0]:rank 0 sum 3", "[rank1]:rank 1 sum 3", f"[rank0]:rank 0 master_port {port}"]
    log_lines = result.log_path.read_text().splitlines()
    for line in expected:
        assert line in seen
        assert line in log_lines
    assert result.tail == seen[-len(result.tail) :]
    # torchrun's per-rank files live in a temporary directory next to the log, removed afterwards.
    assert [path.name for path in result.log_path.parent.iterdir()] == ["allreduce.log"]


@pytest.mark.torchrun
def test_failed_rank_is_reported_and_its_peer_torn_down(tmp_path):
    started = time.monotonic()

    result = run_job(tmp_path, "rank1_fails", [str(tmp_path)])

    assert time.monotonic() - started < 20
    assert result.returncode != 0 and not result.timed_out
    assert result.first_failed_rank == 1
    assert "[rank1]:rank 1 giving up" in result.log_path.read_text().splitlines()
    pids = recorded_pids(tmp_path)
    assert set(pids) == {"rank0", "rank1"}
    assert not any(is_running(pid) for pid in pids.values())


@pytest.mark.torchrun
def test_timeout_terminates_every_rank(tmp_path):
    timeout_s, grace_s = 3.0, 5.0
    started = time.monotonic()

    result = run_job(tmp_path, "hang", [str(tmp_path)], timeout_s=timeout_s, grace_s=grace_s)

    elapsed = time.monotonic() - started
    assert result.timed_out
    assert result.returncode != 0
    assert timeout_s <= elapsed < timeout_s + grace_s + 5
    pids = recorded_pids(tmp_path)
    assert set(pids) == {"rank0", "rank1"}
    assert not any(is_running(pid) for pid in pids.values())


@pytest.mark.torchrun
def test_rank_ignoring_sigterm_is_killed_after_grace(tmp_path):
    timeout_s, grace_s = 3.0, 1.0
    started = time.monotonic()

    result = run_job(tmp_path, "hang", [str(tmp_path), "--ignore-sigterm"], timeout_s=timeout_s, grace_s=grace_s)

    elapsed = time.monotonic() - started
    assert result.timed_out
    # torchrun would wait 30 s for the stubborn rank, so it has to be SIGKILLed itself.
    assert result.returncode == -signal.SIGKILL
    assert timeout_s + grace_s <= elapsed < timeout_s + grace_s + 5
    pids = recorded_pids(tmp_path)
    assert set(pids) == {"rank0", "rank1"}  # both had installed SIG_IGN before the timeout
    assert not any(is_running(pid) for pid in pids.values())


@pytest.mark.torchrun
def test_two_jobs_side_by_side_on_their_own_ports(tmp_path):
    ports = [free_port(), free_port()]
    assert ports[0] != ports[1]
    results: dict[int, LaunchResult] = {}

    def run(port: int) -> None:
        results[port] = run_job(tmp_path / str(port), "allreduce", master_port=port)

    threads = [threading.Thread(target=run, args=(port,)) for port in ports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for port in ports:
        assert results[port].returncode == 0, results[port].tail
        assert f"[rank1]:rank 1 master_port {port}" in results[port].log_path.read_text().splitlines()


@pytest.mark.torchrun
def test_args_reach_ranks_verbatim_and_env_is_overlaid(tmp_path):
    args = [
        "with space",
        'double"quote',
        "single'quote",
        "$(rm -rf /)",
        "`id`",
        "a; echo pwned",
        "line1\nline2",
        "",
        "*",
        "-m",
        "--nproc-per-node=7",
    ]

    result = run_job(tmp_path, "echo_argv", args, env=rank_env(REELBATCH_TEST_VALUE="x y"))

    assert result.returncode == 0, result.tail
    lines = result.log_path.read_text().splitlines()
    for rank in (0, 1):
        argv_line = next(line for line in lines if line.startswith(f"[rank{rank}]:ARGV "))
        assert ast.literal_eval(argv_line.removeprefix(f"[rank{rank}]:ARGV ")) == args
        assert f"[rank{rank}]:ENV '1' 'x y'" in lines


@pytest.mark.torchrun
def test_detached_grandchild_does_not_outlive_a_successful_job(tmp_path):
    result = run_job(tmp_path, "detached_child", [str(tmp_path)])

    assert result.returncode == 0, result.tail
    grandchild = recorded_pids(tmp_path)["grandchild"]
    assert not is_running(grandchild)


@pytest.mark.torchrun
def test_keyboard_interrupt_kills_the_job_and_propagates(tmp_path):
    driver = textwrap.dedent(
        """
        import signal
        import sys
        from pathlib import Path
        from reelbatch.infra.launcher import launch

        # As from a shell. A child inherits an ignored or blocked SIGINT, and Python then never raises
        # KeyboardInterrupt: in the full suite the orchestrator was seen still waiting 15 s after SIGINT.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, signal.default_int_handler)
        pid_dir = Path(sys.argv[1])
        try:
            launch("rank_scripts.hang", [str(pid_dir)], nproc_per_node=2, log_path=pid_dir / "job.log",
                   timeout_s=120, env={"PYTHONPATH": sys.argv[2]})
        except KeyboardInterrupt:
            sys.exit(42)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    # -X faulthandler: if the orchestrator is stuck, SIGABRT makes it print where.
    orchestrator = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-c", driver, str(tmp_path), str(RANK_SCRIPTS_PARENT)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while len(recorded_pids(tmp_path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(recorded_pids(tmp_path)) == 2, "ranks never started"

        interrupted = time.monotonic()
        orchestrator.send_signal(signal.SIGINT)
        try:
            _, stderr = orchestrator.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            orchestrator.send_signal(signal.SIGABRT)
            _, stderr = orchestrator.communicate(timeout=10)
            pytest.fail(f"orchestrator still running {time.monotonic() - interrupted:.1f} s after SIGINT:\n{stderr}")
        assert orchestrator.returncode == 42, stderr
        assert not any(is_running(pid) for pid in recorded_pids(tmp_path).values())
    finally:
        orchestrator.kill()
        for pid in recorded_pids(tmp_path).values():  # a failed check leaves no ranks behind for later tests
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.torchrun
def test_kill_launch_finds_the_ranks_of_an_abandoned_launch(tmp_path):
    """An orchestrator killed mid-job leaves ranks running; a later one kills them by the recorded tag."""
    import threading

    from reelbatch.infra.launcher import kill_launch, new_launch_id

    launch_id = new_launch_id()
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    finished = threading.Event()

    def abandoned() -> None:
        launch(
            "rank_scripts.hang",
            [str(pid_dir)],
            nproc_per_node=2,
            log_path=tmp_path / "log",
            timeout_s=120,
            launch_id=launch_id,
            env=rank_env(),
        )
        finished.set()

    threading.Thread(target=abandoned, daemon=True).start()
    deadline = time.monotonic() + 60
    while len(recorded_pids(pid_dir)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    pids = list(recorded_pids(pid_dir).values())
    assert len(pids) == 2, "ranks never started"
    assert kill_launch(launch_id) >= 2
    assert finished.wait(30), "torchrun should notice its ranks died and return"
    assert not [pid for pid in pids if is_running(pid)]
