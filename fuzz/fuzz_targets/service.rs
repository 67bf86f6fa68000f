//! Service → global-service translation, from what the API server sends: the input is
//! JSON read as a watch event of a Service (as kube-rs's watcher reads it), else as a
//! list, else as a bare Service. The labelled Services make the global-service set
//! (`kube::peering::global_services`), ServiceExports minus `service-scope=local`
//! Services make the exported set (`kube::mcs`), and each Service's
//! `<name>.<namespace>.mesh.internal` hostname with its ports becomes the imported
//! global service and its ServiceEntry/WorkloadEntry objects (`kube::flat_input`,
//! `kube::flatsync`). None may panic; every translation round-trips its names.
#![no_main]

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::WatchEvent;
use kube::core::ObjectList;
use libfuzzer_sys::fuzz_target;
use peerd::config::ServiceRef;
use peerd::kube::flat_input::exported_service;
use peerd::kube::flatsync::{
    PeerExports, PeerNetworkMode, desired_objects, global_service_of_key, service_entry_name,
};
use peerd::kube::gateways::is_global_service;
use peerd::kube::mcs::{ServiceExport, exported_services};
use peerd::kube::peering::global_services;

fn services(data: &[u8]) -> Vec<Service> {
    if let Ok(event) = serde_json::from_slice::<WatchEvent<Service>>(data) {
        return match event {
            WatchEvent::Added(s) | WatchEvent::Modified(s) | WatchEvent::Deleted(s) => vec![s],
            WatchEvent::Bookmark(_) | WatchEvent::Error(_) => Vec::new(),
        };
    }
    if let Ok(list) = serde_json::from_slice::<ObjectList<Service>>(data) {
        return list.items;
    }
    serde_json::from_slice::<Service>(data).map_or_else(|_| Vec::new(), |s| vec![s])
}

fuzz_target!(|data: &[u8]| {
    let found: Vec<Arc<Service>> = services(data).into_iter().map(Arc::new).collect();
    if found.is_empty() {
        return;
    }
    let labelled: Vec<Arc<Service>> = found
        .iter()
        .filter(|s| is_global_service(s))
        .cloned()
        .collect();
    let global = global_services(&BTreeSet::new(), &labelled);
    for s in &labelled {
        assert!(global.contains(&ServiceRef {
            namespace: s.namespace().unwrap_or_default(),
            name: s.name_any(),
        }));
    }
    let exports: Vec<Arc<ServiceExport>> = found
        .iter()
        .map(|s| {
            Arc::new(ServiceExport::new(
                &s.namespace().unwrap_or_default(),
                &s.name_any(),
            ))
        })
        .collect();
    let exported = exported_services(&exports, &found);
    assert!(exported.len() <= exports.len());

    let mut imported = Vec::new();
    for s in &found {
        let (namespace, name) = (s.namespace().unwrap_or_default(), s.name_any());
        let hostname = format!("{name}.{namespace}.mesh.internal");
        let ports: Vec<(u32, u32)> = s
            .spec
            .iter()
            .flat_map(|spec| spec.ports.iter().flatten())
            .map(|p| {
                let target = match &p.target_port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t)) => {
                        u32::try_from(*t).unwrap_or(0)
                    }
                    _ => 0,
                };
                (u32::try_from(p.port).unwrap_or(0), target)
            })
            .collect();
        let Some(service) = exported_service(&hostname, &ports) else {
            continue;
        };
        assert_eq!(service.hostname(), hostname, "the hostname round-trips");
        if let Some((ns, svc)) = global_service_of_key(&format!("{namespace}/{hostname}")) {
            assert_eq!(
                (ns.as_str(), svc.as_str()),
                (namespace.as_str(), name.as_str())
            );
        }
        assert!(!service_entry_name(&service).is_empty());
        imported.push(service);
    }
    let peers = [false, true].map(|flat| PeerExports {
        cluster: if flat { "flat-peer" } else { "remote-peer" }.into(),
        network: if flat { "net-local" } else { "net-remote" }.into(),
        mode: PeerNetworkMode::decide(
            if flat { "net-local" } else { "net-remote" },
            "net-local",
            true,
        ),
        workloads: Vec::new(),
        services: imported.clone(),
    });
    let desired = desired_objects("istio-system", &peers);
    let again = desired_objects("istio-system", &[peers[1].clone(), peers[0].clone()]);
    assert_eq!(
        desired.service_entries.keys().collect::<Vec<_>>(),
        again.service_entries.keys().collect::<Vec<_>>(),
        "desired objects do not depend on peer order"
    );
});
