//! Connectivity probing: eBPF connect probes (loader + aggregator), the probe mode, and the
//! active prober that creates traffic to measure when there is none.
//!
//! Owns: everything between the kernel maps and per-destination/per-peer measurements.
//! Must never decide peer conditions itself (the peers module consumes these reports) and
//! never connect anywhere the prober's target guard refuses.

pub mod aggregator;
pub mod attribution;
pub mod loader;
pub mod metrics;
pub mod mode;
pub mod prober;
pub mod service;
pub mod status;
