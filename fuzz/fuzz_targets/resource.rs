//! Resource validation (`Resource::from_wire`) of both types. The first byte picks the
//! type (even: Address, odd: Authorization); the rest is the `Any.value` body. Each body
//! is validated under its semantic name (so valid bodies get past the name check) and
//! under a wrong one; an accepted resource keeps its body byte for byte and answers every
//! accessor without panicking.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use peerd::xds::resource::{Resource, ResourceError, summarize};
use peerd::xds::types::ResourceType;

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    let kind = if selector % 2 == 0 {
        ResourceType::Address
    } else {
        ResourceType::Authorization
    };
    let body = Bytes::copy_from_slice(body);
    let Ok(summary) = summarize(kind, &body) else {
        assert!(Resource::from_body(kind, body.clone()).is_err());
        return;
    };
    let name = summary.semantic_name();
    let resource = Resource::from_wire(kind, name.as_str(), "v1", body.clone())
        .expect("a body that summarizes is valid under its semantic name");
    assert_eq!(resource.body, body, "the body is kept as received");
    assert_eq!(&*resource.name, name.as_str());
    assert_eq!(resource.summary.semantic_name(), name);
    let _ = resource.decode_address();
    let _ = (resource.as_workload(), resource.as_service());
    let wrong = format!("{name}#not-it");
    if !resource.summary.has_semantic_name(&wrong) {
        assert!(matches!(
            Resource::from_wire(kind, wrong.as_str(), "v1", body.clone()),
            Err(ResourceError::NameMismatch { .. })
        ));
    }
    let own = Resource::from_body(kind, body).expect("valid");
    assert!(peerd::xds::resource::is_content_version(
        &own.version,
        &own.body
    ));
});
