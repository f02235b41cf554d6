"""How fast recordings append to Blob storage: ``python -m bench.recstore_blob``.

Runs against a local Azurite (./node_modules, installed by ``./run test``) started
the way the tests start it (HTTPS, OAuth, tokens from the managed-identity
stand-in), so the figures are for the product's own code path on this machine,
not for Azure (whose latency per append is higher; see docs/admin.md).

* throughput: one writer, ``--mib`` MiB in 64 KiB writes, for several block sizes
  (``flush_bytes``): MB/s from the first write to the sealed blob;
* sessions at once: ``--sessions`` writers, each 4 MiB in 64 KiB writes, 1 s interval:
  aggregate MB/s;
* flush interval: a busy session (2 KiB every 10 ms, ~200 KiB/s) for ``--seconds``
  per interval: appends made, bytes per append, and the most data that waited
  unappended (what a killed broker would lose).

Figures are printed; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

from audit.recstore.blob import BlobStore, BlobWriter
from tests.fixtures.azurite import Azurite
from tests.support.identity import IdentityEndpoint


def throughput(store: BlobStore, mib: int, flush_bytes: int, name: str) -> float:
    chunk = os.urandom(64 * 1024)
    w = store.create(name)
    start = time.perf_counter()
    for _ in range(mib * 16):
        w.write(chunk)
    w.close()
    return mib * 1024 * 1024 / (time.perf_counter() - start) / 1e6


def interval_effect(store: BlobStore, seconds: float, name: str) -> tuple[int, float, int]:
    w = store.create(name)
    assert isinstance(w, BlobWriter)
    written = 0
    worst = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal worst
        while not stop.is_set():
            worst = max(worst, written - w.stored)
            time.sleep(0.005)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    end = time.monotonic() + seconds
    line = b"x" * 2048
    while time.monotonic() < end:
        w.write(line)
        written += len(line)
        time.sleep(0.01)
    stop.set()
    t.join()
    w.close()
    return w.appends, written / max(1, w.appends), worst


def concurrent(store: BlobStore, sessions: int) -> float:
    chunk = os.urandom(64 * 1024)

    def one(i: int) -> None:
        w = store.create(f"c-{i}.cast")
        for _ in range(64):
            w.write(chunk)
        w.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(sessions)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sessions * 4 * 1024 * 1024 / (time.perf_counter() - start) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--sessions", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, IdentityEndpoint() as ident:
        os.environ.update(ident.env())
        from broker.identity import azure_credential

        cred = azure_credential(ident.client_id)
        az = Azurite(Path(tmp)).start()
        try:
            url = az.new_container(cred)
            print(f"append throughput, one writer, {args.mib} MiB in 64 KiB writes:")
            for kib in (256, 1024, 4096):
                store = BlobStore(
                    url,
                    cred,
                    connection_verify=str(az.cert),
                    flush_bytes=kib * 1024,
                    flush_interval_s=1.0,
                )
                mbps = throughput(store, args.mib, kib * 1024, f"t-{kib}.cast")
                print(f"  blocks of {kib:5d} KiB: {mbps:7.1f} MB/s")
            store = BlobStore(url, cred, connection_verify=str(az.cert))
            print(
                f"{args.sessions} sessions at once, 4 MiB each: "
                f"{concurrent(store, args.sessions):.1f} MB/s in all"
            )
            print(f"flush interval, a session writing ~200 KiB/s for {args.seconds:g} s:")
            for interval in (0.1, 0.25, 1.0, 5.0):
                store = BlobStore(
                    url,
                    cred,
                    connection_verify=str(az.cert),
                    flush_bytes=4 * 1024 * 1024,
                    flush_interval_s=interval,
                )
                appends, per, worst = interval_effect(store, args.seconds, f"i-{interval}.cast")
                print(
                    f"  every {interval:4g} s: {appends:4d} appends, {per / 1024:7.1f} KiB "
                    f"each, at most {worst / 1024:6.1f} KiB waiting"
                )
        finally:
            az.stop()


if __name__ == "__main__":
    main()
