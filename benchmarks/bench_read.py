"""Patient reads under load, with the whole security stack on against the same server with it off.

    python benchmarks/bench_read.py [--connections 1000] [--seconds 10] [--workers N] [--open-loop]
                                    [--database-url postgresql+asyncpg://...]

Two measures, because at 1,000 connections they answer different questions:

* closed loop (wrk -c1000): every connection sends its next request when the answer arrives, so
  latency there is queueing: about connections / throughput (1,000 / 1,000 reads/s = 1 s) for
  any server that is saturated; what it measures is throughput.
* open loop (`--open-loop`, benchmarks/openloop.py): 1,000 connections together offer a fixed
  rate, latency counted from each request's scheduled time (coordinated omission corrected); the
  rate is raised step by step, and the figure is the highest offered rate at which p99 stays
  <= 200 ms (the seed) with every request answered.

"On": a clinician's RS/HS-signed token is verified, the policy decision point applies scopes,
clearance labels and consents, PHI is decrypted after the decision, and every read is audited.
"Off": anonymous development access (no token, unrestricted policy); decryption and audit still run,
because they cannot be switched off. The load comes from wrk (Debian package `wrk`), a C client: a
Python client saturates long before the server does. The last line is the overhead ratio.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
import openloop  # noqa: E402
from harness import admin_headers, fresh_database, running_server, token  # noqa: E402

LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", re.MULTILINE)
RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}
SEED_P99_MS = 200.0
RATES = (200, 400, 600, 800, 1000, 1200, 1400, 1600, 1800, 2000, 2400, 2800, 3200, 4000)


def seed(base: str, n: int = 50) -> list[str]:
    """Patients with an Observation each, written by an admin; their ids."""
    ids = []
    with httpx.Client(
        base_url=base, headers={**admin_headers(), "Content-Type": "application/fhir+json"}
    ) as c:
        for i in range(n):
            patient = {"resourceType": "Patient", "name": [{"family": f"Read{i}"}], "birthDate": "1970-01-01"}
            ids.append(c.post("/Patient", json=patient).raise_for_status().json()["id"])
    return ids


def wrk(url: str, connections: int, seconds: int, headers: dict[str, str]) -> tuple[float, float, float]:
    """Requests/s, p50 ms and p99 ms of GETs on `url`."""
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], check=True, capture_output=True, text=True).stdout
    found = {p: float(v) * UNIT[u] for p, v, u in LATENCY.findall(out)}
    return float(RATE.search(out).group(1)), found["50"], found["99"]  # type: ignore[union-attr]


def clinician_headers() -> dict[str, str]:
    clinician = token(
        "--sub", "Practitioner/1", "--role", "clinician", "--scope", "user/*.rs", "--purpose", "TREAT"
    )
    return {"Authorization": f"Bearer {clinician}"}


def highest_rate(url: str, connections: int, seconds: int, headers: dict[str, str]) -> float:
    """The highest offered rate (of RATES) at which p99 <= 200 ms with every request answered."""
    best = 0.0
    for rate in RATES:
        result = openloop.run_fast(
            openloop.run(url, rate=rate, connections=connections, seconds=seconds, headers=headers)
        )
        print(f"  open loop  {result.line()}", flush=True)
        if result.percentile(99) > SEED_P99_MS or result.unsent or result.errors:
            break
        best = rate
    return best


def main(connections: int, seconds: int, workers: int, open_loop: bool, database_url: str | None) -> None:
    if shutil.which("wrk") is None:
        sys.exit("bench_read needs wrk (apt-get install wrk)")
    figures = {}
    best = 0.0
    for mode in ("off", "on"):
        env = {"FHIR_GATEWAY_WORKERS": str(workers)}
        if mode == "off":
            env["FHIR_GATEWAY_SECURITY__ALLOW_ANONYMOUS"] = "true"
        with fresh_database(database_url, f"read_{mode}") as url, running_server(url, env=env) as base:
            patient = seed(base)[0]
            headers = clinician_headers() if mode == "on" else {}
            url = f"{base}/Patient/{patient}"
            figures[mode] = wrk(url, connections, seconds, headers)
            rate, p50, p99 = figures[mode]
            print(
                f"security {mode:<3}  {rate:8.0f} reads/s  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
                f"(closed loop, {connections} connections, {workers} worker(s))",
                flush=True,
            )
            if open_loop and mode == "on":
                best = highest_rate(url, connections, seconds, headers)
                print(
                    f"security on   open loop: p99 <= {SEED_P99_MS:.0f} ms up to {best:.0f} reads/s offered"
                )
    on, off = figures["on"], figures["off"]
    verdict = "met" if on[2] <= SEED_P99_MS else "NOT met"
    opened = f"; open loop {best:.0f} reads/s at p99 <= 200 ms" if open_loop else ""
    print(
        f"security stack overhead: {off[0] / on[0]:.2f}x throughput, closed-loop p99 {on[2]:.1f} ms vs "
        f"{off[2]:.1f} ms (seed p99 <= 200 ms at 1,000 closed-loop clients: {verdict}){opened}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="server processes (serve --workers)")
    parser.add_argument(
        "--open-loop", action="store_true", help="also find the open-loop rate at p99 <= 200 ms"
    )
    parser.add_argument("--database-url", help="a PostgreSQL database to serve from (a schema per mode)")
    args = parser.parse_args()
    main(args.connections, args.seconds, args.workers, args.open_loop, args.database_url)
