//! Live event feeds (SSE on `/v1/events` and `/v1/operations/{id}/events`, gRPC
//! `StreamEvents`, and the live-feed budget `WatchOperation` shares): where a feed starts,
//! what it carries, how it ends, and what it may cost.
//!
//! - A cursor is an event position; one the store cannot hold (above `i64::MAX`) is
//!   INVALID_ARGUMENT before the feed opens.
//! - A one-operation feed reads that operation's stream (by version, from its first
//!   event), never the global log.
//! - A store error, including one while deciding whether the caller may see an event,
//!   ends the feed with that error; the client resumes after the last position it saw,
//!   so every event it may see still arrives exactly once.
//! - Each feed holds at most one page ([`FEED_PAGE`]) of events and a bounded
//!   visibility cache; a process serves at most [`LiveFeeds::max`] feeds at once and
//!   refuses more with RESOURCE_EXHAUSTED (429) and `Retry-After`.

use crate::auth::Principal;
use crate::{ApiError, AppState};
use futures::Stream;
use ovc_store::{RecordedEvent, Store};
use ovc_types::ProjectName;
use ovc_types::error::{Code, Status};
use ovc_types::event::StreamName;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

type ApiResult<T> = Result<T, ApiError>;

/// The live feeds one process serves at once unless configured otherwise.
pub const DEFAULT_MAX_LIVE_FEEDS: usize = 1000;

/// Events a feed reads from the store per query: the most one connection buffers.
pub const FEED_PAGE: u32 = 100;

/// Streams whose visibility a feed remembers; past it the cache starts over.
const VISIBILITY_CACHE: usize = 4096;

/// Seconds a refused feed is told to wait (`Retry-After`).
const RETRY_FEED_AFTER_SECS: u64 = 5;

/// How long a feed waits for a wake-up before it looks at the store again.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Which events a live feed carries.
#[derive(Debug, Clone)]
pub enum Scope {
    /// One stream.
    Stream(StreamName),
    /// Every stream of this project (`None`: every stream).
    Project(Option<ProjectName>),
}

/// The live-feed budget of a process: a semaphore of [`LiveFeeds::max`] permits, one
/// held by each open feed until the client goes away.
#[derive(Debug)]
pub struct LiveFeeds {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Default for LiveFeeds {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LIVE_FEEDS)
    }
}

impl LiveFeeds {
    /// A budget of `max` concurrent feeds (at least 1).
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// The most feeds served at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Feeds open now.
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// A permit for one more feed, or RESOURCE_EXHAUSTED with `Retry-After`.
    pub fn acquire(&self) -> ApiResult<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            ApiError(
                Status::new(
                    Code::ResourceExhausted,
                    format!(
                        "this server already serves {} live feeds (its --max-live-feeds); \
                         retry in {RETRY_FEED_AFTER_SECS} s",
                        self.max
                    ),
                )
                .with_reason("TOO_MANY_LIVE_FEEDS")
                .with_metadata(
                    crate::limits::RETRY_AFTER_KEY,
                    RETRY_FEED_AFTER_SECS.to_string(),
                ),
            )
        })
    }
}

/// Checks an event cursor: positions are signed 64-bit in both stores.
pub fn event_cursor(after: u64) -> ApiResult<u64> {
    if after > i64::MAX as u64 {
        return Err(ApiError::invalid(
            format!(
                "event position {after} is out of range (at most {})",
                i64::MAX
            ),
            "INVALID_CURSOR",
        ));
    }
    Ok(after)
}

/// Decides, per stream and with a bounded cache, whether a caller of `project` may see
/// it.
pub(crate) struct ProjectFilter {
    project: Option<ProjectName>,
    seen: HashMap<String, bool>,
}

impl ProjectFilter {
    pub(crate) fn new(project: Option<ProjectName>) -> Self {
        Self {
            project,
            seen: Default::default(),
        }
    }

    pub(crate) async fn allows(&mut self, store: &dyn Store, stream: &str) -> ApiResult<bool> {
        let Some(own) = &self.project else {
            return Ok(true);
        };
        if let Some(v) = self.seen.get(stream) {
            return Ok(*v);
        }
        let v = Principal::stream_project(store, stream).await?.as_ref() == Some(own);
        if self.seen.len() >= VISIBILITY_CACHE {
            self.seen.clear();
        }
        self.seen.insert(stream.to_string(), v);
        Ok(v)
    }
}

struct Cursor {
    state: AppState,
    /// The last global position delivered or skipped.
    after: u64,
    /// For [`Scope::Stream`]: the last stream version read.
    version: u64,
    scope: Scope,
    filter: ProjectFilter,
    buffered: VecDeque<RecordedEvent>,
    wake: tokio::sync::watch::Receiver<u64>,
    ended: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Cursor {
    /// Reads the next page into `buffered`; false when there was nothing new.
    async fn read_page(&mut self) -> ApiResult<bool> {
        let store = self.state.store.clone();
        match &self.scope {
            Scope::Stream(stream) => {
                let batch = store.read_stream(stream, self.version, FEED_PAGE).await?;
                let Some(last) = batch.last() else {
                    return Ok(false);
                };
                self.version = last.version;
                for e in batch {
                    if e.position > self.after {
                        self.after = e.position;
                        self.buffered.push_back(e);
                    }
                }
                Ok(true)
            }
            Scope::Project(_) => {
                let batch = store.read_all(self.after, FEED_PAGE).await?;
                if batch.is_empty() {
                    return Ok(false);
                }
                for e in batch {
                    // An error here ends the feed before `after` passes this event, so
                    // the client's resume reads it again.
                    if self.filter.allows(store.as_ref(), &e.stream).await? {
                        self.buffered.push_back(e.clone());
                    }
                    self.after = e.position;
                }
                Ok(true)
            }
        }
    }
}

impl AppState {
    /// The events after position `after` in `scope`, live. It reads in position order
    /// (per stream: version order), which never skips (see the store), so a client that
    /// resumes after the last position it saw receives every event exactly once. It ends
    /// only with an error (then the client resumes); it holds one of the process's
    /// live-feed permits while open.
    pub fn follow(
        &self,
        after: u64,
        scope: Scope,
    ) -> ApiResult<impl Stream<Item = ApiResult<RecordedEvent>> + Send + 'static> {
        let after = event_cursor(after)?;
        let permit = self.feeds.acquire()?;
        Ok(self.tail(after, scope, Some(permit)))
    }

    /// [`AppState::follow`] for the process's own followers (step metrics): no cursor
    /// check, no live-feed permit unless one is given.
    pub fn tail(
        &self,
        after: u64,
        scope: Scope,
        permit: Option<OwnedSemaphorePermit>,
    ) -> impl Stream<Item = ApiResult<RecordedEvent>> + Send + 'static {
        let filter = ProjectFilter::new(match &scope {
            Scope::Project(p) => p.clone(),
            Scope::Stream(_) => None,
        });
        let cursor = Cursor {
            wake: self.store.watch_events(),
            state: self.clone(),
            after,
            version: 0,
            scope,
            filter,
            buffered: VecDeque::new(),
            ended: false,
            _permit: permit,
        };
        futures::stream::unfold(cursor, |mut c| async move {
            if c.ended {
                return None;
            }
            loop {
                if let Some(e) = c.buffered.pop_front() {
                    return Some((Ok(e), c));
                }
                c.wake.borrow_and_update();
                match c.read_page().await {
                    Ok(true) => {}
                    Ok(false) => {
                        tokio::select! {
                            _ = c.wake.changed() => {}
                            () = tokio::time::sleep(IDLE_POLL) => {}
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e.0.message, after = c.after, "event feed ended by a store error; the client resumes");
                        c.ended = true;
                        return Some((Err(e), c));
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_above_i64_are_invalid() {
        assert_eq!(event_cursor(i64::MAX as u64).ok(), Some(i64::MAX as u64));
        let e = event_cursor(i64::MAX as u64 + 1).expect_err("out of range");
        assert_eq!(e.0.code, Code::InvalidArgument);
        assert_eq!(e.0.reason(), Some("INVALID_CURSOR"));
    }

    #[test]
    fn the_budget_refuses_past_max_and_frees_on_drop() {
        let feeds = LiveFeeds::new(2);
        let a = feeds.acquire().expect("first");
        let _b = feeds.acquire().expect("second");
        let refused = feeds.acquire().expect_err("third");
        assert_eq!(refused.0.code, Code::ResourceExhausted);
        assert_eq!(feeds.open(), 2);
        drop(a);
        assert!(feeds.acquire().is_ok());
    }
}
