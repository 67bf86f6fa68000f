//! Kernel-level acceptance tests of the eBPF connect probes (issue 4), run as root.
//!
//! Each test builds its own client/server network namespaces (veth, addresses only inside
//! them, nftables in the server namespace) and loads the probes in the root namespace.
//! Tests are serialized (the tracepoints are global) and use unique namespace names.
//! Without eBPF they skip with a printed reason, unless `PEERD_REQUIRE_EBPF=1` (CI),
//! which turns "unavailable" into a failure.

mod support;

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use peerd::probe::aggregator::{Aggregator, DestinationReport};
use peerd::probe::loader::{AttachKind, AttachPreference, LoaderConfig, ProbeHandle};
use peerd_ebpf::{DestKey, DestStats};
use support::netns::{NetnsPair, Server, in_netns};

const HBONE: u16 = 15008;
const XDS: u16 = 15012;

fn load(attach: AttachPreference, ports: &[u16]) -> ProbeHandle {
    let config = LoaderConfig { ports: ports.to_vec(), attach, ..LoaderConfig::default() };
    match ProbeHandle::load(&config) {
        Ok(handle) => handle,
        Err(err) => panic!("eBPF probes failed to load: {err}"),
    }
}

fn stats_for(handle: &ProbeHandle, dest: SocketAddr) -> DestStats {
    let key = DestKey::new(dest.ip(), dest.port());
    handle
        .snapshot()
        .unwrap()
        .destinations
        .into_iter()
        .find(|(k, _)| *k == key)
        .map_or(DestStats::ZERO, |(_, s)| s)
}

/// Waits (generously) until `done` holds for the destination's counters, then returns them.
fn wait_for(handle: &ProbeHandle, dest: SocketAddr, done: impl Fn(&DestStats) -> bool) -> DestStats {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = stats_for(handle, dest);
        if done(&stats) || Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` sequential connects from namespace `ns`, each with an optional app timeout.
fn connect_n(ns: &str, dest: SocketAddr, n: usize, app_timeout: Option<Duration>) -> Vec<std::io::Result<()>> {
    in_netns(ns, move || {
        (0..n)
            .map(|_| {
                let result = match app_timeout {
                    Some(timeout) => TcpStream::connect_timeout(&dest, timeout),
                    None => TcpStream::connect(dest),
                };
                result.map(drop)
            })
            .collect()
    })
    .unwrap()
}

fn report(handle: &ProbeHandle, dest: SocketAddr) -> DestinationReport {
    let mut aggregator = Aggregator::new();
    let report = aggregator.update(&handle.snapshot().unwrap(), Instant::now());
    report.get(dest).cloned().unwrap_or_else(|| panic!("{dest} not in report {report:?}"))
}

fn successful_connects_counted_exactly(attach: AttachPreference, expected: AttachKind) {
    let _serial = support::serial();
    if support::unavailable_reason().is_some() {
        return;
    }
    let net = NetnsPair::new().unwrap();
    let server = Server::start(&net.server, SocketAddr::new(net.server_v4, HBONE)).unwrap();
    let handle = load(attach, &[HBONE, XDS]);
    assert_eq!(handle.attach_kind(), expected);

    const N: u64 = 25;
    let results = connect_n(&net.client, server.addr, N as usize, None);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");

    let stats = wait_for(&handle, server.addr, |s| s.established >= N);
    assert_eq!(stats.attempts, N);
    assert_eq!(stats.established, N);
    assert_eq!(stats.refused + stats.timed_out + stats.unreachable + stats.aborted + stats.other_errors, 0);
    assert_eq!(stats.syn_retransmits, 0);
    assert_eq!(stats.latency_hist.iter().sum::<u64>(), N, "one latency sample per connect");
    // Plausible latency: above zero and below one second for every sample.
    assert!(stats.latency_sum_us > 0, "latency sum is zero: {stats:?}");
    let slowest_bucket = stats.latency_hist.iter().rposition(|c| *c > 0).unwrap();
    assert!(slowest_bucket <= 20, "a connect took over 2^20 µs: {stats:?}");
    let summary = report(&handle, server.addr);
    let p50 = summary.p50_us.unwrap();
    let p99 = summary.p99_us.unwrap();
    assert!(p50 > 0.0 && p50 < 1_000_000.0, "p50 {p50}");
    assert!(p99 >= p50 && p99 < 1_000_000.0, "p99 {p99}");
}

#[test]
fn ipv4_successful_connects_counted_exactly_tracepoint() {
    successful_connects_counted_exactly(AttachPreference::TracepointOnly, AttachKind::Tracepoint);
}

#[test]
fn ipv4_successful_connects_counted_exactly_tp_btf() {
    successful_connects_counted_exactly(AttachPreference::BtfOnly, AttachKind::TpBtf);
}

#[test]
fn syn_drop_counted_as_timeouts_with_nft_counted_retransmits() {
    let _serial = support::serial();
    if support::unavailable_reason().is_some() {
        return;
    }
    let net = NetnsPair::new().unwrap();
    net.server_nft(
        "table inet peerd_test {
            counter syn_drop {}
            chain input { type filter hook input priority 0; policy accept;
                tcp dport 15008 tcp flags & (syn | ack) == syn counter name syn_drop drop }
        }",
    )
    .unwrap();
    let handle = load(AttachPreference::TracepointFirst, &[HBONE]);
    let dest = SocketAddr::new(net.server_v4, HBONE);

    const N: u64 = 2;
    let threads: Vec<_> = (0..N)
        .map(|_| {
            let ns = net.client.clone();
            std::thread::spawn(move || connect_n(&ns, dest, 1, None))
        })
        .collect();
    for thread in threads {
        let results = thread.join().unwrap();
        let err = results[0].as_ref().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    }
    let stats = wait_for(&handle, dest, |s| s.timed_out >= N);
    let dropped_syns = net.server_counter_packets("syn_drop").unwrap();
    eprintln!("nft dropped {dropped_syns} SYNs; kernel stats {stats:?}");
    assert_eq!(stats.attempts, N);
    assert_eq!(stats.timed_out, N);
    assert_eq!(stats.established, 0);
    // Every SYN on the wire was dropped by nft: the first of each connect plus retransmits.
    assert!(stats.syn_retransmits > 0);
    assert_eq!(stats.syn_retransmits, dropped_syns - N);
}
