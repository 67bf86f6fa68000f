"""The debug API through an independent client (grpcio, reflection, health checking).

Starts real processes on loopback: `peerd-sandbox --clusters 2` (cluster-1 and cluster-2,
each a simulated istiod + its own `peerd run`, peered over mTLS) and a third `peerd run`
(cluster-3) that subscribes to cluster-1's merged view as a downstream, like ztunnel. Every call is made with descriptors obtained through
server reflection; nothing is generated from peerd's .proto files.
"""

import json
import threading

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from rig import (
    Processes,
    free_port,
    run_cli,
    start_sandbox,
    start_sim,
    upstream_yaml,
    wait_for,
)

SERVICE = "peerd.debug.v1.Debug"

WORKLOADS, SERVICES = 20, 10  # per sandbox cluster
# A simulated istiod outside the sandbox: its own root, for the mismatched-roots check.
FOREIGN = dict(cluster="cluster-9", ip="127.0.22.1", workloads=10, services=2)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("debugapi")
    procs = Processes(tmp)
    try:
        _, foreign_tls = start_sim(procs, FOREIGN, tmp)
        state = tmp / "sandbox"
        start_sandbox(procs, state, "--clusters", "2",
                      "--workloads-per-cluster", str(WORKLOADS),
                      "--services-per-cluster", str(SERVICES), "--churn-per-sec", "0")
        tls1 = state / "cluster-1" / "istiod"
        ip1, xds1, debug1 = "127.0.1.1", 15012, 15041

        # A downstream: another peerd whose local upstream is cluster-1's merged view.
        ip3 = "127.0.74.1"
        debug3 = free_port(ip3)
        ds_tls = tmp / "ds-tls"
        ds_tls.mkdir()
        (ds_tls / "token").write_bytes((state / "token").read_bytes())
        (ds_tls / "root-cert.pem").write_bytes((state / "pki" / "root-cert.pem").read_bytes())
        (tmp / "ztunnel-token").write_text("debug-api-test-token\n")
        config3 = tmp / "peerd3.yaml"
        config3.write_text(f"""
cluster: cluster-3
network: net-cluster-3
sandboxMode: true
listeners: {{ xds: "{ip3}:0", metrics: "{ip3}:0", health: "{ip3}:0", debug: "{ip3}:{debug3}" }}
xds:
  tls: {{ certChain: "{tls1 / 'cert-chain.pem'}", key: "{tls1 / 'key.pem'}" }}
  auth: {{ tokenFile: "{tmp / 'ztunnel-token'}" }}
upstreams:{upstream_yaml("cluster-3", f"{ip1}:{xds1}", ds_tls, server_name=ip1)}
""")
        procs.start("peerd3", ["run", "--config", str(config3)])

        channel = grpc.insecure_channel(f"{ip1}:{debug1}")
        client = DynamicClient(channel)
        wait_for("peerd1 debug API", lambda: (procs.check_alive(), client.call("GetServerInfo"))[1])
        yield dict(client=client, channel=channel, procs=procs, tmp=tmp, addr=f"{ip1}:{debug1}",
                   tls=dict(c1=tls1, c2=foreign_tls))
        channel.close()
    finally:
        procs.stop()


class DynamicClient:
    """Calls peerd.debug.v1.Debug with message classes built from reflection."""

    def __init__(self, channel):
        self.channel = channel
        self.pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        self._service = None

    @property
    def service(self):
        if self._service is None:
            self._service = self.pool.FindServiceByName(SERVICE)
        return self._service

    def method(self, name):
        m = self.service.methods_by_name[name]
        req = message_factory.GetMessageClass(m.input_type)
        resp = message_factory.GetMessageClass(m.output_type)
        return m, req, resp

    def call(self, name, /, **fields):
        m, req, resp = self.method(name)
        rpc = self.channel.unary_unary(
            f"/{SERVICE}/{name}",
            request_serializer=req.SerializeToString,
            response_deserializer=resp.FromString,
        )
        return rpc(req(**fields), timeout=30)

    def stream(self, name, /, **fields):
        m, req, resp = self.method(name)
        rpc = self.channel.unary_stream(
            f"/{SERVICE}/{name}",
            request_serializer=req.SerializeToString,
            response_deserializer=resp.FromString,
        )
        return rpc(req(**fields))


def health_status(channel, service=""):
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def wait_synced(client):
    def synced():
        info = client.call("GetServerInfo")
        return info if info.ready else None

    return wait_for("peerd1 ready", synced)


def test_reflection_lists_the_debug_service(rig):
    stub = reflection_pb2_grpc.ServerReflectionStub(rig["channel"])
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert SERVICE in names
    assert "grpc.health.v1.Health" in names
    # The ADS service lives in the same descriptor set but is not served here.
    assert "envoy.service.discovery.v3.AggregatedDiscoveryService" not in names
    methods = set(rig["client"].service.methods_by_name)
    assert {"ListPeers", "ListSubscribers", "Watch", "Dump"} <= methods


def test_every_listed_service_resolves_on_reflection_v1_and_v1alpha(rig):
    """grpcurl-style: v1 through a generic call (grpcio ships only v1alpha stubs; the wire
    messages of both versions are the same), v1alpha through its stub."""
    listed = reflection_pb2_grpc.ServerReflectionStub(rig["channel"]).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30
    )
    names = sorted(s.name for r in listed for s in r.list_services_response.service)
    assert "grpc.reflection.v1.ServerReflection" in names
    assert "grpc.reflection.v1alpha.ServerReflection" in names
    for method in (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ):
        call = rig["channel"].stream_stream(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        answers = list(
            call(
                iter(
                    [
                        reflection_pb2.ServerReflectionRequest(file_containing_symbol=n)
                        for n in names
                    ]
                ),
                timeout=30,
            )
        )
        assert len(answers) == len(names)
        for name, answer in zip(names, answers):
            assert answer.WhichOneof("message_response") == "file_descriptor_response", (
                method,
                name,
                answer.error_response.error_message,
            )


def test_health_is_serving_after_sync(rig):
    info = wait_synced(rig["client"])
    assert list(info.pending_gates) == []
    serving = health_pb2.HealthCheckResponse.SERVING
    assert wait_for("health SERVING", lambda: health_status(rig["channel"]) == serving)
    assert health_status(rig["channel"], SERVICE) == serving


def test_upstreams_and_resources_match_what_the_simulators_serve(rig):
    client = rig["client"]
    wait_synced(client)

    def all_synced():
        ups = client.call("ListUpstreams").upstreams
        done = len(ups) == 2 and all(len(u.synced_types) == 2 for u in ups)
        # The peer's export arrives once its own istiod has synced.
        return ups if done and all(u.counts.services > 0 for u in ups) else None

    ups = {u.name: u for u in wait_for("both upstreams synced", all_synced)}
    local, peer = ups["cluster-1"], ups["cluster-2"]
    assert local.connected and peer.connected
    # The local istiod serves everything; the peer only what it exports (global services
    # and the workloads behind them).
    assert local.counts.workloads == WORKLOADS, local
    # The sandbox's realistic population adds its namespace waypoints' Services.
    assert SERVICES <= local.counts.services <= SERVICES + 5, local
    assert 0 < peer.counts.services <= SERVICES, peer
    for u in (local, peer):
        assert {t.status for t in u.types} == {"SYNCED"}
        listed = client.call("ListResources", view=u.name, type="address").resources
        assert len(listed) == u.counts.workloads + u.counts.services
        assert all(r.origin == u.name for r in listed)

    info = client.call("GetServerInfo")
    want_workloads = local.counts.workloads + peer.counts.workloads
    assert info.merged.workloads == want_workloads

    merged = client.call("ListResources", view="merged", type="address", include_json=True).resources
    assert len(merged) == want_workloads + info.merged.services
    assert {r.origin for r in merged} == {"cluster-1", "cluster-2"}
    decoded = [json.loads(r.json) for r in merged]
    workloads = [d["workload"] for d in decoded if "workload" in d]
    assert len(workloads) == want_workloads
    assert all(w["uid"] for w in workloads)

    one = client.call("GetResource", view="merged", type="address", name=merged[0].name)
    assert one.name == merged[0].name and json.loads(one.json)

    with pytest.raises(grpc.RpcError) as err:
        client.call("ListResources", view="no-such-origin")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        client.call("ListResources", view="merged", type="cluster")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_peers_report_stream_conditions(rig):
    client = rig["client"]
    wait_synced(client)

    def peer_synced():
        peers = client.call("ListPeers").peers
        conds = {c.type: c.status for p in peers for c in p.conditions}
        return peers if conds.get("gloo.solo.io/PeeringSucceeded") == "True" else None

    peers = wait_for("peer cluster-2 synced", peer_synced)
    assert [p.cluster for p in peers] == ["cluster-2"]
    p = peers[0]
    assert p.network == "flat-net" and p.flat  # the sandbox's clusters 1 and 2 share a network
    assert {c.type: c.status for c in p.conditions}["gloo.solo.io/PeerConnected"] == "True"
    upstream = next(u for u in client.call("ListUpstreams").upstreams if u.name == "cluster-2")
    assert p.imported.workloads == upstream.counts.workloads
    assert p.imported.services > 0
    assert p.stream.connected


def test_subscribers_show_the_downstream_like_proxy_status(rig):
    client = rig["client"]
    wait_synced(client)

    def synced_on_merged(kind):
        subs = client.call("ListSubscribers").subscribers
        ok = [s for s in subs if s.view == "merged" and s.kind == kind
              and {t.status for t in s.stream.types} == {"SYNCED"}]
        return ok or None

    # The merged view has two subscribers: the sandbox's simulated ztunnel for node
    # 127.0.1.1, and the test's downstream peerd (cluster-3). cluster-2's peerd
    # subscribes to the export view instead.
    ztunnels = wait_for("simulated ztunnel SYNCED", lambda: synced_on_merged("ztunnel"))
    assert [z.node_id.split("~")[:2] for z in ztunnels] == [["ztunnel", "127.0.1.1"]]
    # The sandbox token maps to ztunnel's service account, the identity the merged view
    # is served to.
    assert ztunnels[0].identity == "system:serviceaccount:istio-system:ztunnel"
    subs = wait_for("downstream peerd SYNCED", lambda: synced_on_merged("peer"))
    assert len(subs) == 1
    s = subs[0]
    assert s.node_id.startswith("peerd~")
    assert s.view == "merged"
    assert sorted(s.types) == ["address", "authorization"]
    info = client.call("GetServerInfo")
    for t in s.stream.types:
        assert t.acked_view_version == s.view_version
        assert t.acks >= 1
    address = next(t for t in s.stream.types if t.type == "address")
    assert address.resources == info.merged.workloads + info.merged.services


def test_watch_yields_events(rig):
    client = rig["client"]
    wait_synced(client)
    events = client.stream("Watch", include_acks=True)
    received = []

    def read():
        try:
            for e in events:
                received.append(e)
        except grpc.RpcError as e:  # cancelled at the end of the test
            assert e.code() == grpc.StatusCode.CANCELLED, e

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for("the watching event", lambda: received)
    assert received[0].kind == "watching"
    # A new downstream connects and ACKs its initial sync, which the watch reports.
    tmp = rig["tmp"]
    procs = rig["procs"]
    procs.start("peerd3-again", ["run", "--config", str(tmp / "peerd3.yaml"),
                                 "--debug-listen", "127.0.75.1:0",
                                 "--xds-listen", "127.0.75.1:0",
                                 "--metrics-listen", "127.0.75.1:0",
                                 "--health-listen", "127.0.75.1:0"])
    wait_for("an ACK event from the new downstream",
             lambda: any(e.kind == "ack" and e.node_id.startswith("peerd~") for e in received))
    ack = next(e for e in received if e.kind == "ack")
    assert ack.type in ("address", "authorization")
    assert ack.unix_ms > 0
    events.cancel()
    reader.join(timeout=30)


def test_dump_is_one_json_document(rig):
    client = rig["client"]
    wait_synced(client)
    doc = json.loads(client.call("Dump").json)
    assert doc["serverInfo"]["cluster"] == "cluster-1"
    assert {u["name"] for u in doc["upstreams"]} == {"cluster-1", "cluster-2"}
    assert len(doc["views"]["merged"]) == len(client.call("ListResources").resources)
    assert {"merged", "cluster-1", "cluster-2"} <= set(doc["views"])


def test_status_cli_shows_the_same_state(rig):
    client = rig["client"]
    wait_synced(client)
    out = run_cli("status", "--addr", rig["addr"], "-o", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["serverInfo"]["cluster"] == "cluster-1"
    assert {u["name"] for u in doc["upstreams"]} == {"cluster-1", "cluster-2"}
    assert [p["cluster"] for p in doc["peers"]] == ["cluster-2"]
    table = run_cli("status", "--addr", rig["addr"])
    assert table.returncode == 0, table.stderr
    assert "PEER" in table.stdout and "SUBSCRIBER" in table.stdout
    assert any(line.startswith("cluster-2 ") for line in table.stdout.splitlines())
    yaml_out = run_cli("status", "--addr", rig["addr"], "-o", "yaml")
    assert yaml_out.returncode == 0 and "serverInfo:" in yaml_out.stdout


def test_check_cli_passes_and_reports_mismatched_roots(rig):
    client = rig["client"]
    wait_synced(client)

    def checked():
        out = run_cli("check", "--addr", rig["addr"], "-o", "json")
        return out if out.returncode == 0 else None

    out = wait_for("peerd check to pass", checked)
    results = {r["name"]: r for r in json.loads(out.stdout)}
    assert results["local istiod"]["outcome"] == "pass"
    assert results["peer cluster-2"]["outcome"] == "pass"
    assert results["network configuration"]["outcome"] == "pass"

    text = run_cli("check", "--addr", rig["addr"], "--verbose")
    assert text.returncode == 0, text.stdout + text.stderr
    assert "✅ peer cluster-2: PeerConnected and PeeringSucceeded are True" in text.stdout
    assert "gloo.solo.io/PeerConnected=True" in text.stdout  # verbose detail

    # A simulator outside the sandbox has its own root: the chains do not cross-verify.
    c1, c2 = rig["tls"]["c1"], rig["tls"]["c2"]
    bad = run_cli("check", "--addr", rig["addr"], "--precheck",
                  "--root-cert", f"cluster-1={c1 / 'root-cert.pem'}",
                  "--root-cert", f"cluster-2={c2 / 'root-cert.pem'}",
                  "--ca-cert", f"cluster-1={c1 / 'cert-chain.pem'}",
                  "--ca-cert", f"cluster-2={c2 / 'cert-chain.pem'}")
    assert bad.returncode != 0
    line = next(l for l in bad.stdout.splitlines() if "intermediate certificates" in l)
    assert line.startswith("❌") and "does not verify against" in line, line

    down = run_cli("check", "--addr", "127.0.0.1:1")
    assert down.returncode != 0
    assert "❌ debug API" in down.stdout
