"""Pooled worker threads that run mediators.

    worker = POOL.acquire()          # an idle thread, or a new one
    outcome = worker.channel.start(job)   # job() runs on the worker until it parks or ends
    ...
    POOL.release(worker)

A trace borrows one worker per invoke and gives them back at its end, so a trace
starts no thread once the pool is warm. Workers are daemon threads, stopped and
joined at interpreter exit (a worker must not wake into a finalizing interpreter).
"""

from __future__ import annotations

import atexit
import threading
from typing import Callable

from . import _native


class Worker:
    """A thread that runs jobs handed to it through its Channel; a job returns True on failure."""

    def __init__(self) -> None:
        self.channel = _native.Channel()
        self.thread = threading.Thread(target=self._loop, name="nnsight_fast-mediator", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        channel = self.channel
        job: Callable[[], bool] | None = channel.next_job()
        while job is not None:
            failed = job()
            del job
            job = channel.finish_and_next(failed)


class WorkerPool:
    def __init__(self) -> None:
        self._idle: list[Worker] = []
        self._all: list[Worker] = []
        self._lock = threading.Lock()

    def acquire(self) -> Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        worker = Worker()
        with self._lock:
            self._all.append(worker)
        return worker

    def release(self, worker: Worker) -> None:
        if worker.channel.busy:  # still parked: never hand out a worker mid-job
            raise RuntimeError("internal error: releasing a worker that is still parked")
        with self._lock:
            self._idle.append(worker)

    def idle_count(self) -> int:
        with self._lock:
            return len(self._idle)

    def shutdown(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._all = [w for w in self._all if w not in idle]
        for worker in idle:
            worker.channel.stop()
            worker.thread.join(timeout=5)


POOL = WorkerPool()
atexit.register(POOL.shutdown)
