//! `ovc events tail`: prints the event log, and with `--follow` keeps printing new events
//! as they are committed (woken by the store, with a poll as a safety net for writers in
//! other processes).

use anyhow::Context;
use clap::Args;
use ovc_store::{RecordedEvent, Store, StoreConfig};
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `ovc events tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, env = "OVC_DATABASE_URL", default_value = "sqlite://.ovc/ovc.db")]
    pub database_url: String,
    /// Start after this position (0: from the beginning).
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Keep following new events until interrupted.
    #[arg(long, short)]
    pub follow: bool,
    /// Print one JSON object per line instead of a table.
    #[arg(long, short = 'o', value_parser = ["text", "json"], default_value = "text")]
    pub output: String,
}

/// One event as a human-readable line.
pub fn format_event(e: &RecordedEvent) -> String {
    let mut data = e.data.clone();
    if let Some(obj) = data.as_object_mut() {
        obj.remove("v");
    }
    format!(
        "{:>8}  {}  {:<48} v{:<4} {:<20} {}",
        e.position,
        e.recorded_at.format("%H:%M:%S%.3f"),
        e.stream,
        e.version,
        e.event_type,
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

/// Runs `ovc events tail`.
pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let store = ovc_store::open(&args.database_url, StoreConfig::default())
        .await
        .with_context(|| format!("cannot open {}", crate::redact(&args.database_url)))?;
    let stop = crate::worker::shutdown_signal();
    follow(store, args.after, args.follow, args.output == "json", stop).await
}
