//! An **emulated** Kubernetes API server, for tests and the sandbox.
//!
//! It is emulated because no real kube-apiserver can be installed on the machines peerd is
//! developed on (no binary in any reachable registry, no container engine). It serves, over
//! plain HTTP/1.1, the REST semantics peerd relies on, for a fixed set of types
//! ([`resources::RESOURCES`]: core v1 Namespaces, Services, Pods, ConfigMaps;
//! `gateway.networking.k8s.io/v1` Gateways; `networking.istio.io/v1` and `v1beta1`
//! WorkloadEntries and ServiceEntries; `coordination.k8s.io/v1` Leases;
//! `authentication.k8s.io/v1` TokenReviews), with objects stored schema-free as JSON:
//!
//! - legacy discovery (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/<g>[/<v>]`) in plain
//!   `application/json`, which kubectl 1.32 and kube-rs accept, and a minimal OpenAPI v3
//!   (enough for kubectl to leave field validation to the server);
//! - get, list (cluster-wide and per namespace, `labelSelector`, `fieldSelector` on
//!   `metadata.name`/`metadata.namespace`, `limit`/`continue` over a consistent snapshot,
//!   `resourceVersion` + `resourceVersionMatch`), `Table` output for `kubectl get`;
//! - watch from a resourceVersion with ADDED/MODIFIED/DELETED, BOOKMARKs, and a 410
//!   `Expired` ERROR event when the version is older than the retained history;
//! - create (409 AlreadyExists), update with resourceVersion precondition (409 Conflict),
//!   merge / JSON patch, delete (with preconditions; objects with finalizers only get a
//!   `deletionTimestamp` until the last finalizer is removed), deletecollection,
//!   `dryRun=All`;
//! - server-side apply with `managedFields` per field manager (leaf fields of nested maps
//!   and of list-map items such as Gateway `status.conditions` keyed by `type`; other lists
//!   atomic), conflicts naming the other manager and field (409) unless `force=true`;
//! - the `/status` subresource, `generation`, `uid`, `creationTimestamp`, `Status` errors,
//!   Service defaults (`type: ClusterIP`, a cluster IP from 10.96.0.0/12);
//! - fault injection and per-verb request counters ([`FaultControls`], [`RequestCounts`]),
//!   from Rust or via `/__emulator/…` (see `control.rs`).
//!
//! Not emulated: authentication/authorization of callers (every request is allowed),
//! admission, grace periods, garbage collection by owner references, strategic-merge list
//! semantics (served as a merge patch), schema validation, protobuf bodies (kubectl sends
//! them when creating core types imperatively, e.g. `kubectl create configmap`: 415; use
//! `kubectl apply --server-side`), HTTP/2, TLS.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use peerd_testbed::emulator::{Emulator, EmulatorOptions, Verb};
//! let emulator = Emulator::start("127.0.0.1:0".parse()?, EmulatorOptions::default()).await?;
//! // kubectl --server <url> get gateways -A, or a kube-rs client from emulator.kubeconfig(..)
//! println!("{}", emulator.url());
//! emulator.faults().fail_next(3, 503);
//! assert_eq!(emulator.counters().verb(Verb::Apply), 0);
//! emulator.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! This module must never be used to serve a real cluster.

mod apply;
mod control;
mod discovery;
mod faults;
mod managed_fields;
mod meta;
mod openapi;
mod patch;
mod resources;
mod rest;
mod selector;
mod status;
mod store;
mod table;
mod token_review;
mod watch;
mod wire;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use tokio::task::JoinSet;

pub use faults::{FaultControls, FaultRequest, RequestCounts, Verb};
pub use token_review::TokenIdentity;

use self::status::ApiError;
use self::store::Store;
use self::wire::{Body, error_response, json_response, text_response};

/// How an emulator instance behaves.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// Events retained for watches and consistent lists; older resourceVersions get 410.
    pub history_window: usize,
    /// Undelivered events buffered per watch before a slow watch is closed.
    pub watch_buffer: usize,
    /// Period of BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
    /// Namespaces that exist at start.
    pub namespaces: Vec<String>,
    /// Bearer tokens TokenReview accepts, and who they authenticate as.
    pub tokens: BTreeMap<String, TokenIdentity>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        Self {
            history_window: 50_000,
            watch_buffer: 65_536,
            bookmark_interval: Duration::from_secs(5),
            namespaces: ["default", "kube-system", "istio-system"]
                .map(String::from)
                .to_vec(),
            tokens: BTreeMap::new(),
            max_body_bytes: 3 * 1024 * 1024,
        }
    }
}

/// State shared by every connection of one emulator.
pub(crate) struct State {
    pub(crate) store: Store,
    pub(crate) faults: FaultControls,
    pub(crate) counters: faults::Counters,
    pub(crate) tokens: Mutex<BTreeMap<String, TokenIdentity>>,
    pub(crate) bookmark_interval: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) server_address: String,
    pub(crate) shutdown: signal::Receiver<bool>,
    /// Next Service cluster IP to hand out (offset into 10.96.0.0/12).
    pub(crate) next_cluster_ip: std::sync::atomic::AtomicU32,
}

/// Entry point: `Emulator::start(addr, options)`.
pub struct Emulator;

impl Emulator {
    /// Binds `listen` (use port 0 for an ephemeral port) and serves until the returned
    /// handle is shut down or dropped.
    pub async fn start(
        listen: SocketAddr,
        options: EmulatorOptions,
    ) -> anyhow::Result<EmulatorHandle> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the emulated API server to {listen}"))?;
        let addr = listener
            .local_addr()
            .context("reading the emulator's local address")?;
        let (shutdown_tx, shutdown_rx) = signal::channel(false);
        let state = Arc::new(State {
            store: Store::new(options.history_window, options.watch_buffer),
            faults: FaultControls::default(),
            counters: faults::Counters::default(),
            tokens: Mutex::new(options.tokens.clone()),
            bookmark_interval: options.bookmark_interval,
            max_body_bytes: options.max_body_bytes,
            server_address: addr.to_string(),
            shutdown: shutdown_rx,
            next_cluster_ip: std::sync::atomic::AtomicU32::new(1),
        });
        for namespace in &options.namespaces {
            seed_namespace(&state, namespace)?;
        }
        let task = tokio::spawn(serve(listener, state.clone()));
        tracing::info!(%addr, "emulated Kubernetes API server listening");
        Ok(EmulatorHandle {
            url: format!("http://{addr}"),
            addr,
            state,
            shutdown: shutdown_tx,
            task: Some(task),
        })
    }
}

fn seed_namespace(state: &State, name: &str) -> anyhow::Result<()> {
    let now = meta::now_rfc3339();
    let obj = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "uid": meta::new_uid(),
            "creationTimestamp": now,
            "labels": {"kubernetes.io/metadata.name": name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    });
    state
        .store
        .mutate(
            resources::NAMESPACES,
            (String::new(), name.to_string()),
            |current| {
                Ok(match current {
                    Some(_) => store::Mutation::Unchanged,
                    None => store::Mutation::Put(obj),
                })
            },
        )
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("seeding namespace {name}: {e}"))
}

/// A running emulator. Dropping it stops the server (like [`EmulatorHandle::shutdown`]
/// without waiting).
pub struct EmulatorHandle {
    url: String,
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: signal::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EmulatorHandle {
    /// `http://127.0.0.1:PORT`, for `kubectl --server` or a kubeconfig.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig (YAML) whose only context points at this emulator over plain HTTP,
    /// for kubectl `--kubeconfig` or a kube-rs `Kubeconfig`. No credentials: the
    /// emulator does not authenticate callers.
    pub fn kubeconfig(&self, default_namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: emulated\n  cluster:\n    server: {url}\n\
             contexts:\n- name: emulated\n  context:\n    cluster: emulated\n    user: emulated\n    \
             namespace: {default_namespace}\ncurrent-context: emulated\nusers:\n- name: emulated\n  user: {{}}\n",
            url = self.url
        )
    }

    /// The fault switches of this emulator.
    pub fn faults(&self) -> FaultControls {
        self.state.faults.clone()
    }

    /// Requests served so far, per verb and resource.
    pub fn counters(&self) -> RequestCounts {
        self.state.counters.snapshot()
    }

    pub fn reset_counters(&self) {
        self.state.counters.reset();
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state.store.current_rv()
    }

    /// Forgets all watch history: any watch or consistent list from an older
    /// resourceVersion now gets 410 Expired.
    pub fn compact_history(&self) {
        self.state.store.compact();
    }

    /// Adds (or replaces) a token TokenReview accepts.
    pub fn add_token(&self, token: &str, identity: TokenIdentity) {
        self.state
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_string(), identity);
    }

    /// Makes a token invalid from now on.
    pub fn revoke_token(&self, token: &str) {
        self.state
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    /// The stored object `group/plural` `namespace/name` (namespace empty for
    /// cluster-scoped types), as stored (preferred version); for test assertions.
    pub fn object(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let id = resources::RESOURCES
            .iter()
            .position(|def| def.group == group && def.plural == plural)?;
        self.state
            .store
            .get(id, &(namespace.to_string(), name.to_string()))
            .map(|obj| (*obj).clone())
    }

    /// Every stored object of `group/plural` (in `namespace`, or all when `None`), read
    /// straight from the store: not counted and never faulted, so an observer sees the
    /// truth while faults are aimed at the clients under test.
    pub fn objects(&self, group: &str, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        let Some(id) = resources::RESOURCES
            .iter()
            .position(|def| def.group == group && def.plural == plural)
        else {
            return Vec::new();
        };
        self.state
            .store
            .list(id, namespace, None)
            .map(|(_, items)| items.iter().map(|obj| (**obj).clone()).collect())
            .unwrap_or_default()
    }

    /// [`EmulatorHandle::request`] that must succeed: any failure or non-2xx status is
    /// an error naming the method, path, status and reply (for tests seeding objects).
    pub async fn request_ok(
        &self,
        method: Method,
        path_and_query: &str,
        content_type: &str,
        body: &Value,
    ) -> anyhow::Result<Value> {
        let (code, reply) = self
            .request(
                method.clone(),
                path_and_query,
                content_type,
                body.to_string(),
            )
            .await?;
        if !(200..300).contains(&code) {
            anyhow::bail!("{method} {path_and_query}: {code} {reply}");
        }
        Ok(reply)
    }

    /// Serves one request in-process, exactly as over HTTP (counted, faults apply), e.g. to
    /// seed objects: `request(Method::POST, "/api/v1/namespaces", "application/json",
    /// body)`. Returns the status code and the JSON body. Watches are refused: use HTTP.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<(u16, Value)> {
        let uri: Uri = path_and_query
            .parse()
            .with_context(|| format!("invalid request path {path_and_query:?}"))?;
        let query = self::wire::Query::parse(uri.query());
        if query.flag("watch") {
            anyhow::bail!("watches are only served over HTTP ({})", self.url);
        }
        let mut headers = HeaderMap::new();
        if !content_type.is_empty() {
            headers.insert(
                header::CONTENT_TYPE,
                content_type.parse().context("invalid content type")?,
            );
        }
        headers.insert(
            header::USER_AGENT,
            http::HeaderValue::from_static("peerd-emulator-inprocess"),
        );
        let response = route(&self.state, &method, &uri, &headers, body.into()).await;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, value))
    }

    /// Stops accepting, closes every connection and watch, and waits for the server task.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let state = state.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |req| handle(state.clone(), req));
                        if let Err(err) = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            tracing::debug!(%err, "emulator connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(%err, "emulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next() => {}
            _ = shutdown.changed() => break,
        }
    }
    // Dropping the set aborts every connection (and with it every watch body).
    connections.shutdown().await;
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, state.max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(error_response(&ApiError::new(
                413,
                "RequestEntityTooLarge",
                "the request body is too large or could not be read",
            )));
        }
    };
    Ok(route(&state, &parts.method, &parts.uri, &parts.headers, bytes).await)
}

/// Serves one request whose body has been read (from the network or in-process).
async fn route(
    state: &Arc<State>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let path = uri.path();
    let response = if path.starts_with("/__emulator/") {
        control::handle(state, method, path, &body)
    } else if let Some(response) = discovery_response(state, method, path) {
        response
    } else {
        match rest::parse_target(path) {
            Some(Ok(target)) => {
                let header_text = |name: header::HeaderName| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let request = rest::ApiRequest {
                    method: method.clone(),
                    query: self::wire::Query::parse(uri.query()),
                    content_type: header_text(header::CONTENT_TYPE),
                    accept: header_text(header::ACCEPT),
                    user_agent: header_text(header::USER_AGENT),
                    body,
                };
                rest::handle(state, target, request).await
            }
            Some(Err(err)) => error_response(&err),
            None => error_response(&ApiError::path_not_found(path)),
        }
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(), "emulated API request");
    response
}

/// Discovery, OpenAPI and health endpoints; None if `path` is not one.
fn discovery_response(state: &State, method: &Method, path: &str) -> Option<Response<Body>> {
    let trimmed = path.trim_end_matches('/');
    let segments: Vec<&str> = trimmed.trim_start_matches('/').split('/').collect();
    let doc = match segments.as_slice() {
        ["healthz" | "livez" | "readyz"] => return Some(text_response(200, "ok")),
        ["version"] => Some(discovery::version()),
        ["api"] => Some(discovery::core_versions(&state.server_address)),
        ["api", version] => discovery::resource_list("", version),
        ["apis"] => Some(discovery::group_list()),
        ["apis", group] => discovery::group(group),
        ["apis", group, version] => discovery::resource_list(group, version),
        ["openapi", "v3"] => Some(openapi::root()),
        ["openapi", "v3", rest @ ..] => openapi::group_version(&rest.join("/")),
        ["openapi", ..] => None,
        _ => return None,
    };
    state.counters.count_discovery();
    if method != Method::GET {
        return Some(error_response(&ApiError::method_not_allowed()));
    }
    Some(match doc {
        Some(doc) => json_response(200, &doc),
        None => error_response(&ApiError::path_not_found(path)),
    })
}
