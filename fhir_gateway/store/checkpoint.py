"""WAL checkpoints for the embedded SQLite database, on a thread of their own.

In WAL mode a commit appends to the `-wal` file; now and then the WAL must be copied back into the
database file (a checkpoint), which also syncs both files to disk. SQLite does that by itself
inside whichever COMMIT crosses `wal_autocheckpoint` (1,000 pages): that commit then takes
10-20 ms here instead of 0.5 ms, and hundreds under disk contention. The store's statements run
inline on the event loop (database.py), so every request waited for it: measured as the 50-400 ms
stalls behind the read benchmark's p99.

So the store's connections set `wal_autocheckpoint=0` and this thread runs a PASSIVE checkpoint on
its own connection every `interval` seconds. PASSIVE never blocks readers or writers (it copies
what no reader still needs and leaves the rest for the next round), and the sqlite3 module releases
the GIL while SQLite works, so the loop keeps serving meanwhile. Several processes on one file
(`serve --workers`, a CLI beside the server) may each run one: a round that finds another under way
simply does nothing.
"""

from __future__ import annotations

import sqlite3
import threading

import structlog

log = structlog.get_logger("fhir_gateway.store")

CHECKPOINT_SECONDS = 0.5


class Checkpointer:
    def __init__(self, path: str, interval: float = CHECKPOINT_SECONDS) -> None:
        self.path = path
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="sqlite-wal-checkpoint", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread after one last round, so a clean shutdown leaves a short WAL."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            while True:
                stopping = self._stop.wait(self.interval)
                self.checkpoint(conn)
                if stopping:
                    return
        finally:
            conn.close()

    @staticmethod
    def checkpoint(conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # a busy or vanished file: the next round tries again
            log.warning("sqlite_checkpoint_failed", error=type(exc).__name__)
