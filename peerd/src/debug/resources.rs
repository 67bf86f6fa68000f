//! `peerd debug resources`: the resources of one view exactly as served — what ztunnel
//! gets (`merged`), what peers get (`export`) or what one upstream sent (`--origin`) —
//! as tables like `istioctl ztunnel-config workloads|services|policies`, or as the full
//! decoded resources (`-o json|yaml`). Filters run on the server, so a filtered look at
//! a 100k-resource view ships only the matches.
//!
//! A client of the debug API's `ListResources` only; it never changes anything.

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use crate::debug::client::{self, DEFAULT_ADDR};
use crate::debug::status::{Output, table};
use crate::proto::debug::v1 as api;
use crate::xds::types::ResourceType;

/// A full 100k-resource listing with JSON is far above tonic's 4 MiB default.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024 * 1024;

#[derive(Args, Debug, Clone)]
pub struct ResourcesArgs {
    /// The debug API of the peerd to ask.
    #[arg(long, default_value = DEFAULT_ADDR)]
    pub addr: String,
    /// Which view: `merged` (served to ztunnel), `export` (served to peers) or `origin`
    /// (what the upstream named by `--origin` sent).
    #[arg(long, value_enum)]
    pub view: Option<ViewArg>,
    /// The origin cluster, with `--view origin` (implies it).
    #[arg(long)]
    pub origin: Option<String>,
    /// Only this xDS type: `wds` (workloads and services) or `wads` (authorizations).
    #[arg(long = "type", value_enum)]
    pub kind: Option<TypeArg>,
    /// Only workloads of this cluster id (services and policies: of this origin).
    #[arg(long)]
    pub cluster: Option<String>,
    /// Only this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only resources whose name contains this.
    #[arg(long)]
    pub name: Option<String>,
    /// Show at most this many (0: all); the total that matched is still reported.
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ViewArg {
    Merged,
    Export,
    Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TypeArg {
    Wds,
    Wads,
}

impl ResourcesArgs {
    /// The `ListResources` request these flags ask for.
    pub fn request(&self) -> anyhow::Result<api::ListResourcesRequest> {
        let view = match (self.view, &self.origin) {
            (None | Some(ViewArg::Merged), None) => "merged".to_string(),
            (Some(ViewArg::Export), None) => "export".to_string(),
            (Some(ViewArg::Origin), None) => bail!("--view origin needs --origin CLUSTER"),
            (None | Some(ViewArg::Origin), Some(origin)) if origin.is_empty() => {
                bail!("--origin: empty cluster name")
            }
            (None | Some(ViewArg::Origin), Some(origin)) => origin.clone(),
            (Some(ViewArg::Merged), Some(_)) => {
                bail!("--origin goes with --view origin, not --view merged")
            }
            (Some(ViewArg::Export), Some(_)) => {
                bail!("--origin goes with --view origin, not --view export")
            }
        };
        Ok(api::ListResourcesRequest {
            view,
            r#type: match self.kind {
                None => String::new(),
                Some(TypeArg::Wds) => "wds".into(),
                Some(TypeArg::Wads) => "wads".into(),
            },
            include_json: self.output != Output::Table,
            cluster: self.cluster.clone().unwrap_or_default(),
            namespace: self.namespace.clone().unwrap_or_default(),
            name_contains: self.name.clone().unwrap_or_default(),
            include_summary: self.output == Output::Table,
            limit: self.limit,
        })
    }
}

/// Asks the debug API at `addr` for `request`.
pub async fn fetch(
    addr: &str,
    request: api::ListResourcesRequest,
) -> anyhow::Result<api::ListResourcesResponse> {
    let mut client = client::connect(addr)
        .await?
        .max_decoding_message_size(MAX_RESPONSE_BYTES);
    let view = request.view.clone();
    client
        .list_resources(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| anyhow::anyhow!("{}", status.message()))
        .with_context(|| format!("ListResources of view {view:?} at {addr}"))
}

pub async fn run(args: ResourcesArgs) -> anyhow::Result<()> {
    let request = args.request()?;
    let response = fetch(&args.addr, request.clone()).await?;
    let text = match args.output {
        Output::Table => render_table(&response),
        Output::Json => serde_json::to_string_pretty(&to_json(&request.view, &response))? + "\n",
        Output::Yaml => yaml_serde::to_string(&to_json(&request.view, &response))?,
    };
    print!("{text}");
    Ok(())
}

fn short_type(type_url: &str) -> &'static str {
    ResourceType::from_type_url(type_url)
        .map(ResourceType::short_name)
        .unwrap_or("unknown")
}

/// The full decoded resources: `{view, matched, resources: [{name, type, version,
/// origin, sizeBytes, resource}]}`.
pub fn to_json(view: &str, response: &api::ListResourcesResponse) -> serde_json::Value {
    let resources: Vec<serde_json::Value> = response
        .resources
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "type": short_type(&r.type_url),
                "version": r.version,
                "origin": r.origin,
                "sizeBytes": r.size_bytes,
                "resource": serde_json::from_str::<serde_json::Value>(&r.json)
                    .unwrap_or_else(|_| serde_json::Value::String(r.json.clone())),
            })
        })
        .collect();
    serde_json::json!({
        "view": view,
        "matched": response.matched,
        "resources": resources,
    })
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

fn joined(values: &[String]) -> String {
    or_dash(&values.join(","))
}

/// One table per kind present (workloads, services, policies), then what was cut.
pub fn render_table(response: &api::ListResourcesResponse) -> String {
    let mut workloads = Vec::new();
    let mut services = Vec::new();
    let mut policies = Vec::new();
    let mut other = Vec::new();
    for r in &response.resources {
        let s = r.summary.clone().unwrap_or_default();
        match s.kind.as_str() {
            "workload" => workloads.push(vec![
                or_dash(&s.namespace),
                or_dash(&s.name),
                joined(&s.addresses),
                or_dash(&s.node),
                or_dash(&s.cluster),
                or_dash(&s.network),
                or_dash(&s.protocol),
                or_dash(&s.waypoint),
                or_dash(&s.network_gateway),
                or_dash(&r.origin),
            ]),
            "service" => services.push(vec![
                or_dash(&s.namespace),
                or_dash(&s.name),
                or_dash(&s.hostname),
                joined(&s.addresses),
                joined(&s.ports),
                or_dash(&s.waypoint),
                or_dash(&r.origin),
            ]),
            "authorization" => policies.push(vec![
                or_dash(&s.namespace),
                or_dash(&s.name),
                or_dash(&s.action),
                or_dash(&s.scope),
                or_dash(&r.origin),
            ]),
            _ => other.push(vec![
                r.name.clone(),
                short_type(&r.type_url).into(),
                or_dash(&s.status),
                or_dash(&r.origin),
            ]),
        }
    }
    let mut out = String::new();
    let mut section = |rows: &[Vec<String>], header: &[&str]| {
        if rows.is_empty() {
            return;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&table(header, rows));
    };
    section(
        &workloads,
        &[
            "NAMESPACE",
            "POD NAME",
            "ADDRESS",
            "NODE",
            "CLUSTER",
            "NETWORK",
            "PROTOCOL",
            "WAYPOINT",
            "NETWORK GATEWAY",
            "ORIGIN",
        ],
    );
    section(
        &services,
        &[
            "NAMESPACE",
            "SERVICE NAME",
            "HOSTNAME",
            "SERVICE VIP",
            "PORTS",
            "WAYPOINT",
            "ORIGIN",
        ],
    );
    section(
        &policies,
        &["NAMESPACE", "POLICY NAME", "ACTION", "SCOPE", "ORIGIN"],
    );
    section(&other, &["NAME", "TYPE", "PROBLEM", "ORIGIN"]);
    let shown = response.resources.len() as u64;
    if response.matched == 0 {
        out.push_str("no resources matched\n");
    } else if response.matched > shown {
        out.push_str(&format!(
            "\nshowing {shown} of {} matching resources (--limit)\n",
            response.matched
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(view: Option<ViewArg>, origin: Option<&str>) -> ResourcesArgs {
        ResourcesArgs {
            addr: DEFAULT_ADDR.into(),
            view,
            origin: origin.map(String::from),
            kind: Some(TypeArg::Wds),
            cluster: None,
            namespace: Some("shop".into()),
            name: None,
            limit: 0,
            output: Output::Table,
        }
    }

    #[test]
    fn flags_become_the_request_and_contradictions_are_refused() {
        let r = args(None, None).request().unwrap();
        assert_eq!(r.view, "merged");
        assert_eq!(r.r#type, "wds");
        assert_eq!(r.namespace, "shop");
        assert!(r.include_summary && !r.include_json);
        assert_eq!(
            args(Some(ViewArg::Export), None).request().unwrap().view,
            "export"
        );
        assert_eq!(args(None, Some("c2")).request().unwrap().view, "c2");
        assert_eq!(
            args(Some(ViewArg::Origin), Some("c2"))
                .request()
                .unwrap()
                .view,
            "c2"
        );
        let err = args(Some(ViewArg::Origin), None).request().unwrap_err();
        assert!(err.to_string().contains("needs --origin"), "{err}");
        let err = args(Some(ViewArg::Export), Some("c2"))
            .request()
            .unwrap_err();
        assert!(err.to_string().contains("--origin goes with"), "{err}");
        assert!(args(None, Some("")).request().is_err());
    }

    #[test]
    fn table_shows_one_section_per_kind_and_what_the_limit_cut() {
        let response = api::ListResourcesResponse {
            resources: vec![api::Resource {
                name: "c1//Pod/shop/cart".into(),
                origin: "c1".into(),
                summary: Some(api::ResourceSummary {
                    kind: "workload".into(),
                    name: "cart".into(),
                    namespace: "shop".into(),
                    addresses: vec!["10.0.0.7".into()],
                    node: "node-a".into(),
                    cluster: "c1".into(),
                    network: "net1".into(),
                    protocol: "HBONE".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            matched: 3,
        };
        let text = render_table(&response);
        let mut lines = text.lines();
        let header = lines.next().unwrap();
        assert!(header.starts_with("NAMESPACE  POD NAME  ADDRESS"), "{text}");
        let row = lines.next().unwrap();
        assert!(
            row.starts_with("shop       cart      10.0.0.7  node-a"),
            "{text}"
        );
        assert!(text.contains("showing 1 of 3 matching resources"), "{text}");
        assert!(!text.contains("SERVICE NAME"), "{text}");
        assert_eq!(
            render_table(&api::ListResourcesResponse::default()),
            "no resources matched\n"
        );
    }
}
