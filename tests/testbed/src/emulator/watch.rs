//! Watches: `GET …?watch=true` streamed as newline-delimited `WatchEvent` JSON.
//!
//! Owns the watch lifecycle: start point (`resourceVersion` unset/"0" → synthetic ADDED
//! events for the current state; N → every change after N; older than the retained
//! history → one `ERROR` event carrying a 410 `Expired` Status, as kube-apiserver does;
//! newer than the store → one `ERROR` event with a 504 `Timeout` "Too large resource
//! version"),
//! `sendInitialEvents` with the initial-events-end bookmark, periodic BOOKMARK events
//! when `allowWatchBookmarks=true`, selector transitions (an object that stops matching
//! is reported DELETED, one that starts matching ADDED), `timeoutSeconds`, and ending on
//! an injected watch drop or expiry (410 for a resume), a slow consumer, or shutdown. It must never send an event
//! twice or skip one between the start point and the end of the stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::State;
use super::rest::{Target, parse_rv};
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{EventType, StoredEvent, WatchFrom};
use super::wire::{Body, Query, error_response};

/// Parameters of one watch.
struct WatchSpec {
    target: Target,
    labels: LabelSelector,
    fields: FieldSelector,
    bookmarks: bool,
    send_initial_events: bool,
    timeout: Option<Duration>,
}

impl WatchSpec {
    fn matches(&self, obj: &Value) -> bool {
        let in_namespace = self
            .target
            .namespace
            .as_deref()
            .is_none_or(|ns| super::meta::namespace(obj) == ns);
        in_namespace && self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// The event this watcher sees for a stored event, if any.
    fn translate(&self, event: &StoredEvent) -> Option<(EventType, Arc<Value>)> {
        let now = self.matches(&event.object);
        let before = event.old.as_deref().is_some_and(|old| self.matches(old));
        let kind = match event.event_type {
            EventType::Added => now.then_some(EventType::Added)?,
            EventType::Deleted => before.then_some(EventType::Deleted)?,
            EventType::Modified => match (before, now) {
                (true, true) => EventType::Modified,
                (false, true) => EventType::Added,
                (true, false) => EventType::Deleted,
                (false, false) => return None,
            },
        };
        Some((kind, event.object.clone()))
    }

    fn line(&self, event_type: &str, object: &Value) -> Bytes {
        raw_line(event_type, &self.target.output(object))
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end && let Value::Object(map) = &mut metadata {
            map.insert(
                "annotations".into(),
                json!({"k8s.io/initial-events-end": "true"}),
            );
        }
        self.line("BOOKMARK", &json!({"metadata": metadata}))
    }
}

/// One newline-terminated watch event; `object` is sent as is.
fn raw_line(event_type: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": event_type, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

type Sender = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// Starts a watch and returns the streaming response (or an error response).
pub(crate) fn start(state: &Arc<State>, target: &Target, query: &Query) -> Response<Body> {
    match prepare(target, query) {
        Ok((spec, from)) => stream(state, spec, from),
        Err(err) => error_response(&err),
    }
}

fn prepare(target: &Target, query: &Query) -> Result<(WatchSpec, WatchFrom), ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse field selector: {e}")))?;
    let timeout = match query.non_empty("timeoutSeconds") {
        Some(text) => Some(Duration::from_secs(text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("invalid timeoutSeconds {text:?}"))
        })?)),
        None => None,
    };
    let bookmarks = query.flag("allowWatchBookmarks");
    let send_initial_events = query.flag("sendInitialEvents");
    if send_initial_events && !bookmarks {
        return Err(ApiError::new(
            422,
            "Invalid",
            "sendInitialEvents: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
        ));
    }
    let from = match query.non_empty("resourceVersion") {
        _ if send_initial_events => WatchFrom::Now,
        None | Some("0") => WatchFrom::Now,
        Some(text) => WatchFrom::After(parse_rv(text)?),
    };
    let spec = WatchSpec {
        target: target.clone(),
        labels,
        fields,
        bookmarks,
        send_initial_events,
        timeout,
    };
    Ok((spec, from))
}

fn stream(state: &Arc<State>, spec: WatchSpec, from: WatchFrom) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(256);
    let state = state.clone();
    tokio::spawn(async move {
        let subscription = state.store.subscribe(spec.target.id, from);
        let mut subscription = match subscription {
            Ok(sub) => sub,
            Err(err) => {
                let line = raw_line("ERROR", &err.to_status());
                let _ = tx.send(Ok(Frame::data(line))).await;
                return;
            }
        };
        if let WatchFrom::After(wanted) = from
            && state.faults.take_expiry()
        {
            // Injected: as if the history had been compacted past `wanted`.
            let status = ApiError::expired(format!(
                "too old resource version: {wanted} ({})",
                subscription.rv
            ))
            .to_status();
            let _ = tx.send(Ok(Frame::data(raw_line("ERROR", &status)))).await;
            return;
        }
        if let WatchFrom::After(wanted) = from
            && wanted > subscription.rv
        {
            // kube-apiserver answers a resourceVersion from the future (e.g. after the
            // server lost its state) with a Timeout error event, and clients relist.
            let mut status = ApiError::new(
                504,
                "Timeout",
                format!(
                    "Too large resource version: {wanted}, current: {}",
                    subscription.rv
                ),
            )
            .to_status();
            status["details"] = json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1});
            let _ = tx.send(Ok(Frame::data(raw_line("ERROR", &status)))).await;
            return;
        }
        let mut last_rv = subscription.rv;
        for obj in &subscription.initial {
            if spec.matches(obj) && !send(&tx, spec.line("ADDED", obj)).await {
                return;
            }
        }
        if spec.send_initial_events && !send(&tx, spec.bookmark(subscription.rv, true)).await {
            return;
        }
        let start = match from {
            WatchFrom::After(rv) => rv.max(subscription.rv),
            WatchFrom::Now => subscription.rv,
        };
        for event in &subscription.replay {
            if let Some((kind, obj)) = spec.translate(event)
                && !send(&tx, spec.line(kind.as_str(), &obj)).await
            {
                return;
            }
            last_rv = event.rv;
        }
        live(
            &state,
            &spec,
            &tx,
            &mut subscription.receiver,
            start,
            &mut last_rv,
        )
        .await;
    });
    let body = StreamBody::new(ReceiverStream::new(rx)).boxed();
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn send(tx: &Sender, line: Bytes) -> bool {
    tx.send(Ok(Frame::data(line))).await.is_ok()
}

/// Forwards one live event; false ends the watch.
async fn forward(
    spec: &WatchSpec,
    tx: &Sender,
    event: &StoredEvent,
    start: u64,
    last_rv: &mut u64,
) -> bool {
    if event.rv <= start || event.resource != spec.target.id {
        return true;
    }
    *last_rv = (*last_rv).max(event.rv);
    match spec.translate(event) {
        Some((kind, obj)) => send(tx, spec.line(kind.as_str(), &obj)).await,
        None => true,
    }
}

async fn live(
    state: &State,
    spec: &WatchSpec,
    tx: &Sender,
    receiver: &mut broadcast::Receiver<Arc<StoredEvent>>,
    start: u64,
    last_rv: &mut u64,
) {
    let mut drops = state.faults.watch_drops();
    let mut shutdown = state.shutdown.clone();
    let period = state.bookmark_interval.max(Duration::from_millis(10));
    let mut bookmark_timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        tokio::select! {
            event = receiver.recv() => match event {
                Ok(event) => {
                    if !forward(spec, tx, &event, start, last_rv).await {
                        return;
                    }
                }
                // A consumer too slow for the buffer loses its watch (it re-watches from
                // its last resourceVersion), as kube-apiserver does with slow watchers.
                Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = bookmark_timer.tick(), if spec.bookmarks => {
                // Every event up to `current` is already in the channel: drain it first.
                let current = state.store.current_rv();
                loop {
                    match receiver.try_recv() {
                        Ok(event) => {
                            if !forward(spec, tx, &event, start, last_rv).await {
                                return;
                            }
                        }
                        Err(broadcast::error::TryRecvError::Empty) => break,
                        Err(_) => return,
                    }
                }
                let rv = current.max(*last_rv).max(start);
                *last_rv = rv;
                if !send(tx, spec.bookmark(rv, false)).await {
                    return;
                }
            }
            _ = drops.changed() => return,
            _ = shutdown.changed() => return,
            _ = sleep_until(deadline) => return,
            _ = tx.closed() => return,
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
