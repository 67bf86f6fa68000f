"""A real Prometheus (Debian's package) scrapes a running sandbox.

`peerd-sandbox` (three clusters: cluster-1 and cluster-2 flat, cluster-3 on its own
network, each with its own `peerd run` and a simulated ztunnel) is scraped every second
by `prometheus`; the test then asks Prometheus's HTTP API for the series an operator's
alerts and dashboard use and compares their values with the sandbox's own status JSON.
`promtool check metrics` must accept each peerd's `/metrics` as it is.
"""

import json
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest

from rig import Processes, free_port, peerd_bin, run_cli, start_sandbox, wait_for

CLUSTERS = ["cluster-1", "cluster-2", "cluster-3"]
METRICS = {c: f"127.0.{i}.1:15020" for i, c in enumerate(CLUSTERS, start=1)}
CONDITIONS = [
    "Accepted",
    "Programmed",
    "gloo.solo.io/PeerConnected",
    "gloo.solo.io/PeeringSucceeded",
    "gloo.solo.io/PeerDataPlaneProgrammed",
]
PROPAGATION_BUCKETS = ["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
                       "0.5", "1", "2.5", "5", "10", "30", "+Inf"]


def tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's prometheus package (cargo xtask setup)")
    return path


def status(state):
    path = state / "status.json"
    return json.loads(path.read_text()) if path.exists() else None


def all_true(doc):
    return doc and all(
        c["peerd_running"] and c["peers"] and all(
            p["conditions"][t]["status"] == "True" for p in c["peers"] for t in CONDITIONS)
        for c in doc["clusters"])


class Prometheus:
    def __init__(self, url):
        self.url = url

    def query(self, expr):
        q = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def values(self, expr):
        """{(instance cluster, labels...): value} of an instant query."""
        return {frozenset(s["metric"].items()): float(s["value"][1]) for s in self.query(expr)}


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prometheus")
    procs = Processes(tmp)
    try:
        state = tmp / "sandbox"
        start_sandbox(procs, state, "--clusters", "3", "--workloads-per-cluster", "30",
                      "--services-per-cluster", "6", "--churn-per-sec", "0",
                      "--status-json", str(state / "status.json"))
        port = free_port("127.0.0.1")
        targets = ", ".join(
            f'{{ targets: ["{addr}"], labels: {{ cluster: "{c}" }} }}' for c, addr in METRICS.items())
        config = tmp / "prometheus.yml"
        config.write_text(f"""
global: {{ scrape_interval: 1s, evaluation_interval: 1s }}
scrape_configs:
  - job_name: peerd
    static_configs: [{targets}]
""")
        procs.start_program("prometheus", [
            tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}"])
        prom = Prometheus(f"http://127.0.0.1:{port}")
        doc = wait_for("every peer of every cluster True",
                       lambda: (procs.check_alive(), all_true(status(state)) and status(state))[1],
                       timeout=180)
        wait_for("Prometheus scraping all three peerds",
                 lambda: (procs.check_alive(),
                          len([v for v in prom.values('up{job="peerd"}').values() if v == 1]) == 3)[1])
        # Conditions can be True before a node's ztunnel has connected (no connected
        # ztunnel counts as programmed): wait for each merged stream to be scraped too.
        wait_for("each node's ztunnel stream scraped", lambda: len(prom.query(
            'peerd_xds_server_connections{view="merged"} >= 1')) == len(CLUSTERS))
        # One more scrape after the sandbox said True, so the series reflect that state.
        wait_for("peer conditions scraped", lambda: len(prom.query(
            'peerd_peer_condition{status="True"} == 1')) == 3 * 2 * len(CONDITIONS))
        yield dict(prom=prom, doc=doc, state=state, procs=procs)
    finally:
        procs.stop()


def test_build_info_names_the_running_version(rig):
    version = subprocess.run([peerd_bin(), "version"], capture_output=True, text=True,
                             check=True).stdout.split()[1]
    got = rig["prom"].values("peerd_build_info")
    assert {dict(k)["cluster"]: (dict(k)["version"], v) for k, v in got.items()} == {
        c: (version, 1.0) for c in CLUSTERS}


def test_peer_conditions_match_the_sandbox_status(rig):
    prom, doc = rig["prom"], rig["doc"]
    for cluster in doc["clusters"]:
        for peer in cluster["peers"]:
            for ctype in CONDITIONS:
                want = peer["conditions"][ctype]["status"]
                got = prom.values(
                    f'peerd_peer_condition{{cluster="{cluster["name"]}",'
                    f'peer_cluster="{peer["cluster"]}",type="{ctype}"}}')
                by_status = {dict(k)["status"]: v for k, v in got.items()}
                assert by_status == {"True": float(want == "True"), "False": float(want == "False"),
                                     "Unknown": float(want == "Unknown")}, (cluster["name"], peer["cluster"], ctype)
            connected = prom.values(f'peerd_peer_connected{{cluster="{cluster["name"]}",'
                                    f'peer_cluster="{peer["cluster"]}"}}')
            assert list(connected.values()) == [1.0]


def test_imported_resources_match_the_sandbox_status(rig):
    prom, doc = rig["prom"], rig["doc"]
    for cluster in doc["clusters"]:
        for peer in cluster["peers"]:
            imported = peer["imported"]
            got = prom.values(f'peerd_resources{{cluster="{cluster["name"]}",'
                              f'peer_cluster="{peer["cluster"]}"}}')
            by_type = {dict(k)["type"]: v for k, v in got.items()}
            assert by_type == {
                "address": float(imported["workloads"] + imported["services"]),
                "authorization": float(imported["authorizations"]),
            }, (cluster["name"], peer["cluster"])


def test_each_node_ztunnel_is_one_merged_stream_and_propagation_is_measured(rig):
    prom = rig["prom"]
    merged = prom.values('peerd_xds_server_connections{view="merged"}')
    assert sorted((dict(k)["cluster"], v) for k, v in merged.items()) == [
        (c, 1.0) for c in CLUSTERS]
    # The local istiod's initial sync reached each ztunnel: at least one measurement each.
    for c in CLUSTERS:
        counts = prom.values(f'peerd_propagation_seconds_count{{cluster="{c}",peer_cluster="{c}"}}')
        assert counts and all(v >= 1 for v in counts.values()), (c, counts)
    buckets = prom.query('peerd_propagation_seconds_bucket{cluster="cluster-1",peer_cluster="cluster-1"}')
    assert [s["metric"]["le"] for s in sorted(buckets, key=lambda s: float(s["metric"]["le"]))] \
        == PROPAGATION_BUCKETS


def test_probe_mode_matches_the_status(rig):
    prom, doc = rig["prom"], rig["doc"]
    for cluster in doc["clusters"]:
        mode = cluster["peers"][0]["probe"]["mode"]
        got = prom.values(f'peerd_probe_mode{{cluster="{cluster["name"]}"}}')
        assert {dict(k)["mode"]: v for k, v in got.items()}[mode] == 1.0


def test_promtool_accepts_every_metrics_page(rig):
    promtool = tool("promtool")
    for cluster, addr in METRICS.items():
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
            page = r.read()
        assert b"# HELP peerd_peer_condition " in page
        out = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True,
                             timeout=60)
        assert out.returncode == 0, (cluster, out.stdout.decode() + out.stderr.decode())


def test_check_passes_over_the_debug_api_and_every_cluster_kubernetes_api(rig):
    """The same steady state, seen by `peerd check` through the sandbox's kubeconfig (one
    context per cluster, each an emulated API server the cluster's peerd writes to)."""
    kubeconfig = rig["state"] / "kubeconfig"
    args = ["check", "--addr", "127.0.1.1:15041", "--kubeconfig", str(kubeconfig), "-o", "json"]
    for c in CLUSTERS:
        args += ["--context", c]

    def passing():
        rig["procs"].check_alive()
        out = run_cli(*args)
        return out.returncode == 0 and {r["name"]: r for r in json.loads(out.stdout)}

    results = wait_for("peerd check with Kubernetes to pass", passing)
    for c in CLUSTERS:
        assert results[f"east-west gateway ({c})"]["outcome"] == "pass"
        peers = [n for n in results if n.startswith("peer gateway ") and n.endswith(f"({c})")]
        assert len(peers) == len(CLUSTERS) - 1, peers
        assert all(results[n]["outcome"] == "pass" for n in peers)
    assert results["root certificates (kubernetes)"]["outcome"] == "pass"
    assert results["network configuration (kubernetes)"]["outcome"] == "pass"
    # cluster-1's autogenflat entries (for cluster-2's pods) all name pods cluster-2 sends.
    stale = results["stale workloads (cluster-1)"]
    assert stale["outcome"] == "pass", stale
    assert int(stale["reason"].split()[0]) > 0, stale
