//! Free loopback ports for tests and benchmarks that must write a port into a config
//! file before the process that binds it starts.
//!
//! The kernel may hand out the same ephemeral port to two `bind(…, 0)` calls once the
//! first socket is closed, so "bind, read the port, close" alone can give one process two
//! equal ports (CI once saw `listeners.metrics … conflicts with listeners.xds`). This
//! module remembers every port it handed out in this process and never repeats one.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Mutex, OnceLock};

/// Retries before giving up: each one draws a fresh ephemeral port.
const ATTEMPTS: usize = 64;

/// A TCP port on `host` that was free a moment ago and that this process has not handed
/// out before. The caller binds it next (nothing reserves it in between).
pub fn free_addr(host: IpAddr) -> io::Result<SocketAddr> {
    static HANDED_OUT: OnceLock<Mutex<HashSet<SocketAddr>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    for _ in 0..ATTEMPTS {
        let addr = TcpListener::bind((host, 0))?.local_addr()?;
        let mut seen = handed_out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.insert(addr) {
            return Ok(addr);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no port on {host} that was not handed out already after {ATTEMPTS} draws"),
    ))
}

/// [`free_addr`]'s port on `host`; panics if none can be bound (test helpers only).
pub fn free_port(host: IpAddr) -> u16 {
    match free_addr(host) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("a free port on {host}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_hands_out_the_same_port_twice() {
        let host = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        let ports: Vec<u16> = (0..500).map(|_| free_port(host)).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        assert!(ports.iter().all(|p| *p != 0));
    }
}
