//! Live event feeds: the server-sent events of `GET /v1/events` and
//! `GET /v1/operations/{id}/events`, resumed across dropped connections.
//!
//! The server sends each event with `id:` = its position and ends a feed only on an
//! error or its shutdown (API.md), so a feed reconnects with `Last-Event-ID` = the last
//! position it handed out: no event is missed or repeated. An operation's feed
//! ([`crate::Client::watch`]) ends by itself after the operation's terminal event.

use crate::error::Error;
use crate::http::Http;
use crate::{EventRecord, RetryPolicy};
use backon::BackoffBuilder;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::collections::VecDeque;
use std::sync::Arc;

/// The event types that end an operation.
pub const TERMINAL_EVENTS: [&str; 4] = [
    "OperationSucceeded",
    "OperationFailed",
    "OperationCancelled",
    "OperationStuck",
];

/// A live feed of events; read it with [`EventFeed::next`] or as a stream
/// ([`EventFeed::into_stream`]).
pub struct EventFeed {
    http: Arc<Http>,
    path: String,
    after: u64,
    retry: RetryPolicy,
    /// Ends after the first terminal event of an operation.
    stop_at_terminal: bool,
    ended: bool,
    body: Option<Incoming>,
    buf: String,
    ready: VecDeque<EventRecord>,
    reconnects: u64,
}

impl std::fmt::Debug for EventFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFeed")
            .field("path", &self.path)
            .field("after", &self.after)
            .field("reconnects", &self.reconnects)
            .finish()
    }
}

impl EventFeed {
    pub(crate) fn new(
        http: Arc<Http>,
        path: String,
        after: u64,
        retry: RetryPolicy,
        stop_at_terminal: bool,
    ) -> EventFeed {
        EventFeed {
            http,
            path,
            after,
            retry,
            stop_at_terminal,
            ended: false,
            body: None,
            buf: String::new(),
            ready: VecDeque::new(),
            reconnects: 0,
        }
    }

    /// The position of the last event handed out (where a new feed would resume).
    pub fn position(&self) -> u64 {
        self.after
    }

    /// How many times the feed reconnected after its connection dropped.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The next event; `None` once an operation's feed saw the operation end. A dropped
    /// connection is reopened with backoff (the client's [`RetryPolicy`], counted from
    /// the last event received); an error is returned when that gives up or the API
    /// refuses the feed, and the feed is over.
    pub async fn next(&mut self) -> Option<Result<EventRecord, Error>> {
        if self.ended {
            return None;
        }
        let mut backoff = self.retry.backoff().build();
        loop {
            if let Some(e) = self.ready.pop_front() {
                self.after = e.position;
                if self.stop_at_terminal && TERMINAL_EVENTS.contains(&e.event_type.as_str()) {
                    self.ended = true;
                }
                return Some(Ok(e));
            }
            let failure = match &mut self.body {
                None => match self.open().await {
                    Ok(body) => {
                        self.body = Some(body);
                        continue;
                    }
                    Err(e) => e,
                },
                Some(body) => match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            self.buf.push_str(&String::from_utf8_lossy(data));
                            if let Err(e) = self.parse() {
                                self.ended = true;
                                return Some(Err(e));
                            }
                            if !self.ready.is_empty() {
                                backoff = self.retry.backoff().build();
                            }
                        }
                        continue;
                    }
                    // The server ended the feed (an error, or its shutdown): resume.
                    None => self.http.unreachable_error("the live feed ended"),
                    Some(Err(e)) => self.http.unreachable_error(e),
                },
            };
            self.body = None;
            self.buf.clear();
            match backoff.next() {
                Some(delay) if failure.is_retryable() => {
                    self.reconnects += 1;
                    tokio::time::sleep(delay).await;
                }
                _ => {
                    self.ended = true;
                    return Some(Err(failure));
                }
            }
        }
    }

    async fn open(&self) -> Result<Incoming, Error> {
        let headers = [
            ("accept", "text/event-stream".to_string()),
            ("last-event-id", self.after.to_string()),
        ];
        self.http.open_stream(&self.path, &headers).await
    }

    /// Moves every complete SSE block of the buffer into `ready`; keep-alive comments
    /// (and the comment saying why the server ended a feed) carry no data and are skipped.
    fn parse(&mut self) -> Result<(), Error> {
        // SSE allows CRLF line ends; normalize so blocks split on a blank line.
        if self.buf.contains('\r') {
            self.buf = self.buf.replace("\r\n", "\n");
        }
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(d) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            if data.is_empty() {
                continue;
            }
            let event: EventRecord = serde_json::from_str(&data).map_err(|e| Error::Protocol {
                server: self.http.base.clone(),
                http_status: 200,
                message: format!("an event of the live feed is not an event: {e}: {data}"),
            })?;
            self.ready.push_back(event);
        }
        Ok(())
    }

    /// The feed as a [`futures::Stream`] of events (ending as [`EventFeed::next`] does).
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<EventRecord, Error>> {
        futures::stream::unfold(self, |mut feed| async move {
            feed.next().await.map(|item| (item, feed))
        })
    }
}
