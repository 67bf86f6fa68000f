//! `peerd status`: peers, upstreams and downstream subscribers of a running peerd, as
//! tables (like `istioctl proxy-status`) or as JSON/YAML (`-o`).
//!
//! A client of the debug API only; it must never need anything but `--addr`.

use std::fmt::Write as _;

use clap::{Args, ValueEnum};

use crate::debug::client::{self, DEFAULT_ADDR, Report};
use crate::debug::source::{PEER_CONNECTED, PEER_DATA_PLANE_PROGRAMMED, PEERING_SUCCEEDED};
use crate::proto::debug::v1 as api;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The debug API of the peerd to ask.
    #[arg(long, default_value = DEFAULT_ADDR)]
    pub addr: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let report = client::fetch(&args.addr).await?;
    let text = match args.output {
        Output::Table => render_table(&report),
        Output::Json => serde_json::to_string_pretty(&report.to_json()?)? + "\n",
        Output::Yaml => yaml_serde::to_string(&report.to_json()?)?,
    };
    print!("{text}");
    Ok(())
}

/// Left-aligned columns, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            l.push_str(cell);
            if i + 1 < cells.len() {
                l.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn condition_status(conditions: &[api::Condition], kind: &str) -> String {
    conditions
        .iter()
        .find(|c| c.r#type == kind)
        .map(|c| c.status.clone())
        .unwrap_or_else(|| "-".into())
}

fn type_status(stream: Option<&api::StreamState>, kind: &str) -> String {
    stream
        .and_then(|s| s.types.iter().find(|t| t.r#type == kind))
        .map(|t| t.status.clone())
        .unwrap_or_else(|| "-".into())
}

fn counts(c: Option<&api::ResourceCounts>) -> (String, String, String) {
    let c = c.cloned().unwrap_or_default();
    (
        c.workloads.to_string(),
        c.services.to_string(),
        c.authorizations.to_string(),
    )
}

/// The human form: a summary line, then one table per kind of stream.
pub fn render_table(r: &Report) -> String {
    let info = &r.info;
    let mut out = String::new();
    let merged = info.merged.unwrap_or_default();
    let _ = writeln!(
        out,
        "peerd {} (network {:?}{}) {} · version {} · merged view v{}: {} workloads, {} services, {} authorizations",
        info.cluster,
        info.network,
        if info.flat_networks { ", flat" } else { "" },
        if info.ready {
            "ready".to_string()
        } else {
            format!("NOT READY ({})", info.pending_gates.join(", "))
        },
        info.version,
        info.merged_version,
        merged.workloads,
        merged.services,
        merged.authorizations,
    );
    if !info.probe_mode.is_empty() {
        let _ = writeln!(
            out,
            "probes: {} ({})",
            info.probe_mode, info.probe_mode_reason
        );
    }
    out.push('\n');
    let peers: Vec<Vec<String>> = r
        .peers
        .iter()
        .map(|p| {
            let (w, s, a) = counts(p.imported.as_ref());
            vec![
                p.cluster.clone(),
                p.network.clone(),
                p.address.clone(),
                if p.flat { "flat" } else { "gateway" }.into(),
                condition_status(&p.conditions, PEER_CONNECTED),
                condition_status(&p.conditions, PEERING_SUCCEEDED),
                condition_status(&p.conditions, PEER_DATA_PLANE_PROGRAMMED),
                w,
                s,
                a,
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "PEER",
            "NETWORK",
            "ADDRESS",
            "MODE",
            "CONNECTED",
            "SYNCED",
            "DATAPLANE",
            "WORKLOADS",
            "SERVICES",
            "AUTHZ",
        ],
        &peers,
    ));
    out.push('\n');
    let upstreams: Vec<Vec<String>> = r
        .upstreams
        .iter()
        .map(|u| {
            let (w, s, a) = counts(u.counts.as_ref());
            vec![
                u.name.clone(),
                u.address.clone(),
                if u.connected { "yes" } else { "no" }.into(),
                type_status(Some(u), "address"),
                type_status(Some(u), "authorization"),
                w,
                s,
                a,
                u.nacks_sent.to_string(),
                u.reconnects.to_string(),
                u.last_error.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "UPSTREAM",
            "ADDRESS",
            "CONNECTED",
            "WDS",
            "WADS",
            "WORKLOADS",
            "SERVICES",
            "AUTHZ",
            "NACKS SENT",
            "RECONNECTS",
            "LAST ERROR",
        ],
        &upstreams,
    ));
    out.push('\n');
    let subscribers: Vec<Vec<String>> = r
        .subscribers
        .iter()
        .map(|s| {
            let stream = s.stream.as_ref();
            vec![
                s.node_id.clone(),
                s.kind.clone(),
                s.view.clone(),
                s.peer_address.clone(),
                type_status(stream, "address"),
                type_status(stream, "authorization"),
                stream.map(|s| s.nacks_received).unwrap_or(0).to_string(),
                stream
                    .map(|s| s.last_nack_message.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "SUBSCRIBER",
            "KIND",
            "VIEW",
            "REMOTE",
            "WDS",
            "WADS",
            "NACKS",
            "LAST NACK",
        ],
        &subscribers,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_show_every_stream() {
        let t = table(
            &["A", "LONG HEADER"],
            &[vec!["wide cell".into(), "x".into()]],
        );
        assert_eq!(t, "A          LONG HEADER\nwide cell  x\n");

        let report = Report {
            info: api::ServerInfo {
                cluster: "cluster-1".into(),
                network: "net1".into(),
                ready: false,
                pending_gates: vec!["local upstream synced".into()],
                probe_mode: "userspace".into(),
                probe_mode_reason: "kernel has no BTF".into(),
                ..Default::default()
            },
            peers: vec![api::Peer {
                cluster: "cluster-2".into(),
                conditions: vec![api::Condition {
                    r#type: PEER_CONNECTED.into(),
                    status: "True".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            upstreams: vec![api::StreamState {
                name: "cluster-1".into(),
                last_error: "connection refused".into(),
                ..Default::default()
            }],
            subscribers: vec![api::Subscriber {
                node_id: "ztunnel~10.0.0.1~z.istio-system~istio-system.svc.cluster.local".into(),
                kind: "ztunnel".into(),
                stream: Some(api::StreamState {
                    types: vec![api::TypeStatus {
                        r#type: "address".into(),
                        status: "NACKED".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }],
        };
        let text = render_table(&report);
        assert!(text.contains("NOT READY (local upstream synced)"), "{text}");
        assert!(
            text.contains("probes: userspace (kernel has no BTF)"),
            "{text}"
        );
        let peer_line = text.lines().find(|l| l.starts_with("cluster-2")).unwrap();
        assert!(peer_line.contains("True"), "{peer_line}");
        assert!(text.contains("connection refused"));
        let sub = text.lines().find(|l| l.starts_with("ztunnel~")).unwrap();
        assert!(sub.contains("NACKED"), "{sub}");
        let json = report.to_json().unwrap();
        assert_eq!(json["peers"][0]["cluster"], "cluster-2");
        assert_eq!(
            json["serverInfo"]["pendingGates"][0],
            "local upstream synced"
        );
    }
}
