//! Real TLS handshakes on 127.0.0.1 for each failure class, the PKI file layout, file
//! loading errors, and certificate reload without dropping an established connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use peerd::identity::classify::{ConnectFailure, FailureReason, classify, dial};
use peerd::identity::reload::{CertSource, ReloadOutcome, RootsSource};
use peerd::identity::spiffe::SpiffeId;
use peerd::identity::tls::{
    CertFiles, ClientAuth, ClientTlsOptions, ServerIdentity, ServerTlsOptions, TlsFileError,
    client_config, load_certified_key, load_certs, load_key, load_roots, peer_spiffe_id,
    server_config,
};
use peerd_testbed::pki::{CertificateAuthority, IssuedCert, LeafSpec, LeafUsage, Pki};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const WAIT: Duration = Duration::from_secs(20);

fn server_leaf(ca: &CertificateAuthority, td: &str) -> IssuedCert {
    let id = SpiffeId::new(td, "istio-eastwest", "peerd").unwrap();
    ca.issue(
        &LeafSpec::workload(id)
            .with_dns("istiod.istio-system.svc")
            .with_ip(LOOPBACK),
    )
    .unwrap()
}

/// The identity [`server_leaf`] issues in `a.local`.
fn a_peerd() -> SpiffeId {
    SpiffeId::new("a.local", "istio-eastwest", "peerd").unwrap()
}

fn client_leaf(ca: &CertificateAuthority, td: &str) -> IssuedCert {
    let id = SpiffeId::new(td, "istio-eastwest", "peerd-client").unwrap();
    ca.issue(&LeafSpec::workload(id).with_usage(LeafUsage::Client))
        .unwrap()
}

/// Writes `leaf` into `dir` and returns a cert source over those files.
fn source_for(leaf: &IssuedCert, dir: &Path) -> Arc<CertSource> {
    leaf.write_to(dir).unwrap();
    let files = CertFiles::in_dir(dir);
    CertSource::from_files(&files.cert_chain, &files.key).unwrap()
}

/// What the echo server saw on each accepted connection.
type ServerSide = Result<Option<SpiffeId>, ConnectFailure>;

/// A TLS echo server on 127.0.0.1 reporting each handshake's outcome.
async fn echo_server(
    config: Arc<ServerConfig>,
) -> (SocketAddr, mpsc::UnboundedReceiver<ServerSide>) {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Err(e) => {
                        let _ = tx.send(Err(classify(&e)));
                    }
                    Ok(mut tls) => {
                        let id = peer_spiffe_id(tls.get_ref().1.peer_certificates());
                        let _ = tx.send(Ok(id));
                        let mut buf = [0u8; 1024];
                        loop {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if tls.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                    let _ = tls.flush().await;
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

fn name(s: &str) -> ServerName<'static> {
    ServerName::try_from(s.to_string()).unwrap()
}

async fn echo(
    tls: &mut tokio_rustls::client::TlsStream<TcpStream>,
    msg: &[u8],
) -> std::io::Result<Vec<u8>> {
    tls.write_all(msg).await?;
    tls.flush().await?;
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, tls.read_exact(&mut got))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "echo timed out"))??;
    Ok(got)
}

fn presented_serial(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    let certs = tls.get_ref().1.peer_certificates().unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&certs[0]).unwrap();
    cert.raw_serial().to_vec()
}

struct World {
    _dir: tempfile::TempDir,
    pki: Pki,
    cluster_a: CertificateAuthority,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(&dir.path().join("pki"), "test root").unwrap();
    let cluster_a = pki.cluster_ca("cluster-a").unwrap();
    World {
        _dir: dir,
        pki,
        cluster_a,
    }
}

fn roots_of(pki: &Pki) -> Arc<rustls::RootCertStore> {
    load_roots(&pki.root_cert_path()).unwrap()
}

#[tokio::test]
async fn good_handshake_with_name_spiffe_and_trust_domain_checks() {
    let w = world();
    let tmp = tempfile::tempdir().unwrap();
    let source = source_for(&server_leaf(&w.cluster_a, "a.local"), tmp.path());
    let config = server_config(source, &ServerTlsOptions::default()).unwrap();
    let (addr, _rx) = echo_server(config).await;
    let roots = roots_of(&w.pki);

    let expected_id = SpiffeId::new("a.local", "istio-eastwest", "peerd").unwrap();
    let modes = [
        (ServerIdentity::Name, "127.0.0.1"),
        (ServerIdentity::Name, "istiod.istio-system.svc"),
        (
            ServerIdentity::Spiffe(expected_id.clone()),
            "anything.example",
        ),
        // The trust domain of an expected ID compares case-insensitively.
        (
            ServerIdentity::Spiffe(SpiffeId::new("A.local", "istio-eastwest", "peerd").unwrap()),
            "127.0.0.1",
        ),
    ];
    for (identity, server_name) in modes {
        let client =
            client_config(&ClientTlsOptions::new(roots.clone(), identity.clone())).unwrap();
        let mut tls = dial(addr, name(server_name), client, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{identity:?} via {server_name}: {e}"));
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(
            peer_spiffe_id(tls.get_ref().1.peer_certificates()),
            Some(expected_id.clone())
        );
        assert_eq!(echo(&mut tls, b"ping").await.unwrap(), b"ping");
    }
}

#[tokio::test]
async fn client_trusting_another_root_gets_tls_error_unknown_authority() {
    let w = world();
    let tmp = tempfile::tempdir().unwrap();
    let source = source_for(&server_leaf(&w.cluster_a, "a.local"), tmp.path());
    let (addr, mut rx) =
        echo_server(server_config(source, &ServerTlsOptions::default()).unwrap()).await;

    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::load_or_create(other_dir.path(), "other root").unwrap();
    for identity in [ServerIdentity::Name, ServerIdentity::Spiffe(a_peerd())] {
        let client = client_config(&ClientTlsOptions::new(roots_of(&other), identity)).unwrap();
        let err = dial(addr, name("127.0.0.1"), client, WAIT)
            .await
            .unwrap_err();
        assert_eq!(err.reason, FailureReason::TlsError, "{err}");
        assert!(
            err.message.contains("tls: unknown certificate authority"),
            "{err}"
        );
        assert!(
            err.message.contains("127.0.0.1"),
            "message names the address: {err}"
        );
        // The server learns why from the client's alert.
        let server_side = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(server_side.unwrap_err().reason, FailureReason::TlsError);
    }
}

#[tokio::test]
async fn wrong_trust_domain_or_spiffe_id_or_name_is_identity_mismatch() {
    let w = world();
    let tmp = tempfile::tempdir().unwrap();
    let source = source_for(&server_leaf(&w.cluster_a, "a.local"), tmp.path());
    let (addr, _rx) =
        echo_server(server_config(source, &ServerTlsOptions::default()).unwrap()).await;
    let roots = roots_of(&w.pki);

    let cases = [
        (
            ServerIdentity::Spiffe(SpiffeId::new("b.local", "istio-eastwest", "peerd").unwrap()),
            "127.0.0.1",
            "expected spiffe://b.local/ns/istio-eastwest/sa/peerd",
        ),
        (
            ServerIdentity::Spiffe(
                SpiffeId::new("a.local", "istio-eastwest", "someone-else").unwrap(),
            ),
            "127.0.0.1",
            "spiffe://a.local/ns/istio-eastwest/sa/someone-else",
        ),
        (ServerIdentity::Name, "istiod.other.svc", "expected SAN"),
    ];
    for (identity, server_name, want) in cases {
        let client = client_config(&ClientTlsOptions::new(roots.clone(), identity)).unwrap();
        let err = dial(addr, name(server_name), client, WAIT)
            .await
            .unwrap_err();
        assert_eq!(err.reason, FailureReason::IdentityMismatch, "{err}");
        assert!(err.message.contains(want), "{err}");
    }
    // The mismatch message says what was presented.
    let client = client_config(&ClientTlsOptions::new(
        roots,
        ServerIdentity::Spiffe(SpiffeId::new("b.local", "istio-eastwest", "peerd").unwrap()),
    ))
    .unwrap();
    let err = dial(addr, name("127.0.0.1"), client, WAIT)
        .await
        .unwrap_err();
    assert!(
        err.message
            .contains("spiffe://a.local/ns/istio-eastwest/sa/peerd"),
        "{err}"
    );
}

/// A server presenting an absurdly long SPIFFE ID: the mismatch names it, bounded, with
/// its length (the message ends up in a condition and in logs).
#[tokio::test]
async fn a_huge_presented_identity_is_bounded_in_the_mismatch() {
    let w = world();
    let tmp = tempfile::tempdir().unwrap();
    let huge = SpiffeId::new("a.local", "istio-eastwest", &"x".repeat(20_000)).unwrap();
    let leaf = w
        .cluster_a
        .issue(&LeafSpec::workload(huge).with_ip(LOOPBACK))
        .unwrap();
    let source = source_for(&leaf, tmp.path());
    let (addr, _rx) =
        echo_server(server_config(source, &ServerTlsOptions::default()).unwrap()).await;
    let client = client_config(&ClientTlsOptions::new(
        roots_of(&w.pki),
        ServerIdentity::Spiffe(a_peerd()),
    ))
    .unwrap();
    let err = dial(addr, name("127.0.0.1"), client, WAIT)
        .await
        .unwrap_err();
    assert_eq!(err.reason, FailureReason::IdentityMismatch, "{err}");
    assert!(
        err.message.len() < 1024,
        "{} bytes: {err}",
        err.message.len()
    );
    assert!(
        err.message
            .contains("expected spiffe://a.local/ns/istio-eastwest/sa/peerd"),
        "{err}"
    );
    assert!(
        err.message
            .contains("certificate presents spiffe://a.local/ns/istio-eastwest/sa/xxx"),
        "{err}"
    );
    assert!(err.message.contains("(20038 bytes)"), "{err}");
}

#[tokio::test]
async fn expired_server_certificate_is_tls_error() {
    let w = world();
    let tmp = tempfile::tempdir().unwrap();
    let day = Duration::from_secs(24 * 3600);
    let now = SystemTime::now();
    let leaf = w
        .cluster_a
        .issue(
            &LeafSpec::server("expired")
                .with_ip(LOOPBACK)
                .with_validity(now - 10 * day, now - day),
        )
        .unwrap();
    let source = source_for(&leaf, tmp.path());
    let (addr, _rx) =
        echo_server(server_config(source, &ServerTlsOptions::default()).unwrap()).await;
    let client = client_config(&ClientTlsOptions::new(
        roots_of(&w.pki),
        ServerIdentity::Name,
    ))
    .unwrap();
    let err = dial(addr, name("127.0.0.1"), client, WAIT)
        .await
        .unwrap_err();
    assert_eq!(err.reason, FailureReason::TlsError, "{err}");
    assert!(err.message.contains("expired"), "{err}");
}

#[tokio::test]
async fn mtls_server_verifies_optional_client_certificates() {
    let w = world();
    let tmp = tempfile::tempdir().unwrap();
    let source = source_for(&server_leaf(&w.cluster_a, "a.local"), tmp.path());
    let options = ServerTlsOptions {
        client_auth: ClientAuth::Optional(roots_of(&w.pki).into()),
        allow_tls12: false,
    };
    let (addr, mut rx) = echo_server(server_config(source, &options).unwrap()).await;
    let roots = roots_of(&w.pki);
    let identity = ServerIdentity::Spiffe(a_peerd());

    // A peer with a certificate from the shared root: accepted, identity visible.
    let cluster_b = w.pki.cluster_ca("cluster-b").unwrap();
    let good_dir = tempfile::tempdir().unwrap();
    let good = source_for(&client_leaf(&cluster_b, "b.local"), good_dir.path());
    let client = client_config(
        &ClientTlsOptions::new(roots.clone(), identity.clone()).with_client_cert(good),
    )
    .unwrap();
    let mut tls = dial(addr, name("127.0.0.1"), client, WAIT).await.unwrap();
    assert_eq!(echo(&mut tls, b"hello").await.unwrap(), b"hello");
    let seen = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        seen,
        Some(SpiffeId::new("b.local", "istio-eastwest", "peerd-client").unwrap())
    );

    // No client certificate (like ztunnel): accepted, no identity.
    let client = client_config(&ClientTlsOptions::new(roots.clone(), identity.clone())).unwrap();
    let mut tls = dial(addr, name("127.0.0.1"), client, WAIT).await.unwrap();
    assert_eq!(echo(&mut tls, b"hi").await.unwrap(), b"hi");
    let seen = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen, None);

    // A client certificate from another root: the server rejects it.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::load_or_create(&other_dir.path().join("pki"), "rogue root").unwrap();
    let rogue_ca = other.cluster_ca("rogue").unwrap();
    let rogue = source_for(
        &client_leaf(&rogue_ca, "b.local"),
        &other_dir.path().join("leaf"),
    );
    let client =
        client_config(&ClientTlsOptions::new(roots, identity).with_client_cert(rogue)).unwrap();
    // In TLS 1.3 the client finishes its side before the server has checked the client
    // certificate, so the rejection shows on the first read (or already in the dial).
    let client_failure = match dial(addr, name("127.0.0.1"), client, WAIT).await {
        Err(e) => e,
        Ok(mut tls) => classify(&echo(&mut tls, b"x").await.unwrap_err()),
    };
    assert_eq!(
        client_failure.reason,
        FailureReason::TlsError,
        "{client_failure}"
    );
    assert!(
        client_failure
            .message
            .contains("tls: unknown certificate authority"),
        "{client_failure}"
    );
    let server_failure = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(
        server_failure.reason,
        FailureReason::TlsError,
        "{server_failure}"
    );
    assert!(
        server_failure
            .message
            .contains("unknown certificate authority"),
        "{server_failure}"
    );
}

#[tokio::test]
async fn closed_port_is_connection_refused() {
    let w = world();
    // Bind then close, so the port is (almost certainly) free on 127.0.0.1.
    let addr = {
        let l = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        l.local_addr().unwrap()
    };
    let client = client_config(&ClientTlsOptions::new(
        roots_of(&w.pki),
        ServerIdentity::Name,
    ))
    .unwrap();
    let err = dial(addr, name("127.0.0.1"), client, WAIT)
        .await
        .unwrap_err();
    assert_eq!(err.reason, FailureReason::ConnectionRefused, "{err}");
    assert_eq!(err.reason.as_str(), "ConnectionRefused");
}

#[tokio::test]
async fn server_that_never_answers_tls_is_connect_timeout() {
    let w = world();
    // Accepts TCP, then says nothing: the handshake cannot complete.
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (hold_tx, mut hold_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = hold_tx.send(tcp);
        }
    });
    let client = client_config(&ClientTlsOptions::new(
        roots_of(&w.pki),
        ServerIdentity::Name,
    ))
    .unwrap();
    let err = dial(addr, name("127.0.0.1"), client, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err.reason, FailureReason::ConnectTimeout, "{err}");
    assert!(
        hold_rx.recv().await.is_some(),
        "the TCP connection was accepted"
    );
}

#[test]
fn classify_walks_wrapped_errors() {
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    let wrapped = anyhow::Error::new(refused).context("connecting to peer cluster-b");
    assert_eq!(
        classify(wrapped.as_ref()).reason,
        FailureReason::ConnectionRefused
    );

    let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
    let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
    let wrapped = anyhow::Error::new(io).context("transport error");
    let c = classify(wrapped.as_ref());
    assert_eq!(c.reason, FailureReason::TlsError);
    assert!(c.message.contains("tls: unknown certificate authority"));

    // A failure `dial` already classified keeps its reason through wrappers.
    let dialed = ConnectFailure {
        reason: FailureReason::IdentityMismatch,
        message: "expected trust domain b.local".into(),
    };
    let wrapped = anyhow::Error::new(std::io::Error::other(dialed.clone())).context("grpc connect");
    assert_eq!(classify(wrapped.as_ref()), dialed);

    let other = std::io::Error::other("stream reset");
    assert_eq!(classify(&other).reason, FailureReason::StreamError);
}

#[test]
fn pki_layout_permissions_chain_order_and_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let pki = Pki::load_or_create(&pki_dir, "root").unwrap();
    let ca = pki.cluster_ca("c1").unwrap();

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&pki_dir.join("root-key.pem")), 0o600);
    for f in ["ca-cert.pem", "root-cert.pem", "cert-chain.pem"] {
        assert!(pki_dir.join("c1").join(f).is_file(), "{f}");
    }
    assert_eq!(mode(&pki_dir.join("c1/ca-key.pem")), 0o600);
    // cacerts chain: intermediate then root.
    let cacerts = load_certs(&pki_dir.join("c1/cert-chain.pem")).unwrap();
    assert_eq!(cacerts.len(), 2);
    assert_eq!(&cacerts[0], ca.cert_der());
    assert_eq!(&cacerts[1], pki.root().cert_der());

    let leaf_dir = dir.path().join("leaf");
    let leaf = server_leaf(&ca, "c1.local");
    leaf.write_to(&leaf_dir).unwrap();
    assert_eq!(mode(&leaf_dir.join("key.pem")), 0o600);
    let chain = load_certs(&leaf_dir.join("cert-chain.pem")).unwrap();
    assert_eq!(chain.len(), 2, "leaf then intermediate");
    assert_eq!(chain[0], leaf.cert_der);
    assert_eq!(&chain[1], ca.cert_der());
    assert_eq!(
        std::fs::read_to_string(leaf_dir.join("root-cert.pem")).unwrap(),
        std::fs::read_to_string(pki_dir.join("root-cert.pem")).unwrap()
    );
    let (_, parsed) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    assert_eq!(parsed.raw_serial(), leaf.serial.as_slice());
    let sans = peerd::identity::spiffe::uri_sans(&chain[0]).unwrap();
    assert_eq!(
        sans,
        vec!["spiffe://c1.local/ns/istio-eastwest/sa/peerd".to_string()]
    );
    assert!(
        load_certified_key(&leaf_dir.join("cert-chain.pem"), &leaf_dir.join("key.pem")).is_ok()
    );

    // Loading again reuses the same root and intermediate, and the reloaded intermediate
    // still signs certificates that chain to the root.
    let again = Pki::load_or_create(&pki_dir, "root").unwrap();
    assert_eq!(again.root().cert_der(), pki.root().cert_der());
    let ca_again = again.cluster_ca("c1").unwrap();
    assert_eq!(ca_again.cert_der(), ca.cert_der());
    let leaf2 = ca_again
        .issue(&LeafSpec::server("x").with_ip(LOOPBACK))
        .unwrap();
    let chain2 = rustls::pki_types::CertificateDer::pem_slice_iter(leaf2.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert_eq!(&chain2[1], ca.cert_der());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots_of(&again),
        peerd::identity::tls::provider(),
    )
    .build()
    .unwrap();
    verifier
        .verify_server_cert(
            &chain2[0],
            &chain2[1..],
            &name("127.0.0.1"),
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .unwrap();

    assert!(matches!(
        pki.cluster_ca("../escape"),
        Err(peerd_testbed::pki::PkiError::BadFile { .. })
    ));
    assert!(matches!(
        ca.issue(&LeafSpec::server("no sans")),
        Err(peerd_testbed::pki::PkiError::NoSan)
    ));
}

#[test]
fn bad_files_give_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let err = load_certs(&missing).unwrap_err();
    assert!(matches!(err, TlsFileError::Read { .. }));
    assert!(err.to_string().contains("missing.pem"), "{err}");

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello, not a certificate\n").unwrap();
    let err = load_certs(&garbage).unwrap_err();
    assert!(
        err.to_string()
            .contains("garbage.pem: no PEM certificate found"),
        "{err}"
    );
    let err = load_key(&garbage).unwrap_err();
    assert!(
        err.to_string()
            .contains("garbage.pem: no PEM private key found"),
        "{err}"
    );
    let err = load_roots(&garbage).unwrap_err();
    assert!(err.to_string().contains("garbage.pem"), "{err}");

    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = load_certs(&broken).unwrap_err();
    assert!(err.to_string().contains("broken.pem: invalid PEM"), "{err}");

    // A key that belongs to another certificate.
    let w = world();
    let a = server_leaf(&w.cluster_a, "a.local");
    let b = server_leaf(&w.cluster_a, "a.local");
    a.write_to(&dir.path().join("a")).unwrap();
    b.write_to(&dir.path().join("b")).unwrap();
    let err = load_certified_key(
        &dir.path().join("a/cert-chain.pem"),
        &dir.path().join("b/key.pem"),
    )
    .unwrap_err();
    assert!(matches!(err, TlsFileError::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("b/key.pem"), "{err}");
    assert!(err.to_string().contains("a/cert-chain.pem"), "{err}");
    // The message never carries key material.
    assert!(!err.to_string().contains("PRIVATE KEY"));
}

#[tokio::test]
async fn reload_serves_new_certificate_and_keeps_established_connections() {
    let w = world();
    let tmp = tempfile::tempdir().unwrap();
    let first = server_leaf(&w.cluster_a, "a.local");
    let source = source_for(&first, tmp.path());
    let _watch = source.watch(Duration::from_millis(20));
    let (addr, _rx) =
        echo_server(server_config(source.clone(), &ServerTlsOptions::default()).unwrap()).await;
    let client = client_config(&ClientTlsOptions::new(
        roots_of(&w.pki),
        ServerIdentity::Name,
    ))
    .unwrap();

    let mut old_conn = dial(addr, name("127.0.0.1"), client.clone(), WAIT)
        .await
        .unwrap();
    assert_eq!(presented_serial(&old_conn), first.serial);
    assert_eq!(echo(&mut old_conn, b"before").await.unwrap(), b"before");

    // Rotate: the watcher picks the new files up.
    let second = server_leaf(&w.cluster_a, "a.local");
    assert_ne!(second.serial, first.serial);
    second.write_to(tmp.path()).unwrap();
    tokio::time::timeout(WAIT, async {
        while source.generation() < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("watcher reloads the rotated certificate");

    // A fresh client config: a resumed TLS 1.3 session would report the certificates
    // of the session it resumes.
    let client = client_config(&ClientTlsOptions::new(
        roots_of(&w.pki),
        ServerIdentity::Name,
    ))
    .unwrap();
    let new_conn = dial(addr, name("127.0.0.1"), client.clone(), WAIT)
        .await
        .unwrap();
    assert_eq!(presented_serial(&new_conn), second.serial);
    // The connection made before the rotation is still open and usable.
    assert_eq!(echo(&mut old_conn, b"after").await.unwrap(), b"after");
    assert_eq!(presented_serial(&old_conn), first.serial);

    // A broken rotation keeps the current certificate.
    std::fs::write(tmp.path().join("cert-chain.pem"), "garbage").unwrap();
    let outcome = source.check_now();
    // The watcher may have examined the broken file first; either way it is rejected.
    assert!(
        matches!(
            outcome,
            ReloadOutcome::Rejected(_) | ReloadOutcome::Unchanged
        ),
        "{outcome:?}"
    );
    assert_eq!(source.generation(), 1);
    let client = client_config(&ClientTlsOptions::new(
        roots_of(&w.pki),
        ServerIdentity::Name,
    ))
    .unwrap();
    let conn = dial(addr, name("127.0.0.1"), client, WAIT).await.unwrap();
    assert_eq!(presented_serial(&conn), second.serial);
}

#[test]
fn bad_rotation_is_rejected_once_and_keeps_old_certificate() {
    let w = world();
    let tmp = tempfile::tempdir().unwrap();
    let first = server_leaf(&w.cluster_a, "a.local");
    let source = source_for(&first, tmp.path());
    let before = source.current();
    assert_eq!(source.check_now(), ReloadOutcome::Unchanged);

    // Key from another certificate.
    let other = server_leaf(&w.cluster_a, "a.local");
    std::fs::write(tmp.path().join("key.pem"), &other.key_pem).unwrap();
    match source.check_now() {
        ReloadOutcome::Rejected(msg) => assert!(msg.contains("does not belong"), "{msg}"),
        o => panic!("expected rejection, got {o:?}"),
    }
    assert_eq!(
        source.check_now(),
        ReloadOutcome::Unchanged,
        "same bad files: reported once"
    );
    assert!(Arc::ptr_eq(&before, &source.current()));
    assert_eq!(source.generation(), 0);

    // Fixing the files recovers.
    other.write_to(tmp.path()).unwrap();
    assert_eq!(source.check_now(), ReloadOutcome::Reloaded);
    assert_eq!(source.generation(), 1);
    assert_eq!(source.current().cert[0], other.cert_der);
}

#[tokio::test]
async fn reloaded_roots_apply_to_new_handshakes_on_both_sides() {
    let w = world();
    let tmp = tempfile::tempdir().unwrap();
    let server_cert = source_for(
        &server_leaf(&w.cluster_a, "a.local"),
        &tmp.path().join("server"),
    );

    // Client side: the root file first holds an unrelated root, then the right one.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::load_or_create(&other_dir.path().join("pki"), "other root").unwrap();
    let client_roots_path = tmp.path().join("client-roots.pem");
    std::fs::write(&client_roots_path, other.root().cert_pem()).unwrap();
    let client_roots = RootsSource::from_file(&client_roots_path).unwrap();
    let client = client_config(&ClientTlsOptions::new(
        client_roots.clone(),
        ServerIdentity::Spiffe(a_peerd()),
    ))
    .unwrap();

    // Server side: mTLS roots that at first trust only the shared root.
    let server_roots_path = tmp.path().join("server-roots.pem");
    std::fs::write(&server_roots_path, w.pki.root().cert_pem()).unwrap();
    let server_roots = RootsSource::from_file(&server_roots_path).unwrap();
    let options = ServerTlsOptions {
        client_auth: ClientAuth::Optional(server_roots.clone().into()),
        allow_tls12: false,
    };
    let (addr, mut rx) = echo_server(server_config(server_cert, &options).unwrap()).await;

    let err = dial(addr, name("127.0.0.1"), client.clone(), WAIT)
        .await
        .unwrap_err();
    assert!(
        err.message.contains("unknown certificate authority"),
        "{err}"
    );
    let _ = tokio::time::timeout(WAIT, rx.recv()).await.unwrap();

    std::fs::write(&client_roots_path, w.pki.root().cert_pem()).unwrap();
    assert_eq!(client_roots.check_now(), ReloadOutcome::Reloaded);
    let mut tls = dial(addr, name("127.0.0.1"), client, WAIT).await.unwrap();
    assert_eq!(echo(&mut tls, b"ok").await.unwrap(), b"ok");
    assert_eq!(
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        None
    );

    // A client certificate from the other root: rejected, then accepted once the
    // server's bundle holds both roots.
    let rogue_ca = other.cluster_ca("rogue").unwrap();
    let rogue = source_for(
        &client_leaf(&rogue_ca, "b.local"),
        &tmp.path().join("rogue"),
    );
    let rogue_client = || {
        client_config(
            &ClientTlsOptions::new(roots_of(&w.pki), ServerIdentity::Name)
                .with_client_cert(rogue.clone()),
        )
        .unwrap()
    };
    let rejected = match dial(addr, name("127.0.0.1"), rogue_client(), WAIT).await {
        Err(e) => e,
        Ok(mut tls) => classify(&echo(&mut tls, b"x").await.unwrap_err()),
    };
    assert_eq!(rejected.reason, FailureReason::TlsError, "{rejected}");
    let _ = tokio::time::timeout(WAIT, rx.recv()).await.unwrap();

    std::fs::write(
        &server_roots_path,
        format!("{}{}", w.pki.root().cert_pem(), other.root().cert_pem()),
    )
    .unwrap();
    assert_eq!(server_roots.check_now(), ReloadOutcome::Reloaded);
    assert_eq!(server_roots.current().len(), 2);
    let mut tls = dial(addr, name("127.0.0.1"), rogue_client(), WAIT)
        .await
        .unwrap();
    assert_eq!(echo(&mut tls, b"now ok").await.unwrap(), b"now ok");
    let seen = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        seen,
        Some(SpiffeId::new("b.local", "istio-eastwest", "peerd-client").unwrap())
    );

    // A broken bundle keeps the previous roots.
    std::fs::write(&server_roots_path, "not a bundle").unwrap();
    assert!(matches!(
        server_roots.check_now(),
        ReloadOutcome::Rejected(_)
    ));
    assert_eq!(server_roots.current().len(), 2);
}
