//! Builds the kube-rs [`kube::Client`] peerd uses: in-cluster service-account config, a
//! kubeconfig (file or YAML text), or a bare URL (plain HTTP on loopback for the emulated
//! API server).
//!
//! It owns connection setup only; it must never log credentials from a kubeconfig.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Where the API server and its credentials come from.
#[derive(Debug, Clone)]
pub enum ClientSource {
    /// The pod's service account (`KUBERNETES_SERVICE_HOST` + mounted token and CA).
    InCluster,
    /// A kubeconfig file's current context.
    KubeconfigFile(PathBuf),
    /// Kubeconfig YAML text (e.g. `EmulatorHandle::kubeconfig`).
    KubeconfigYaml(String),
    /// A bare server URL with no credentials, e.g. `http://127.0.0.1:PORT`.
    Url(String),
}

/// A client for `source`, with `default_namespace` for namespaced calls that name none.
pub async fn connect(source: &ClientSource, default_namespace: &str) -> anyhow::Result<Client> {
    let mut config = match source {
        ClientSource::InCluster => {
            Config::incluster().context("reading the in-cluster Kubernetes configuration")?
        }
        ClientSource::KubeconfigFile(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        ClientSource::KubeconfigYaml(text) => {
            let kubeconfig = Kubeconfig::from_yaml(text).context("parsing kubeconfig YAML")?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .context("loading kubeconfig")?
        }
        ClientSource::Url(url) => {
            let uri = url
                .parse()
                .with_context(|| format!("invalid API server URL {url:?}"))?;
            Config::new(uri)
        }
    };
    config.default_namespace = default_namespace.to_string();
    // Bounded waits: a stuck API server must surface as an error, not hang a sync.
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(60));
    config.write_timeout = Some(Duration::from_secs(30));
    Client::try_from(config).context("building the Kubernetes client")
}
