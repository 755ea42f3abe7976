"""Scheduled work runs in a child `sentinel` process: started here, at lower CPU priority, stoppable."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence

from sentinel.config import Settings

log = logging.getLogger("sentinel.children")

Spawn = Callable[[Sequence[str]], int]
"""Run `sentinel ARGS...` and return its exit status."""


def spawn_sentinel(settings: Settings, *, nice: int, running: set[subprocess.Popen[bytes]] | None = None) -> Spawn:
    """Run `sentinel ARGS...` as a child with the same data dir and config file at CPU niceness `nice`;
    returns its exit status. While it runs the child is in `running` (so that a shutdown can stop it)."""
    config = type(settings).yaml_file

    def spawn(args: Sequence[str]) -> int:
        command = [sys.executable, "-m", "sentinel", *args, "--data-dir", str(settings.data_dir)]
        if config is not None:
            command += ["--config", str(config)]
        log.info("starting: sentinel %s", " ".join(args))
        with subprocess.Popen(command, stdin=subprocess.DEVNULL) as child:
            # Lowered before the child has finished importing, long before it starts the heavy
            # work; its threads inherit it. (Not preexec_fn: unsafe with the scheduler's threads.)
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, child.pid, nice)
            if running is not None:
                running.add(child)
            try:
                return child.wait()
            finally:
                if running is not None:
                    running.discard(child)

    return spawn
