//! A client and a server network namespace joined by a veth pair, with addresses that
//! exist only inside them (10.200.N.0/24 and fd00:200:N::/64), plus nftables and
//! "run this closure inside namespace X" helpers. Deleting the namespaces (on Drop, also
//! when a test panics) removes the veth pair, the addresses and the nft rules with them.
#![allow(unsafe_code)] // setns(2) has no safe std wrapper; used only on test threads.

use std::fs::File;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

static NEXT: AtomicU32 = AtomicU32::new(1);

pub struct NetnsPair {
    pub client: String,
    pub server: String,
    pub client_v4: IpAddr,
    pub server_v4: IpAddr,
    pub client_v6: IpAddr,
    pub server_v6: IpAddr,
}

fn run(cmd: &str, args: &[&str]) -> io::Result<String> {
    let out = Command::new(cmd).args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl NetnsPair {
    /// Creates both namespaces; each call gets unique names and its own subnet.
    pub fn new() -> io::Result<Self> {
        let seq = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let subnet = (pid.wrapping_mul(7).wrapping_add(seq) % 250) + 1;
        let pair = NetnsPair {
            client: format!("peerd-t{pid}-{seq}-c"),
            server: format!("peerd-t{pid}-{seq}-s"),
            client_v4: format!("10.200.{subnet}.1")
                .parse()
                .map_err(io::Error::other)?,
            server_v4: format!("10.200.{subnet}.2")
                .parse()
                .map_err(io::Error::other)?,
            client_v6: format!("fd00:200:{subnet:x}::1")
                .parse()
                .map_err(io::Error::other)?,
            server_v6: format!("fd00:200:{subnet:x}::2")
                .parse()
                .map_err(io::Error::other)?,
        };
        // Constructed before set-up so Drop cleans whatever part of it succeeded.
        pair.setup(&format!("pv{pid}x{seq}"))?;
        Ok(pair)
    }

    fn setup(&self, veth: &str) -> io::Result<()> {
        let (vc, vs) = (format!("{veth}c"), format!("{veth}s"));
        run("ip", &["netns", "add", &self.client])?;
        run("ip", &["netns", "add", &self.server])?;
        run(
            "ip",
            &[
                "link",
                "add",
                &vc,
                "netns",
                &self.client,
                "type",
                "veth",
                "peer",
                "name",
                &vs,
                "netns",
                &self.server,
            ],
        )?;
        for (ns, dev, v4, v6) in [
            (&self.client, &vc, self.client_v4, self.client_v6),
            (&self.server, &vs, self.server_v4, self.server_v6),
        ] {
            run(
                "ip",
                &["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev],
            )?;
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    dev,
                    "nodad",
                ],
            )?;
            run("ip", &["-n", ns, "link", "set", dev, "up"])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        // One SYN retransmit before ETIMEDOUT: a dropped connect fails in ~3 s.
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.client,
                "sysctl",
                "-qw",
                "net.ipv4.tcp_syn_retries=1",
            ],
        )?;
        Ok(())
    }

    /// Loads an nftables script inside the server namespace.
    pub fn server_nft(&self, script: &str) -> io::Result<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.server, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(stdin) = child.stdin.as_mut() {
            stdin.write_all(script.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "nft failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Packets counted by the named nft counter `inet peerd_test <name>` in the server ns.
    pub fn server_counter_packets(&self, name: &str) -> io::Result<u64> {
        let text = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.server,
                "nft",
                "list",
                "counter",
                "inet",
                "peerd_test",
                name,
            ],
        )?;
        let packets = text
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .ok_or_else(|| io::Error::other(format!("no packet count in: {text}")))?;
        packets.parse().map_err(io::Error::other)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a fresh thread that has entered network namespace `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let path = format!("/run/netns/{ns}");
    let handle = thread::spawn(move || -> io::Result<T> {
        enter(&path)?;
        Ok(f())
    });
    handle
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
}

fn enter(path: &str) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: a valid namespace fd, owned by `file` for the duration of the call; setns
    // only changes the calling thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A listener inside a namespace that accepts and drops connections until dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &str, addr: SocketAddr) -> io::Result<Self> {
        let listener = in_netns(ns, move || -> io::Result<TcpListener> {
            let listener = TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })??;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => drop(stream),
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
