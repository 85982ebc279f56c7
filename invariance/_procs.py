"""Child processes that end with their parent: the one watcher the sweep's process pool and
the benchmark harness's fresh processes both install."""

from __future__ import annotations

import os
import threading
import time

__all__ = ["end_with_parent"]


def end_with_parent(parent: int, period: float = 0.5) -> None:
    """Process initializer: a daemon thread ends this process (``os._exit(70)``) once its
    parent, PID ``parent``, is gone (the process was re-parented), checked every ``period``
    seconds. So a killed sweep or benchmark leaves no worker computing on."""

    def watch() -> None:
        while True:
            time.sleep(period)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()
