//! Standalone mode's SIGHUP: re-reads the config file and makes the running peers follow
//! its `peers` (added, re-addressed, removed: the same rules as live Gateways). An invalid
//! file changes nothing: the running peers stay and the validation errors are logged.
//! Only `peers` apply at runtime; other changed settings wait for the next start (logged).
//! With Kubernetes, peers follow the `istio-remote` Gateways and SIGHUP only says so.
//!
//! It owns reading the file again and the reload counter; it must never start or stop a
//! client itself ([`super::PeerClients`] does).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use super::{PeerClients, Peerd};
use crate::config::{Config, Env, Overrides};
use crate::peers::model::specs_from_config;
use crate::peers::{PeerChange, PeerMonitor};

/// Where `peerd run` read its configuration: what a reload reads again.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub env: Env,
    pub overrides: Overrides,
}

impl ConfigSource {
    /// Reads and validates the file (off the runtime: it is file I/O).
    async fn load(&self) -> anyhow::Result<Config> {
        let source = self.clone();
        tokio::task::spawn_blocking(move || {
            Config::load(&source.path, &source.env, &source.overrides)
                .with_context(|| format!("{} is invalid", source.path.display()))
        })
        .await
        .context("reading the configuration")?
    }
}

fn count_reload(result: &'static str) {
    metrics::counter!("peerd_config_reloads_total", "result" => result).increment(1);
}

/// What a reload reads and changes: the running daemon's shared handles.
#[derive(Clone)]
struct Reloader {
    config: Arc<Config>,
    peer_clients: Arc<PeerClients>,
    monitor: Arc<PeerMonitor>,
}

impl Reloader {
    async fn reload(&self, source: &ConfigSource) -> anyhow::Result<Vec<PeerChange>> {
        if self.config.kubernetes.is_some() {
            anyhow::bail!(
                "peers follow the istio-remote Gateways (kubernetes is configured); the file's peers are not read"
            );
        }
        let reloaded = match source.load().await {
            Ok(config) => config,
            Err(e) => {
                count_reload("invalid");
                return Err(e.context("the running peers are kept"));
            }
        };
        let mut others = reloaded.clone();
        others.peers.clone_from(&self.config.peers);
        if others != *self.config {
            tracing::info!(path = %source.path.display(), "configuration reload: only `peers` apply at runtime; other changed settings apply at the next start");
        }
        let desired: BTreeMap<_, _> = reloaded
            .peers
            .iter()
            .map(|p| (p.cluster.clone(), p.clone()))
            .collect();
        let (changes, errors) = self.peer_clients.apply(&desired).await;
        self.monitor
            .set_peers(specs_from_config(&reloaded), std::time::Instant::now());
        count_reload("applied");
        for error in &errors {
            tracing::warn!(
                error = format!("{error:#}"),
                "configuration reload: a peer's client could not be built; its previous client (if any) keeps running"
            );
        }
        tracing::info!(path = %source.path.display(), changes = changes.len(), "configuration reloaded: peers follow the file");
        Ok(changes)
    }
}

impl Peerd {
    fn reloader(&self) -> Reloader {
        Reloader {
            config: Arc::clone(&self.config),
            peer_clients: Arc::clone(&self.peer_clients),
            monitor: Arc::clone(&self.peers),
        }
    }

    /// Re-reads `source` and makes the running peers follow its `peers` (standalone
    /// mode). An invalid file is an error and changes nothing. Returns what changed.
    pub async fn reload_peers(&self, source: &ConfigSource) -> anyhow::Result<Vec<PeerChange>> {
        self.reloader().reload(source).await
    }

    /// Reloads the peers on every SIGHUP until peerd stops (see [`Peerd::reload_peers`]).
    /// The handler is installed before this returns, so a SIGHUP right after is caught
    /// (SIGHUP's default would end the process). Signals arriving during a reload
    /// coalesce into one more reload.
    pub fn reload_peers_on_sighup(&mut self, source: ConfigSource) -> anyhow::Result<()> {
        let mut hangups = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let reloader = self.reloader();
        let cancel = self.cancellation();
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    got = hangups.recv() => if got.is_none() { return Ok(()) },
                }
                tracing::info!(path = %source.path.display(), "SIGHUP: reloading the peers");
                if let Err(e) = reloader.reload(&source).await {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "SIGHUP: configuration not applied"
                    );
                }
            }
        });
        Ok(())
    }
}
