//! Metrics derived by watching the data path from the side: how long a change takes to
//! reach the node's ztunnel (`peerd_propagation_seconds`) and how many resources each
//! origin holds (`peerd_resources`).
//!
//! It owns only bookkeeping fed by the store's, the merged view's and the server's
//! broadcasts. It must never sit on the data path: it only listens, and a lagging
//! listener loses measurements, never data.

pub mod propagation;
pub mod resources;

pub use propagation::{PropagationTracker, run_propagation};
pub use resources::run_resource_gauges;
