//! The tables, their migrations, and the SQL the store runs.
//!
//! Everything lives in one PostgreSQL schema (namespace), `cairn` by
//! default; many store ids share it. See the crate README for the layout.

use cairn::FingerprintBuckets;
use deadpool_postgres::Client;

use crate::error::{Fail, PostgresError, STORE, config};

/// Migrations, in order: entry `i` takes the schema from version `i` to
/// `i + 1`. The current version is their count.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    "CREATE TABLE {s}.stores (
         store_key bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         store_id  text   NOT NULL UNIQUE,
         epoch     bigint NOT NULL,
         head      bigint NOT NULL DEFAULT 0 CHECK (head >= 0)
     );
     CREATE TABLE {s}.changes (
         store_key bigint   NOT NULL REFERENCES {s}.stores,
         seq       bigint   NOT NULL CHECK (seq > 0),
         id        bytea    NOT NULL CHECK (length(id) = 32),
         doc_id    text     NOT NULL,
         kind      smallint NOT NULL,
         meta      bytea    NOT NULL,
         payload   bytea    NOT NULL,
         PRIMARY KEY (store_key, seq)
     );
     CREATE UNIQUE INDEX changes_by_id ON {s}.changes (store_key, id);
     CREATE INDEX changes_by_doc ON {s}.changes (store_key, doc_id, seq);
     CREATE TABLE {s}.buckets (
         store_key bigint  NOT NULL REFERENCES {s}.stores,
         bucket    integer NOT NULL CHECK (bucket >= 0 AND bucket < 4096),
         fp        bytea   NOT NULL CHECK (length(fp) = 40),
         PRIMARY KEY (store_key, bucket)
     );",
];

/// The schema version this build writes.
pub(crate) const VERSION: i32 = MIGRATIONS.len() as i32;

/// Check a schema name: it is spliced into SQL and a channel name, so only
/// `[a-z_][a-z0-9_]*`, at most 48 bytes, is accepted.
pub(crate) fn check_schema_name(name: &str) -> cairn::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
        && !name.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(config(format!(
            "schema name {name:?}: use 1 to 48 of [a-z0-9_], not starting with a digit or pg_"
        )))
    }
}

/// Create the schema or bring it up to [`VERSION`], under a transaction-
/// scoped advisory lock so that processes starting together do not race.
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<(), Fail> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&format!("cairn-postgres schema {schema}")],
    )
    .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_version (
             one     boolean PRIMARY KEY DEFAULT true CHECK (one),
             version integer NOT NULL
         );"
    ))
    .await?;
    let row = tx
        .query_opt(&format!("SELECT version FROM {schema}.schema_version"), &[])
        .await?;
    let found: i32 = match row {
        Some(r) => r.try_get(0)?,
        None => 0,
    };
    if found > VERSION {
        return Err(Fail::Cairn(cairn::Error::backend(
            STORE,
            false,
            PostgresError::SchemaTooNew {
                schema: schema.to_owned(),
                found,
                supported: VERSION,
            },
        )));
    }
    if found == VERSION {
        tx.commit().await?;
        return Ok(());
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        tracing::info!(
            schema,
            from,
            to = from + 1,
            "migrating cairn-postgres schema"
        );
        tx.batch_execute(&sql.replace("{s}", schema)).await?;
    }
    tx.execute(
        &format!(
            "INSERT INTO {schema}.schema_version (one, version) VALUES (true, $1)
             ON CONFLICT (one) DO UPDATE SET version = EXCLUDED.version"
        ),
        &[&VERSION],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Every statement the store runs, with the schema name spliced in once.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) find_store: String,
    pub(crate) create_store: String,
    pub(crate) create_buckets: String,
    pub(crate) lock_head: String,
    pub(crate) existing: String,
    pub(crate) buckets_of: String,
    pub(crate) insert: String,
    pub(crate) update_buckets: String,
    pub(crate) set_head: String,
    pub(crate) notify: String,
    pub(crate) head: String,
    pub(crate) heads: String,
    pub(crate) get_changes: String,
    pub(crate) get_metas: String,
    pub(crate) has: String,
    pub(crate) scan: String,
    pub(crate) scan_upto: String,
    pub(crate) ids_in_range: String,
    pub(crate) ids_in_range_open: String,
    pub(crate) doc: String,
    pub(crate) bucket_range: String,
    /// The `NOTIFY` channel (not an SQL identifier: a plain string).
    pub(crate) channel: String,
}

impl Sql {
    pub(crate) fn new(s: &str) -> Sql {
        Sql {
            find_store: format!("SELECT store_key, epoch FROM {s}.stores WHERE store_id = $1"),
            create_store: format!(
                "INSERT INTO {s}.stores (store_id, epoch) VALUES ($1, $2)
                 ON CONFLICT (store_id) DO NOTHING RETURNING store_key"
            ),
            create_buckets: format!(
                "INSERT INTO {s}.buckets (store_key, bucket, fp)
                 SELECT $1, b, $2 FROM generate_series(0, {}) AS b",
                FingerprintBuckets::COUNT - 1
            ),
            lock_head: format!("SELECT head FROM {s}.stores WHERE store_key = $1 FOR UPDATE"),
            existing: format!("SELECT id FROM {s}.changes WHERE store_key = $1 AND id = ANY($2)"),
            buckets_of: format!(
                "SELECT bucket, fp FROM {s}.buckets WHERE store_key = $1 AND bucket = ANY($2)"
            ),
            // The count guard turns "ON CONFLICT skipped a row" (impossible
            // under the counter row lock) into an error that aborts the
            // transaction, instead of a gap.
            insert: format!(
                "WITH ins AS (
                     INSERT INTO {s}.changes (store_key, seq, id, doc_id, kind, meta, payload)
                     SELECT $1, * FROM unnest($2::int8[], $3::bytea[], $4::text[], $5::int2[],
                                              $6::bytea[], $7::bytea[])
                     ON CONFLICT (store_key, id) DO NOTHING
                     RETURNING 1
                 )
                 SELECT 1 / (CASE WHEN count(*) = $8::int8 THEN 1 ELSE 0 END) FROM ins"
            ),
            update_buckets: format!(
                "UPDATE {s}.buckets AS b SET fp = u.fp
                 FROM unnest($2::int4[], $3::bytea[]) AS u(bucket, fp)
                 WHERE b.store_key = $1 AND b.bucket = u.bucket"
            ),
            set_head: format!("UPDATE {s}.stores SET head = $2 WHERE store_key = $1"),
            notify: "SELECT pg_notify($1, $2)".to_owned(),
            head: format!("SELECT head FROM {s}.stores WHERE store_key = $1"),
            heads: format!("SELECT store_key, head FROM {s}.stores WHERE store_key = ANY($1)"),
            get_changes: format!(
                "SELECT id, meta, payload FROM {s}.changes WHERE store_key = $1 AND id = ANY($2)"
            ),
            get_metas: format!(
                "SELECT id, meta FROM {s}.changes WHERE store_key = $1 AND id = ANY($2)"
            ),
            has: format!("SELECT id FROM {s}.changes WHERE store_key = $1 AND id = ANY($2)"),
            scan: format!(
                "SELECT seq, id, meta FROM {s}.changes WHERE store_key = $1 AND seq > $2
                 ORDER BY seq LIMIT $3"
            ),
            scan_upto: format!(
                "SELECT seq, id, meta FROM {s}.changes
                 WHERE store_key = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4"
            ),
            ids_in_range: format!(
                "SELECT id FROM {s}.changes WHERE store_key = $1 AND id >= $2 AND id < $3
                 ORDER BY id LIMIT $4"
            ),
            ids_in_range_open: format!(
                "SELECT id FROM {s}.changes WHERE store_key = $1 AND id >= $2
                 ORDER BY id LIMIT $3"
            ),
            doc: format!(
                "SELECT seq, id, meta FROM {s}.changes
                 WHERE store_key = $1 AND doc_id = $2 AND seq > $3 ORDER BY seq LIMIT $4"
            ),
            bucket_range: format!(
                "SELECT bucket, fp FROM {s}.buckets
                 WHERE store_key = $1 AND bucket >= $2 AND bucket < $3"
            ),
            channel: format!("cairn.{s}"),
        }
    }
}
