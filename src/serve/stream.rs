//! `GET /models/stream`: the final models emitted by this process as server-sent events,
//! resumable with `Last-Event-ID` ([`ModelFeed`], kept by the model store).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast;

use crate::dataflow::ModelLine;

/// Final models recently emitted, numbered, for `GET /models/stream`: a ring of the last
/// [`FEED_KEEP`] (so a client that reconnects with `Last-Event-ID` gets what it missed),
/// and a broadcast of each as it comes, bounded per client ([`FEED_CLIENT_QUEUE`]).
pub(super) struct ModelFeed {
    /// This run's id: event ids are `RUN-SEQ`, so an id of another run is recognised.
    run: u64,
    ring: Mutex<(u64, VecDeque<FeedEvent>)>,
    tx: broadcast::Sender<FeedEvent>,
}

/// One numbered final model (made JSON when a client is sent it: nothing is formatted for
/// the many finals no client reads).
type FeedEvent = (u64, Arc<ModelLine>);

/// Final models kept for clients that resume with `Last-Event-ID`.
pub const FEED_KEEP: usize = 16_384;

/// Events a stream client may fall behind by before it is dropped.
pub const FEED_CLIENT_QUEUE: usize = 4_096;

impl ModelFeed {
    pub(super) fn new() -> ModelFeed {
        ModelFeed {
            run: crate::checkpoint::unix_ms(),
            ring: Mutex::new((0, VecDeque::new())),
            tx: broadcast::channel(FEED_CLIENT_QUEUE).0,
        }
    }

    /// Numbers and sends `lines`, in order (under one lock).
    pub(super) fn push(&self, lines: Vec<Arc<ModelLine>>) {
        if lines.is_empty() {
            return;
        }
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        for line in lines {
            ring.0 += 1;
            let event: FeedEvent = (ring.0, line);
            if ring.1.len() == FEED_KEEP {
                ring.1.pop_front();
            }
            ring.1.push_back(event.clone());
            // Sent under the lock, so that a subscriber's backlog and its stream meet
            // exactly.
            let _ = self.tx.send(event);
        }
    }

    /// A subscription, and the kept events after `after` (`None`: every kept event);
    /// `Err` when `after` is older than what is kept.
    fn resume(
        &self,
        after: Option<u64>,
    ) -> (broadcast::Receiver<FeedEvent>, Result<Vec<FeedEvent>, u64>) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.tx.subscribe();
        let oldest = ring.1.front().map_or(ring.0 + 1, |e| e.0);
        let backlog = match after {
            Some(a) if a + 1 < oldest => Err(oldest),
            Some(a) => Ok(ring.1.iter().filter(|e| e.0 > a).cloned().collect()),
            None => Ok(ring.1.iter().cloned().collect()),
        };
        (rx, backlog)
    }
}

/// `GET /models/stream`: server-sent events, one per final model as it is emitted
/// (`id: RUN-SEQ`, `data:` the model's JSON). With `Last-Event-ID` of this run, the
/// events after it that are still kept come first, then the live ones, each once. An id
/// of another run (a restart) starts from the oldest kept; one older than what is kept
/// gets an `event: gap` first. A client that falls [`FEED_CLIENT_QUEUE`] events behind
/// gets `event: dropped` and the stream ends: it never slows the engine.
pub(super) fn answer(feed: &ModelFeed, headers: &HeaderMap) -> Response {
    let run = feed.run;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once('-'))
        .filter(|(r, _)| r.parse::<u64>().ok() == Some(run))
        .and_then(|(_, seq)| seq.parse::<u64>().ok());
    let (rx, backlog) = feed.resume(after);
    let mut first: Vec<Event> = Vec::new();
    let mut last = after.unwrap_or(0);
    let backlog = match backlog {
        Ok(events) => events,
        Err(oldest) => {
            first.push(Event::default().event("gap").data(format!(
                "events {}..{} are no longer kept (the newest {FEED_KEEP} are); compare with --out",
                last + 1,
                oldest - 1
            )));
            feed.resume(None).1.unwrap_or_default()
        }
    };
    for (seq, line) in backlog {
        last = seq;
        first.push(
            Event::default()
                .id(format!("{run}-{seq}"))
                .data(json(&line)),
        );
    }
    let backlog = futures_util::stream::iter(first.into_iter().map(Ok::<_, Infallible>));
    let live = futures_util::stream::unfold(Some((rx, last)), move |state| async move {
        let (mut rx, mut last) = state?;
        loop {
            match rx.recv().await {
                Ok((seq, _)) if seq <= last => continue,
                Ok((seq, line)) => {
                    last = seq;
                    let event = Event::default()
                        .id(format!("{run}-{seq}"))
                        .data(json(&line));
                    return Some((Ok(event), Some((rx, last))));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let event = Event::default().event("dropped").data(format!(
                        "this client fell {n} events behind (at most {FEED_CLIENT_QUEUE}): \
                         reconnect with Last-Event-ID {run}-{last}"
                    ));
                    return Some((Ok(event), None));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(futures_util::StreamExt::chain(backlog, live))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The JSON text of a final model, as `--out` has it.
fn json(line: &ModelLine) -> String {
    serde_json::to_string(line)
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
}
