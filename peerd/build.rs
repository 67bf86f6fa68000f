//! Compiles `proto/` with protox (no system `protoc`) and generates prost/tonic code.

use anyhow::Context;

const PROTOS: &[&str] = &[
    "envoy/service/discovery/v3/discovery.proto",
    "istio/workload/workload.proto",
    "istio/security/authorization.proto",
    "peerd/debug/v1/debug.proto",
];

fn main() -> anyhow::Result<()> {
    // Read at run time, not baked in with `env!`: a build script binary reused from a
    // target directory copied from another checkout must compile this checkout's protos.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let proto_root = std::path::Path::new(&manifest_dir).join("../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());
    let fds = protox::compile(PROTOS, [&proto_root]).context("compiling proto/")?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )
    .context("writing descriptor set")?;
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    if let Ok(out) = std::process::Command::new(rustc).arg("--version").output() {
        let v = String::from_utf8_lossy(&out.stdout);
        let v = v.trim().trim_start_matches("rustc ");
        println!("cargo:rustc-env=PEERD_RUSTC_VERSION={v}");
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost's codec, sizing large messages' buffers exactly (see `xds::codec`).
        .codec_path("crate::xds::codec::PeerdCodec")
        .bytes(".envoy.service.discovery.v3")
        // Resource bodies stay `Bytes` end to end (see `xds::any`).
        .extern_path(".google.protobuf.Any", "crate::xds::any::Any")
        // Written by hand so a server encodes held resources without copying them (see
        // `xds::response`); re-exported under its generated path by `proto.rs`.
        .extern_path(
            ".envoy.service.discovery.v3.DeltaDiscoveryResponse",
            "crate::xds::response::DeltaDiscoveryResponse",
        )
        // Ordered maps: equal content must encode to equal bytes (content versions).
        .btree_map(".istio")
        .compile_fds(fds)
        .context("generating code")?;
    Ok(())
}
