//! The node-local path from a cluster's simulated ztunnels to its peerd: a TCP relay
//! that listens on the cluster's node address (127.0.k.2) and opens each connection to
//! peerd's 15012 *from* that address. A partition cuts the peer path to 15012 (every
//! other source) and leaves this one alone, as a real partition of the east-west path
//! leaves a node's ztunnel connected to the peerd next to it. Without it, a partition
//! would also cut the cluster's own ztunnels, and their ACKs, which no real partition does.
//!
//! Owns the relay's listener and its connections (ended with the rig's cancel token).
//! Must never relay to anything but the one peerd address it was given, and never listen
//! outside 127.0.0.0/8.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, bail};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::sandbox::layout::ClusterLayout;

/// Cluster k's node address, 127.0.k.2: next to its peerd (127.0.k.1), outside every
/// simulated pod and VIP block (127.(k+32j).x.y, x ≥ 1 or second octet ≥ 1).
pub fn node_address(layout: &ClusterLayout) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, layout.index, 2))
}

/// Starts the relay from `node` to `peerd` (a cluster's node address and its peerd's
/// 15012); returns the address its ztunnels dial.
pub async fn start(
    node: IpAddr,
    peerd: SocketAddr,
    cancel: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    if !node.is_loopback() || !peerd.ip().is_loopback() {
        bail!("the node path must stay on loopback, not {node} → {peerd}");
    }
    let listener = TcpListener::bind(SocketAddr::new(node, 0))
        .await
        .with_context(|| format!("binding the node path to {peerd} on {node}"))?;
    let listening = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return,
                a = listener.accept() => a,
            };
            let Ok((inbound, _)) = accepted else { continue };
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    // A failed dial or a closed side ends this connection only; the
                    // client sees a reset and reconnects, as it would to peerd itself.
                    _ = relay(inbound, node, peerd) => {}
                }
            });
        }
    });
    Ok(listening)
}

async fn relay(mut inbound: TcpStream, node: IpAddr, peerd: SocketAddr) -> std::io::Result<()> {
    let socket = match node {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(node, 0))?;
    let mut outbound = socket.connect(peerd).await?;
    inbound.set_nodelay(true)?;
    outbound.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_from_the_node_address_to_peerd() {
        let layout = ClusterLayout::new(9, std::path::Path::new("/nonexistent"));
        let node = node_address(&layout);
        assert_eq!(node.to_string(), "127.0.9.2");
        // A stand-in for cluster 9's peerd.
        let peerd = TcpListener::bind((layout.host, 0)).await.unwrap();
        let cancel = CancellationToken::new();
        let via = start(node, peerd.local_addr().unwrap(), cancel.clone())
            .await
            .unwrap();
        assert_eq!(via.ip(), node);
        let mut client = TcpStream::connect(via).await.unwrap();
        let (mut server, from) = peerd.accept().await.unwrap();
        assert_eq!(from.ip(), node, "sourced from the node address");
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        server.write_all(b"pong").await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        cancel.cancel();
    }

    #[tokio::test]
    async fn refuses_anything_off_loopback() {
        let err = start(
            "10.0.0.2".parse().unwrap(),
            "127.0.0.1:15012".parse().unwrap(),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
    }
}
