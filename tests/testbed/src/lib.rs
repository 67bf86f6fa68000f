//! Stand-ins for what cannot run on this machine, for peerd's tests, benchmarks and the
//! `peerd-sandbox` binary: a simulated istiod and its population ([`sim`]), an emulated
//! Kubernetes API server ([`emulator`]), a throwaway PKI ([`pki`]), distinct free loopback ports ([`ports`]), the sandbox that runs
//! a whole federation of real `peerd` processes ([`sandbox`]), and probe benchmark
//! helpers ([`bench`]).
//!
//! Depends on the `peerd` library and is never linked into the `peerd` daemon (`cargo
//! xtask test` checks it). Everything here listens and connects on loopback only.

pub mod bench;
pub mod chaos;
pub mod cli;
pub mod emulator;
pub mod fuzz_seeds;
pub mod pki;
pub mod ports;
pub mod sandbox;
pub mod sim;
