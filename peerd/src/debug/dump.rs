//! `peerd debug dump FILE.tar.gz`: a support bundle of a running peerd, collected
//! through its debug API and its metrics listener, written as one gzip-compressed tar:
//!
//! | member | what |
//! |---|---|
//! | `status.txt`, `status.json` | `peerd status` (peers, upstreams, subscribers) |
//! | `check.txt`, `check.json` | `peerd check` (without the Kubernetes checks) |
//! | `config.txt` | the effective configuration, URL credentials redacted |
//! | `events.json` | the recent events (condition transitions, syncs, NACKs) |
//! | `metrics.prom` | one scrape of the metrics listener |
//! | `version.txt` | this client's and the daemon's versions |
//! | `errors.txt` | only when a part could not be collected: which, and why |
//!
//! It never reads key or token files and passes every member through URL redaction. A
//! dump that cannot reach the debug API fails and writes nothing; an existing file is
//! never overwritten. The archive is written to a temporary name and renamed, so a
//! failed dump leaves no partial file.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::debug::check::{Outcome, render, run_checks};
use crate::debug::client::{self, DEFAULT_ADDR};
use crate::debug::convert::{list_field, message_to_json};
use crate::debug::redact::redact_urls;
use crate::debug::status::render_table;
use crate::proto::debug::v1 as api;

/// A metrics scrape larger than this is cut (a bundle stays attachable to a ticket).
const MAX_METRICS_BYTES: usize = 64 * 1024 * 1024;
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args, Debug, Clone)]
pub struct DumpArgs {
    /// Where to write the bundle (a gzip-compressed tar; must not exist).
    pub file: PathBuf,
    /// The debug API of the peerd to dump.
    #[arg(long, default_value = DEFAULT_ADDR)]
    pub addr: String,
    /// The metrics listener to scrape (default: the one the daemon reports, with an
    /// unspecified host read as loopback).
    #[arg(long)]
    pub metrics_addr: Option<String>,
}

/// The bundle's members, by name.
pub type Members = BTreeMap<String, Vec<u8>>;

pub async fn run(args: DumpArgs) -> anyhow::Result<()> {
    let members = collect(&args).await?;
    let names: Vec<String> = members.keys().cloned().collect();
    let file = args.file.clone();
    tokio::task::spawn_blocking(move || write_bundle(&file, &members))
        .await
        .context("writing the bundle")??;
    println!("wrote {} ({})", args.file.display(), names.join(", "));
    Ok(())
}

/// Everything the bundle holds. Fails only when the debug API cannot be read at all.
pub async fn collect(args: &DumpArgs) -> anyhow::Result<Members> {
    if args.file.exists() {
        bail!(
            "{} exists; choose another file (a bundle never overwrites)",
            args.file.display()
        );
    }
    let report = client::fetch(&args.addr).await?;
    let mut members = Members::new();
    let mut errors = Vec::new();
    let mut text = |name: &str, body: String| {
        members.insert(name.to_string(), redact_urls(&body).into_bytes());
    };
    text("status.txt", render_table(&report));
    text(
        "status.json",
        serde_json::to_string_pretty(&report.to_json()?)? + "\n",
    );
    let checks = run_checks(&report, &BTreeMap::new(), false);
    let failed = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    text(
        "check.txt",
        format!("{}\n{failed} check(s) failed\n", render(&checks, true)),
    );
    text("check.json", serde_json::to_string_pretty(&checks)? + "\n");
    text(
        "version.txt",
        format!(
            "client: {}\ndaemon: {} (cluster {}, network {})\n",
            crate::version::long(),
            report.info.version,
            report.info.cluster,
            report.info.network
        ),
    );
    let mut api_client = client::connect(&args.addr).await?;
    match api_client.get_config(api::GetConfigRequest {}).await {
        Ok(config) => text("config.txt", config.into_inner().text),
        Err(status) => errors.push(format!("config: GetConfig: {}", status.message())),
    }
    match api_client.list_events(api::ListEventsRequest {}).await {
        Ok(events) => {
            let events = events.into_inner();
            let dropped = events.dropped;
            let json = message_to_json(&events, "peerd.debug.v1.ListEventsResponse")
                .map_err(anyhow::Error::msg)?;
            text(
                "events.json",
                serde_json::to_string_pretty(&serde_json::json!({
                    "events": list_field(json, "events"),
                    "dropped": dropped,
                }))? + "\n",
            );
        }
        Err(status) => errors.push(format!("events: ListEvents: {}", status.message())),
    }
    let metrics_addr = match &args.metrics_addr {
        Some(addr) => Ok(addr.clone()),
        None => scrape_target(&report.info.metrics_address),
    };
    match metrics_addr {
        Ok(addr) => match scrape(&addr).await {
            Ok(body) => text("metrics.prom", body),
            Err(e) => errors.push(format!("metrics: {e:#}")),
        },
        Err(e) => errors.push(format!("metrics: {e:#}")),
    }
    if !errors.is_empty() {
        text("errors.txt", errors.join("\n") + "\n");
    }
    Ok(members)
}

/// The address to scrape for a configured metrics listener: an unspecified host is
/// reached on loopback; port 0 cannot be guessed.
pub fn scrape_target(configured: &str) -> anyhow::Result<String> {
    let addr: std::net::SocketAddr = configured.parse().with_context(|| {
        format!(
            "the daemon reports no usable metrics address ({configured:?}); pass --metrics-addr"
        )
    })?;
    if addr.port() == 0 {
        bail!("the metrics listener is configured on port 0 (ephemeral); pass --metrics-addr");
    }
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    Ok(std::net::SocketAddr::new(ip, addr.port()).to_string())
}

/// `GET /metrics` over HTTP/1.0 (the body ends at end of stream), at most
/// [`MAX_METRICS_BYTES`].
pub async fn scrape(addr: &str) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the metrics listener {addr}"))?;
        stream
            .write_all(
                format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .context("sending the scrape request")?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_METRICS_BYTES as u64)
            .read_to_end(&mut raw)
            .await
            .context("reading the scrape")?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(SCRAPE_TIMEOUT, exchange)
        .await
        .with_context(|| format!("scraping {addr}: no answer within {SCRAPE_TIMEOUT:?}"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("scraping {addr}: not an HTTP response"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!(
            "scraping {addr}: {}",
            status.chars().take(120).collect::<String>()
        );
    }
    Ok(body.to_string())
}

/// Writes `members` as `file` (gzip-compressed tar), through a temporary name.
pub fn write_bundle(file: &Path, members: &Members) -> anyhow::Result<()> {
    let tmp = file.with_file_name(format!(
        ".{}.partial",
        file.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bundle".into())
    ));
    let result = (|| {
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for (name, body) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(mtime);
            header.set_cksum();
            tar.append_data(&mut header, format!("peerd-dump/{name}"), body.as_slice())
                .with_context(|| format!("adding {name}"))?;
        }
        let mut gz = tar.into_inner().context("finishing the tar")?;
        gz.flush().context("flushing")?;
        gz.finish()
            .context("finishing the gzip stream")?
            .sync_all()
            .context("syncing")?;
        if file.exists() {
            bail!("{} appeared meanwhile; not overwritten", file.display());
        }
        std::fs::rename(&tmp, file)
            .with_context(|| format!("renaming {} to {}", tmp.display(), file.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_target_reads_unspecified_as_loopback_and_refuses_port_zero() {
        assert_eq!(scrape_target("0.0.0.0:15020").unwrap(), "127.0.0.1:15020");
        assert_eq!(scrape_target("[::]:15020").unwrap(), "[::1]:15020");
        assert_eq!(scrape_target("127.0.1.1:15020").unwrap(), "127.0.1.1:15020");
        let err = scrape_target("127.0.0.1:0").unwrap_err().to_string();
        assert!(err.contains("port 0"), "{err}");
        let err = scrape_target("").unwrap_err().to_string();
        assert!(err.contains("--metrics-addr"), "{err}");
    }
}
