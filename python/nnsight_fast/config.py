"""Library settings, shaped like nnsight's `CONFIG`.

    from nnsight_fast import CONFIG
    CONFIG.APP.DEBUG = True   # keep nnsight_fast's own frames in tracebacks

`NNSIGHT_FAST_DEBUG=1` (or `NNSIGHT_DEBUG=1`) in the environment turns DEBUG on at import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _env_flag(*names: str) -> bool:
    return any(os.environ.get(name, "").lower() not in ("", "0", "false", "no") for name in names)


@dataclass
class AppConfig:
    #: Keep the library's own frames in tracebacks of errors raised in a trace.
    DEBUG: bool = field(default_factory=lambda: _env_flag("NNSIGHT_FAST_DEBUG", "NNSIGHT_DEBUG"))


@dataclass
class Config:
    APP: AppConfig = field(default_factory=AppConfig)


CONFIG = Config()
