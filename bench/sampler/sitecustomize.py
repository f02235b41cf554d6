"""A stdlib sampling profiler for a whole process, for the benchmark only.

Put this folder on ``PYTHONPATH`` with ``BENCH_SAMPLE_OUT=PATH`` set, and every
Python process started with that environment samples its main thread's stack every
``BENCH_SAMPLE_MS`` (default 2) milliseconds on a daemon thread, and rewrites
PATH.<pid>.json every 3 s with the counts: self time and inclusive time per function,
and the most frequent stacks.  Samples whose leaf is the event loop's wait for I/O
(``select``/``poll``/``epoll``) are counted as idle.  No download: pyinstrument and
py-spy are not installed here.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time
import types

_OUT = os.environ.get("BENCH_SAMPLE_OUT")
_IDLE = {"select", "poll", "epoll", "_run_once"}


def _name(code: types.CodeType) -> str:
    return f"{code.co_filename.rsplit('/site-packages/', 1)[-1]}:{code.co_name}"


def _loop(out: str, interval: float) -> None:
    main = threading.main_thread().ident
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    stacks: collections.Counter[str] = collections.Counter()
    total = idle = 0
    last = time.monotonic()
    while True:
        time.sleep(interval)
        frame = sys._current_frames().get(main or 0)  # noqa: SLF001 (the sampler's whole point)
        if frame is None:
            continue
        total += 1
        names: list[str] = []
        f: types.FrameType | None = frame
        while f is not None and len(names) < 60:
            names.append(_name(f.f_code))
            f = f.f_back
        if frame.f_code.co_name in _IDLE and "selectors" in frame.f_code.co_filename:
            idle += 1
        elif names[0].endswith(":select") and "selectors" in names[0]:
            idle += 1
        else:
            own[names[0]] += 1
            for n in set(names):
                incl[n] += 1
            stacks[" <- ".join(names[:8])] += 1
        now = time.monotonic()
        if now - last > 3:
            last = now
            doc = {
                "samples": total,
                "idle": idle,
                "self": own.most_common(60),
                "inclusive": incl.most_common(80),
                "stacks": stacks.most_common(30),
            }
            tmp = f"{out}.{os.getpid()}.json.tmp"
            with open(tmp, "w") as fh:
                json.dump(doc, fh, indent=1)
            os.replace(tmp, f"{out}.{os.getpid()}.json")


if _OUT and "serve" in sys.argv:
    threading.Thread(
        target=_loop,
        args=(_OUT, float(os.environ.get("BENCH_SAMPLE_MS", "2")) / 1000),
        daemon=True,
        name="bench-sampler",
    ).start()
