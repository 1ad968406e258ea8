"""Pooled worker threads for bodies that must be served from any OS thread.

    worker = POOL.acquire()              # an idle thread, or a new one
    worker.handoff.start(job)            # job() runs on the worker until it parks or ends
    ...
    POOL.release(worker)                 # back to the pool (or stopped, past MAX_IDLE)

Only the thread path uses these (backward blocks, models wrapped with `threaded=True`);
ordinary bodies are greenlets on the model's thread. The pool keeps at most MAX_IDLE
idle threads and stops the rest, so a trace with many invokes leaves no crowd behind.
Workers are daemon threads, stopped at interpreter exit; a forked child starts with
an empty pool (the parent's threads do not exist there).
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Callable

from . import _native

MAX_IDLE = 4


class Worker:
    """A thread that runs jobs handed to it through its ThreadHandoff; a job returns True on failure."""

    def __init__(self) -> None:
        self.handoff = _native.ThreadHandoff()
        self.thread = threading.Thread(target=self._loop, name="nnsight_fast-mediator", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        handoff = self.handoff
        job: Callable[[], bool] | None = handoff.next_job()
        while job is not None:
            failed = job()
            del job
            job = handoff.finish_and_next(failed)

    def stop(self) -> None:
        """Ends the worker thread (it finishes no job: call it while idle)."""
        self.handoff.stop()
        self.thread.join(timeout=5)


class WorkerPool:
    """A small pool of worker threads for bodies that must run off the model's thread.

    worker = POOL.acquire()        # a parked worker, or a new one
    ...                            # its handoff runs one body
    POOL.release(worker)           # kept for the next trace (at most MAX_IDLE idle)
    """

    def __init__(self) -> None:
        self._idle: list[Worker] = []
        self._lock = threading.Lock()

    def acquire(self) -> Worker:
        """An idle worker, or a new one."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return Worker()

    def release(self, worker: Worker) -> None:
        """Returns a worker whose body ended; beyond MAX_IDLE idle ones it stops."""
        if worker.handoff.busy:  # still parked: never hand out a worker mid-job
            raise RuntimeError("internal error: releasing a worker that is still parked")
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(worker)
                return
        worker.stop()

    def idle_count(self) -> int:
        """How many workers wait for a job."""
        with self._lock:
            return len(self._idle)

    def shutdown(self) -> None:
        """Stops every idle worker."""
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.stop()

    def _forget_after_fork(self) -> None:
        self._idle = []
        self._lock = threading.Lock()


POOL = WorkerPool()
atexit.register(POOL.shutdown)
os.register_at_fork(after_in_child=POOL._forget_after_fork)
