"""Shared by the Python tests: the peerd and peerd-sandbox binaries, loopback ports, waiting, child processes
(logs kept per process, stopped with SIGTERM then SIGKILL), simulated istiods and the
peerd CLI. Everything started here listens on loopback only.
"""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parents[2]
WAIT = 120  # seconds: generous, the machine may be loaded


def peerd_bin() -> str:
    path = os.environ.get("PEERD_BIN") or str(REPO / "target" / "debug" / "peerd")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no peerd binary at {path} (cargo build -p peerd, or set PEERD_BIN)")
    return path


def sandbox_bin() -> str:
    """`peerd-sandbox` (the sandbox and `sim istiod`); it runs the `peerd` next to it."""
    path = os.environ.get("PEERD_SANDBOX_BIN") or str(REPO / "target" / "debug" / "peerd-sandbox")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no peerd-sandbox binary at {path} (cargo build -p peerd-testbed, or set PEERD_SANDBOX_BIN)")
    return path


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def wait_for(what, predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except grpc.RpcError as e:  # not up yet
            last = e
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


class Processes:
    """Started processes, stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs = []

    def start(self, name, args, env=None):
        """Starts `peerd ARGS`."""
        return self.start_program(name, [peerd_bin(), *args], env)

    def start_program(self, name, argv, env=None):
        log = open(self.tmp / f"{name}.log", "wb")
        extra = env or {}
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        # Only a process given an endpoint exports traces.
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        env.update(extra)
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append((name, p, log))
        return p

    def check_alive(self):
        for name, p, _ in self.procs:
            if p.poll() is not None:
                raise AssertionError(
                    f"{name} exited with {p.returncode}:\n" + (self.tmp / f"{name}.log").read_text()
                )

    def stop(self):
        for _, p, _ in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p, log in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            log.close()


def start_sim(procs, sim, tmp):
    port = free_port(sim["ip"])
    tls = tmp / f"sim-{sim['cluster']}"
    procs.start_program(
        f"sim-{sim['cluster']}",
        [sandbox_bin(), "sim", "istiod", "--listen", f"{sim['ip']}:{port}", "--cluster", sim["cluster"],
         "--network", f"net-{sim['cluster']}", "--workloads", str(sim["workloads"]),
         "--services", str(sim["services"]), "--tls-dir", str(tls),
         # Plain shapes, so counts are exact (a realistic share adds waypoint Services).
         "--realistic-fraction", "0"],
    )
    wait_for(f"{sim['cluster']} TLS files", lambda: (procs.check_alive(), (tls / "token").exists())[1])
    return f"{sim['ip']}:{port}", tls


def upstream_yaml(name, address, tls: Path, server_name="istiod.istio-system.svc") -> str:
    return f"""
  - name: {name}
    address: "{address}"
    serverName: {server_name}
    rootCa: "{tls / 'root-cert.pem'}"
    tokenFile: "{tls / 'token'}"
    backoff: {{ initial: 50ms, max: 1s }}"""


def run_cli(*args):
    return subprocess.run([peerd_bin(), *args], capture_output=True, text=True, timeout=120)




def start_sandbox(procs, state: Path, *args):
    """`peerd-sandbox` with its state in `state`; returns once its token is written."""
    procs.start_program("sandbox", [sandbox_bin(), "--state-dir", str(state), *args],
                        {"PEERD_BIN": peerd_bin()})
    wait_for("sandbox token", lambda: (procs.check_alive(), (state / "token").exists())[1])
