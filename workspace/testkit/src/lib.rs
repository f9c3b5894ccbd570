//! Helpers shared by tests and benchmarks: a fresh, migrated database per test.
//!
//! SQLite gets a new file in a temporary directory; PostgreSQL gets a new schema in the
//! database named by `DATABASE_URL` (the README's test command sets it), dropped again
//! when the [`TestDb`] is dropped. Each test therefore starts from empty tables and
//! tests can run in parallel.

use ovc_store::{Backend, Store, StoreConfig};
use ovc_types::time::{Clock, SystemClock};
use std::sync::Arc;

/// The environment variable that names the PostgreSQL database for tests.
pub const DATABASE_URL_ENV: &str = "DATABASE_URL";

/// One fresh database (SQLite file or PostgreSQL schema).
#[derive(Debug)]
pub struct TestDb {
    backend: Backend,
    url: String,
    schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

/// The PostgreSQL URL for tests, or a panic that says how to get one.
pub fn postgres_url() -> String {
    std::env::var(DATABASE_URL_ENV).unwrap_or_else(|_| {
        panic!(
            "{DATABASE_URL_ENV} is not set: PostgreSQL tests need a database, e.g. \
             DATABASE_URL=postgres://postgres@127.0.0.1:5432/ovc_test (the README's test \
             command sets it up)"
        )
    })
}

impl TestDb {
    /// A new empty database on `backend`.
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("create temp dir");
                let path = dir.path().join("ovc.db");
                Self {
                    backend,
                    url: format!("sqlite://{}", path.display()),
                    schema: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
                Self {
                    backend,
                    url: postgres_url(),
                    schema: Some(schema),
                    _dir: None,
                }
            }
        }
    }

    /// Which backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The database URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The store configuration that points at this database.
    pub fn config(&self) -> StoreConfig {
        StoreConfig {
            pg_schema: self.schema.clone(),
            ..StoreConfig::default()
        }
    }

    /// A migrated store on this database with the system clock.
    pub async fn open(&self) -> Arc<dyn Store> {
        self.open_with(self.config(), Arc::new(SystemClock)).await
    }

    /// A migrated store on this database with `config` (its schema is forced to this
    /// database's) and `clock`.
    pub async fn open_with(
        &self,
        mut config: StoreConfig,
        clock: Arc<dyn Clock>,
    ) -> Arc<dyn Store> {
        config.pg_schema = self.schema.clone();
        let store = ovc_store::open_with_clock(&self.url, config, clock)
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", self.url));
        store.migrate().await.expect("migrate");
        store
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(schema) = self.schema.take() else {
            return;
        };
        let url = self.url.clone();
        // Drop the schema on a separate thread with its own runtime: Drop cannot await,
        // and it may run inside (or outside) a tokio runtime.
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(ovc_store::postgres::drop_schema(&url, &schema));
        });
        let _ = handle.join();
    }
}

/// Declares each listed `async fn name(backend: Backend)` as two tests, `sqlite::name`
/// and `postgres::name`: one conformance suite, both backends.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(ovc_store::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(ovc_store::Backend::Postgres).await
                }
            )*
        }
    };
}
