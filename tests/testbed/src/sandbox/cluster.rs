//! One simulated cluster of the sandbox: its simulated istiod (in this process), its
//! simulated east-west HBONE listener (in this process), and its peerd (a child process
//! running `peerd run` with a generated config, so each has its own metrics and ports).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::pki::{CertificateAuthority, LeafSpec};
use crate::sandbox::layout::{self, ClusterLayout};
use crate::sim::istiod::{SimIstiod, SimIstiodOptions, serve_xds};
use peerd::config::file::{
    AuthFile, BackoffFile, EastWestGatewayFile, ExportFile, FileConfig, HysteresisFile,
    IdentityFile, KubernetesFile, LeaderElectionFile, ListenersFile, ProbeFile, ServerTlsFile,
    UpstreamFile, XdsServerFile,
};
use peerd::identity::spiffe::SpiffeId;

/// The trust domain every sandbox cluster uses (one shared root, like a real peering).
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The namespace and service account every sandbox peerd runs as: the chart's (release
/// `peerd` in `istio-system`).
pub const PEERD_NAMESPACE: &str = "istio-system";
pub const PEERD_SERVICE_ACCOUNT: &str = "peerd";

/// The SPIFFE identity of every sandbox peerd. Each peerd is configured with this
/// namespace and service account, so it pins exactly this identity on its peers (as
/// server and as client); the shared root's workload certificates are refused.
pub fn peerd_identity() -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{PEERD_NAMESPACE}/sa/{PEERD_SERVICE_ACCOUNT}")
}

pub struct SandboxOptionsForCluster<'a> {
    pub workloads: usize,
    pub services: usize,
    pub churn_per_sec: f64,
    pub seed: u64,
    pub token_file: &'a Path,
    pub root_cert: &'a Path,
    /// peerd's `disconnectGracePeriod` (the sandbox: 30s; chaos runs use a shorter one).
    pub disconnect_grace: &'a str,
    /// Told about every published churn batch of the simulated istiod (chaos observer).
    pub churn_observer: Option<crate::sim::churn::ChangeObserver>,
}

/// A running simulated cluster.
pub struct Cluster {
    pub layout: ClusterLayout,
    pub global_services: Vec<String>,
    /// What the simulated istiod serves right now (the truth an observer compares with).
    pub sim_view: std::sync::Arc<peerd::view::View>,
    /// The simulated istiod's bearer token file (what peerd sends it).
    pub istiod_token: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    peerd: Option<Child>,
    /// `RUST_LOG` for peerd (default: inherited).
    log_filter: Option<String>,
}

impl Cluster {
    /// Starts the simulated istiod and HBONE listener, issues peerd's certificate and
    /// writes its config (peers = every other cluster). peerd itself is started by
    /// [`Cluster::start_peerd`] once every config is written.
    pub fn prepare(
        layout: ClusterLayout,
        all: &[ClusterLayout],
        ca: &CertificateAuthority,
        opts: &SandboxOptionsForCluster<'_>,
        shutdown: tokio::sync::watch::Receiver<bool>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(&layout.dir)
            .with_context(|| format!("creating {}", layout.dir.display()))?;

        let mut sim_options =
            SimIstiodOptions::new(&layout.name, layout.istiod(), &layout.dir.join("istiod"));
        sim_options.cluster_index = Some(layout.index);
        sim_options.network = layout.network.clone();
        sim_options.workloads = opts.workloads;
        sim_options.services = opts.services;
        sim_options.churn_per_sec = opts.churn_per_sec;
        sim_options.seed = opts.seed.wrapping_add(u64::from(layout.index));
        let mut sim = SimIstiod::new_with_ca(sim_options, ca)
            .with_context(|| format!("{}: simulated istiod", layout.name))?;
        if let Some(observer) = &opts.churn_observer {
            sim.set_churn_observer(observer.clone());
        }
        let sim_view = std::sync::Arc::clone(&sim.view);
        let mut global_services: Vec<String> = sim.global_services.iter().cloned().collect();
        if global_services.is_empty() {
            // A small population can draw no global service; export one so that every
            // cluster has something to federate.
            let snapshot = sim.view.snapshot();
            global_services.extend(
                snapshot
                    .resources(peerd::xds::types::ResourceType::Address)
                    .values()
                    .find_map(|r| r.as_service())
                    .map(|s| format!("{}/{}", s.namespace, s.name)),
            );
        }
        let istiod_token = sim.tls.token_path.clone();
        let name = layout.name.clone();
        tokio::spawn(async move {
            match sim
                .serve(shutdown, |ctx| serve_xds(ctx, Default::default()))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(cluster = %name, error = format!("{e:#}"), "simulated istiod stopped")
                }
                Err(e) => {
                    tracing::error!(cluster = %name, error = %e, "simulated istiod did not start")
                }
            }
        });
        {
            let addr = layout.hbone();
            let cancel = cancel.clone();
            let name = layout.name.clone();
            tokio::spawn(async move {
                if let Err(e) = super::gateway::serve_hbone(addr, cancel).await {
                    tracing::error!(cluster = %name, error = format!("{e:#}"), "simulated HBONE listener stopped");
                }
            });
        }

        // peerd's certificate: SPIFFE identity + the loopback IP + a DNS name; used as the
        // xDS server certificate and as the client certificate towards peers.
        let peerd_dir = layout.dir.join("peerd");
        let id: SpiffeId = peerd_identity()
            .parse()
            .context("sandbox peerd SPIFFE identity")?;
        ca.issue(
            &LeafSpec::workload(id)
                .with_ip(layout.host)
                .with_dns("peerd.istio-system.svc"),
        )
        .and_then(|leaf| leaf.write_to(&peerd_dir))
        .with_context(|| format!("{}: issuing peerd's certificate", layout.name))?;

        let config = config_for(
            &layout,
            all,
            &global_services,
            &peerd_dir,
            &istiod_token,
            opts,
        );
        let config_path = layout.dir.join("peerd.yaml");
        let yaml = yaml_serde::to_string(&config).context("rendering peerd config")?;
        std::fs::write(&config_path, yaml)
            .with_context(|| format!("writing {}", config_path.display()))?;
        Ok(Cluster {
            log_path: layout.dir.join("peerd.log"),
            layout,
            global_services,
            sim_view,
            istiod_token: istiod_token.clone(),
            config_path,
            peerd: None,
            log_filter: None,
        })
    }

    /// Starts (or restarts) this cluster's peerd process.
    pub fn start_peerd(&mut self) -> anyhow::Result<()> {
        if self.peerd.is_some() {
            return Ok(());
        }
        let exe = peerd_binary()?;
        // Appended, not truncated: a restarted peerd's log follows the killed one's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("creating {}", self.log_path.display()))?;
        let mut command = Command::new(exe);
        command
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("log file handle")?)
            .stderr(log);
        if let Some(filter) = &self.log_filter {
            command.env("RUST_LOG", filter);
        }
        terminate_with_parent(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("{}: starting peerd", self.layout.name))?;
        self.peerd = Some(child);
        Ok(())
    }

    /// peerd's log filter from its next start on, whatever this process's own is.
    pub fn set_log_filter(&mut self, filter: &str) {
        self.log_filter = Some(filter.to_string());
    }

    /// The running peerd's process id.
    pub fn peerd_pid(&self) -> Option<u32> {
        self.peerd.as_ref().map(Child::id)
    }

    /// Where peerd's certificate and key live (`cert-chain.pem`, `key.pem`).
    pub fn peerd_cert_dir(&self) -> PathBuf {
        self.layout.dir.join("peerd")
    }

    /// Stops this cluster's peerd (fault `stop-peer`, or shutdown).
    pub fn stop_peerd(&mut self) {
        if let Some(mut child) = self.peerd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts this cluster's peerd as a rollout would: SIGTERM, up to
    /// [`RESTART_STOP_TIMEOUT`] to exit (then SIGKILL), and a new process. Refused when
    /// no peerd runs.
    pub fn restart_peerd(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.peerd.take() else {
            bail!("{}: no peerd is running", self.layout.name);
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on our own child's pid; the child is not reaped yet, so the
            // pid cannot have been reused.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = std::time::Instant::now() + RESTART_STOP_TIMEOUT;
        while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        self.start_peerd()
    }

    pub fn peerd_running(&mut self) -> bool {
        match &mut self.peerd {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

/// How long a restarted peerd gets to exit after SIGTERM before it is killed.
pub const RESTART_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Overrides where the sandbox finds the `peerd` binary it runs for each cluster.
pub const PEERD_BIN_ENV: &str = "PEERD_BIN";

/// The `peerd` binary: `$PEERD_BIN`, else `peerd` next to this executable (cargo puts
/// `peerd-sandbox` and `peerd` in the same target directory).
pub fn peerd_binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os(PEERD_BIN_ENV) {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()
            .context("locating this executable")?
            .with_file_name("peerd"),
    };
    if !path.is_file() {
        anyhow::bail!(
            "no peerd binary at {} (build it next to peerd-sandbox with `cargo build -p peerd`, \
             same profile, or set {PEERD_BIN_ENV})",
            path.display()
        );
    }
    Ok(path)
}

/// The child gets SIGTERM when the sandbox dies, even by SIGKILL: a sandbox killed by a
/// test harness must not leave peerd processes holding 127.0.k.1's ports.
fn terminate_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    #[allow(unsafe_code)] // pre_exec runs in the forked child; prctl(2) is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_peerd();
    }
}

fn some(s: impl Into<String>) -> Option<String> {
    Some(s.into())
}

fn config_for(
    me: &ClusterLayout,
    all: &[ClusterLayout],
    global_services: &[String],
    peerd_dir: &Path,
    istiod_token: &Path,
    opts: &SandboxOptionsForCluster<'_>,
) -> FileConfig {
    // Peers come from the istio-remote Gateways in this cluster's emulated API server
    // (sandbox::kube creates one per other cluster).
    let _ = all;
    FileConfig {
        cluster: some(&me.name),
        network: some(&me.network),
        trust_domain: some(TRUST_DOMAIN),
        flat_networks: Some(true),
        sandbox_mode: Some(true),
        identity: IdentityFile {
            namespace: some(PEERD_NAMESPACE),
            service_account: some(PEERD_SERVICE_ACCOUNT),
        },
        // The sandbox's 30s: short enough that `--fault stop-peer` shows the withdrawal
        // within a minute.
        disconnect_grace_period: some(opts.disconnect_grace),
        // A restarted peerd keeps serving a down peer until its grace ends.
        state_dir: Some(peerd_dir.join("state")),
        listeners: ListenersFile {
            xds: some(me.xds().to_string()),
            metrics: some(me.metrics().to_string()),
            health: some(me.health().to_string()),
            debug: some(me.debug().to_string()),
        },
        xds: XdsServerFile {
            tls: ServerTlsFile {
                cert_chain: Some(peerd_dir.join("cert-chain.pem")),
                key: Some(peerd_dir.join("key.pem")),
                root: Some(opts.root_cert.to_path_buf()),
            },
            auth: AuthFile {
                token_file: Some(opts.token_file.to_path_buf()),
                ..AuthFile::default()
            },
            ..XdsServerFile::default()
        },
        upstreams: vec![UpstreamFile {
            name: some(&me.name),
            address: some(me.istiod().to_string()),
            server_name: some(crate::sim::istiod::ISTIOD_DNS_NAME),
            root_ca: Some(opts.root_cert.to_path_buf()),
            token_file: Some(istiod_token.to_path_buf()),
            backoff: BackoffFile {
                initial: some("100ms"),
                max: some("5s"),
            },
            ..UpstreamFile::default()
        }],
        kubernetes: KubernetesFile {
            server: some(me.kube_api_url()),
            // A short lease: a restarted sandbox peerd takes over quickly.
            leader_election: LeaderElectionFile {
                lease_duration: some("10s"),
                renew_period: some("2s"),
                ..LeaderElectionFile::default()
            },
            // The leader writes a ServiceImport per imported global service.
            service_imports: Some(true),
            ..KubernetesFile::default()
        },
        export: ExportFile {
            global_services: global_services.to_vec(),
            east_west_gateway: EastWestGatewayFile {
                address: some(me.host.to_string()),
                hbone_port: Some(layout::HBONE_PORT),
            },
        },
        hysteresis: HysteresisFile {
            failure_window: some("10s"),
            success_run: Some(2),
            first_probe_grace: some("15s"),
        },
        probe: ProbeFile {
            interval: some("2s"),
            jitter: some("500ms"),
            ..ProbeFile::default()
        },
        ..FileConfig::default()
    }
}
