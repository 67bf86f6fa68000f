#!/usr/bin/env bash
# End-to-end: two kind clusters on a flat network, Istio ambient, peerd from
# deploy/helm/peerd, peer Gateways; checks Gateway conditions and WorkloadEntries.
# Needs Docker and network access: NOT run in CI here (see tests/e2e/README.md).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
ISTIO_VERSION="${ISTIO_VERSION:-1.27.1}"
GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-v1.2.1}"
WORK="$(mktemp -d -t peerd-e2e-XXXXXX)"
CLUSTERS=(peerd-c1 peerd-c2)
declare -A POD_CIDR=([peerd-c1]=10.110.0.0/16 [peerd-c2]=10.120.0.0/16)
declare -A SVC_CIDR=([peerd-c1]=10.210.0.0/16 [peerd-c2]=10.220.0.0/16)
NETWORK=flat-net
TRUST_DOMAIN=cluster.local

say() { printf '\n== %s\n' "$*"; }
run() { printf '+ %s\n' "$*"; "$@"; }
ctx() { echo "kind-$1"; }
k() { local c=$1; shift; kubectl --context "$(ctx "$c")" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

cleanup() {
  if [[ "${KEEP:-0}" != 1 ]]; then
    for c in "${CLUSTERS[@]}"; do kind delete cluster --name "$c" >/dev/null 2>&1 || true; done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

for tool in docker kind kubectl helm istioctl openssl; do
  command -v "$tool" >/dev/null || fail "$tool is required (see tests/e2e/README.md)"
done
docker info >/dev/null 2>&1 || fail "the Docker engine is not reachable"

say "build the peerd image from deploy/Containerfile"
run docker build -q -f "$ROOT/deploy/Containerfile" -t peerd:e2e "$ROOT"

say "create the kind clusters (flat network)"
for c in "${CLUSTERS[@]}"; do
  cat > "$WORK/$c.kind.yaml" <<KIND
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  podSubnet: ${POD_CIDR[$c]}
  serviceSubnet: ${SVC_CIDR[$c]}
nodes:
  - role: control-plane
KIND
  run kind create cluster --name "$c" --config "$WORK/$c.kind.yaml" --wait 120s
  run kind load docker-image peerd:e2e --name "$c"
done
node_ip() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1-control-plane"; }
C1_IP="$(node_ip peerd-c1)"; C2_IP="$(node_ip peerd-c2)"
run docker exec peerd-c1-control-plane ip route add "${POD_CIDR[peerd-c2]}" via "$C2_IP"
run docker exec peerd-c2-control-plane ip route add "${POD_CIDR[peerd-c1]}" via "$C1_IP"

say "shared root CA, per-cluster intermediates (cacerts) and peerd certificates"
cd "$WORK"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/O=peerd e2e/CN=root" \
  -keyout root-key.pem -out root-cert.pem \
  -addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
for c in "${CLUSTERS[@]}"; do
  mkdir -p "$c"
  openssl req -newkey rsa:2048 -nodes -subj "/O=peerd e2e/CN=$c intermediate" \
    -keyout "$c/ca-key.pem" -out "$c/ca.csr" 2>/dev/null
  printf 'basicConstraints=critical,CA:true,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectAltName=URI:spiffe://%s/ns/istio-system/sa/citadel\n' "$TRUST_DOMAIN" > "$c/ca.ext"
  openssl x509 -req -in "$c/ca.csr" -CA root-cert.pem -CAkey root-key.pem -CAcreateserial \
    -days 2 -extfile "$c/ca.ext" -out "$c/ca-cert.pem" 2>/dev/null
  cat "$c/ca-cert.pem" root-cert.pem > "$c/cert-chain.pem"
  cp root-cert.pem "$c/root-cert.pem"
  openssl req -newkey rsa:2048 -nodes -subj "/O=peerd e2e/CN=peerd" \
    -keyout "$c/peerd-key.pem" -out "$c/peerd.csr" 2>/dev/null
  printf 'basicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=URI:spiffe://%s/ns/istio-system/sa/peerd,DNS:peerd.istio-system.svc,DNS:peerd-export.istio-system.svc\n' "$TRUST_DOMAIN" > "$c/peerd.ext"
  openssl x509 -req -in "$c/peerd.csr" -CA "$c/ca-cert.pem" -CAkey "$c/ca-key.pem" -CAcreateserial \
    -days 2 -extfile "$c/peerd.ext" -out "$c/peerd-cert.pem" 2>/dev/null
  cat "$c/peerd-cert.pem" "$c/ca-cert.pem" > "$c/peerd-chain.pem"
  k "$c" create namespace istio-system --dry-run=client -o yaml | k "$c" apply -f -
  k "$c" label namespace istio-system "topology.istio.io/network=$NETWORK" --overwrite
  k "$c" -n istio-system create secret generic cacerts \
    --from-file="$c/ca-cert.pem" --from-file="$c/ca-key.pem" \
    --from-file="$c/root-cert.pem" --from-file="$c/cert-chain.pem"
  k "$c" -n istio-system create secret generic peerd-tls \
    --from-file=cert-chain.pem="$c/peerd-chain.pem" --from-file=key.pem="$c/peerd-key.pem"
done
cd "$ROOT"

say "Gateway API CRDs and Istio ambient"
for c in "${CLUSTERS[@]}"; do
  run k "$c" apply -f "https://github.com/kubernetes-sigs/gateway-api/releases/download/$GATEWAY_API_VERSION/standard-install.yaml"
  run istioctl --context "$(ctx "$c")" install -y --set profile=ambient \
    --set values.global.meshID=peerd-e2e \
    --set values.global.multiCluster.clusterName="$c" \
    --set values.global.network="$NETWORK" \
    --set values.pilot.env.PEERING_ENABLE_FLAT_NETWORKS=true \
    --set values.pilot.env.PILOT_ENABLE_IP_AUTOALLOCATE=true \
    --set values.pilot.env.DISABLE_LEGACY_MULTICLUSTER=true \
    --set values.pilot.env.ENABLE_PEERING_DISCOVERY=true \
    --set values.ztunnel.network="$NETWORK"
  k "$c" create namespace istio-eastwest --dry-run=client -o yaml | k "$c" apply -f -
done

say "peerd from deploy/helm/peerd"
for c in "${CLUSTERS[@]}"; do
  run helm upgrade --install peerd "$ROOT/deploy/helm/peerd" --kube-context "$(ctx "$c")" \
    -n istio-system --set cluster="$c" --set network="$NETWORK" --set flatNetworks=true \
    --set image.repository=peerd --set image.tag=e2e --set image.pullPolicy=Never --wait --timeout 5m
  ip="$(node_ip "$c")"
  # The other cluster reaches this peerd's export view on <node IP>:15012.
  run k "$c" -n istio-system patch service peerd-export --type merge -p "{\"spec\":{\"externalIPs\":[\"$ip\"]}}"
done

say "peer Gateways and a global service"
peer_gateway() {
  local self=$1 other=$2 address=$3
  k "$self" apply -f - <<GW
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: istio-remote-peer-$other
  namespace: istio-eastwest
  labels:
    topology.istio.io/cluster: $other
    topology.istio.io/network: $NETWORK
  annotations:
    gateway.istio.io/service-account: istio-eastwest
    gateway.istio.io/trust-domain: $TRUST_DOMAIN
    # The identity the other cluster's peerd presents (the chart's default, pinned here
    # explicitly): a workload certificate of the shared root is refused.
    peering.solo.io/peerd-identity: spiffe://$TRUST_DOMAIN/ns/istio-system/sa/peerd
spec:
  gatewayClassName: istio-remote
  addresses:
    - type: IPAddress
      value: $address
  listeners:
    - name: cross-network
      port: 15008
      protocol: HBONE
      tls: {mode: Passthrough}
    - name: xds-tls
      port: 15012
      protocol: TLS
      tls: {mode: Passthrough}
GW
}
peer_gateway peerd-c1 peerd-c2 "$C2_IP"
peer_gateway peerd-c2 peerd-c1 "$C1_IP"
for c in "${CLUSTERS[@]}"; do
  k "$c" create namespace demo --dry-run=client -o yaml | k "$c" apply -f -
  k "$c" label namespace demo istio.io/dataplane-mode=ambient --overwrite
done
k peerd-c2 -n demo create deployment echo --image=registry.k8s.io/e2e-test-images/agnhost:2.45 --replicas=2 -- /agnhost netexec --http-port=8080
k peerd-c2 -n demo expose deployment echo --port 80 --target-port 8080
k peerd-c2 -n demo label service echo solo.io/service-scope=global
k peerd-c2 -n demo create deployment local-only --image=registry.k8s.io/e2e-test-images/agnhost:2.45 -- /agnhost netexec --http-port=8080
k peerd-c2 -n demo expose deployment local-only --port 80 --target-port 8080
k peerd-c2 -n demo rollout status deployment/echo --timeout 180s
# peerd reads peer Gateways at start: restart it now that they exist.
for c in "${CLUSTERS[@]}"; do
  run k "$c" -n istio-system rollout restart daemonset/peerd
  run k "$c" -n istio-system rollout status daemonset/peerd --timeout 180s
done

say "checks"
conditions=(Accepted Programmed gloo.solo.io/PeerConnected gloo.solo.io/PeeringSucceeded gloo.solo.io/PeerDataPlaneProgrammed)
wait_for() { # description, command...
  local what=$1; shift
  for _ in $(seq 1 90); do "$@" && { echo "ok: $what"; return 0; }; sleep 5; done
  fail "$what"
}
all_true() {
  local c=$1 gw=$2 t
  for t in "${conditions[@]}"; do
    [[ "$(k "$c" -n istio-eastwest get gateway "$gw" -o jsonpath="{.status.conditions[?(@.type==\"$t\")].status}")" == True ]] || return 1
  done
}
wait_for "peerd-c1: istio-remote-peer-peerd-c2 has all five conditions True" all_true peerd-c1 istio-remote-peer-peerd-c2
wait_for "peerd-c2: istio-remote-peer-peerd-c1 has all five conditions True" all_true peerd-c2 istio-remote-peer-peerd-c1
flat_entries_match() {
  local pods names
  pods="$(k peerd-c2 -n demo get pods -l app=echo -o jsonpath='{range .items[*]}{.metadata.name} {.status.podIP}{"\n"}{end}')"
  names="$(k peerd-c1 -n istio-system get workloadentries -o jsonpath='{range .items[*]}{.metadata.name} {.spec.address}{"\n"}{end}')"
  local count=0 name ip
  while read -r name ip; do
    [[ -z "$name" ]] && continue
    count=$((count + 1))
    grep -Eq "^autogenflat\.peerd-c2\.demo\.${name}\.[0-9a-f]{12} ${ip}\$" <<<"$names" || return 1
  done <<<"$pods"
  [[ "$(grep -c '^autogenflat\.peerd-c2\.' <<<"$names")" == "$count" ]] || return 1
  ! grep -q 'local-only' <<<"$names"
}
wait_for "peerd-c1: one autogenflat.peerd-c2.demo.<pod>.<hash12> WorkloadEntry per echo pod, none for local-only" flat_entries_match
wait_for "peerd-c1: ServiceEntry autogen.demo.echo" k peerd-c1 -n istio-system get serviceentry autogen.demo.echo
k peerd-c1 -n istio-system get workloadentries,serviceentries
k peerd-c1 -n istio-eastwest get gateways -o yaml | sed -n '/^  status:/,/^- apiVersion/p'
echo "PASS"
