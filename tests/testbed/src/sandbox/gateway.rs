//! Simulated HBONE listeners: each cluster's east-west gateway (port 15008 on the
//! cluster's loopback address) and the pods' node-level 15008 (one wildcard listener that
//! answers for every simulated pod IP in 127/8, as each pod's ztunnel would). They accept
//! TCP connections and hold each briefly: enough for connect probes (userspace and eBPF)
//! to see an established handshake. They do not speak HBONE; no traffic is carried.
//!
//! All sockets set `SO_REUSEPORT`, so the specific gateway addresses and the wildcard
//! coexist on 15008 (the kernel picks the most specific). The wildcard listener closes
//! any connection that does not come from loopback.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

/// How long an accepted connection is held open at most.
const HOLD: Duration = Duration::from_secs(2);

fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseport(true)?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Binds `addr` and serves until cancelled.
pub async fn serve_hbone(addr: SocketAddr, cancel: CancellationToken) -> anyhow::Result<()> {
    let listener = bind_shared(addr)
        .with_context(|| format!("binding the simulated HBONE listener on {addr}"))?;
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) if !peer.ip().is_loopback() => {
                // Only the wildcard pod listener can see this; nothing outside loopback
                // is served.
                drop(stream);
            }
            Ok((mut stream, _)) => {
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    // Hold until the prober closes or HOLD passes.
                    let _ = tokio::time::timeout(HOLD, async {
                        while let Ok(n) = stream.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                        }
                    })
                    .await;
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, %addr, "simulated HBONE accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepts_connections_until_cancelled() {
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve_hbone(addr, cancel.clone()));
        let mut connected = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                connected = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(connected, "simulated HBONE listener accepts");
        cancel.cancel();
        task.await.unwrap().unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "closed after cancel"
        );
    }
}
