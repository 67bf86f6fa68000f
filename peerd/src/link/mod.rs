//! `peerd expose`, `peerd link`, `peerd unlink`: the operator's peering workflow over
//! kubeconfig contexts. `expose` writes a cluster's `istio-eastwest` Gateway; `link`
//! writes into every linked cluster an `istio-remote-peer-<cluster>` Gateway for every
//! other one (or one way with `--from`/`--to`), filled from what the target cluster
//! publishes; `unlink` deletes those Gateways.
//!
//! Owns: reading a cluster's peering endpoint ([`endpoint`]), validating a link before
//! anything is written ([`plan`]), the Gateway objects ([`render`]) and the
//! compare-then-apply writes ([`write`]); [`command`] ties them to the command line.
//! It must never write before every cluster of a command was read and validated, never
//! write fields other than the ones it renders (server-side apply, field manager
//! `peerd`), and never touch a Gateway's status (istiod and the peerd leader own it).

pub mod command;
pub mod endpoint;
pub mod plan;
pub mod render;
pub mod write;

/// At most this many characters of a value read from an API server go into a message.
const SHOWN_CHARS: usize = 128;

/// `value` as shown in a message: quoted, cut to a bounded length.
pub(crate) fn shown(value: &str) -> String {
    if value.chars().count() <= SHOWN_CHARS {
        format!("{value:?}")
    } else {
        let cut: String = value.chars().take(SHOWN_CHARS).collect();
        format!("{cut:?}…")
    }
}
