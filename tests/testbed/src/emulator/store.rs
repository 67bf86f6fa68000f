//! The object store: current objects, the global resourceVersion counter, and the
//! bounded event history that watches and consistent (paged or exact) lists read from.
//!
//! Owns atomic read-modify-write of one object (the caller's closure runs under the store
//! lock), resourceVersion assignment, event publication, namespace existence on create,
//! and namespace cascade deletion. It must never interpret object contents beyond
//! `metadata` and never block while holding its lock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::broadcast;

use super::meta;
use super::resources::{NAMESPACES, RESOURCES, ResourceId};
use super::status::ApiError;

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
pub type ObjectKey = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change. `old` is the object before the change (None for a create), so
/// history can be undone to rebuild the state at an earlier resourceVersion.
#[derive(Debug)]
pub struct StoredEvent {
    pub rv: u64,
    pub resource: ResourceId,
    pub event_type: EventType,
    pub object: Arc<Value>,
    pub old: Option<Arc<Value>>,
}

/// What a mutation closure decided.
#[derive(Debug)]
pub enum Mutation {
    /// Store this object (create or replace); the store sets `resourceVersion`.
    Put(Value),
    /// Delete the current object.
    Delete,
    /// Nothing changes: no new resourceVersion, no event.
    Unchanged,
}

/// The result of a committed (or no-op) mutation.
#[derive(Debug)]
pub struct Committed {
    pub object: Arc<Value>,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFrom {
    /// Synthetic ADDED events for the current state, then changes.
    Now,
    /// Every change after this resourceVersion.
    After(u64),
}

/// A watch registration: events up to `rv` come from `initial`/`replay`, later ones from
/// `receiver` (registered under the same lock, so nothing is missed or repeated).
pub struct Subscription {
    pub initial: Vec<Arc<Value>>,
    pub replay: Vec<Arc<StoredEvent>>,
    pub receiver: broadcast::Receiver<Arc<StoredEvent>>,
    pub rv: u64,
}

struct Inner {
    rv: u64,
    objects: Vec<BTreeMap<ObjectKey, Arc<Value>>>,
    history: VecDeque<Arc<StoredEvent>>,
    history_window: usize,
    /// History holds every event with `rv > floor`.
    floor: u64,
}

pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<StoredEvent>>,
}

impl Store {
    /// A store that retains `history_window` events (at least 1) and buffers
    /// `watch_buffer` undelivered events per watch before dropping a slow watch.
    pub fn new(history_window: usize, watch_buffer: usize) -> Self {
        let (events, _) = broadcast::channel(watch_buffer.max(16));
        Self {
            inner: Mutex::new(Inner {
                rv: 1,
                objects: RESOURCES.iter().map(|_| BTreeMap::new()).collect(),
                history: VecDeque::new(),
                history_window: history_window.max(1),
                floor: 1,
            }),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every write is a single
        // insert/remove), so poisoning is not a reason to stop serving.
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// The oldest resourceVersion a watch or consistent list may still start from.
    pub fn oldest_rv(&self) -> u64 {
        self.lock().floor
    }

    /// Forgets all history: every watch or list from an older resourceVersion gets 410.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.floor = inner.rv;
    }

    pub fn get(&self, resource: ResourceId, key: &ObjectKey) -> Option<Arc<Value>> {
        self.lock().objects[resource].get(key).cloned()
    }

    /// Runs `decide` on the current object under the store lock and commits its decision.
    pub fn mutate<F>(
        &self,
        resource: ResourceId,
        key: ObjectKey,
        decide: F,
    ) -> Result<Committed, ApiError>
    where
        F: FnOnce(Option<&Arc<Value>>) -> Result<Mutation, ApiError>,
    {
        self.mutate_maybe_dry(resource, key, false, decide)
    }

    /// [`Store::mutate`]; with `dry_run` every check runs but nothing is committed (the
    /// returned object keeps the current resourceVersion).
    pub fn mutate_maybe_dry<F>(
        &self,
        resource: ResourceId,
        key: ObjectKey,
        dry_run: bool,
        decide: F,
    ) -> Result<Committed, ApiError>
    where
        F: FnOnce(Option<&Arc<Value>>) -> Result<Mutation, ApiError>,
    {
        let mut inner = self.lock();
        let current = inner.objects[resource].get(&key).cloned();
        match decide(current.as_ref())? {
            Mutation::Unchanged => match current {
                Some(object) => Ok(Committed { object }),
                None => Err(ApiError::internal("no-op mutation of a missing object")),
            },
            Mutation::Put(mut object) => {
                if current.is_none() && RESOURCES[resource].namespaced {
                    let ns_key = (String::new(), key.0.clone());
                    if !inner.objects[NAMESPACES].contains_key(&ns_key) {
                        return Err(ApiError::namespace_not_found(&key.0));
                    }
                }
                if dry_run {
                    return Ok(Committed {
                        object: Arc::new(object),
                    });
                }
                inner.rv += 1;
                let rv = inner.rv;
                meta::metadata_mut(&mut object)
                    .insert("resourceVersion".into(), Value::String(rv.to_string()));
                let object = Arc::new(object);
                inner.objects[resource].insert(key, object.clone());
                let event_type = if current.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                self.publish(&mut inner, resource, event_type, object.clone(), current);
                Ok(Committed { object })
            }
            Mutation::Delete => {
                let Some(old) = current else {
                    return Err(ApiError::internal("delete of a missing object"));
                };
                if dry_run {
                    return Ok(Committed { object: old });
                }
                let deleted = self.remove_locked(&mut inner, resource, &key, old);
                if resource == NAMESPACES {
                    self.cascade_namespace_delete(&mut inner, &key.1);
                }
                Ok(Committed { object: deleted })
            }
        }
    }

    fn remove_locked(
        &self,
        inner: &mut Inner,
        resource: ResourceId,
        key: &ObjectKey,
        old: Arc<Value>,
    ) -> Arc<Value> {
        inner.rv += 1;
        let rv = inner.rv;
        inner.objects[resource].remove(key);
        let mut gone = (*old).clone();
        meta::metadata_mut(&mut gone)
            .insert("resourceVersion".into(), Value::String(rv.to_string()));
        let gone = Arc::new(gone);
        self.publish(inner, resource, EventType::Deleted, gone.clone(), Some(old));
        gone
    }

    fn cascade_namespace_delete(&self, inner: &mut Inner, namespace: &str) {
        for (resource, def) in RESOURCES.iter().enumerate() {
            if !def.namespaced {
                continue;
            }
            let doomed: Vec<(ObjectKey, Arc<Value>)> = inner.objects[resource]
                .range((namespace.to_string(), String::new())..)
                .take_while(|((ns, _), _)| ns == namespace)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (key, old) in doomed {
                self.remove_locked(inner, resource, &key, old);
            }
        }
    }

    fn publish(
        &self,
        inner: &mut Inner,
        resource: ResourceId,
        event_type: EventType,
        object: Arc<Value>,
        old: Option<Arc<Value>>,
    ) {
        let event = Arc::new(StoredEvent {
            rv: inner.rv,
            resource,
            event_type,
            object,
            old,
        });
        inner.history.push_back(event.clone());
        while inner.history.len() > inner.history_window {
            if let Some(dropped) = inner.history.pop_front() {
                inner.floor = dropped.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(event);
    }

    /// Objects of `resource` (in `namespace` if given) at resourceVersion `at` (now if None),
    /// sorted by namespace then name; returns the resourceVersion of the snapshot.
    pub fn list(
        &self,
        resource: ResourceId,
        namespace: Option<&str>,
        at: Option<u64>,
    ) -> Result<(u64, Vec<Arc<Value>>), ApiError> {
        let inner = self.lock();
        let in_namespace = |key: &ObjectKey| namespace.is_none_or(|ns| key.0 == ns);
        let current = inner.rv;
        let at = at.unwrap_or(current);
        if at > current {
            return Err(ApiError::new(
                504,
                "Timeout",
                format!("Too large resource version: {at}, current: {current}"),
            ));
        }
        if at == current {
            let items = inner.objects[resource]
                .iter()
                .filter(|(k, _)| in_namespace(k))
                .map(|(_, v)| v.clone())
                .collect();
            return Ok((current, items));
        }
        if at < inner.floor {
            return Err(ApiError::expired(format!(
                "too old resource version: {at} ({})",
                inner.floor
            )));
        }
        let mut state = inner.objects[resource].clone();
        for event in inner.history.iter().rev().take_while(|e| e.rv > at) {
            if event.resource != resource {
                continue;
            }
            let key = object_key(&event.object);
            match &event.old {
                Some(old) => {
                    state.insert(key, old.clone());
                }
                None => {
                    state.remove(&key);
                }
            }
        }
        let items = state
            .into_iter()
            .filter(|(k, _)| in_namespace(k))
            .map(|(_, v)| v)
            .collect();
        Ok((at, items))
    }

    /// Registers a watch on `resource` starting at `from`.
    pub fn subscribe(
        &self,
        resource: ResourceId,
        from: WatchFrom,
    ) -> Result<Subscription, ApiError> {
        let inner = self.lock();
        let receiver = self.events.subscribe();
        match from {
            WatchFrom::Now => Ok(Subscription {
                initial: inner.objects[resource].values().cloned().collect(),
                replay: Vec::new(),
                receiver,
                rv: inner.rv,
            }),
            WatchFrom::After(rv) => {
                if rv < inner.floor {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {rv} ({})",
                        inner.floor
                    )));
                }
                let replay = inner
                    .history
                    .iter()
                    .filter(|e| e.rv > rv && e.resource == resource)
                    .cloned()
                    .collect();
                Ok(Subscription {
                    initial: Vec::new(),
                    replay,
                    receiver,
                    rv: inner.rv,
                })
            }
        }
    }
}

pub fn object_key(obj: &Value) -> ObjectKey {
    (
        meta::namespace(obj).to_string(),
        meta::name(obj).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::resources::find;
    use serde_json::json;

    fn configmaps() -> ResourceId {
        find("", "v1", "configmaps").unwrap()
    }

    fn put(
        store: &Store,
        resource: ResourceId,
        ns: &str,
        name: &str,
        data: &str,
    ) -> Result<Committed, ApiError> {
        let obj = json!({"metadata": {"name": name, "namespace": ns}, "data": {"k": data}});
        store.mutate(resource, (ns.into(), name.into()), |_| {
            Ok(Mutation::Put(obj))
        })
    }

    fn namespace(store: &Store, name: &str) {
        put(store, NAMESPACES, "", name, "").unwrap();
    }

    #[test]
    fn create_requires_the_namespace() {
        let store = Store::new(100, 100);
        let err = put(&store, configmaps(), "nope", "a", "1").unwrap_err();
        assert_eq!(err.code, 404);
        assert_eq!(err.message, "namespaces \"nope\" not found");
        namespace(&store, "nope");
        assert!(put(&store, configmaps(), "nope", "a", "1").is_ok());
    }

    #[test]
    fn lists_at_an_older_resource_version_undo_later_changes() {
        let store = Store::new(100, 100);
        namespace(&store, "ns");
        put(&store, configmaps(), "ns", "a", "1").unwrap();
        let before = store.current_rv();
        put(&store, configmaps(), "ns", "a", "2").unwrap();
        put(&store, configmaps(), "ns", "b", "1").unwrap();
        let (rv, items) = store.list(configmaps(), Some("ns"), Some(before)).unwrap();
        assert_eq!(rv, before);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["data"]["k"], "1");
        let (_, now) = store.list(configmaps(), None, None).unwrap();
        assert_eq!(now.len(), 2);
    }

    #[test]
    fn history_window_expires_old_versions() {
        let store = Store::new(2, 100);
        namespace(&store, "ns");
        let start = store.current_rv();
        for i in 0..5 {
            put(&store, configmaps(), "ns", "a", &i.to_string()).unwrap();
        }
        let err = store
            .subscribe(configmaps(), WatchFrom::After(start))
            .err()
            .unwrap();
        assert_eq!((err.code, err.reason), (410, "Expired"));
        let err = store.list(configmaps(), None, Some(start)).unwrap_err();
        assert_eq!(err.code, 410);
        let recent = store.current_rv() - 1;
        let sub = store
            .subscribe(configmaps(), WatchFrom::After(recent))
            .ok()
            .unwrap();
        assert_eq!(sub.replay.len(), 1);
    }

    #[test]
    fn deleting_a_namespace_deletes_its_objects() {
        let store = Store::new(100, 100);
        namespace(&store, "ns");
        namespace(&store, "other");
        put(&store, configmaps(), "ns", "a", "1").unwrap();
        put(&store, configmaps(), "other", "b", "1").unwrap();
        store
            .mutate(NAMESPACES, (String::new(), "ns".into()), |_| {
                Ok(Mutation::Delete)
            })
            .unwrap();
        let (_, items) = store.list(configmaps(), None, None).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(meta::name(&items[0]), "b");
    }
}
