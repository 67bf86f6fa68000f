//! The `expose`, `link` and `unlink` subcommands: arguments, the order of work (read and
//! validate every cluster, then write cluster by cluster) and what is printed. A failure
//! while writing names the clusters written and those not; every write is idempotent,
//! so re-running the same command completes it.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use super::endpoint::{self, ClusterEndpoint};
use super::plan::{self, Direction};
use super::render;
use super::shown;
use super::write::{self, Written};
use crate::config::defaults::PEERING_NAMESPACE;
use crate::debug::check_kube::{ContextArg, context_client, read_kubeconfig, target_contexts};
use crate::kube::types::LABEL_NETWORK;

/// The data plane service type of an east-west gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServiceType {
    #[value(name = "LoadBalancer")]
    LoadBalancer,
    #[value(name = "NodePort")]
    NodePort,
}

#[derive(Args, Debug)]
pub struct ExposeArgs {
    /// The kubeconfig (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The context of the cluster to expose (default: the current context).
    #[arg(long, value_name = "NAME[=CLUSTER]")]
    pub context: Option<ContextArg>,
    /// The cluster's network (default: the istio-system namespace's
    /// topology.istio.io/network label; when both are set they must agree).
    #[arg(long)]
    pub network: Option<String>,
    /// How peers reach the data plane: through the gateway's LoadBalancer (HBONE on
    /// 15008) or NodePorts.
    #[arg(long, value_enum, default_value = "LoadBalancer")]
    pub service_type: ServiceType,
    /// The namespace of the east-west and peer Gateways.
    #[arg(long, default_value = PEERING_NAMESPACE)]
    pub namespace: String,
    /// Print the Gateway as YAML; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The clusters of a `link` or `unlink`.
#[derive(Args, Debug)]
pub struct ClusterSelection {
    /// The kubeconfig (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// A cluster, as a kubeconfig context NAME or NAME=CLUSTER (the Istio cluster name,
    /// default NAME); repeat: every cluster is linked with every other.
    #[arg(long = "context", value_name = "NAME[=CLUSTER]", conflicts_with_all = ["from", "to"])]
    pub contexts: Vec<ContextArg>,
    /// One way: the cluster that peers (gets the peer Gateway)…
    #[arg(long, value_name = "NAME[=CLUSTER]", requires = "to")]
    pub from: Option<ContextArg>,
    /// …with this one (whose services it imports).
    #[arg(long, value_name = "NAME[=CLUSTER]", requires = "from")]
    pub to: Option<ContextArg>,
    /// The namespace of the east-west and peer Gateways.
    #[arg(long, default_value = PEERING_NAMESPACE)]
    pub namespace: String,
}

impl ClusterSelection {
    /// The contexts, first `--from` then `--to` when one way, and whether it is.
    fn contexts(&self) -> (Vec<ContextArg>, bool) {
        match (&self.from, &self.to) {
            (Some(from), Some(to)) => (vec![from.clone(), to.clone()], true),
            _ => (self.contexts.clone(), false),
        }
    }
}

#[derive(Args, Debug)]
pub struct LinkArgs {
    #[command(flatten)]
    pub clusters: ClusterSelection,
    /// Clusters may share a network (their pod IPs are routable between them; their
    /// peerds run with PEERING_ENABLE_FLAT_NETWORKS). Otherwise networks must differ.
    #[arg(long)]
    pub flat_networks: bool,
    /// Print the peer Gateways as YAML; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct UnlinkArgs {
    #[command(flatten)]
    pub clusters: ClusterSelection,
    /// Print what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn problems(list: Vec<String>) -> anyhow::Error {
    anyhow::anyhow!("nothing was written:\n  - {}", list.join("\n  - "))
}

pub async fn expose(args: ExposeArgs) -> anyhow::Result<()> {
    let file = read_kubeconfig(args.kubeconfig.as_ref())?;
    let target = match args.context {
        Some(c) => c,
        None => target_contexts(&file, &[])?.remove(0),
    };
    let client = context_client(&file, &target.context).await?;
    let (labelled, _) = endpoint::istio_system(&client)
        .await
        .with_context(|| format!("context {}", target.context))?;
    let network = match (args.network, labelled) {
        (Some(given), Some(labelled)) if given != labelled => bail!(
            "--network {} disagrees with namespace istio-system's {LABEL_NETWORK}={}: nothing was written",
            shown(&given),
            shown(&labelled)
        ),
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => bail!(
            "no network: pass --network or label namespace istio-system with {LABEL_NETWORK}; nothing was written"
        ),
    };
    let gateway = render::eastwest_gateway(
        &args.namespace,
        &network,
        args.service_type == ServiceType::NodePort,
    );
    if args.dry_run {
        print!("{}", render::dry_run_document(&target.context, &gateway)?);
        return Ok(());
    }
    let written = write::apply_gateway(&client, &gateway)
        .await
        .with_context(|| format!("context {}", target.context))?;
    println!(
        "{}: Gateway {}/{} {written}",
        target.cluster,
        args.namespace,
        endpoint::EASTWEST_GATEWAY
    );
    Ok(())
}

/// Every cluster's client, or every failure (nothing is written unless all connect).
async fn clients(
    kubeconfig: Option<&PathBuf>,
    contexts: &[ContextArg],
) -> anyhow::Result<Vec<kube::Client>> {
    let file = read_kubeconfig(kubeconfig)?;
    let mut out = Vec::new();
    let mut failed = Vec::new();
    for c in contexts {
        match context_client(&file, &c.context).await {
            Ok(client) => out.push(client),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    if failed.is_empty() {
        Ok(out)
    } else {
        Err(problems(failed))
    }
}

pub async fn link(args: LinkArgs) -> anyhow::Result<()> {
    let (contexts, one_way) = args.clusters.contexts();
    plan::check_contexts(&contexts).map_err(problems)?;
    let clients = clients(args.clusters.kubeconfig.as_ref(), &contexts).await?;
    let mut endpoints = Vec::new();
    let mut failed = Vec::new();
    for (context, client) in contexts.iter().zip(&clients) {
        match endpoint::read(client, context, &args.clusters.namespace).await {
            Ok(e) => endpoints.push(e),
            Err(e) => failed.push(format!(
                "{} (context {}): {e:#}",
                context.cluster, context.context
            )),
        }
    }
    if !failed.is_empty() {
        return Err(problems(failed));
    }
    plan::check_endpoints(&endpoints, args.flat_networks).map_err(problems)?;
    let directions = plan::directions(contexts.len(), one_way);
    let render_for =
        |d: &Direction| render::peer_gateway(&args.clusters.namespace, &endpoints[d.to]);
    if args.dry_run {
        for d in &directions {
            print!(
                "{}",
                render::dry_run_document(&endpoints[d.from].context, &render_for(d))?
            );
        }
        return Ok(());
    }
    write_each(&endpoints, &clients, &directions, |client, d| {
        let gateway = render_for(d);
        async move { write::apply_gateway(client, &gateway).await }
    })
    .await
}

pub async fn unlink(args: UnlinkArgs) -> anyhow::Result<()> {
    let (contexts, one_way) = args.clusters.contexts();
    plan::check_contexts(&contexts).map_err(problems)?;
    let directions = plan::directions(contexts.len(), one_way);
    let namespace = args.clusters.namespace.clone();
    if args.dry_run {
        for d in &directions {
            println!(
                "would delete Gateway {namespace}/{} in {} (context {})",
                render::peer_gateway_name(&contexts[d.to].cluster),
                contexts[d.from].cluster,
                contexts[d.from].context
            );
        }
        return Ok(());
    }
    let clients = clients(args.clusters.kubeconfig.as_ref(), &contexts).await?;
    // Unlinking needs no east-west Gateway: the names are the clusters'.
    let named: Vec<ClusterEndpoint> = contexts
        .iter()
        .map(|c| ClusterEndpoint {
            context: c.context.clone(),
            cluster: c.cluster.clone(),
            network: String::new(),
            trust_domain: String::new(),
            address: Default::default(),
            node_port: false,
            namespace_uid: None,
        })
        .collect();
    write_each(&named, &clients, &directions, |client, d| {
        let name = render::peer_gateway_name(&contexts[d.to].cluster);
        let namespace = namespace.clone();
        async move { write::delete_peer_gateway(client, &namespace, &name).await }
    })
    .await
}

/// Runs `write` for every direction, cluster by cluster (a cluster's first failure skips
/// its remaining writes; other clusters still get theirs), printing one line per write and
/// finally which clusters are complete and which are not.
async fn write_each<'a, F, Fut>(
    clusters: &'a [ClusterEndpoint],
    clients: &'a [kube::Client],
    directions: &[Direction],
    write: F,
) -> anyhow::Result<()>
where
    F: Fn(&'a kube::Client, &Direction) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Written>>,
{
    let mut complete = Vec::new();
    let mut incomplete = Vec::new();
    for (index, cluster) in clusters.iter().enumerate() {
        let mine: Vec<&Direction> = directions.iter().filter(|d| d.from == index).collect();
        if mine.is_empty() {
            continue;
        }
        let mut failure = None;
        for d in mine {
            let peer = &clusters[d.to].cluster;
            match write(&clients[index], d).await {
                Ok(written) => println!(
                    "{}: peer Gateway {} {written}",
                    cluster.cluster,
                    render::peer_gateway_name(peer)
                ),
                Err(e) => {
                    println!(
                        "{}: peer Gateway {} FAILED: {e:#}",
                        cluster.cluster,
                        render::peer_gateway_name(peer)
                    );
                    failure = Some(e);
                    break;
                }
            }
        }
        match failure {
            None => complete.push(cluster.cluster.as_str()),
            Some(_) => incomplete.push(cluster.cluster.as_str()),
        }
    }
    if incomplete.is_empty() {
        return Ok(());
    }
    let list = |l: &[&str]| {
        if l.is_empty() {
            "none".to_string()
        } else {
            l.join(", ")
        }
    };
    bail!(
        "clusters written: {}; not completed: {} (re-run the same command to complete it)",
        list(&complete),
        list(&incomplete)
    )
}
