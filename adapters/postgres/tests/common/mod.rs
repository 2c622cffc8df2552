//! Helpers shared by the PostgreSQL tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use cairn::{DynAppendOnlyStore, Result, StoreId};
use cairn_conformance::StoreFactory;
use cairn_postgres::{LiveUpdates, PostgresDb, PostgresOptions, TEST_URL_ENV};

/// The server the tests run against: `$CAIRN_PG_URL`. Never skips: without
/// it the test fails, saying how to get one.
pub fn url() -> String {
    match std::env::var(TEST_URL_ENV) {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "{TEST_URL_ENV} is not set, so there is no PostgreSQL server to test against. \
             Run `cargo xtask test` (it installs the Debian package `postgresql` if needed and \
             starts a throwaway cluster), or set {TEST_URL_ENV}=postgres://USER@HOST:PORT/DB \
             to use a server of your own (the tests create schemas named t_*)."
        ),
    }
}

/// A schema name no other test (or earlier run) uses.
pub fn fresh_schema() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "t_{:x}_{}",
        cairn::random_u64() >> 16,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Options for a test database in `schema`: a small pool.
pub fn opts(schema: &str) -> PostgresOptions {
    PostgresOptions::default().schema(schema).pool_size(4)
}

/// Connect to the test server in `schema`.
pub async fn db(schema: &str, live: LiveUpdates) -> PostgresDb {
    PostgresDb::connect_with(&url(), opts(schema).live(live))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {} ({TEST_URL_ENV}): {e}", url()))
}

/// The conformance factory: every `create` is a fresh schema (so stores with
/// the same store id are independent); `open_named` opens a new pool on one
/// schema per factory, so reopening means a new pool on the same database.
pub struct PgFactory {
    named: String,
    live: LiveUpdates,
    n: AtomicU64,
}

impl PgFactory {
    pub fn new(live: LiveUpdates) -> Self {
        PgFactory {
            named: fresh_schema(),
            live,
            n: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl StoreFactory for PgFactory {
    fn name(&self) -> String {
        match self.live {
            LiveUpdates::Listen => "postgres".into(),
            LiveUpdates::Poll(_) => "postgres (polling)".into(),
        }
    }

    async fn create(&self, store_id: &StoreId) -> Result<Arc<DynAppendOnlyStore>> {
        self.n.fetch_add(1, Ordering::Relaxed);
        let db = PostgresDb::connect_with(&url(), opts(&fresh_schema()).live(self.live)).await?;
        Ok(Arc::new(db.store(store_id.clone()).await?))
    }

    fn supports_reopen(&self) -> bool {
        true
    }

    async fn open_named(&self, store_id: &StoreId, name: &str) -> Result<Arc<DynAppendOnlyStore>> {
        // One schema per name within the factory: a new pool every time.
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let schema = format!("{}_{name}", self.named);
        let db = PostgresDb::connect_with(&url(), opts(&schema).live(self.live)).await?;
        Ok(Arc::new(db.store(store_id.clone()).await?))
    }
}
