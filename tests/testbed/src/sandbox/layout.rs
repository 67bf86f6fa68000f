//! Where everything of one simulated cluster lives: names, networks, loopback addresses
//! and the real port numbers. Pure data; nothing here opens a socket.
//!
//! Cluster k (1-based) lives on 127.0.k.1. Its simulated pods and VIPs live elsewhere in
//! 127/8 (see `sim::population`), so every address anything may connect to is loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The simulated istiod's xDS port (istiod's own 15012 is taken by peerd on the same
/// address; 15010 is istiod's other xDS port number).
pub const ISTIOD_PORT: u16 = 15010;
pub const XDS_PORT: u16 = 15012;
pub const METRICS_PORT: u16 = 15020;
pub const HEALTH_PORT: u16 = 15021;
pub const DEBUG_PORT: u16 = 15041;
pub const HBONE_PORT: u16 = 15008;
/// The cluster's emulated Kubernetes API server (plain HTTP, the kube-apiserver port).
pub const KUBE_API_PORT: u16 = 6443;
/// The network clusters 1 and 2 share (flat: pod IPs routable between them).
pub const FLAT_NETWORK: &str = "flat-net";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLayout {
    pub index: u8,
    pub name: String,
    pub network: String,
    pub host: IpAddr,
    pub dir: PathBuf,
}

impl ClusterLayout {
    /// Cluster `index` of `count`: clusters 1 and 2 share [`FLAT_NETWORK`]; every other
    /// cluster has a network of its own.
    pub fn new(index: u8, state_dir: &Path) -> ClusterLayout {
        let name = format!("cluster-{index}");
        let network = if index <= 2 {
            FLAT_NETWORK.to_string()
        } else {
            format!("net-{index}")
        };
        ClusterLayout {
            index,
            host: IpAddr::V4(Ipv4Addr::new(127, 0, index, 1)),
            dir: state_dir.join(&name),
            name,
            network,
        }
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.host, port)
    }

    pub fn istiod(&self) -> SocketAddr {
        self.addr(ISTIOD_PORT)
    }

    pub fn xds(&self) -> SocketAddr {
        self.addr(XDS_PORT)
    }

    pub fn hbone(&self) -> SocketAddr {
        self.addr(HBONE_PORT)
    }

    pub fn debug(&self) -> SocketAddr {
        self.addr(DEBUG_PORT)
    }

    pub fn health(&self) -> SocketAddr {
        self.addr(HEALTH_PORT)
    }

    pub fn metrics(&self) -> SocketAddr {
        self.addr(METRICS_PORT)
    }

    pub fn kube_api(&self) -> SocketAddr {
        self.addr(KUBE_API_PORT)
    }

    /// `http://127.0.k.1:6443`, for `kubectl --server` and peerd's `kubernetes.server`.
    pub fn kube_api_url(&self) -> String {
        format!("http://{}", self.kube_api())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_three_clusters_two_flat_one_alone() {
        let dir = Path::new("/tmp/x");
        let l: Vec<ClusterLayout> = (1..=3).map(|k| ClusterLayout::new(k, dir)).collect();
        assert_eq!(l[0].network, l[1].network);
        assert_ne!(l[2].network, l[0].network);
        assert_eq!(l[2].xds().to_string(), "127.0.3.1:15012");
        assert!(l.iter().all(|c| c.host.is_loopback()));
        assert_eq!(l[1].dir, Path::new("/tmp/x/cluster-2"));
    }
}
