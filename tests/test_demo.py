"""The demo (`python -m nnsight_fast`) runs and its trace matches the raw-hook run."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")


def test_demo_runs_and_checks_itself(tmp_path, capsys):
    from nnsight_fast.__main__ import main

    timings = main(repeats=1, new_tokens=8, folder=str(tmp_path / "gpt2"))
    assert set(timings) == {"bare", "hooks", "nnsight_fast"}
    assert all(t > 0 for t in timings.values())
    assert "equal the raw-hook run" in capsys.readouterr().out
