//! Benchmark helpers for `cargo xtask bench probes`: a loopback connect loop and the
//! kernel's per-program BPF run-time statistics.
//!
//! Owns: measuring, not judging (no thresholds here; benchmarks are never tests). Must
//! never connect outside loopback.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::thread;
use std::time::{Duration, Instant};

use peerd::probe::loader::{ProbeHandle, ProgramRunStats};

/// Result of one connect loop.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectLoopResult {
    pub connects: u64,
    pub elapsed: Duration,
}

impl ConnectLoopResult {
    pub fn per_connect(&self) -> Duration {
        if self.connects == 0 {
            Duration::ZERO
        } else {
            self.elapsed / u32::try_from(self.connects).unwrap_or(u32::MAX)
        }
    }
}

/// A loopback listener that accepts and drops connections on a background thread.
#[derive(Debug)]
pub struct LoopbackSink {
    addr: SocketAddr,
}

impl LoopbackSink {
    /// Binds `127.0.0.1:port` (0: any free port).
    pub fn start(port: u16) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        thread::Builder::new()
            .name("bench-sink".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    drop(stream);
                }
            })?;
        Ok(LoopbackSink { addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// `n` sequential connects to a loopback `target`; refuses non-loopback targets.
pub fn connect_loop(target: SocketAddr, n: u64) -> io::Result<ConnectLoopResult> {
    if !target.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bench connects only to loopback",
        ));
    }
    let started = Instant::now();
    for _ in 0..n {
        let mut stream = TcpStream::connect(target)?;
        // Let the sink close first so TIME_WAIT lands on its side, not on our ephemeral
        // ports (20k connects would otherwise exhaust them across rounds).
        let mut byte = [0u8; 1];
        let _eof = stream.read(&mut byte)?;
        drop(stream);
    }
    Ok(ConnectLoopResult {
        connects: n,
        elapsed: started.elapsed(),
    })
}

/// Turns on the kernel's BPF run-time accounting while the returned fd lives.
pub fn enable_bpf_stats() -> io::Result<OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|err| io::Error::other(err.to_string()))
}

/// Per-program run counts and run time (meaningful only with stats enabled).
pub fn program_stats(handle: &ProbeHandle) -> Vec<ProgramRunStats> {
    handle.program_stats()
}

/// Average run time per program invocation.
pub fn mean_run_time(stats: &ProgramRunStats) -> Option<Duration> {
    let runs = u32::try_from(stats.run_count).ok().filter(|r| *r > 0)?;
    Some(stats.run_time / runs)
}

/// One round of [`compare`]: the same loop without and with the programs attached.
#[derive(Clone, Debug)]
pub struct BenchRound {
    pub without: ConnectLoopResult,
    pub with: ConnectLoopResult,
    /// `with / without` elapsed time (1.0 = no difference).
    pub ratio: f64,
    /// Kernel run statistics of the attached programs during the `with` loop.
    pub programs: Vec<ProgramRunStats>,
}

/// Runs `rounds` × (`n` loopback connects without the probes and `n` with the probes
/// attached as peerd attaches them and the sink's port filtered in the kernel, in
/// alternating order). BPF
/// run-time accounting costs time on every program run, so it is off for the timed
/// loops and on only for an extra `n / 4` connects per round that sample the
/// per-program run time. Needs root; returns an error when the probes cannot be loaded.
pub fn compare(n: u64, rounds: u32) -> io::Result<Vec<BenchRound>> {
    let sink = LoopbackSink::start(0)?;
    let config = peerd::probe::loader::LoaderConfig {
        ports: vec![sink.addr().port()],
        ..Default::default()
    };
    let mut results = Vec::new();
    for round in 0..rounds {
        // Alternate which loop goes first: each loop leaves TIME_WAIT sockets behind that
        // slow the next one down, which must not count against either side.
        let without_first = round % 2 == 0;
        let mut without = None;
        if without_first {
            without = Some(connect_loop(sink.addr(), n)?);
        }
        let handle = ProbeHandle::load(&config).map_err(|err| io::Error::other(err.to_string()))?;
        let with = connect_loop(sink.addr(), n)?;
        let programs = {
            let _stats = enable_bpf_stats()?;
            connect_loop(sink.addr(), (n / 4).max(1))?;
            handle.program_stats()
        };
        drop(handle);
        let without = match without {
            Some(w) => w,
            None => connect_loop(sink.addr(), n)?,
        };
        let ratio =
            with.elapsed.as_secs_f64() / without.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        results.push(BenchRound {
            without,
            with,
            ratio,
            programs,
        });
    }
    Ok(results)
}
