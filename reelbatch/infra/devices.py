"""The devices of this process's machine, lent to jobs as disjoint groups so several run side by side.

On a GPU machine a device is a CUDA index and a job's group becomes its ``CUDA_VISIBLE_DEVICES``; on a CPU-only
machine a device is a rank slot (ranks are processes with gloo), so groups still bound how many ranks run at once.
A job asks for as many devices as it has ranks and waits until a group that large is free: the machine is never
oversubscribed. Groups are buddy-aligned (``reelbatch.gpus.GpuAllocator``), so 2-GPU jobs get 0-1, 2-3, ... and
an 8-GPU node stays splittable.

Two ways to use it. The flow's scheduler (``tasks.executors.execute_jobs``) takes groups with ``try_take`` in the
longest-first order and starts each job on its group, back-filling: a narrow job may start while a wide one waits
for room, because holding GPUs idle until the wide job fits would waste them. A job that arrives on its own (a
task on a Dask worker, where Dask's ``GPU`` resource already keeps the worker from taking more jobs than it has
devices) waits in ``group`` for its devices, served by priority with the same back-filling. The pool is per
process: the flow's task threads share one, and so do the task threads of one Dask worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from reelbatch.gpus import GpuAllocator, visible_gpu_names, visible_gpus
from reelbatch.infra.dask_cluster import worker_host


@dataclass(frozen=True)
class DeviceGroup:
    """Devices lent to one job: CUDA indices, or CPU rank slots when ``cuda`` is False."""

    devices: tuple[str, ...]  # as CUDA_VISIBLE_DEVICES names them (the parent's own list may be a subset)
    cuda: bool
    host: str
    machine_devices: int = 0  # all devices of the pool it came from

    def environment(self) -> dict[str, str]:
        """What the job's torchrun process needs to see only its group."""
        if not self.cuda:
            return {}
        return {"CUDA_VISIBLE_DEVICES": ",".join(self.devices)}

    def describe(self) -> str:
        """``cuda:0,1`` or ``cpu:2,3`` (stored with each attempt)."""
        return ("cuda:" if self.cuda else "cpu:") + ",".join(self.devices)


class DevicePool:
    """``lock_dir``: where device lock files live, shared by every process of the machine (None: this pool alone).

    Each pool only knows its own process's jobs; two runs on one machine would both start at GPU 0. A device is
    therefore also claimed with an exclusive ``flock`` on ``<lock_dir>/<name>.lock`` while it is lent. The kernel
    drops the lock when its holder dies, so a killed run never leaves a GPU claimed.
    """

    def __init__(
        self,
        capacity: int,
        cuda: bool,
        host: str | None = None,
        names: list[str] | None = None,
        lock_dir: Path | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("a device pool needs at least one device")
        self.capacity = capacity
        self.cuda = cuda
        self.names = names or [str(index) for index in range(capacity)]
        self.host = host or socket.gethostname()
        self.lock_dir = lock_dir
        self._locks: dict[int, int] = {}  # device index -> fd holding its lock
        self._allocator = GpuAllocator(1, capacity)
        self._changed = threading.Condition()
        self._waiting: list[tuple[float, int, int]] = []  # (priority, arrival, width)
        self._arrivals = itertools.count()
        self.in_use = 0
        self.peak_in_use = 0  # for tests and benchmarks: the most devices ever lent at once

    def try_take(self, width: int) -> DeviceGroup | None:
        """``width`` free devices now, or None; never waits (the flow's scheduler decides who goes next)."""
        self._check_width(width)
        with self._changed:
            devices = self._claim(width)
            return None if devices is None else self._lend(devices)

    def give_back(self, group: DeviceGroup) -> None:
        with self._changed:
            indices = [self.names.index(name) for name in group.devices]
            for index in indices:
                if (fd := self._locks.pop(index, None)) is not None:
                    os.close(fd)  # closing the file drops its flock
            self._allocator.release(0, indices)
            self.in_use -= len(group.devices)
            self._changed.notify_all()

    @contextlib.contextmanager
    def group(self, width: int, priority: float = 0.0) -> Iterator[DeviceGroup]:
        """Wait for ``width`` free devices, lend them for the ``with`` block, then give them back.

        For jobs that arrive on their own (tasks on a Dask worker); waiting ones go by ``priority``, lower first.
        """
        self._check_width(width)
        ticket = (priority, next(self._arrivals), width)
        with self._changed:
            self._waiting.append(ticket)
            try:
                while (lent := self._take_if_turn(ticket)) is None:
                    self._changed.wait()
            finally:
                self._waiting.remove(ticket)
                self._changed.notify_all()  # a waiter behind this one may fit now
        try:
            yield lent
        finally:
            self.give_back(lent)

    def _check_width(self, width: int) -> None:
        if width > self.capacity:
            raise ValueError(
                f"a job of {width} ranks does not fit this machine's {self.capacity} "
                f"{'GPUs' if self.cuda else 'CPU rank slots'}: plan for at most {self.capacity} ranks per node"
            )

    def _lend(self, devices: tuple[int, ...]) -> DeviceGroup:
        self.in_use += len(devices)
        self.peak_in_use = max(self.peak_in_use, self.in_use)
        return DeviceGroup(tuple(self.names[d] for d in devices), self.cuda, self.host, self.capacity)

    def _take_if_turn(self, ticket: tuple[float, int, int]) -> DeviceGroup | None:
        # Earlier tickets that fit go first; a ticket that does not fit lets later ones back-fill.
        room = self._allocator.max_free()
        for other in sorted(self._waiting):
            if other == ticket:
                break
            if other[2] <= room:
                return None
        devices = self._claim(ticket[2])
        return None if devices is None else self._lend(devices)

    def _claim(self, width: int) -> tuple[int, ...] | None:
        """A free group whose devices no other process holds either (their locks taken), or None."""
        held_elsewhere = []
        try:
            while (got := self._allocator.allocate(width)) is not None:
                if self._lock_all(got[1]):
                    return got[1]
                held_elsewhere.append(got[1])  # keep it out of the next allocate; given back below
            return None
        finally:
            for devices in held_elsewhere:
                self._allocator.release(0, devices)

    def _lock_all(self, devices: tuple[int, ...]) -> bool:
        if self.lock_dir is None:
            return True
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        taken: list[int] = []
        for index in devices:
            fd = os.open(self.lock_dir / f"{self.names[index]}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                for other in taken:
                    os.close(self._locks.pop(other))
                return False
            self._locks[index] = fd
            taken.append(index)
        return True


DEVICE_LOCK_DIR = Path(os.environ.get("REELBATCH_DEVICE_LOCK_DIR") or Path(tempfile.gettempdir()) / "reelbatch-gpus")

_pools: dict[tuple, DevicePool] = {}
_pools_lock = threading.Lock()


def local_pool(ranks_per_node: int) -> DevicePool:
    """This process's pool: the visible GPUs, or ``ranks_per_node`` CPU rank slots on a machine without CUDA.

    On a GPU machine the planner's ranks per node must not exceed the GPUs this process sees; a job planned wider
    than the machine could never start.
    """
    gpus = visible_gpus()
    if gpus and ranks_per_node > gpus and worker_host() is None:
        raise ValueError(
            f"the run is planned for {ranks_per_node} GPUs per node but this machine shows {gpus}: "
            f"pass --gpus-per-node {gpus} (or fewer)"
        )
    capacity = gpus or ranks_per_node
    names = visible_gpu_names() or None
    key = (capacity, bool(gpus), tuple(names or ()))
    with _pools_lock:
        if key not in _pools:
            # On a Dask worker the attempt records the worker's address: a machine may run several workers.
            # CUDA devices are real and shared by every process of the machine: lock them machine-wide. CPU rank
            # slots are a per-run budget (two runs on a laptop each get theirs), so they are not locked.
            lock_dir = DEVICE_LOCK_DIR if gpus else None
            _pools[key] = DevicePool(capacity, cuda=bool(gpus), names=names, host=worker_host(), lock_dir=lock_dir)
        return _pools[key]
