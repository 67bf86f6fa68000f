//! Builds the kube-rs [`kube::Client`] peerd uses: in-cluster service-account config, a
//! kubeconfig (file or YAML text), or a bare URL (plain HTTP on loopback for the emulated
//! API server).
//!
//! It owns connection setup only; it must never log credentials from a kubeconfig.
//!
//! The HTTP stack is kube-rs's own (TLS from the config, timeouts, base URI, retries of
//! 5xx answers, auth, extra headers) built here rather than by `Client::try_from`, for one
//! setting kube-rs does not expose: each connection's read buffer is capped at
//! [`READ_BUFFER_CAP`]. hyper grows a connection's buffer to fit the largest read (about
//! 400 KiB by default) and keeps it for the connection's life; a relist after an expired
//! watch reads megabytes, and the pooled connection that did it then carries a watch for
//! hours, keeping that buffer (1.5 MB of a peerd's heap after the soak's relists).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ConfigExt};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder};

/// The most a connection to the API server buffers for one read. A watch event or a page
/// of a list larger than this is read in several reads (TLS records are 16 KiB anyway).
pub const READ_BUFFER_CAP: usize = 64 * 1024;

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
    build(config).context("building the Kubernetes client")
}

/// The client for `config`, with [`READ_BUFFER_CAP`]. Through a proxy, kube-rs's default
/// stack (its proxy connectors are not public), whose buffers are not capped.
fn build(config: Config) -> Result<Client, kube::Error> {
    if config.proxy_url.is_some() {
        return Client::try_from(config);
    }
    let mut http = HttpConnector::new();
    // The scheme is checked by the TLS connector: `https` gets TLS, `http` (loopback
    // emulator) none.
    http.enforce_http(false);
    let mut connector = TimeoutConnector::new(config.rustls_https_connector_with_connector(http)?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let http_client: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Builder::new(TokioExecutor::new())
            .http1_max_buf_size(READ_BUFFER_CAP)
            .build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(http_client);
    Ok(Client::new(service, config.default_namespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A loopback server answering every request with one HTTP/1.1 response that has an
    /// `x-pad` header of `header_pad` bytes and a body of `body_len` bytes.
    async fn serve_once(header_pad: usize, body_len: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await.unwrap();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-pad: {}\r\ncontent-length: {body_len}\r\n\r\n",
                "p".repeat(header_pad)
            );
            socket.write_all(head.as_bytes()).await.unwrap();
            socket.write_all(&vec![b'b'; body_len]).await.unwrap();
            let _ = socket.shutdown().await;
        });
        format!("http://{addr}")
    }

    async fn get_text(url: String) -> Result<String, kube::Error> {
        let client = connect(&ClientSource::Url(url), "default").await.unwrap();
        let request = http::Request::get("/version").body(Vec::new()).unwrap();
        client.request_text(request).await
    }

    /// A body many times the cap is read whole (in several reads).
    #[tokio::test]
    async fn a_response_far_larger_than_the_read_buffer_arrives_whole() {
        let body_len = 16 * READ_BUFFER_CAP + 3;
        let text = get_text(serve_once(16, body_len).await).await.unwrap();
        assert_eq!(text.len(), body_len);
        assert!(text.bytes().all(|b| b == b'b'));
    }

    /// The cap is in force: hyper must hold a response head in one buffer, so a head that
    /// kube-rs's default stack takes (its buffer grows to about 400 KiB) is refused here.
    /// hyper may overshoot its cap by one read, so the head is well past it.
    #[tokio::test]
    async fn a_response_head_the_default_stack_buffers_is_refused_past_the_cap() {
        let pad = 4 * READ_BUFFER_CAP;
        let default_stack =
            Client::try_from(Config::new(serve_once(pad, 2).await.parse().unwrap())).unwrap();
        let request = || http::Request::get("/version").body(Vec::new()).unwrap();
        assert_eq!(default_stack.request_text(request()).await.unwrap(), "bb");
        let ours = get_text(serve_once(pad, 2).await).await;
        let error = ours.expect_err("a head larger than the cap must not be buffered");
        assert!(
            format!("{error:?}").contains("TooLarge"),
            "unexpected error: {error:?}"
        );
        assert_eq!(
            get_text(serve_once(READ_BUFFER_CAP / 2, 2).await)
                .await
                .unwrap(),
            "bb"
        );
    }
}
