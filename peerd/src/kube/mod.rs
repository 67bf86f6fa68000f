//! Kubernetes side of peerd.
//!
//! Owns everything that talks the Kubernetes API. For now this is only the emulated API
//! server used by tests and the sandbox; it must never be linked into a code path that
//! serves a real cluster.

pub mod emulator;
