"""Patient reads under load, with the whole security stack on against the same server with it off.

    python benchmarks/bench_read.py [--connections 1000] [--seconds 10]

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
from harness import admin_headers, running_server, token  # noqa: E402

LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", re.MULTILINE)
RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


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


def main(connections: int, seconds: int) -> None:
    if shutil.which("wrk") is None:
        sys.exit("bench_read needs wrk (apt-get install wrk)")
    figures = {}
    for mode, env in (("off", {"FHIR_GATEWAY_SECURITY__ALLOW_ANONYMOUS": "true"}), ("on", {})):
        with running_server(env=env) as base:
            patient = seed(base)[0]
            headers = {}
            if mode == "on":
                clinician = token(
                    "--sub",
                    "Practitioner/1",
                    "--role",
                    "clinician",
                    "--scope",
                    "user/*.rs",
                    "--purpose",
                    "TREAT",
                )
                headers = {"Authorization": f"Bearer {clinician}"}
            figures[mode] = wrk(f"{base}/Patient/{patient}", connections, seconds, headers)
            rate, p50, p99 = figures[mode]
            print(
                f"security {mode:<3}  {rate:8.0f} reads/s  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
                f"({connections} connections)"
            )
    on, off = figures["on"], figures["off"]
    print(
        f"security stack overhead: {off[0] / on[0]:.2f}x throughput, p99 {on[2]:.1f} ms vs {off[2]:.1f} ms "
        f"(seed: p99 <= 200 ms at 1,000 clients)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    main(args.connections, args.seconds)
