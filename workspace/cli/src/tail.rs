//! `ovc events tail`: prints the event log, and with `--follow` keeps printing new events
//! as they are committed. Against a server (`--server`/`OVC_SERVER`, the default) it
//! reads `/v1/events` (live SSE with `--follow`, resumed across reconnects); with
//! `--database-url` it reads the store directly (woken by the store, with a poll as a
//! safety net for writers in other processes).

use anyhow::Context;
use clap::Args;
use ovc_store::{RecordedEvent, Store, StoreConfig};
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `ovc events tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Read the store directly (sqlite://PATH or postgres://USER@HOST/DB) instead of a
    /// server.
    #[arg(long, env = "OVC_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Start after this position (0: from the beginning).
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Keep following new events until interrupted.
    #[arg(long, short)]
    pub follow: bool,
    /// The server, token and output format.
    #[command(flatten)]
    pub conn: crate::client::Conn,
}

/// One event as a human-readable line.
pub fn format_event(e: &RecordedEvent) -> String {
    format_event_json(&serde_json::to_value(e).unwrap_or_default())
}

/// One event, as the API's JSON, as a human-readable line.
pub fn format_event_json(e: &serde_json::Value) -> String {
    let mut data = e["data"].clone();
    if let Some(obj) = data.as_object_mut() {
        obj.remove("v");
    }
    let time = e["recorded_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_default();
    format!(
        "{:>8}  {}  {:<48} v{:<4} {:<20} {}",
        e["position"].as_u64().unwrap_or(0),
        time,
        e["stream"].as_str().unwrap_or("?"),
        e["version"].as_u64().unwrap_or(0),
        e["type"].as_str().unwrap_or("?"),
        data
    )
}

/// Prints events after `after` until the log is drained (or, with `follow`, until `stop`
/// turns true: Ctrl-C or SIGTERM).
pub async fn follow(
    store: Arc<dyn Store>,
    mut after: u64,
    follow: bool,
    json: bool,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut wake = store.watch_events();
    loop {
        let batch = store.read_all(after, 500).await?;
        for e in &batch {
            if json {
                println!("{}", serde_json::to_string(e)?);
            } else {
                println!("{}", format_event(e));
            }
            after = e.position;
        }
        if batch.len() == 500 {
            continue;
        }
        if !follow {
            return Ok(());
        }
        tokio::select! {
            _ = wake.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// Runs `ovc events tail`; returns the exit code.
pub async fn run(args: TailArgs) -> anyhow::Result<i32> {
    let Some(url) = &args.database_url else {
        let outcome =
            crate::client::tail_events(args.conn, args.after, args.follow, format_event_json).await;
        return Ok(outcome.code());
    };
    let store = ovc_store::open(url, StoreConfig::default())
        .await
        .with_context(|| format!("cannot open {}", crate::redact(url)))?;
    let stop = crate::worker::shutdown_signal();
    let json = args.conn.output == "json";
    follow(store, args.after, args.follow, json, stop).await?;
    Ok(0)
}
