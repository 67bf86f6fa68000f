//! Kernel-level acceptance tests of the eBPF connect probes (issue 4), run as root.
//!
//! Each test builds its own client/server network namespaces (veth, addresses only inside
//! them, nftables in the server namespace) and loads the probes in the root namespace.
//! Tests are serialized (the tracepoints are global) and use unique namespace names.
//! Without eBPF they skip with a printed reason, unless `PEERD_REQUIRE_EBPF=1` (CI),
//! which turns "unavailable" into a failure.

// Tests may unwrap: a failed set-up step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerd::probe::aggregator::{Aggregator, DestinationReport};
use peerd::probe::loader::{AttachKind, AttachPreference, LoaderConfig, ProbeHandle};
use peerd_ebpf::{DestKey, DestStats};
use support::netns::{NetnsPair, Server, in_netns};

const HBONE: u16 = 15008;
const XDS: u16 = 15012;

fn load(attach: AttachPreference, ports: &[u16]) -> ProbeHandle {
    let config = LoaderConfig {
        ports: ports.to_vec(),
        attach,
        ..LoaderConfig::default()
    };
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
fn wait_for(
    handle: &ProbeHandle,
    dest: SocketAddr,
    done: impl Fn(&DestStats) -> bool,
) -> DestStats {
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
fn connect_n(
    ns: &str,
    dest: SocketAddr,
    n: usize,
    app_timeout: Option<Duration>,
) -> Vec<std::io::Result<()>> {
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
    report
        .get(dest)
        .cloned()
        .unwrap_or_else(|| panic!("{dest} not in report {report:?}"))
}

/// An nft table `inet peerd_test` with a named counter `hits` and one input rule.
fn nft_rule(rule: &str) -> String {
    format!(
        "table inet peerd_test {{\n  counter hits {{ }}\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    {rule}\n  }}\n}}\n"
    )
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
    assert_eq!(
        stats.refused + stats.timed_out + stats.unreachable + stats.aborted + stats.other_errors,
        0
    );
    assert_eq!(stats.syn_retransmits, 0);
    assert_eq!(
        stats.latency_hist.iter().sum::<u64>(),
        N,
        "one latency sample per connect"
    );
    // Plausible latency: above zero and below one second for every sample.
    assert!(stats.latency_sum_us > 0, "latency sum is zero: {stats:?}");
    let slowest_bucket = stats.latency_hist.iter().rposition(|c| *c > 0).unwrap();
    assert!(
        slowest_bucket <= 20,
        "a connect took over 2^20 µs: {stats:?}"
    );
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
fn syn_drop_counted_as_timeouts_with_nft_counted_retransmits_tracepoint() {
    syn_drop_counted_as_timeouts(AttachPreference::TracepointOnly);
}

#[test]
fn syn_drop_counted_as_timeouts_with_nft_counted_retransmits_tp_btf() {
    syn_drop_counted_as_timeouts(AttachPreference::BtfOnly);
}

fn syn_drop_counted_as_timeouts(attach: AttachPreference) {
    let _serial = support::serial();
    if support::unavailable_reason().is_some() {
        return;
    }
    let net = NetnsPair::new().unwrap();
    net.server_nft(&nft_rule(
        "tcp dport 15008 tcp flags & (syn | ack) == syn counter name hits drop",
    ))
    .unwrap();
    let handle = load(attach, &[HBONE]);
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
    let dropped_syns = net.server_counter_packets("hits").unwrap();
    let health = handle.snapshot().unwrap().health;
    eprintln!("nft dropped {dropped_syns} SYNs; kernel stats {stats:?}; probe health {health:?}");
    // A run the kernel skipped (a BPF program already running on that CPU) is reported,
    // never silent: the health says whether that is why an outcome is missing.
    assert_eq!(
        health.skipped_runs,
        handle
            .program_stats()
            .iter()
            .map(|p| p.skipped)
            .sum::<u64>()
    );
    assert_eq!(stats.attempts, N, "{health:?}");
    assert_eq!(stats.timed_out, N, "{health:?}");
    assert_eq!(stats.established, 0);
    // Every SYN on the wire was dropped by nft: the first of each connect plus retransmits.
    assert!(stats.syn_retransmits > 0);
    assert_eq!(stats.syn_retransmits, dropped_syns - N);
}

#[test]
fn tcp_reset_counted_as_refused() {
    let _serial = support::serial();
    if support::unavailable_reason().is_some() {
        return;
    }
    let net = NetnsPair::new().unwrap();
    // A listener exists, so only the nft reset can refuse these connects.
    let server = Server::start(&net.server, SocketAddr::new(net.server_v4, HBONE)).unwrap();
    net.server_nft(&nft_rule(
        "tcp dport 15008 counter name hits reject with tcp reset",
    ))
    .unwrap();
    let handle = load(AttachPreference::TracepointFirst, &[HBONE]);

    const N: u64 = 10;
    let results = connect_n(&net.client, server.addr, N as usize, None);
    for result in &results {
        assert_eq!(
            result.as_ref().unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused
        );
    }
    let stats = wait_for(&handle, server.addr, |s| s.refused >= N);
    assert_eq!(stats.attempts, N);
    assert_eq!(stats.refused, N);
    assert_eq!(stats.established + stats.timed_out + stats.aborted, 0);
    assert_eq!(net.server_counter_packets("hits").unwrap(), N);
}

#[test]
fn application_connect_timeout_counted_as_aborted() {
    let _serial = support::serial();
    if support::unavailable_reason().is_some() {
        return;
    }
    let net = NetnsPair::new().unwrap();
    net.server_nft(&nft_rule("tcp dport 15008 counter name hits drop"))
        .unwrap();
    let handle = load(AttachPreference::TracepointFirst, &[HBONE]);
    let dest = SocketAddr::new(net.server_v4, HBONE);

    const N: u64 = 3;
    // Shorter than the first SYN retransmit (1 s): the application gives up first.
    let results = connect_n(
        &net.client,
        dest,
        N as usize,
        Some(Duration::from_millis(300)),
    );
    for result in &results {
        assert_eq!(
            result.as_ref().unwrap_err().kind(),
            std::io::ErrorKind::TimedOut
        );
    }
    let stats = wait_for(&handle, dest, |s| s.aborted >= N);
    assert_eq!(stats.attempts, N);
    assert_eq!(stats.aborted, N);
    assert_eq!(
        stats.timed_out, 0,
        "the kernel never timed these out itself"
    );
    assert_eq!(stats.established + stats.refused, 0);
}

#[test]
fn icmp_host_unreachable_counted_as_unreachable() {
    let _serial = support::serial();
    if support::unavailable_reason().is_some() {
        return;
    }
    let net = NetnsPair::new().unwrap();
    net.server_nft(&nft_rule(
        "meta nfproto ipv4 tcp dport 15008 counter name hits reject with icmp type host-unreachable",
    ))
    .unwrap();
    let handle = load(AttachPreference::TracepointFirst, &[HBONE]);
    let dest = SocketAddr::new(net.server_v4, HBONE);

    const N: u64 = 3;
    let results = connect_n(&net.client, dest, N as usize, None);
    for result in &results {
        assert_eq!(
            result.as_ref().unwrap_err().raw_os_error(),
            Some(libc::EHOSTUNREACH)
        );
    }
    let stats = wait_for(&handle, dest, |s| s.unreachable >= N);
    assert_eq!(stats.attempts, N);
    assert_eq!(stats.unreachable, N);
    assert_eq!(
        stats.established + stats.refused + stats.timed_out + stats.aborted,
        0
    );
}

#[test]
fn ipv6_connects_and_refusals_counted() {
    let _serial = support::serial();
    if support::unavailable_reason().is_some() {
        return;
    }
    let net = NetnsPair::new().unwrap();
    let server = Server::start(&net.server, SocketAddr::new(net.server_v6, HBONE)).unwrap();
    let closed = SocketAddr::new(net.server_v6, XDS); // nothing listens: the kernel resets
    let handle = load(AttachPreference::TracepointFirst, &[HBONE, XDS]);

    let ok = connect_n(&net.client, server.addr, 7, None);
    assert!(ok.iter().all(|r| r.is_ok()), "{ok:?}");
    let refused = connect_n(&net.client, closed, 4, None);
    assert!(refused.iter().all(|r| r.is_err()), "{refused:?}");

    let stats = wait_for(&handle, server.addr, |s| s.established >= 7);
    assert_eq!((stats.attempts, stats.established), (7, 7));
    assert!(stats.latency_sum_us > 0);
    let stats = wait_for(&handle, closed, |s| s.refused >= 4);
    assert_eq!((stats.attempts, stats.refused), (4, 4));
    // IPv6 keys carry the address as is, not IPv4-mapped.
    let key = DestKey::new(net.server_v6, HBONE);
    assert_eq!(key.family, 10);
    assert_eq!(key.addr(), net.server_v6);
}

#[test]
fn loopback_ipv4_and_ipv6_counted() {
    let _serial = support::serial();
    if support::unavailable_reason().is_some() {
        return;
    }
    let net = NetnsPair::new().unwrap();
    // Loopback inside the client namespace, on a random port so no other traffic matches.
    let v4 = Server::start(&net.client, "127.0.0.1:0".parse().unwrap()).unwrap();
    let v6 = Server::start(&net.client, "[::1]:0".parse().unwrap()).unwrap();
    let handle = load(
        AttachPreference::TracepointFirst,
        &[v4.addr.port(), v6.addr.port()],
    );

    assert!(
        connect_n(&net.client, v4.addr, 5, None)
            .iter()
            .all(|r| r.is_ok())
    );
    assert!(
        connect_n(&net.client, v6.addr, 3, None)
            .iter()
            .all(|r| r.is_ok())
    );
    let stats = wait_for(&handle, v4.addr, |s| s.established >= 5);
    assert_eq!((stats.attempts, stats.established), (5, 5));
    let stats = wait_for(&handle, v6.addr, |s| s.established >= 3);
    assert_eq!((stats.attempts, stats.established), (3, 3));
    // An IPv6 socket to ::ffff:127.0.0.1 is reported under 127.0.0.1.
    let mapped = SocketAddr::new("::ffff:127.0.0.1".parse().unwrap(), v4.addr.port());
    assert!(
        connect_n(&net.client, mapped, 2, None)
            .iter()
            .all(|r| r.is_ok())
    );
    let stats = wait_for(&handle, mapped, |s| s.established >= 2);
    assert_eq!((stats.attempts, stats.established), (2, 2));
    let merged = report(&handle, v4.addr);
    assert_eq!(merged.destination, v4.addr);
    assert_eq!((merged.total.attempts, merged.total.established), (7, 7));
}

#[test]
fn unfiltered_port_not_counted_and_port_changes_take_effect() {
    let _serial = support::serial();
    if support::unavailable_reason().is_some() {
        return;
    }
    let net = NetnsPair::new().unwrap();
    let hbone = Server::start(&net.server, SocketAddr::new(net.server_v4, HBONE)).unwrap();
    let other = Server::start(&net.server, SocketAddr::new(net.server_v4, 15009)).unwrap();
    let mut handle = load(AttachPreference::TracepointFirst, &[HBONE]);
    assert_eq!(handle.ports(), vec![HBONE]);

    assert!(
        connect_n(&net.client, other.addr, 4, None)
            .iter()
            .all(|r| r.is_ok())
    );
    assert!(
        connect_n(&net.client, hbone.addr, 2, None)
            .iter()
            .all(|r| r.is_ok())
    );
    assert_eq!(
        wait_for(&handle, hbone.addr, |s| s.established >= 2).established,
        2
    );
    assert_eq!(
        stats_for(&handle, other.addr),
        DestStats::ZERO,
        "port 15009 is not filtered"
    );

    // Add 15009, drop 15008.
    handle.set_ports(&[15009]).unwrap();
    assert_eq!(handle.ports(), vec![15009]);
    assert!(
        connect_n(&net.client, other.addr, 3, None)
            .iter()
            .all(|r| r.is_ok())
    );
    assert!(
        connect_n(&net.client, hbone.addr, 5, None)
            .iter()
            .all(|r| r.is_ok())
    );
    let stats = wait_for(&handle, other.addr, |s| s.established >= 3);
    assert_eq!((stats.attempts, stats.established), (3, 3));
    let stats = stats_for(&handle, hbone.addr);
    assert_eq!(
        (stats.attempts, stats.established),
        (2, 2),
        "15008 no longer counted"
    );

    // Bad port sets are refused and the filter is unchanged.
    assert!(handle.set_ports(&[0]).is_err());
    assert!(handle.set_ports(&(1..=65).collect::<Vec<u16>>()).is_err());
    assert_eq!(handle.ports(), vec![15009]);
}

#[test]
fn full_destination_map_evicts_and_counts_without_failing() {
    let _serial = support::serial();
    if support::unavailable_reason().is_some() {
        return;
    }
    let net = NetnsPair::new().unwrap();
    let port = {
        let probe = Server::start(&net.client, "127.0.0.1:0".parse().unwrap()).unwrap();
        probe.addr.port()
    };
    let config = LoaderConfig {
        ports: vec![port],
        max_destinations: 4,
        ..LoaderConfig::default()
    };
    let handle = ProbeHandle::load(&config).unwrap();

    // Ten distinct loopback destinations (nothing listens there: refused, still counted).
    const DESTINATIONS: u64 = 10;
    for i in 1..=DESTINATIONS {
        let dest: SocketAddr = format!("127.0.0.{}:{port}", i + 10).parse().unwrap();
        let results = connect_n(&net.client, dest, 1, None);
        assert!(results[0].is_err());
    }
    let snapshot = handle.snapshot().unwrap();
    let health = snapshot.health;
    assert_eq!(health.dest_inserted, DESTINATIONS);
    assert!(health.live_destinations <= 4, "{health:?}");
    assert_eq!(
        health.dest_evicted(),
        DESTINATIONS - health.live_destinations
    );
    assert_eq!(health.dest_insert_failed, 0);
    // The survivors still count correctly.
    for (_, stats) in &snapshot.destinations {
        assert_eq!((stats.attempts, stats.refused), (1, 1));
    }
    let report = Aggregator::new().update(&snapshot, Instant::now());
    assert_eq!(report.health.evicted_total, health.dest_evicted());
}

#[test]
fn full_in_flight_map_counts_missing_starts_instead_of_misattributing() {
    let _serial = support::serial();
    if support::unavailable_reason().is_some() {
        return;
    }
    let net = NetnsPair::new().unwrap();
    net.server_nft(&nft_rule("tcp dport 15008 counter name hits drop"))
        .unwrap();
    let dest = SocketAddr::new(net.server_v4, HBONE);
    let config = LoaderConfig {
        ports: vec![HBONE],
        max_in_flight: 2,
        ..LoaderConfig::default()
    };
    let handle = ProbeHandle::load(&config).unwrap();

    // Four connects in SYN_SENT at once; only two start times fit.
    const N: u64 = 4;
    let threads: Vec<_> = (0..N)
        .map(|_| {
            let ns = net.client.clone();
            std::thread::spawn(move || connect_n(&ns, dest, 1, None))
        })
        .collect();
    for thread in threads {
        assert!(thread.join().unwrap()[0].is_err());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let (stats, health) = loop {
        let snapshot = handle.snapshot().unwrap();
        let stats = stats_for(&handle, dest);
        if stats.timed_out + snapshot.health.start_missing >= N || Instant::now() > deadline {
            break (stats, snapshot.health);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(stats.attempts, N);
    assert!(health.start_missing >= 2, "{health:?}");
    assert_eq!(
        stats.timed_out + health.start_missing,
        N,
        "{stats:?} {health:?}"
    );
    assert_eq!(stats.established + stats.refused + stats.aborted, 0);
}

#[test]
fn restart_with_connects_in_flight_leaves_no_programs_and_miscounts_nothing() {
    let _serial = support::serial();
    if support::unavailable_reason().is_some() {
        return;
    }
    let net = NetnsPair::new().unwrap();
    net.server_nft(&nft_rule("tcp dport 15008 counter name hits drop"))
        .unwrap();
    let dest = SocketAddr::new(net.server_v4, HBONE);

    let first = load(AttachPreference::TracepointFirst, &[HBONE]);
    let first_ids = first.program_ids();
    assert_eq!(first_ids.len(), 2);
    // Start a connect that will time out in ~3 s, then "restart" while it is in SYN_SENT.
    let ns = net.client.clone();
    let in_flight = std::thread::spawn(move || connect_n(&ns, dest, 1, None));
    let seen = wait_for(&first, dest, |s| s.attempts >= 1);
    assert_eq!(seen.attempts, 1);
    drop(first);

    let loaded: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .map(|p| p.id())
        .collect();
    for id in &first_ids {
        assert!(!loaded.contains(id), "program {id} outlived its handle");
    }
    let pinned = std::fs::read_dir("/sys/fs/bpf")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains("peerd"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(pinned, 0, "no pins under /sys/fs/bpf");

    let second = load(AttachPreference::TracepointFirst, &[HBONE]);
    let result = in_flight.join().unwrap();
    assert_eq!(
        result[0].as_ref().unwrap_err().kind(),
        std::io::ErrorKind::TimedOut
    );
    // The outcome of a connect whose start the new instance never saw is not attributed;
    // it is only counted as a missing start.
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.snapshot().unwrap().health.start_missing < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(second.snapshot().unwrap().health.start_missing >= 1);
    // Its SYN retransmits were on the wire and may be counted; the attempt and outcome
    // belong to the previous instance and are not.
    let stats = stats_for(&second, dest);
    assert_eq!(stats.attempts, 0);
    assert_eq!(stats.timed_out, 0);
}

#[test]
fn active_prober_connects_are_counted_by_the_kernel() {
    let _serial = support::serial();
    if support::unavailable_reason().is_some() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(prober_counted());
}

async fn prober_counted() {
    use peerd::probe::prober::{ProbeOutcome, Prober, ProberConfig, TargetGuard};
    // Root namespace loopback, random ports: one listening, one closed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let handle = Arc::new(Mutex::new(load(
        AttachPreference::TracepointFirst,
        &[open.port(), closed.port()],
    )));

    let prober = Prober::new(ProberConfig {
        enabled: true,
        interval: Duration::from_secs(3600),
        jitter: Duration::ZERO,
        timeout: Duration::from_secs(10),
        guard: TargetGuard::loopback_only(),
    })
    .unwrap();
    prober.set_targets(vec![open, closed]).unwrap();
    for _ in 0..3 {
        let outcomes = prober.probe_once().await;
        assert_eq!(outcomes.len(), 2);
        for (target, outcome) in outcomes {
            if target == open {
                assert!(
                    matches!(outcome, ProbeOutcome::Established { .. }),
                    "{outcome:?}"
                );
            } else {
                assert_eq!(outcome, ProbeOutcome::Refused);
            }
        }
    }
    let task = peerd::probe::aggregator::spawn(Arc::clone(&handle), Duration::from_millis(50));
    let mut reports = task.subscribe();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        reports.changed().await.unwrap();
        let report = reports.borrow().clone();
        let done = report.get(open).is_some_and(|r| r.total.established == 3)
            && report.get(closed).is_some_and(|r| r.total.refused == 3);
        if done {
            assert_eq!(report.get(open).unwrap().total.attempts, 3);
            assert_eq!(report.get(closed).unwrap().total.attempts, 3);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kernel never counted the prober: {report:?}"
        );
    }
    drop(listener);
}

#[test]
fn bench_helper_reads_kernel_run_time_stats() {
    use peerd_testbed::bench;
    let _serial = support::serial();
    if support::unavailable_reason().is_some() {
        return;
    }
    let sink = bench::LoopbackSink::start(0).unwrap();
    let handle = load(AttachPreference::TracepointFirst, &[sink.addr().port()]);
    let _stats = bench::enable_bpf_stats().unwrap();
    let result = bench::connect_loop(sink.addr(), 50).unwrap();
    assert_eq!(result.connects, 50);
    let programs = bench::program_stats(&handle);
    assert_eq!(programs.len(), 2);
    let state = &programs[0];
    // ≥ 2 monitored state changes per connect (CLOSE→SYN_SENT→ESTABLISHED).
    assert!(state.run_count >= 100, "{programs:?}");
    assert!(state.run_time > Duration::ZERO);
    assert!(bench::mean_run_time(state).is_some());
    let counted = wait_for(&handle, sink.addr(), |s| s.established >= 50);
    assert_eq!(counted.established, 50);
    assert!(
        bench::connect_loop("192.0.2.1:15008".parse().unwrap(), 1).is_err(),
        "non-loopback refused"
    );
    drop(handle);

    let rounds = bench::compare(20, 2).unwrap();
    assert_eq!(rounds.len(), 2);
    for round in &rounds {
        assert_eq!((round.without.connects, round.with.connects), (20, 20));
        assert!(round.ratio > 0.0);
        assert!(
            round.programs.iter().any(|p| p.run_count >= 40),
            "{:?}",
            round.programs
        );
    }
}

#[test]
fn without_privileges_peerd_keeps_running_in_userspace_mode() {
    let _serial = support::serial();
    if support::unavailable_reason().is_some() {
        return;
    }
    // Re-run this test binary as root with every capability dropped.
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args(["--bounding-set=-all", "--inh-caps=-all", "--"])
        .arg(&exe)
        .args([
            "--ignored",
            "--exact",
            "unprivileged_child_reports_userspace_mode",
            "--nocapture",
        ])
        .env("PEERD_TEST_UNPRIVILEGED_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed: {stdout}\n{stderr}");
    assert!(stdout.contains("MODE=userspace"), "{stdout}");
    let reason = stdout
        .lines()
        .find_map(|l| l.strip_prefix("REASON="))
        .unwrap();
    assert!(
        reason.contains("privileges") || reason.contains("not permitted"),
        "reason does not explain the missing permission: {reason}"
    );
}

#[test]
#[ignore = "child of without_privileges_peerd_keeps_running_in_userspace_mode (no capabilities)"]
fn unprivileged_child_reports_userspace_mode() {
    use peerd::probe::mode::{ProbeSettings, start};
    if std::env::var("PEERD_TEST_UNPRIVILEGED_CHILD").is_err() {
        return;
    }
    let (mode, handle) = start(&ProbeSettings::default());
    println!("MODE={}", mode.name());
    println!("REASON={}", mode.reason().unwrap_or(""));
    assert!(handle.is_none());
    assert_eq!(mode.name(), "userspace");
}

#[test]
fn probe_service_in_ebpf_mode_publishes_reports() {
    use peerd::probe::mode::ProbeSettings;
    use peerd::probe::service::ProbeService;
    let _serial = support::serial();
    if support::unavailable_reason().is_some() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let mut settings = ProbeSettings::default();
        settings.loader.ports = vec![target.port()];
        let service = ProbeService::start(&settings, Duration::from_millis(50));
        assert_eq!(service.mode().name(), "ebpf", "{}", service.mode());
        for _ in 0..4 {
            drop(TcpStream::connect(target).unwrap());
        }
        let mut reports = service.reports();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            reports.changed().await.unwrap();
            let established = reports.borrow().get(target).map(|r| r.total.established);
            if established == Some(4) {
                break;
            }
            assert!(Instant::now() < deadline, "never reported: {established:?}");
        }
        assert_eq!(service.program_stats().len(), 2);
    });
}
