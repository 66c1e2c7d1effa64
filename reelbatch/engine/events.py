"""Progress events the ranks print on stdout, one JSON object per line after a fixed prefix.

Kept free of torch so the orchestrator can parse events without importing the engine's dependencies.
"""

from __future__ import annotations

import json

EVENT_PREFIX = "REELBATCH_EVENT "


def emit(event: str, **fields) -> None:
    print(EVENT_PREFIX + json.dumps({"event": event, **fields}), flush=True)
