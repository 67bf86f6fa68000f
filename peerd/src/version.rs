//! Build information, for `peerd version`, the debug API and the `peerd_build_info` metric.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn long() -> String {
    format!(
        "peerd {VERSION} (rustc {}, {}-{})",
        option_env!("PEERD_RUSTC_VERSION").unwrap_or("unknown"),
        std::env::consts::ARCH,
        std::env::consts::OS
    )
}
