//! A simulated east-west gateway HBONE listener (port 15008 on the cluster's loopback
//! address). It accepts TCP connections and holds each briefly: enough for connect
//! probes (userspace and eBPF) to see an established handshake. It does not speak HBONE;
//! no traffic is carried through it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long an accepted connection is held open at most.
const HOLD: Duration = Duration::from_secs(2);

/// Binds `addr` and serves until cancelled.
pub async fn serve_hbone(addr: SocketAddr, cancel: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the simulated HBONE listener on {addr}"))?;
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            a = listener.accept() => a,
        };
        match accepted {
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
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "closed after cancel");
    }
}
