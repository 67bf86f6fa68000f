"""`peerd check` sees a data-plane fault and its repair.

`peerd-sandbox` (three clusters) with `--fault drop-hbone=cluster-3`: the sandbox drops
SYNs to cluster-3's east-west HBONE port 15008 (nftables). `peerd check` against
cluster-1 must then fail, naming the HBONE timeout; once the fault is lifted through the
sandbox's control file, the same check must pass again.
"""

import json

from rig import Processes, run_cli, start_sandbox, wait_for

CLUSTER1_DEBUG = "127.0.1.1:15041"
FAULT = "drop-hbone=cluster-3"
WAIT = 180  # seconds: the failure window and hysteresis, on a loaded machine


def check_results():
    out = run_cli("check", "--addr", CLUSTER1_DEBUG, "-o", "json")
    try:
        return out.returncode, {r["name"]: r for r in json.loads(out.stdout)}
    except json.JSONDecodeError:
        return out.returncode, {}


def test_check_fails_with_the_hbone_reason_and_passes_after_the_lift(tmp_path):
    procs = Processes(tmp_path)
    try:
        state = tmp_path / "sandbox"
        start_sandbox(procs, state, "--clusters", "3", "--workloads-per-cluster", "20",
                      "--services-per-cluster", "4", "--churn-per-sec", "0",
                      "--fault", FAULT)

        def failing_on_hbone():
            procs.check_alive()
            code, results = check_results()
            data_plane = results.get("peer cluster-3 data plane", {})
            return code != 0 and "HBONEConnectTimeout" in data_plane.get("reason", "") and results

        results = wait_for("peerd check to fail on cluster-3's HBONE", failing_on_hbone, timeout=WAIT)
        reason = results["peer cluster-3 data plane"]["reason"]
        assert results["peer cluster-3 data plane"]["outcome"] == "fail"
        assert "maybe a NetworkPolicy is blocking HBONE port 15008" in reason, reason
        # The fault is on cluster-3's gateway only: the flat peer stays healthy.
        assert results["peer cluster-2 data plane"]["outcome"] == "pass"
        text = run_cli("check", "--addr", CLUSTER1_DEBUG)
        assert text.returncode != 0
        assert any(line.startswith("❌ peer cluster-3 data plane") for line in text.stdout.splitlines())

        with open(state / "control", "a") as control:
            control.write(f"lift {FAULT}\n")

        def passing():
            procs.check_alive()
            code, results = check_results()
            return code == 0 and results

        results = wait_for("peerd check to pass after the lift", passing, timeout=WAIT)
        assert results["peer cluster-3 data plane"]["outcome"] == "pass"
    finally:
        procs.stop()
