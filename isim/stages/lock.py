"""One process per run directory: a lock file in it names its holder.

Two processes on one run directory would interleave checkpoints, label stores and summaries. The first one to
start holds ``<run dir>/.isim.lock`` (pid, host, start time) until it exits; a second one stops at once, naming
the holder. So does a second ``stage=iterate`` of the same experiment (its run dir is ``runs/<name>/iterate``),
and a ``stage=round`` for the round an iterate is running. DDP ranks run under their rank 0's lock. A lock
whose process has died on this host is taken over; one held from another host is never guessed about.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from isim.errors import IsimError

LOCK = ".isim.lock"
HOLDER = "ISIM_LOCK_HOLDER"  # the lock this process holds; its DDP ranks inherit it


@contextlib.contextmanager
def run_lock(directory: Path) -> Iterator[None]:
    """Hold ``directory``'s lock for the duration (re-entered by this process and its ranks)."""
    path = Path(directory) / LOCK
    secondary_rank = int(os.environ.get("LOCAL_RANK", "0")) or int(os.environ.get("NODE_RANK", "0"))
    if os.environ.get(HOLDER) == str(path) or secondary_rank:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _acquire(path)
    os.environ[HOLDER] = str(path)
    try:
        yield
    finally:
        os.environ.pop(HOLDER, None)
        path.unlink(missing_ok=True)


def _acquire(path: Path) -> None:
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):  # a second try after taking over a dead process's lock
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder.get("host") == me["host"] and not _alive(holder.get("pid")):
                path.unlink(missing_ok=True)  # left by a process that died (kill -9, power loss)
                continue
            raise IsimError(
                f"{path.parent} is in use by pid {holder.get('pid')} on {holder.get('host')} since "
                f"{holder.get('started')}; wait for it to finish, or run under another name=<name> (if no isim run "
                f"is going, remove {path})"
            ) from None
        with os.fdopen(descriptor, "w") as file:
            json.dump(me, file)
        return


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # being written this instant, or damaged: treat as held by an unknown process


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return True  # unknown holder: never taken over
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
