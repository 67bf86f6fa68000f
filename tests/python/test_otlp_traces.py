"""OTLP trace export from a real run: simulated istiod → `peerd run` → a downstream peerd,
with peerd exporting to a local collector stand-in (a gRPC server answering
`opentelemetry.proto.collector.trace.v1.TraceService/Export`). The requests are decoded
from the protobuf wire format here (field numbers from the OTLP protos) to find the
sync-path spans.
"""

import threading
from concurrent import futures

import grpc

from rig import (
    Processes,
    free_port,
    peerd_bin,
    start_sim,
    upstream_yaml,
    wait_for,
)

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SYNC_SPANS = {
    "xds.client.response",
    "store.apply",
    "federation.recompute",
    "xds.server.push",
    "xds.server.ack",
}


def varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def fields(buf):
    """(field number, wire type, value) of one message; length-delimited values as bytes."""
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def span_names(request: bytes):
    """ExportTraceServiceRequest.resource_spans(1) → ResourceSpans.scope_spans(2) →
    ScopeSpans.spans(2) → Span.name(5); also ResourceSpans.resource(1) attributes."""
    names, services = [], set()
    for n, _, resource_spans in fields(request):
        if n != 1:
            continue
        for m, _, value in fields(resource_spans):
            if m == 1:  # Resource.attributes(1): KeyValue{key(1), value(2): AnyValue{string(1)}}
                for a, _, kv in fields(value):
                    if a == 1:
                        kv = dict((k, v) for k, _, v in fields(kv))
                        if kv.get(1) == b"service.name":
                            services.add(dict((k, v) for k, _, v in fields(kv[2])).get(1, b"").decode())
            if m == 2:
                for s, _, span_or_scope in fields(value):
                    if s == 2:
                        for f, _, v in fields(span_or_scope):
                            if f == 5:
                                names.append(v.decode())
    return names, services


class Collector:
    def __init__(self):
        self.names = []
        self.services = set()
        self.lock = threading.Lock()

    def export(self, request, context):
        names, services = span_names(request)
        with self.lock:
            self.names.extend(names)
            self.services |= services
        return b""  # an empty ExportTraceServiceResponse


def test_sync_spans_reach_the_collector(tmp_path):
    peerd_bin()
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(collector.export)},
    )
    server.add_generic_rpc_handlers((handler,))
    ip = "127.0.76.1"
    port = server.add_insecure_port(f"{ip}:0")
    server.start()
    procs = Processes(tmp_path)
    try:
        sim = dict(cluster="cluster-1", ip="127.0.23.1", workloads=5, services=1)
        sim_addr, tls = start_sim(procs, sim, tmp_path)
        xds = free_port("127.0.77.1")
        (tmp_path / "token").write_text("otlp-test-token\n")
        config = tmp_path / "peerd1.yaml"
        config.write_text(f"""
cluster: cluster-1
network: net-cluster-1
sandboxMode: true
listeners: {{ xds: "127.0.77.1:{xds}", metrics: "127.0.77.1:0", health: "127.0.77.1:0", debug: "127.0.77.1:0" }}
xds:
  tls: {{ certChain: "{tls / 'cert-chain.pem'}", key: "{tls / 'key.pem'}" }}
  auth: {{ tokenFile: "{tmp_path / 'token'}" }}
upstreams:{upstream_yaml("cluster-1", sim_addr, tls)}
""")
        exporting = dict(
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{ip}:{port}",
            OTEL_SERVICE_NAME="peerd-under-test",
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        procs.start("peerd1", ["run", "--config", str(config)], env=exporting)

        ds = tmp_path / "ds"
        ds.mkdir()
        (ds / "token").write_text("otlp-test-token\n")
        (ds / "root-cert.pem").write_bytes((tls / "root-cert.pem").read_bytes())
        config3 = tmp_path / "peerd3.yaml"
        config3.write_text(f"""
cluster: cluster-3
sandboxMode: true
listeners: {{ xds: "127.0.78.1:0", metrics: "127.0.78.1:0", health: "127.0.78.1:0", debug: "127.0.78.1:0" }}
xds:
  tls: {{ certChain: "{tls / 'cert-chain.pem'}", key: "{tls / 'key.pem'}" }}
  auth: {{ tokenFile: "{tmp_path / 'token'}" }}
upstreams:{upstream_yaml("cluster-3", f"127.0.77.1:{xds}", ds)}
""")
        procs.start("peerd3", ["run", "--config", str(config3)])

        def all_sync_spans():
            procs.check_alive()
            with collector.lock:
                return SYNC_SPANS <= set(collector.names)

        wait_for("every sync-path span at the collector", all_sync_spans)
        assert collector.services == {"peerd-under-test"}
    finally:
        procs.stop()
        server.stop(grace=None)
