//! The received-response envelope parser (`xds::received`): a `DeltaDiscoveryResponse`
//! decoded with each resource left as bytes, and `Envelope::parse` of each resource. The
//! oracle is the generated (prost) decoder: both accept and reject exactly the same
//! inputs and agree on every field.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use peerd::proto::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use peerd::xds::received::{Envelope, ReceivedResponse};
use prost::Message;

fn generated(raw: &[u8]) -> Result<Envelope, prost::DecodeError> {
    Resource::decode(raw).map(Envelope::from)
}

fuzz_target!(|data: &[u8]| {
    let raw = Bytes::copy_from_slice(data);

    // One Resource envelope, as the client parses each of a response's resources.
    match (Envelope::parse(&raw), generated(data)) {
        (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs, "envelopes differ"),
        (Err(_), Err(_)) => {}
        (ours, theirs) => panic!("envelope: ours {ours:?}, generated {theirs:?}"),
    }

    // A whole response: resources stay bytes until parsed, so the received form may
    // accept what the generated one rejects only because of a malformed resource.
    let received = ReceivedResponse::decode(raw.clone());
    let full = DeltaDiscoveryResponse::decode(data);
    match (&received, &full) {
        (Ok(r), Ok(g)) => {
            assert_eq!(r.system_version_info, g.system_version_info);
            assert_eq!(r.type_url, g.type_url);
            assert_eq!(r.nonce, g.nonce);
            assert_eq!(r.removed_resources, g.removed_resources);
            assert_eq!(r.resources.len(), g.resources.len());
            for (bytes, resource) in r.resources.iter().zip(&g.resources) {
                let parsed = Envelope::parse(bytes).expect("generated decoder accepted it");
                assert_eq!(parsed, Envelope::from(resource.clone()));
            }
            // Re-encoding what was received and decoding it again changes nothing.
            let again = ReceivedResponse::decode(r.encode_to_vec().as_slice())
                .expect("a re-encoded response decodes");
            assert_eq!(&again, r);
        }
        (Ok(r), Err(_)) => assert!(
            r.resources.iter().any(|b| Envelope::parse(b).is_err()),
            "received form accepted a response the generated decoder rejects, with every resource valid"
        ),
        (Err(_), Err(_)) => {}
        (Err(e), Ok(_)) => panic!("received form rejected a valid response: {e}"),
    }
});
