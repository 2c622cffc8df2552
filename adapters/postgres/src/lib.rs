#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod error;
mod fp;
mod live;
mod schema;
mod store;
mod writer;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn::{Limits, Result, StoreId};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

use crate::error::{Fail, config};
use crate::live::Registry;
use crate::schema::Sql;

pub use crate::error::PostgresError;
pub use crate::live::LiveUpdates;

/// The environment variable the tests, benchmarks and `cargo xtask test`
/// use to name the PostgreSQL server to run against.
pub const TEST_URL_ENV: &str = "CAIRN_PG_URL";

/// How to connect a [`PostgresDb`].
///
/// ```
/// use std::time::Duration;
/// use cairn_postgres::{LiveUpdates, PostgresOptions};
/// let opts = PostgresOptions::default()
///     .schema("tenant_a")
///     .live(LiveUpdates::Poll(Duration::from_millis(200)));
/// assert_eq!(opts.schema, "tenant_a");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// The PostgreSQL schema (namespace) holding the tables; created if
    /// missing. `[a-z_][a-z0-9_]*`, at most 48 bytes. Default `cairn`.
    /// Stores in different schemas are independent even with the same
    /// store id.
    pub schema: String,
    /// Most pooled connections (the listener holds one more). Default 16.
    pub pool_size: usize,
    /// How to learn of appends made by other processes. Default
    /// [`LiveUpdates::Listen`].
    pub live: LiveUpdates,
    /// Limits enforced on each append. Default [`Limits::DEFAULT`].
    pub limits: Limits,
    /// How long to wait for a pooled connection before failing with a
    /// retryable error. Default 30 s.
    pub wait_timeout: Duration,
    /// Rows fetched per query by reads that walk a whole store or
    /// document, so memory is bounded by a page. Default 1,000.
    pub page_rows: usize,
    /// How many times an operation is retried after a serialization
    /// failure, a deadlock or a lost connection, when retrying is safe.
    /// Default 5.
    pub retries: u32,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: "cairn".to_owned(),
            pool_size: 16,
            live: LiveUpdates::Listen,
            limits: Limits::DEFAULT,
            wait_timeout: Duration::from_secs(30),
            page_rows: 1000,
            retries: 5,
        }
    }
}

impl PostgresOptions {
    /// Set [`schema`](PostgresOptions::schema).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Set [`pool_size`](PostgresOptions::pool_size).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// Set [`live`](PostgresOptions::live).
    pub fn live(mut self, live: LiveUpdates) -> Self {
        self.live = live;
        self
    }

    /// Set [`limits`](PostgresOptions::limits).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Set [`page_rows`](PostgresOptions::page_rows).
    pub fn page_rows(mut self, n: usize) -> Self {
        self.page_rows = n;
        self
    }

    /// Set [`retries`](PostgresOptions::retries).
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }
}

/// One PostgreSQL database (one schema in it): a connection pool, the
/// migrated tables, and the live-update task. Cheap to clone. Open any
/// number of stores from it with [`store`](PostgresDb::store); they share
/// the pool and the listener.
///
/// Dropping the last clone (and every store opened from it) closes the
/// pool and stops the listener.
#[derive(Clone)]
pub struct PostgresDb {
    inner: Arc<DbInner>,
}

struct DbInner {
    pool: Pool,
    sql: Arc<Sql>,
    options: PostgresOptions,
    registry: Arc<Registry>,
    task: JoinHandle<()>,
    /// Store key and epoch per store id, once looked up.
    known: Mutex<HashMap<StoreId, (i64, u64)>>,
}

impl Drop for DbInner {
    fn drop(&mut self) {
        self.task.abort();
        self.pool.close();
    }
}

impl fmt::Debug for PostgresDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresDb")
            .field("schema", &self.inner.options.schema)
            .field("live", &self.inner.options.live)
            .field("pool", &self.inner.pool.status())
            .finish()
    }
}

impl PostgresDb {
    /// Connect to `url` (`postgres://user:password@host:port/dbname`, or
    /// the `key=value` form; `host=/path` for a Unix socket directory)
    /// with default options, creating or migrating the schema.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connect with explicit options.
    ///
    /// Fails with a retryable error if the server cannot be reached, and
    /// with [`PostgresError::SchemaTooNew`] (inside [`cairn::Error::Backend`]) if
    /// the schema was written by a newer version of this crate.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self> {
        schema::check_schema_name(&options.schema)?;
        if options.pool_size == 0 || options.page_rows == 0 {
            return Err(config("pool_size and page_rows must be at least 1"));
        }
        let pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| config(format!("connection URL: {e}")))?;
        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .wait_timeout(Some(options.wait_timeout))
            .create_timeout(Some(options.wait_timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| config(format!("connection pool: {e}")))?;
        let sql = Arc::new(Sql::new(&options.schema));
        let schema = options.schema.clone();
        retry(options.retries, || {
            let (pool, schema) = (pool.clone(), schema.clone());
            async move {
                let mut client = pool.get().await?;
                schema::migrate(&mut client, &schema).await
            }
        })
        .await?;
        let registry = Arc::new(Registry::default());
        let weak = Arc::downgrade(&registry);
        let task = match options.live {
            LiveUpdates::Listen => tokio::spawn(live::listen(pg, pool.clone(), sql.clone(), weak)),
            LiveUpdates::Poll(every) => {
                tokio::spawn(live::poll(pool.clone(), sql.clone(), weak, every))
            }
        };
        Ok(PostgresDb {
            inner: Arc::new(DbInner {
                pool,
                sql,
                options,
                registry,
                task,
                known: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Open the store `store_id` in this database, creating it on first
    /// use (safe when several processes do so at once).
    pub async fn store(&self, store_id: StoreId) -> Result<PostgresStore> {
        let (key, epoch) = self.store_key(&store_id).await?;
        let head = self
            .run(|client, sql| async move {
                let row = client.query_one(&sql.head, &[&key]).await?;
                Ok(to_u64(row.try_get::<_, i64>(0)?))
            })
            .await?;
        let watch = self.inner.registry.watch(key, head);
        let (writer, queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(writer::run(
            writer::Writer {
                db: self.clone(),
                key,
                watch: watch.clone(),
            },
            queue,
        ));
        Ok(PostgresStore {
            inner: Arc::new(store::StoreInner {
                db: self.clone(),
                store_id,
                key,
                epoch,
                watch,
                writer,
                riblt: cairn::riblt::LazyEncoder::default(),
            }),
        })
    }

    /// Open the store `store_id` only if the database already holds it
    /// (for commands that only read: a typo in a store id must not create
    /// an empty store). `Ok(None)` if it does not exist.
    pub async fn existing_store(&self, store_id: StoreId) -> Result<Option<PostgresStore>> {
        let id = store_id.as_str().to_owned();
        let exists = self
            .run(|client, sql| {
                let id = id.clone();
                async move { Ok(client.query_opt(&sql.find_store, &[&id]).await?.is_some()) }
            })
            .await?;
        if !exists {
            return Ok(None);
        }
        self.store(store_id).await.map(Some)
    }

    /// The options this database was connected with.
    pub fn options(&self) -> &PostgresOptions {
        &self.inner.options
    }

    async fn store_key(&self, store_id: &StoreId) -> Result<(i64, u64)> {
        if let Some(k) = self
            .inner
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(store_id)
        {
            return Ok(*k);
        }
        let id = store_id.as_str().to_owned();
        let found = self
            .run(|mut client, sql| {
                let id = id.clone();
                async move {
                    let tx = client.transaction().await?;
                    let epoch = cairn::random_u64() as i64;
                    if let Some(row) = tx.query_opt(&sql.create_store, &[&id, &epoch]).await? {
                        let key: i64 = row.try_get(0)?;
                        tx.execute(&sql.create_buckets, &[&key]).await?;
                        tx.execute(&sql.create_bucket_head, &[&key]).await?;
                    }
                    let row = tx.query_one(&sql.find_store, &[&id]).await?;
                    let key: i64 = row.try_get(0)?;
                    let epoch: i64 = row.try_get(1)?;
                    tx.commit().await?;
                    Ok((key, epoch as u64))
                }
            })
            .await?;
        self.inner
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(store_id.clone(), found);
        Ok(found)
    }

    /// Run `f` with a pooled connection, retrying where that is safe.
    pub(crate) async fn run<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(deadpool_postgres::Object, Arc<Sql>) -> Fut,
        Fut: Future<Output = std::result::Result<T, Fail>>,
    {
        let inner = &self.inner;
        retry(inner.options.retries, || async {
            let client = inner.pool.get().await?;
            f(client, inner.sql.clone()).await
        })
        .await
    }
}

/// Run `attempt` until it succeeds, fails for good, or has been retried
/// `retries` times, with a short capped backoff between attempts.
pub(crate) async fn retry<T, F, Fut>(retries: u32, attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, Fail>>,
{
    retry_fail(retries, attempt).await.map_err(Fail::into_error)
}

/// [`retry`], keeping the last failure's kind (an ambiguous commit must be
/// told apart from a batch that surely failed).
pub(crate) async fn retry_fail<T, F, Fut>(
    retries: u32,
    mut attempt: F,
) -> std::result::Result<T, Fail>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, Fail>>,
{
    let mut delay = Duration::from_millis(20);
    let mut tries = 0u32;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if e.retry_safe() && tries < retries => {
                tries += 1;
                tracing::debug!(
                    ?e,
                    tries,
                    "cairn-postgres: retrying after a transient failure"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// An [`AppendOnlyStore`](cairn::AppendOnlyStore) in a PostgreSQL database;
/// cheap to clone. Many processes may open the same store at once: every
/// append is one transaction, sequence numbers are assigned under the
/// store's counter row lock, and subscribers hear of appends from any
/// process (see [`LiveUpdates`]).
///
/// A store id maps to one row of the `stores` table; a store is created on
/// first open and lives as long as the database.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<store::StoreInner>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("store_id", &self.inner.store_id)
            .field("schema", &self.inner.db.inner.options.schema)
            .field("store_key", &self.inner.key)
            .field("epoch", &self.inner.epoch)
            .field("seen_seq", &self.inner.watch.current())
            .finish()
    }
}

impl PostgresStore {
    /// Connect to `url` with default options and open `store_id` (see
    /// [`PostgresDb::connect`]). To open several stores over one pool, use
    /// [`PostgresDb`].
    pub async fn connect(url: &str, store_id: StoreId) -> Result<Self> {
        PostgresDb::connect(url).await?.store(store_id).await
    }

    /// The database this store lives in.
    pub fn db(&self) -> &PostgresDb {
        &self.inner.db
    }

    /// Check the store's invariants in one repeatable-read snapshot: the
    /// sequence numbers are exactly `1..=head`, every row's metadata
    /// decodes to its id, and the bucket fingerprints equal the ids. Reads
    /// the whole store, a page at a time. Returns [`cairn::Error::Corrupt`]
    /// describing the first problem, or the number of changes.
    pub async fn check_consistency(&self) -> Result<u64> {
        self.inner.check_consistency().await
    }

    /// Add every change appended so far to the bucket fingerprints now,
    /// and return the sequence number they then cover (the head as the
    /// fold read it).
    ///
    /// Nothing needs this for correctness: an append leaves the buckets to
    /// a fold that its store's writer runs in the background, and reads
    /// add the changes no fold has reached yet themselves. It is for a
    /// benchmark that must count the whole cost of its appends, or a test
    /// that wants the buckets folded.
    ///
    /// ```no_run
    /// # async fn f(store: cairn_postgres::PostgresStore) -> cairn::Result<()> {
    /// use cairn::AppendOnlyStore;
    /// let covered = store.fold_fingerprints().await?;
    /// assert!(covered >= store.head().await?.seq.min(covered));
    /// # Ok(()) }
    /// ```
    pub async fn fold_fingerprints(&self) -> Result<u64> {
        let (db, key) = (&self.inner.db, self.inner.key);
        retry(db.inner.options.retries, || writer::fold(db, key)).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A real server error with SQLSTATE `code`, raised by the server.
    async fn raise(client: &tokio_postgres::Client, code: &str) -> tokio_postgres::Error {
        client
            .batch_execute(&format!(
                "DO $$ BEGIN RAISE EXCEPTION 'test' USING ERRCODE = '{code}'; END $$"
            ))
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn serialization_failures_and_deadlocks_are_retried_a_bounded_number_of_times() {
        let url = std::env::var(TEST_URL_ENV).unwrap_or_else(|_| {
            panic!("{TEST_URL_ENV} is not set: run `cargo xtask test`, or point it at a server")
        });
        let (client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(conn);
        for code in ["40001", "40P01"] {
            // Fails twice, then succeeds: retried, and the caller sees success.
            let calls = AtomicU32::new(0);
            let out = retry(5, || async {
                if calls.fetch_add(1, Ordering::Relaxed) < 2 {
                    Err(Fail::Db(raise(&client, code).await))
                } else {
                    Ok(7)
                }
            })
            .await
            .unwrap();
            assert_eq!((out, calls.load(Ordering::Relaxed)), (7, 3), "{code}");
            // Always fails: gives up after the bound, with a retryable error.
            let calls = AtomicU32::new(0);
            let err = retry(2, || async {
                calls.fetch_add(1, Ordering::Relaxed);
                Err::<(), _>(Fail::Db(raise(&client, code).await))
            })
            .await
            .unwrap_err();
            assert_eq!(calls.load(Ordering::Relaxed), 3, "{code}: 1 + 2 retries");
            assert!(err.is_retryable(), "{code}: {err}");
        }
        // A permanent error is not retried.
        let calls = AtomicU32::new(0);
        let err = retry(5, || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(Fail::Db(raise(&client, "22012").await))
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(!err.is_retryable(), "{err}");
        // An ambiguous commit is returned (retryable) but never retried here.
        let calls = AtomicU32::new(0);
        let err = retry(5, || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(Fail::Ambiguous(raise(&client, "08006").await))
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(err.is_retryable(), "{err}");
        // A failure in the round trip that carries COMMIT: only an aborted
        // transaction is safe to retry; a server going away is ambiguous
        // (an immediate shutdown reports 57P01 even after the COMMIT ran).
        for (code, ambiguous) in [
            ("40001", false),
            ("40P01", false),
            ("57P01", true),
            ("08006", true),
            ("22012", false),
        ] {
            let f = writer::commit_failure(raise(&client, code).await);
            assert_eq!(matches!(f, Fail::Ambiguous(_)), ambiguous, "{code}");
            assert_eq!(f.retry_safe(), matches!(code, "40001" | "40P01"), "{code}");
        }
    }
}
