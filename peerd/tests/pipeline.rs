//! End to end through the real daemon: simulated istiod → `peerd run` (as
//! `app::Peerd`) → a scripted client that behaves like ztunnel (docs/xds-wire.md §3), all over
//! TLS on loopback. Covers initial sync, churn, removal, NACK + recovery, reconnect diff,
//! on-demand lookups, and that a bad token is refused without disturbing others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod xds_support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use peerd::app::{GATE_MERGED_VIEW_READY, Peerd};
use peerd::config::{Config, Env, Overrides};
use peerd::identity::tls::{ClientTlsOptions, ServerIdentity, client_config, load_roots};
use peerd::view::View;
use peerd::xds::resource::{Resource, Summary};
use peerd::xds::types::ResourceType;
use peerd_testbed::pki::{LeafSpec, Pki};
use peerd_testbed::sim::istiod::{SimIstiod, SimIstiodOptions, serve_xds};
use xds_support::{Downstream, Held, eventually};

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

struct Rig {
    _dir: tempfile::TempDir,
    sim_view: Arc<View>,
    peerd: Option<Peerd>,
    xds: SocketAddr,
    token: String,
    client_tls: Arc<rustls::ClientConfig>,
    stop_sim: tokio::sync::watch::Sender<bool>,
    /// The simulator, until it serves (see [`Sim::Later`]), and a socket bound to its
    /// port meanwhile: connections are refused, and no other socket of this busy test
    /// process (or a connection to itself) can take the port before the simulator does.
    idle_sim: Option<(
        SimIstiod,
        tokio::sync::watch::Receiver<bool>,
        tokio::net::TcpSocket,
    )>,
}

/// Whether the simulated istiod serves from the start, or only once the test says so
/// (peerd starts with its upstream unreachable).
#[derive(PartialEq)]
enum Sim {
    Now,
    Later,
}

fn free_port() -> u16 {
    peerd_testbed::ports::free_port(LOCALHOST)
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

async fn rig(workloads: usize, services: usize) -> Rig {
    rig_with(workloads, services, Sim::Now).await
}

async fn rig_with(workloads: usize, services: usize, start: Sim) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(&dir.path().join("pki"), "test root").unwrap();
    let ca = pki.cluster_ca("cluster-1").unwrap();

    // The simulated istiod, static (churn is driven by the test through its view).
    let sim_addr = SocketAddr::new(LOCALHOST, free_port());
    let mut options = SimIstiodOptions::new("cluster-1", sim_addr, &dir.path().join("istiod"));
    options.cluster_index = Some(1);
    options.network = "net1".into();
    options.workloads = workloads;
    options.services = services;
    options.churn_per_sec = 0.0;
    let sim = SimIstiod::new_with_ca(options, &ca).unwrap();
    let sim_view = Arc::clone(&sim.view);
    let istiod_token = sim.tls.token_path.clone();
    let (stop_sim, shutdown) = tokio::sync::watch::channel(false);
    let idle_sim = if start == Sim::Now {
        tokio::spawn(sim.serve(shutdown, |ctx| serve_xds(ctx, Default::default())));
        None
    } else {
        let reserved = tokio::net::TcpSocket::new_v4().unwrap();
        reserved.set_reuseaddr(true).unwrap();
        reserved.bind(sim_addr).unwrap();
        Some((sim, shutdown, reserved))
    };

    // peerd's serving certificate and the ztunnel token.
    let peerd_dir = dir.path().join("peerd");
    ca.issue(&LeafSpec::server("peerd").with_ip(LOCALHOST))
        .unwrap()
        .write_to(&peerd_dir)
        .unwrap();
    let token = "ztunnel-token-for-tests".to_string();
    write(&dir.path().join("ztunnel-token"), &token);
    let config_path = dir.path().join("peerd.yaml");
    write(
        &config_path,
        &format!(
            r#"
cluster: cluster-1
network: net1
sandboxMode: true
listeners: {{ xds: "127.0.0.1:0", metrics: "127.0.0.1:0", health: "127.0.0.1:0", debug: "127.0.0.1:0" }}
xds:
  tls: {{ certChain: peerd/cert-chain.pem, key: peerd/key.pem }}
  auth: {{ tokenFile: ztunnel-token }}
  debounce: 5ms
upstreams:
  - name: cluster-1
    address: "{sim_addr}"
    serverName: istiod.istio-system.svc
    rootCa: pki/root-cert.pem
    tokenFile: "{}"
    backoff: {{ initial: 50ms, max: 1s }}
"#,
            istiod_token.display()
        ),
    );
    let config = Config::load(&config_path, &Env::default(), &Overrides::default()).unwrap();
    let peerd = Peerd::start(config).await.unwrap();
    let xds = peerd.xds_addr;
    let roots = load_roots(&pki.root_cert_path()).unwrap();
    let client_tls = client_config(&ClientTlsOptions::new(
        rustls::RootCertStore::clone(&roots),
        ServerIdentity::Name,
    ))
    .unwrap();
    Rig {
        _dir: dir,
        sim_view,
        peerd: Some(peerd),
        xds,
        token,
        client_tls,
        stop_sim,
        idle_sim,
    }
}

impl Rig {
    fn peerd(&self) -> &Peerd {
        self.peerd.as_ref().unwrap()
    }

    async fn ztunnel(&self) -> Downstream {
        Downstream::connect(self.xds, Arc::clone(&self.client_tls), Some(&self.token))
            .await
            .unwrap()
    }

    /// Starts a simulator created with [`Sim::Later`].
    fn start_sim(&mut self) {
        let (sim, shutdown, reserved) = self.idle_sim.take().unwrap();
        drop(reserved);
        tokio::spawn(sim.serve(shutdown, |ctx| serve_xds(ctx, Default::default())));
    }

    /// Waits until peerd's merged view equals the simulator's view.
    async fn wait_converged(&self) {
        let merged = Arc::clone(self.peerd().federation.merged());
        let sim = Arc::clone(&self.sim_view);
        eventually("merged view equals the simulator", || {
            ResourceType::ALL
                .iter()
                .all(|t| Held::of_view(&merged, *t) == Held::of_view(&sim, *t))
        })
        .await;
    }
}

/// Receives and ACKs responses until what is held of `kind` equals `want`.
async fn receive_until(z: &mut Downstream, held: &mut [Held; 2], want: &[Held; 2]) {
    while held != want {
        let r = z.recv_ack().await;
        let kind = ResourceType::from_type_url(&r.type_url).unwrap();
        held[kind.index()].apply(&r);
    }
}

/// The same workload moved to another network, edited at the wire level.
fn with_network(r: &Resource, network: &str) -> Resource {
    let body = peerd::xds::wire::edit_workload(&r.body, |w| {
        w.set_network(network);
        Ok(())
    })
    .unwrap();
    r.with_body(body).unwrap()
}

fn as_refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
}

fn want(view: &View) -> [Held; 2] {
    [
        Held::of_view(view, ResourceType::Address),
        Held::of_view(view, ResourceType::Authorization),
    ]
}

#[tokio::test]
async fn ztunnel_gets_initial_sync_churn_removals_and_nack_recovery() {
    let rig = rig(200, 20).await;
    rig.wait_converged().await;
    let mut z = rig.ztunnel().await;
    z.initial(ResourceType::Address, &[], &[], &[]).await;
    z.initial(ResourceType::Authorization, &[], &[], &[]).await;
    let mut held = [Held::default(), Held::default()];
    receive_until(&mut z, &mut held, &want(&rig.sim_view)).await;
    assert!(held[0].0.len() >= 200, "workloads and services arrived");
    assert!(!held[1].0.is_empty(), "authorizations arrived");
    // Bytes are forwarded unchanged.
    let snapshot = rig.sim_view.snapshot();
    for (name, (_, body)) in &held[0].0 {
        assert_eq!(
            &snapshot.get(ResourceType::Address, name).unwrap().body[..],
            &body[..]
        );
    }

    // Churn at the source: remove one workload, change another.
    let mut names = snapshot
        .resources(ResourceType::Address)
        .values()
        .filter(|r| matches!(*r.summary, Summary::Workload(_)))
        .map(|r| Arc::clone(&r.name));
    let gone = names.next().unwrap();
    let changed = snapshot
        .get(ResourceType::Address, &names.next().unwrap())
        .unwrap()
        .clone();
    let edited = with_network(&changed, "net1-moved");
    rig.sim_view.apply(
        ResourceType::Address,
        [Arc::new(edited.clone())],
        [Arc::clone(&gone)],
    );
    receive_until(&mut z, &mut held, &want(&rig.sim_view)).await;
    assert!(!held[0].0.contains_key(&*gone), "removal propagated");
    assert_eq!(
        held[0].0[&*edited.name].1,
        edited.body.to_vec(),
        "update propagated"
    );

    // NACK the next update of a resource; a later fixed version is delivered again.
    let again = with_network(&edited, "net1-nacked");
    rig.sim_view
        .apply(ResourceType::Address, [Arc::new(again.clone())], []);
    let r = z.recv().await;
    assert_eq!(r.resources[0].name, &*again.name);
    z.nack(&r, &format!("{}: rejected by test", again.name))
        .await;
    eventually("the NACK is recorded", || {
        rig.peerd().server.subscribers().list().iter().any(|s| {
            s.stats.address_type.nacks_received == 1
                && s.stats
                    .address_type
                    .last_nack_message
                    .contains("rejected by test")
        })
    })
    .await;
    let fixed = with_network(&again, "net1");
    rig.sim_view
        .apply(ResourceType::Address, [Arc::new(fixed.clone())], []);
    let r = z.recv_ack().await;
    assert_eq!(r.resources[0].name, &*fixed.name);
    assert_eq!(
        &r.resources[0].resource.as_ref().unwrap().value[..],
        &fixed.body[..]
    );
}

#[tokio::test]
async fn reconnect_gets_only_the_difference_and_on_demand_is_answered() {
    let rig = rig(100, 10).await;
    rig.wait_converged().await;
    let mut z = rig.ztunnel().await;
    z.initial(ResourceType::Address, &[], &[], &[]).await;
    z.initial(ResourceType::Authorization, &[], &[], &[]).await;
    let mut held = [Held::default(), Held::default()];
    receive_until(&mut z, &mut held, &want(&rig.sim_view)).await;
    drop(z);

    // While disconnected: one workload goes away.
    let snapshot = rig.sim_view.snapshot();
    let gone = snapshot
        .resources(ResourceType::Address)
        .values()
        .find(|r| matches!(*r.summary, Summary::Workload(_)))
        .map(|r| Arc::clone(&r.name))
        .unwrap();
    rig.sim_view
        .apply(ResourceType::Address, [], [Arc::clone(&gone)]);
    rig.wait_converged().await;

    let mut z = rig.ztunnel().await;
    let versions = |h: &Held| -> Vec<(String, String)> {
        h.0.iter()
            .map(|(n, (v, _))| (n.clone(), v.clone()))
            .collect()
    };
    let (addr_versions, authz_versions) = (versions(&held[0]), versions(&held[1]));
    let (a, b) = (as_refs(&addr_versions), as_refs(&authz_versions));
    z.initial(ResourceType::Address, &[], &[], &a).await;
    z.initial(ResourceType::Authorization, &[], &[], &b).await;
    for _ in 0..2 {
        let r = z.recv_ack().await;
        if r.type_url == ResourceType::Address.type_url() {
            assert!(
                r.resources.is_empty(),
                "nothing resent: {:?}",
                r.resources.len()
            );
            assert_eq!(r.removed_resources, vec![gone.to_string()]);
        } else {
            assert!(r.resources.is_empty() && r.removed_resources.is_empty());
        }
    }

    // On-demand mode (ztunnel with XDS_ON_DEMAND=true): subscribe to nothing, then ask.
    let mut od = rig.ztunnel().await;
    od.initial(ResourceType::Address, &["*"], &["*"], &[]).await;
    od.initial(ResourceType::Authorization, &[], &[], &[]).await;
    let mut seen_types = Vec::new();
    for _ in 0..2 {
        let r = od.recv_ack().await;
        if r.type_url == ResourceType::Address.type_url() {
            assert!(r.resources.is_empty(), "on-demand start sends nothing");
        }
        seen_types.push(r.type_url);
    }
    assert_eq!(seen_types.len(), 2, "both types answered");
    let present = rig
        .sim_view
        .snapshot()
        .resources(ResourceType::Address)
        .values()
        .find_map(|r| match &*r.summary {
            Summary::Workload(w) => Some((w.network.clone(), w.addresses[0], r.name.clone())),
            _ => None,
        })
        .unwrap();
    let key = format!("{}/{}", present.0, present.1);
    od.subscribe(ResourceType::Address, &[&key]).await;
    let r = od.recv_ack().await;
    assert_eq!(r.resources.len(), 1);
    assert_eq!(r.resources[0].name, key, "answered under the requested key");
    od.subscribe(ResourceType::Address, &["net1/127.250.250.250"])
        .await;
    let r = od.recv_ack().await;
    assert_eq!(
        r.removed_resources,
        vec!["net1/127.250.250.250".to_string()]
    );
    let _ = rig.stop_sim.send(true);
}

/// A restarted peerd whose istiod is not reachable yet must not answer a reconnecting
/// ztunnel: an answer from its empty view would tell ztunnel to remove everything it
/// holds. It answers once the local upstream has synced, with only what differs.
#[tokio::test]
async fn a_reconnecting_ztunnel_is_held_until_the_local_upstream_has_synced() {
    let mut rig = rig_with(100, 10, Sim::Later).await;
    // What a ztunnel synced by the previous peerd holds: the simulator's state.
    let held = want(&rig.sim_view);
    let versions = |h: &Held| -> Vec<(String, String)> {
        h.0.iter()
            .map(|(n, (v, _))| (n.clone(), v.clone()))
            .collect()
    };
    let (addr_versions, authz_versions) = (versions(&held[0]), versions(&held[1]));
    assert!(!addr_versions.is_empty() && !authz_versions.is_empty());
    let mut z = rig.ztunnel().await;
    z.initial(ResourceType::Address, &[], &[], &as_refs(&addr_versions))
        .await;
    z.initial(
        ResourceType::Authorization,
        &[],
        &[],
        &as_refs(&authz_versions),
    )
    .await;
    let early = tokio::time::timeout(std::time::Duration::from_millis(700), z.rx.message()).await;
    assert!(
        early.is_err(),
        "answered before the local upstream synced: {early:?}"
    );
    assert!(!rig.peerd().federation.merged().is_ready());
    // /healthz/ready waits on the same signal that holds the stream.
    let pending = rig.peerd().readiness.check().unwrap_err();
    assert!(pending.contains(&GATE_MERGED_VIEW_READY), "{pending:?}");

    rig.start_sim();
    let mut answered = Vec::new();
    for _ in 0..2 {
        let r = z.recv_ack().await;
        assert!(
            r.resources.is_empty() && r.removed_resources.is_empty(),
            "{}: {} resent, {} removed",
            r.type_url,
            r.resources.len(),
            r.removed_resources.len()
        );
        answered.push(r.type_url);
    }
    answered.sort();
    assert_eq!(
        answered,
        [
            ResourceType::Authorization.type_url(),
            ResourceType::Address.type_url()
        ]
    );
    assert!(rig.peerd().federation.merged().is_ready());
    let pending = rig.peerd().readiness.check().err().unwrap_or_default();
    assert!(!pending.contains(&GATE_MERGED_VIEW_READY), "{pending:?}");

    // A ztunnel that holds nothing gets everything in its first response of each type.
    let mut fresh = rig.ztunnel().await;
    fresh.initial(ResourceType::Address, &[], &[], &[]).await;
    fresh
        .initial(ResourceType::Authorization, &[], &[], &[])
        .await;
    let mut got = [Held::default(), Held::default()];
    for _ in 0..2 {
        let r = fresh.recv_ack().await;
        let kind = ResourceType::from_type_url(&r.type_url).unwrap();
        got[kind.index()].apply(&r);
    }
    assert_eq!(got, held, "complete in the first responses");
    let _ = rig.stop_sim.send(true);
}

#[tokio::test]
async fn bad_token_is_refused_and_upstream_loss_keeps_served_state() {
    let mut rig = rig(50, 5).await;
    rig.wait_converged().await;
    let err = match Downstream::connect(rig.xds, Arc::clone(&rig.client_tls), Some("wrong")).await {
        Ok(mut d) => {
            d.initial(ResourceType::Address, &[], &[], &[]).await;
            d.rx.message().await.unwrap_err()
        }
        Err(status) => status,
    };
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");

    // The simulated istiod goes away: peerd keeps serving what it had.
    let before = want(rig.peerd().federation.merged());
    let _ = rig.stop_sim.send(true);
    let stats = Arc::clone(&rig.peerd().upstreams.snapshot()[0].1);
    eventually("upstream seen as disconnected", || {
        !stats.snapshot().connected
    })
    .await;
    let mut z = rig.ztunnel().await;
    z.initial(ResourceType::Address, &[], &[], &[]).await;
    z.initial(ResourceType::Authorization, &[], &[], &[]).await;
    let mut held = [Held::default(), Held::default()];
    receive_until(&mut z, &mut held, &before).await;
    assert_eq!(held, before);
    let peerd = rig.peerd.take().unwrap();
    peerd.cancellation().cancel();
    peerd.wait().await.unwrap();
}

/// Runs the `peerd` binary with `args`; (success, stdout + stderr).
async fn peerd_cli(args: Vec<String>) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_peerd"))
        .args(&args)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn status_and_check_work_while_a_client_holds_a_10_mib_nack() {
    let mut rig = rig(20, 2).await;
    rig.wait_converged().await;
    let mut z = rig.ztunnel().await;
    z.initial(ResourceType::Address, &[], &[], &[]).await;
    z.initial(ResourceType::Authorization, &[], &[], &[]).await;
    let first = z.recv().await;
    let second = z.recv_ack().await;
    assert_ne!(first.type_url, second.type_url);
    let huge = "x".repeat(10 * 1024 * 1024);
    z.nack(&first, &huge).await;
    let subscribers = rig.peerd().server.subscribers();
    eventually("the NACK is recorded", || {
        subscribers.list().first().is_some_and(|s| {
            s.stats.address_type.nacks_received + s.stats.authorization_type.nacks_received == 1
        })
    })
    .await;

    // The client stays connected, holding its NACK, while both commands run.
    let addr = rig.peerd().debug_addr.to_string();
    let (ok, status) = peerd_cli(vec!["status".into(), "--addr".into(), addr.clone()]).await;
    assert!(ok, "peerd status failed:\n{status}");
    assert!(
        status.contains(&format!("[truncated: {} bytes]", huge.len())),
        "{status}"
    );
    assert!(status.len() < 64 * 1024, "{} bytes of status", status.len());
    let (ok, check) = peerd_cli(vec!["check".into(), "--addr".into(), addr]).await;
    assert!(ok, "peerd check failed:\n{check}");
    assert!(!check.contains("too large"), "{check}");
    assert_eq!(
        subscribers.list().len(),
        1,
        "the NACKing client is still connected"
    );
    drop(z);
    let peerd = rig.peerd.take().unwrap();
    peerd.cancellation().cancel();
    peerd.wait().await.unwrap();
}
