"""A dead vLLM engine is an error, not a hang.

    with dead_engine_raises(llm):
        llm.generate(prompts, params)      # raises EngineDeadError if the engine's processes die

vLLM's client waits for outputs on a queue without a timeout; when its engine process
dies while a request is on its way (or before vLLM's own monitor noticed), nothing is
ever put there. While the block runs, a watcher thread checks the engine's processes
every 0.25 s and, once one is gone, puts the EngineDeadError on that queue itself — what
vLLM's client does when it sees the engine fail. An engine in this process has no such
queue: nothing to watch.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

POLL_S = 0.25


@contextlib.contextmanager
def dead_engine_raises(llm: Any) -> Iterator[None]:
    """Makes a wait on `llm`'s engine end with EngineDeadError once its processes died."""
    client = getattr(llm.llm_engine, "engine_core", None)
    resources = getattr(client, "resources", None)
    outputs = getattr(client, "outputs_queue", None)
    if resources is None or outputs is None:
        yield
        return
    from vllm.v1.engine.exceptions import EngineDeadError

    manager = getattr(resources, "engine_manager", None)
    processes = list(getattr(manager, "processes", None) or [])
    done = threading.Event()

    def watch() -> None:
        while not done.wait(POLL_S):
            if resources.engine_dead or any(not process.is_alive() for process in processes):
                resources.engine_dead = True
                outputs.put_nowait(EngineDeadError())
                return

    watcher = threading.Thread(target=watch, name="nnsight_fast-engine-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
