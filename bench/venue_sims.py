"""The venue simulators for ``apex bench --only venues``: ``apex sim okx`` and ``apex sim ibkr``
as measured children, their prices and balances, the bare loopback round trip to each, and
what they logged (the order logs' acceptance times, OKX's refusal counter).

Each measurement starts a fresh pair in a folder of its own, so no backlog, balance or order
id of one run reaches the next."""

from __future__ import annotations

import http.client
import json
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from bench.proc import Child, free_port, wait_until
from connectors.sims import listening

LATENCY_MS = 20  # what each simulator adds to every request, as a distant venue would
PROBES = 50  # bare round trips sampled per simulator
BALANCE_USD = 1e9  # per coin at the OKX simulator: a sell is never refused for funds


@dataclass
class Sims:
    okx: Child
    ibkr: Child
    okx_port: int
    ibkr_port: int
    okx_log: Path
    ibkr_log: Path

    def env(self) -> dict[str, str]:
        """What ``apex run docs/pipeline-venues.example.yaml`` needs to reach them. A simulator
        checks no signature: the credentials are throwaway ones made up for this run."""
        return {"APEX_OKX_URL": f"http://127.0.0.1:{self.okx_port}", "APEX_IBKR_PORT": str(self.ibkr_port),
                **{k: secrets.token_hex(8) for k in ("OKX_API_KEY", "OKX_API_SECRET", "OKX_API_PASSPHRASE")}}

    def stop(self) -> None:
        for c in (self.okx, self.ibkr):
            c.term()
            c.wait(30)


def start(d: Path, prices: dict[str, dict[str, float]], *, latency_ms: int = LATENCY_MS,
          ibkr_cash: float = BALANCE_USD, ibkr_args: tuple[str, ...] = ()) -> Sims:
    """Both simulators on free loopback ports, each with its own fill prices. ``ibkr_cash``:
    the IB account's cash; ``ibkr_args``: more of ``apex sim ibkr``'s options (a fault)."""
    oport, iport = free_port(), free_port()
    files = {}
    for venue, table in prices.items():
        files[venue] = d / f"{venue}-prices.json"
        files[venue].write_text(json.dumps(table))
    common = ["--latency-ms", str(latency_ms)]
    okx = Child(["-m", "apex.cli", "sim", "okx", "--port", str(oport), *common, "--prices", str(files["okx"]),
                 "--orders-log", str(d / "okx-orders.jsonl")], d / "okx-sim.log")
    # cash enough that IB's AvailableFunds (which the margin filter reads) never binds: the bench
    # measures the path to the venue, not the account
    ibkr = Child(["-m", "apex.cli", "sim", "ibkr", "--port", str(iport), *common, "--prices", str(files["ibkr"]),
                  "--cash", str(ibkr_cash), "--orders-log", str(d / "ibkr-orders.jsonl"), *ibkr_args],
                 d / "ibkr-sim.log")
    sims = Sims(okx, ibkr, oport, iport, d / "okx-orders.jsonl", d / "ibkr-orders.jsonl")
    for port, child in ((oport, okx), (iport, ibkr)):
        wait_until(lambda p=port: listening(p), f"{child.log.name} to listen", 60, child, every_s=0.05)
    return sims


def fund(sims: Sims, prices: dict[str, float]) -> None:
    """Coins enough at the OKX simulator for any sell. Only once Apex has started: its start-up
    reconciliation would rightly refuse holdings its book does not know, and it asks only then."""
    for inst, px in prices.items():
        control(sims.okx_port, "POST", "balance", {"ccy": inst.split("-")[0], "amount": BALANCE_USD / px})
    control(sims.okx_port, "POST", "balance", {"ccy": "USDT", "amount": BALANCE_USD})


def control(port: int, method: str, what: str, doc: dict | None = None) -> dict:
    """One request to the OKX simulator's ``/sim/`` routes (no latency is added to them)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, f"/sim/{what}", body=json.dumps(doc) if doc is not None else None)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"OKX simulator /sim/{what}: {resp.status} {body[:200]!r}")
        return json.loads(body)
    finally:
        conn.close()


def http_round_trips(port: int) -> list[float]:
    """µs of one plain HTTP request and its answer on a kept-alive loopback connection, to a
    route the simulator answers without its injected latency: the transport's own cost."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    try:
        conn.request("GET", "/sim/stats")  # the connection is set up once, as a client's session is
        conn.getresponse().read()
        for _ in range(PROBES):
            t0 = time.perf_counter_ns()
            conn.request("GET", "/sim/stats")
            conn.getresponse().read()
            out.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        conn.close()
    return out


def tcp_round_trips(port: int) -> list[float]:
    """µs of a loopback TCP connect (SYN, SYN-ACK): the IBKR simulator answers nothing without
    its injected latency, so this is its bare round trip."""
    out = []
    for _ in range(PROBES):
        t0 = time.perf_counter_ns()
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        out.append((time.perf_counter_ns() - t0) / 1000)
        s.close()
    return out


def accepted(log: Path, key: str) -> dict[str, dict]:
    """client order id -> the simulator's log line of the order it accepted under that id."""
    if not log.exists():
        return {}
    out: dict[str, dict] = {}
    for line in log.read_text().splitlines():
        if line.strip():
            doc = json.loads(line)
            out.setdefault(str(doc[key]), doc)
    return out
