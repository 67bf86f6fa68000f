//! Resource requests: path parsing, verb selection, and get / list / create / update /
//! patch / apply / delete / deletecollection with Kubernetes semantics.
//!
//! Owns request validation (names, namespaces, apiVersion/kind, preconditions), server
//! metadata (uid, creationTimestamp, generation, managedFields through
//! `managed_fields`/`apply`), the status-subresource split, no-op detection (a write that
//! changes nothing gets no new resourceVersion), finalizers (a delete of an object with
//! finalizers only sets `deletionTimestamp`; the write that empties them deletes it), list
//! pagination and fault hooks. It must
//! never hold the store lock across an await: every read-modify-write is one
//! `Store::mutate` closure.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response};
use serde_json::{Value, json};

use super::State;
use super::apply::{ApplyRequest, apply};
use super::faults::Verb;
use super::managed_fields::{Scope, record_update};
use super::meta;
use super::patch::{json_patch, merge_patch};
use super::resources::{self, NAMESPACES, ResourceDef, ResourceId};
use super::selector::{FieldSelector, LabelSelector};
use super::status::{self, ApiError};
use super::store::{Mutation, ObjectKey, object_key};
use super::table;
use super::token_review;
use super::watch;
use super::wire::{Body, Query, error_response, json_response};

/// A request after the HTTP layer: body fully read.
pub(crate) struct ApiRequest {
    pub method: Method,
    pub query: Query,
    pub content_type: String,
    pub accept: String,
    pub user_agent: String,
    pub body: Bytes,
}

/// What a resource path addresses.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub id: ResourceId,
    pub def: &'static ResourceDef,
    pub version: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Target {
    pub fn api_version(&self) -> String {
        self.def.api_version(&self.version)
    }

    fn storage_api_version(&self) -> String {
        self.def.api_version(self.def.preferred_version())
    }

    fn scope(&self) -> Scope {
        match self.subresource.as_deref() {
            Some("status") => Scope::Status,
            _ => Scope::Main {
                status_separate: self.def.status_subresource,
            },
        }
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    fn key(&self) -> ObjectKey {
        (
            self.namespace.clone().unwrap_or_default(),
            self.name().to_string(),
        )
    }

    /// An object as served at the requested version.
    pub fn output(&self, obj: &Value) -> Value {
        let mut out = obj.clone();
        if let Value::Object(map) = &mut out {
            map.insert("apiVersion".into(), Value::String(self.api_version()));
            map.insert("kind".into(), Value::String(self.def.kind.to_string()));
        }
        out
    }
}

/// Parses `/api/v1/...` and `/apis/<g>/<v>/...`; None if the path is not below a
/// group-version (discovery or unknown), `Err` if it is but addresses nothing served.
pub(crate) fn parse_target(path: &str) -> Option<Result<Target, ApiError>> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] if !rest.is_empty() => ("", *version, rest),
        ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
        _ => return None,
    };
    let not_found = || ApiError::path_not_found(path);
    let find = |plural: &str| resources::find(group, version, plural);
    let target =
        |id: ResourceId, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| {
            let def = resources::def(id);
            if def.namespaced != namespace.is_some() && (name.is_some() || namespace.is_some()) {
                return Err(not_found());
            }
            if let Some(sub) = sub
                && (sub != "status" || !def.status_subresource)
            {
                return Err(not_found());
            }
            Ok(Target {
                id,
                def,
                version: version.to_string(),
                namespace: namespace.map(String::from),
                name: name.map(String::from),
                subresource: sub.map(String::from),
            })
        };
    let namespaced_plural = |p: &str| find(p).filter(|id| resources::def(*id).namespaced);
    let result = match rest {
        ["namespaces", ns, plural, tail @ ..] if namespaced_plural(plural).is_some() => {
            let id = namespaced_plural(plural).ok_or_else(not_found);
            match (id, tail) {
                (Ok(id), []) => target(id, Some(ns), None, None),
                (Ok(id), [name]) => target(id, Some(ns), Some(name), None),
                (Ok(id), [name, sub]) => target(id, Some(ns), Some(name), Some(sub)),
                (Err(e), _) => Err(e),
                _ => Err(not_found()),
            }
        }
        [plural] => match find(plural) {
            Some(id) => target(id, None, None, None),
            None => Err(not_found()),
        },
        [plural, name] => match find(plural) {
            Some(id) => target(id, None, Some(name), None),
            None => Err(not_found()),
        },
        [plural, name, sub] => match find(plural) {
            Some(id) => target(id, None, Some(name), Some(sub)),
            None => Err(not_found()),
        },
        _ => Err(not_found()),
    };
    Some(result)
}

fn verb_for(target: &Target, req: &ApiRequest) -> Result<Verb, ApiError> {
    let object = target.name.is_some();
    let verb = match (&req.method, object) {
        (&Method::GET, true) => Verb::Get,
        (&Method::GET, false) if req.query.flag("watch") => Verb::Watch,
        (&Method::GET, false) => Verb::List,
        (&Method::POST, false) => Verb::Create,
        (&Method::PUT, true) => Verb::Update,
        (&Method::PATCH, true) if req.content_type.starts_with("application/apply-patch") => {
            Verb::Apply
        }
        (&Method::PATCH, true) => Verb::Patch,
        (&Method::DELETE, true) => Verb::Delete,
        (&Method::DELETE, false) => Verb::DeleteCollection,
        _ => return Err(ApiError::method_not_allowed()),
    };
    let allowed = if target.def.create_only {
        verb == Verb::Create
    } else if target.subresource.is_some() {
        matches!(verb, Verb::Get | Verb::Update | Verb::Patch | Verb::Apply)
    } else {
        // Creating or deleting collections needs a namespace for namespaced types.
        !(target.def.namespaced
            && target.namespace.is_none()
            && matches!(verb, Verb::Create | Verb::DeleteCollection))
    };
    if allowed {
        Ok(verb)
    } else {
        Err(ApiError::method_not_allowed())
    }
}

/// Serves one resource request (counters and faults included).
pub(crate) async fn handle(state: &Arc<State>, target: Target, req: ApiRequest) -> Response<Body> {
    let verb = match verb_for(&target, &req) {
        Ok(verb) => verb,
        Err(err) => return error_response(&err),
    };
    state.counters.count(verb, &target.def.qualified_plural());
    let response = serve_verb(state, verb, &target, &req).await;
    state
        .counters
        .count_outcome(verb, response.status().as_u16());
    response
}

async fn serve_verb(
    state: &Arc<State>,
    verb: Verb,
    target: &Target,
    req: &ApiRequest,
) -> Response<Body> {
    if let Some(delay) = state.faults.delay() {
        tokio::time::sleep(delay).await;
    }
    if let Some(code) = state.faults.take_failure(verb) {
        return error_response(&ApiError::injected(code));
    }
    if verb.is_write() && !target.def.create_only && state.faults.take_conflict() {
        return error_response(&ApiError::conflict(target.def, target.name()));
    }
    let result = match verb {
        Verb::Get => get(state, target, req),
        Verb::List => list(state, target, req),
        Verb::Watch => return watch::start(state, target, &req.query),
        Verb::Create if target.def.create_only => token_review::create(state, target, req),
        Verb::Create => create(state, target, req),
        Verb::Update => update(state, target, req),
        Verb::Patch => patch(state, target, req),
        Verb::Apply => server_side_apply(state, target, req),
        Verb::Delete => delete(state, target, req),
        Verb::DeleteCollection => delete_collection(state, target, req),
    };
    match result {
        Ok(response) => response,
        Err(err) => error_response(&err),
    }
}

fn get(state: &State, target: &Target, req: &ApiRequest) -> Result<Response<Body>, ApiError> {
    let obj = state
        .store
        .get(target.id, &target.key())
        .ok_or_else(|| ApiError::not_found(target.def, target.name()))?;
    let out = target.output(&obj);
    if table::wants_table(&req.accept) {
        let rv = meta::resource_version(&out).unwrap_or("").to_string();
        let include = req.query.get("includeObject").unwrap_or("Metadata");
        return Ok(json_response(
            200,
            &table::table(target.def, &[out], &rv, include),
        ));
    }
    Ok(json_response(200, &out))
}

fn selectors(query: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse field selector: {e}")))?;
    Ok((labels, fields))
}

pub(crate) fn parse_rv(text: &str) -> Result<u64, ApiError> {
    text.parse::<u64>().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid resourceVersion {text:?}: must be an unsigned integer"
        ))
    })
}

fn encode_continue(rv: u64, key: &ObjectKey) -> String {
    let raw = json!([rv, key.0, key.1]).to_string();
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Result<(u64, ObjectKey), ApiError> {
    let invalid = || ApiError::bad_request("continue key is not valid");
    if !token.len().is_multiple_of(2) {
        return Err(invalid());
    }
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2).unwrap_or("zz"), 16).map_err(|_| invalid()))
        .collect::<Result<_, _>>()?;
    let (rv, ns, name): (u64, String, String) =
        serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    Ok((rv, (ns, name)))
}

fn list(state: &State, target: &Target, req: &ApiRequest) -> Result<Response<Body>, ApiError> {
    let q = &req.query;
    let (labels, fields) = selectors(q)?;
    let limit = match q.non_empty("limit") {
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {text:?}")))?,
        None => 0,
    };
    let (at, after) = match q.non_empty("continue") {
        Some(token) => {
            let (rv, key) = decode_continue(token)?;
            (Some(rv), Some(key))
        }
        None => match q.non_empty("resourceVersion") {
            None | Some("0") => (None, None),
            Some(text) => {
                let rv = parse_rv(text)?;
                match q.get("resourceVersionMatch") {
                    Some("Exact") => (Some(rv), None),
                    Some("NotOlderThan") | Some("") | None => {
                        let current = state.store.current_rv();
                        if rv > current {
                            return Err(ApiError::new(
                                504,
                                "Timeout",
                                format!("Too large resource version: {rv}, current: {current}"),
                            ));
                        }
                        (None, None)
                    }
                    Some(other) => {
                        return Err(ApiError::bad_request(format!(
                            "invalid resourceVersionMatch {other:?}"
                        )));
                    }
                }
            }
        },
    };
    let (rv, items) = state
        .store
        .list(target.id, target.namespace.as_deref(), at)
        .map_err(|err| {
            if err.code == 410 && after.is_some() {
                ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter.",
                )
            } else {
                err
            }
        })?;
    let mut matching = items
        .iter()
        .filter(|obj| after.as_ref().is_none_or(|after| &object_key(obj) > after))
        .filter(|obj| labels.matches(obj) && fields.matches(obj));
    let mut page: Vec<Value> = Vec::new();
    let mut continue_token = None;
    let mut remaining = 0usize;
    for obj in matching.by_ref() {
        if limit > 0 && page.len() == limit {
            remaining = 1;
            break;
        }
        page.push(target.output(obj));
    }
    if remaining > 0 {
        remaining += matching.count();
        if let Some(last) = page.last() {
            continue_token = Some(encode_continue(rv, &object_key(last)));
        }
    }
    if table::wants_table(&req.accept) {
        let include = q.get("includeObject").unwrap_or("Metadata");
        let mut doc = table::table(target.def, &page, &rv.to_string(), include);
        if let (Some(token), Some(meta)) = (
            &continue_token,
            doc.get_mut("metadata").and_then(Value::as_object_mut),
        ) {
            meta.insert("continue".into(), json!(token));
        }
        return Ok(json_response(200, &doc));
    }
    let mut list_meta = json!({"resourceVersion": rv.to_string()});
    if let (Some(token), Value::Object(map)) = (&continue_token, &mut list_meta) {
        map.insert("continue".into(), json!(token));
        map.insert("remainingItemCount".into(), json!(remaining));
    }
    Ok(json_response(
        200,
        &json!({
            "kind": format!("{}List", target.def.kind),
            "apiVersion": target.api_version(),
            "metadata": list_meta,
            "items": page,
        }),
    ))
}

/// The manager of a write: `fieldManager`, else the User-Agent up to its first `/`.
fn field_manager(req: &ApiRequest) -> Result<String, ApiError> {
    match req.query.non_empty("fieldManager") {
        Some(manager) if manager.len() > 128 => Err(ApiError::bad_request(
            "fieldManager: Too long: may not be more than 128 bytes",
        )),
        Some(manager) => Ok(manager.to_string()),
        None => {
            let agent = req.user_agent.split('/').next().unwrap_or("").trim();
            Ok(if agent.is_empty() {
                "unknown".to_string()
            } else {
                agent.to_string()
            })
        }
    }
}

fn dry_run(req: &ApiRequest) -> Result<bool, ApiError> {
    match req.query.get("dryRun") {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "unsupported dryRun value {other:?}"
        ))),
    }
}

pub(crate) fn parse_body(req: &ApiRequest) -> Result<Value, ApiError> {
    let ct = req.content_type.as_str();
    let value: Value = if ct.starts_with("application/yaml") {
        yaml_serde::from_slice(&req.body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid YAML: {e}"))
        })?
    } else if ct.is_empty() || ct.starts_with("application/json") || ct.starts_with("*/*") {
        serde_json::from_slice(&req.body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?
    } else {
        return Err(ApiError::unsupported_body_type(ct));
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

/// apiVersion/kind in a body must match the URL when present.
fn check_type(target: &Target, obj: &Value) -> Result<(), ApiError> {
    let expected = target.api_version();
    if let Some(api_version) = obj.get("apiVersion").and_then(Value::as_str)
        && !api_version.is_empty()
        && api_version != expected
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({expected})"
        )));
    }
    if let Some(kind) = obj.get("kind").and_then(Value::as_str)
        && !kind.is_empty()
        && kind != target.def.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            target.def.kind
        )));
    }
    Ok(())
}

/// A body's name and namespace must match the URL when present.
fn check_identity(target: &Target, obj: &Value) -> Result<(), ApiError> {
    let name = meta::name(obj);
    if target.name.is_some() && !name.is_empty() && name != target.name() {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({name}) does not match the name on the URL ({})",
            target.name()
        )));
    }
    let namespace = meta::namespace(obj);
    if let Some(url_ns) = &target.namespace
        && !namespace.is_empty()
        && namespace != url_ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

/// Puts identity and type on an object as stored.
fn normalize(target: &Target, obj: &mut Value, name: &str) {
    if let Value::Object(map) = obj {
        map.insert("apiVersion".into(), json!(target.storage_api_version()));
        map.insert("kind".into(), json!(target.def.kind));
    }
    let metadata = meta::metadata_mut(obj);
    metadata.insert("name".into(), json!(name));
    match &target.namespace {
        Some(ns) if target.def.namespaced => {
            metadata.insert("namespace".into(), json!(ns));
        }
        _ => {
            metadata.remove("namespace");
        }
    }
}

/// Server metadata of a brand-new object.
fn initialize(state: &State, target: &Target, obj: &mut Value, now: &str) {
    if target.def.group.is_empty() && target.def.plural == "services" {
        default_service(state, obj);
    }
    let tracks_generation = target.def.tracks_generation;
    let metadata = meta::metadata_mut(obj);
    for field in meta::SERVER_OWNED {
        metadata.remove(*field);
    }
    metadata.insert("uid".into(), json!(meta::new_uid()));
    metadata.insert("creationTimestamp".into(), json!(now));
    if tracks_generation {
        metadata.insert("generation".into(), json!(1));
    }
    if target.id == NAMESPACES {
        let name = meta::name(obj).to_string();
        let labels = meta::metadata_mut(obj)
            .entry("labels")
            .or_insert_with(|| json!({}));
        if let Value::Object(labels) = labels {
            labels.insert("kubernetes.io/metadata.name".into(), json!(name));
        }
        if let Value::Object(map) = obj {
            map.insert("status".into(), json!({"phase": "Active"}));
        }
    } else if target.def.status_subresource
        && let Value::Object(map) = obj
    {
        map.remove("status");
    }
}

/// What kube-apiserver fills in on a new Service: `type: ClusterIP` and, unless headless
/// or ExternalName, a cluster IP (sequential from 10.96.0.1).
fn default_service(state: &State, obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let kind = spec
        .entry("type")
        .or_insert_with(|| json!("ClusterIP"))
        .clone();
    if kind == "ExternalName"
        || spec
            .get("clusterIP")
            .is_some_and(|ip| ip.as_str().is_some_and(|ip| !ip.is_empty()))
    {
        return;
    }
    let offset = state
        .next_cluster_ip
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let ip = std::net::Ipv4Addr::from(
        u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) + (offset % (1 << 20)),
    );
    spec.insert("clusterIP".into(), json!(ip.to_string()));
    spec.insert("clusterIPs".into(), json!([ip.to_string()]));
}

/// An update that leaves out the allocated cluster IP (and type) keeps the current ones,
/// as kube-apiserver does.
fn keep_service_allocations(current: &Value, new: &mut Value) {
    let (Some(old_spec), Some(new_spec)) = (
        current.get("spec").and_then(Value::as_object),
        new.get_mut("spec").and_then(Value::as_object_mut),
    ) else {
        return;
    };
    for field in ["type", "clusterIP", "clusterIPs"] {
        if let Some(value) = old_spec.get(field)
            && new_spec
                .get(field)
                .is_none_or(|v| v.is_null() || v.as_str() == Some(""))
        {
            new_spec.insert(field.to_string(), value.clone());
        }
    }
}

/// Bumps `generation` when anything outside metadata/status changed.
fn bump_generation(target: &Target, current: &Value, new: &mut Value) {
    if !target.def.tracks_generation {
        return;
    }
    let generation = meta::generation(current).unwrap_or(1);
    let next = if meta::spec_part(current) != meta::spec_part(new) {
        generation + 1
    } else {
        generation
    };
    meta::metadata_mut(new).insert("generation".into(), json!(next));
}

/// Final step of every write to an existing object: ownership, generation, no-op check.
fn finish_update(
    target: &Target,
    current: &Value,
    mut new: Value,
    manager: &str,
    now: &str,
) -> Mutation {
    meta::carry_server_metadata(current, &mut new);
    if target.def.group.is_empty() && target.def.plural == "services" {
        keep_service_allocations(current, &mut new);
    }
    record_update(
        Some(current),
        &mut new,
        manager,
        target.scope(),
        target.def.list_maps,
        &target.api_version(),
        now,
    );
    bump_generation(target, current, &mut new);
    store_changed(current, new)
}

/// Put `new` unless it equals `current`; an object awaiting deletion whose last
/// finalizer was just removed is deleted instead.
fn store_changed(current: &Value, new: Value) -> Mutation {
    if meta::comparable(&new) == meta::comparable(current) {
        Mutation::Unchanged
    } else if meta::deletion_requested(&new) && !meta::has_finalizers(&new) {
        Mutation::Delete
    } else {
        Mutation::Put(new)
    }
}

/// A delete: immediate without finalizers, otherwise only marks the object.
fn delete_decision(current: &Value) -> Mutation {
    if !meta::has_finalizers(current) {
        return Mutation::Delete;
    }
    if meta::deletion_requested(current) {
        return Mutation::Unchanged;
    }
    let mut marked = current.clone();
    let metadata = meta::metadata_mut(&mut marked);
    metadata.insert("deletionTimestamp".into(), json!(meta::now_rfc3339()));
    metadata.insert("deletionGracePeriodSeconds".into(), json!(0));
    Mutation::Put(marked)
}

/// Keeps the parts of `current` a write in `scope` must not change.
fn confine_to_scope(target: &Target, current: &Value, mut new: Value) -> Value {
    match target.scope() {
        Scope::Status => {
            let mut out = current.clone();
            if let Value::Object(map) = &mut out {
                match new.get_mut("status").map(Value::take) {
                    Some(status) => map.insert("status".into(), status),
                    None => map.remove("status"),
                };
            }
            out
        }
        Scope::Main {
            status_separate: true,
        } => {
            if let Value::Object(map) = &mut new {
                match current.get("status") {
                    Some(status) => map.insert("status".into(), status.clone()),
                    None => map.remove("status"),
                };
            }
            new
        }
        Scope::Main {
            status_separate: false,
        } => new,
    }
}

fn respond(target: &Target, code: u16, obj: &Value) -> Response<Body> {
    json_response(code, &target.output(obj))
}

fn create(state: &State, target: &Target, req: &ApiRequest) -> Result<Response<Body>, ApiError> {
    let mut obj = parse_body(req)?;
    check_type(target, &obj)?;
    check_identity(target, &obj)?;
    if meta::resource_version(&obj).is_some() {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    let manager = field_manager(req)?;
    let name = match meta::meta_str(&obj, "name").filter(|n| !n.is_empty()) {
        Some(name) => name.to_string(),
        None => match meta::meta_str(&obj, "generateName").filter(|n| !n.is_empty()) {
            Some(prefix) => format!("{prefix}{}", meta::random_suffix()),
            None => String::new(),
        },
    };
    meta::validate_name(&name).map_err(|e| {
        ApiError::invalid(
            target.def,
            &name,
            format!("metadata.name: Invalid value: {name:?}: {e}"),
        )
    })?;
    let now = meta::now_rfc3339();
    normalize(target, &mut obj, &name);
    initialize(state, target, &mut obj, &now);
    let scope = Scope::Main {
        status_separate: target.def.status_subresource,
    };
    record_update(
        None,
        &mut obj,
        &manager,
        scope,
        target.def.list_maps,
        &target.api_version(),
        &now,
    );
    let key = (target.namespace.clone().unwrap_or_default(), name.clone());
    let committed = state
        .store
        .mutate_maybe_dry(target.id, key, dry_run(req)?, |current| match current {
            Some(_) => Err(ApiError::already_exists(target.def, &name)),
            None => Ok(Mutation::Put(obj)),
        })?;
    Ok(respond(target, 201, &committed.object))
}

fn update(state: &State, target: &Target, req: &ApiRequest) -> Result<Response<Body>, ApiError> {
    let mut body = parse_body(req)?;
    check_type(target, &body)?;
    check_identity(target, &body)?;
    let manager = field_manager(req)?;
    let precondition = meta::resource_version(&body).map(String::from);
    let now = meta::now_rfc3339();
    normalize(target, &mut body, target.name());
    let committed =
        state
            .store
            .mutate_maybe_dry(target.id, target.key(), dry_run(req)?, |current| {
                let current =
                    current.ok_or_else(|| ApiError::not_found(target.def, target.name()))?;
                if precondition
                    .as_deref()
                    .is_some_and(|rv| Some(rv) != meta::resource_version(current))
                {
                    return Err(ApiError::conflict(target.def, target.name()));
                }
                let new = confine_to_scope(target, current, body);
                Ok(finish_update(target, current, new, &manager, &now))
            })?;
    Ok(respond(target, 200, &committed.object))
}

fn patch(state: &State, target: &Target, req: &ApiRequest) -> Result<Response<Body>, ApiError> {
    let kind = req
        .content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if !matches!(
        kind.as_str(),
        "application/merge-patch+json"
            | "application/strategic-merge-patch+json"
            | "application/json-patch+json"
    ) {
        return Err(ApiError::unsupported_media_type(&req.content_type));
    }
    let doc: Value = serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
    let manager = field_manager(req)?;
    let now = meta::now_rfc3339();
    let committed =
        state
            .store
            .mutate_maybe_dry(target.id, target.key(), dry_run(req)?, |current| {
                let current =
                    current.ok_or_else(|| ApiError::not_found(target.def, target.name()))?;
                let mut patched = (**current).clone();
                if kind == "application/json-patch+json" {
                    json_patch(&mut patched, &doc).map_err(|e| ApiError::new(422, "Invalid", e))?;
                } else {
                    if !doc.is_object() {
                        return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                    }
                    merge_patch(&mut patched, &doc);
                }
                if meta::resource_version(&patched) != meta::resource_version(current) {
                    return Err(ApiError::conflict(target.def, target.name()));
                }
                if meta::name(&patched) != target.name()
                    || meta::namespace(&patched) != meta::namespace(current)
                {
                    return Err(ApiError::invalid(
                        target.def,
                        target.name(),
                        "metadata.name: field is immutable",
                    ));
                }
                normalize(target, &mut patched, target.name());
                let new = confine_to_scope(target, current, patched);
                Ok(finish_update(target, current, new, &manager, &now))
            })?;
    Ok(respond(target, 200, &committed.object))
}

fn server_side_apply(
    state: &State,
    target: &Target,
    req: &ApiRequest,
) -> Result<Response<Body>, ApiError> {
    let manager = req
        .query
        .non_empty("fieldManager")
        .ok_or_else(|| ApiError::bad_request("PATCH, fieldManager is required for apply requests"))?
        .to_string();
    if manager.len() > 128 {
        return Err(ApiError::bad_request(
            "fieldManager: Too long: may not be more than 128 bytes",
        ));
    }
    let force = req.query.flag("force");
    let config: Value = yaml_serde::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !config.is_object() {
        return Err(ApiError::bad_request(
            "an apply configuration must be an object",
        ));
    }
    for field in ["apiVersion", "kind"] {
        if config
            .get(field)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request(format!(
                "{field} must be set in an apply configuration"
            )));
        }
    }
    check_type(target, &config)?;
    check_identity(target, &config)?;
    meta::validate_name(target.name()).map_err(|e| {
        ApiError::invalid(
            target.def,
            target.name(),
            format!("metadata.name: Invalid value: {e}"),
        )
    })?;
    let now = meta::now_rfc3339();
    let api_version = target.api_version();
    let request = ApplyRequest {
        manager: &manager,
        force,
        scope: target.scope(),
        list_maps: target.def.list_maps,
        api_version: &api_version,
        now: &now,
    };
    let mut created = false;
    let committed =
        state
            .store
            .mutate_maybe_dry(target.id, target.key(), dry_run(req)?, |current| {
                if current.is_none() && target.subresource.is_some() {
                    return Err(ApiError::not_found(target.def, target.name()));
                }
                // A resourceVersion in an apply configuration is a precondition.
                if let Some(wanted) = meta::resource_version(&config)
                    && current.is_none_or(|c| meta::resource_version(c) != Some(wanted))
                {
                    return Err(match current {
                        Some(_) => ApiError::conflict(target.def, target.name()),
                        None => ApiError::not_found(target.def, target.name()),
                    });
                }
                let mut skeleton = json!({});
                normalize(target, &mut skeleton, target.name());
                let mut new = apply(current.map(|c| &**c), skeleton, &config, request).map_err(
                    |conflicts| {
                        ApiError::apply_conflict(
                            target.def,
                            target.name(),
                            &api_version,
                            &conflicts,
                        )
                    },
                )?;
                normalize(target, &mut new, target.name());
                match current {
                    None => {
                        let managed = meta::metadata(&new)
                            .and_then(|m| m.get("managedFields"))
                            .cloned();
                        initialize(state, target, &mut new, &now);
                        if let Some(managed) = managed {
                            meta::metadata_mut(&mut new).insert("managedFields".into(), managed);
                        }
                        created = true;
                        Ok(Mutation::Put(new))
                    }
                    Some(current) => {
                        // `apply` started from `current`, so server metadata is already current's.
                        bump_generation(target, current, &mut new);
                        Ok(store_changed(current, new))
                    }
                }
            })?;
    Ok(respond(
        target,
        if created { 201 } else { 200 },
        &committed.object,
    ))
}

fn delete_options(req: &ApiRequest) -> Result<(Option<String>, Option<String>), ApiError> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok((None, None));
    }
    let options: Value = serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?;
    let pre = |field: &str| {
        options
            .pointer(&format!("/preconditions/{field}"))
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(String::from)
    };
    Ok((pre("uid"), pre("resourceVersion")))
}

fn delete(state: &State, target: &Target, req: &ApiRequest) -> Result<Response<Body>, ApiError> {
    let (uid, rv) = delete_options(req)?;
    let committed =
        state
            .store
            .mutate_maybe_dry(target.id, target.key(), dry_run(req)?, |current| {
                let current =
                    current.ok_or_else(|| ApiError::not_found(target.def, target.name()))?;
                if uid
                    .as_deref()
                    .is_some_and(|uid| Some(uid) != meta::meta_str(current, "uid"))
                {
                    return Err(ApiError::conflict(target.def, target.name()));
                }
                if rv
                    .as_deref()
                    .is_some_and(|rv| Some(rv) != meta::resource_version(current))
                {
                    return Err(ApiError::conflict(target.def, target.name()));
                }
                Ok(delete_decision(current))
            })?;
    if meta::has_finalizers(&committed.object) {
        // Still there, waiting for its finalizers: answer with the object, as
        // kube-apiserver does.
        return Ok(respond(target, 200, &committed.object));
    }
    let uid = meta::meta_str(&committed.object, "uid");
    let mut doc = status::success(target.def, target.name(), uid);
    if let Value::Object(map) = &mut doc {
        map.insert("code".into(), json!(200));
    }
    Ok(json_response(200, &doc))
}

fn delete_collection(
    state: &State,
    target: &Target,
    req: &ApiRequest,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(&req.query)?;
    let dry = dry_run(req)?;
    let (_, items) = state
        .store
        .list(target.id, target.namespace.as_deref(), None)?;
    let mut deleted = Vec::new();
    for obj in items
        .iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
    {
        let result = state
            .store
            .mutate_maybe_dry(target.id, object_key(obj), dry, |current| {
                Ok(match current {
                    Some(current) => delete_decision(current),
                    None => Mutation::Unchanged,
                })
            });
        // An object deleted concurrently is simply not part of the result.
        if let Ok(committed) = result {
            deleted.push(target.output(&committed.object));
        }
    }
    Ok(json_response(
        200,
        &json!({
            "kind": format!("{}List", target.def.kind),
            "apiVersion": target.api_version(),
            "metadata": {"resourceVersion": state.store.current_rv().to_string()},
            "items": deleted,
        }),
    ))
}
