"""Where the engine runs: in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) tracing works
as with a separate engine process, and an engine whose processes died is an error, not a hang.
Each runs in a fresh interpreter (an in-process engine keeps torch.distributed set up)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(script: str, env: dict, folder, timeout: float = 240) -> str:
    path = folder / "script.py"  # a file: a traced block runs from its source
    path.write_text(textwrap.dedent(script))
    done = subprocess.run([sys.executable, str(path)], cwd=HERE, env={**os.environ, "PYTHONPATH": HERE, **env},
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_an_engine_in_this_process_traces_and_steers(llama_folder, tmp_path):
    out = _run(f"""
        import torch
        from nnsight_fast import VLLM
        from checkpoints import ENGINE
        if __name__ == "__main__":
            model = VLLM({llama_folder!r}, **ENGINE)
            vector = torch.randn(128, generator=torch.Generator().manual_seed(1)) * 4
            with model.trace("The Eiffel Tower is in", temperature=0.0, max_tokens=4) as tracer:
                hidden = model.model.layers[0].mlp.output.clone().save()
                for step in tracer.all():
                    model.model.layers[0].mlp.output[:] += vector
                out = tracer.result.save()
            plain = model.trace("The Eiffel Tower is in", trace=False, temperature=0.0, max_tokens=4)
            steered, unsteered = list(out.outputs[0].token_ids), list(plain[0].outputs[0].token_ids)
            assert steered != unsteered, (steered, unsteered)
            print("ok", tuple(hidden.shape))
    """, {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}, tmp_path)
    assert "ok (5, 128)" in out


def test_a_dead_engine_is_an_error_not_a_hang(llama_folder, tmp_path):
    out = _run(f"""
        import psutil
        from nnsight_fast import VLLM
        from checkpoints import ENGINE
        if __name__ == "__main__":
            model = VLLM({llama_folder!r}, **ENGINE)
            with model.trace("Hello", temperature=0.0, max_tokens=1):
                first = model.logits.output.save()
            for child in psutil.Process().children(recursive=True):
                child.kill()
            try:
                with model.trace("Hello", temperature=0.0, max_tokens=1):
                    second = model.logits.output.save()
            except Exception as error:
                print("raised", type(error).__name__)
    """, {}, tmp_path, timeout=180)
    assert "raised" in out
