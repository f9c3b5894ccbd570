//! `ovc dev`: the all-in-one embedded setup on SQLite, no configuration needed.
//!
//! Today it creates the data directory, opens and migrates the SQLite store in it and
//! follows the event log, printing every event as it is committed. The API server, the
//! workers and the simulated host are added to this same command by the engine and API
//! issues; the flags they need (`--http`, `--grpc`) are not offered before they work.

use crate::tail;
use anyhow::Context;
use clap::Args;
use ovc_store::StoreConfig;
use std::path::PathBuf;

/// Arguments of `ovc dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory for the SQLite database (and, later, snapshots).
    #[arg(long, env = "OVC_DATA_DIR", default_value_os_t = crate::default_data_dir())]
    pub data_dir: PathBuf,
    /// Open, migrate, print the status and exit instead of following the log.
    #[arg(long)]
    pub check: bool,
}

/// Runs `ovc dev`.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let db = args.data_dir.join("ovc.db");
    let url = format!("sqlite://{}", db.display());
    let store = ovc_store::open(&url, StoreConfig::default())
        .await
        .with_context(|| format!("cannot open {url}"))?;
    store
        .migrate()
        .await
        .context("migrating the embedded store")?;
    let head = store.head_position().await?;
    println!("ovc dev: embedded store ready");
    println!("  database   {url} (SQLite, WAL, synchronous=FULL)");
    println!("  event log  {head} events");
    if args.check {
        return Ok(());
    }
    println!("  following the event log; Ctrl-C to stop");
    println!("  (another terminal: ovc events tail --database-url {url})");
    println!();
    tail::follow(store, 0, true, false).await
}
