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
    // Version 2, for appends in one round trip:
    // - bucket fingerprints as an exact, unreduced `numeric` sum plus a
    //   count, so that an append adds to them on the server without reading
    //   them first (`fp.rs`);
    // - no foreign keys from `changes` and `buckets` to `stores`: the check
    //   ran a trigger per inserted row, while every append holds its
    //   store's row `FOR UPDATE` anyway and stores are never deleted.
    "ALTER TABLE {s}.changes DROP CONSTRAINT IF EXISTS changes_store_key_fkey;
     ALTER TABLE {s}.buckets DROP CONSTRAINT IF EXISTS buckets_store_key_fkey;
     ALTER TABLE {s}.buckets SET (fillfactor = 40);
     ALTER TABLE {s}.buckets ADD COLUMN sum numeric, ADD COLUMN n bigint;
     UPDATE {s}.buckets SET
         sum = round((SELECT sum(get_byte(fp, i)::numeric * power(256::numeric, i))
                      FROM generate_series(0, 31) AS i)),
         n = round((SELECT sum(get_byte(fp, 32 + i)::numeric * power(256::numeric, 7 - i))
                    FROM generate_series(0, 7) AS i))::bigint;
     ALTER TABLE {s}.buckets
         DROP COLUMN fp,
         ALTER COLUMN sum SET NOT NULL,
         ALTER COLUMN n SET NOT NULL,
         ADD CONSTRAINT buckets_sum_check CHECK (sum >= 0 AND scale(sum) = 0),
         ADD CONSTRAINT buckets_n_check CHECK (n >= 0);",
    // Version 3, for appends that leave the buckets to a fold: a store's
    // buckets hold exactly its changes up to `bucket_heads.head`; later
    // ones are added by the next fold (`writer.rs`), and readers add them
    // meanwhile. Every version-2 store's buckets are complete.
    //
    // `sum` is renamed so that a version-2 process still running during an
    // upgrade fails loudly (its statements name `sum`; PostgreSQL parses a
    // prepared statement again after the rename) instead of adding to the
    // buckets behind the folds' back, which would count changes twice.
    "CREATE TABLE {s}.bucket_heads (
         store_key bigint PRIMARY KEY,
         head      bigint NOT NULL CHECK (head >= 0)
     );
     INSERT INTO {s}.bucket_heads (store_key, head) SELECT store_key, head FROM {s}.stores;
     ALTER TABLE {s}.buckets RENAME COLUMN sum TO id_sum;",
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
    pub(crate) insert: String,
    pub(crate) add_buckets: String,
    pub(crate) create_bucket_head: String,
    pub(crate) bucket_head: String,
    pub(crate) lock_bucket_head: String,
    pub(crate) fold_ids: String,
    pub(crate) set_bucket_head: String,
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
                "INSERT INTO {s}.buckets (store_key, bucket, id_sum, n)
                 SELECT $1, b, 0, 0 FROM generate_series(0, {}) AS b",
                FingerprintBuckets::COUNT - 1
            ),
            lock_head: format!("SELECT head FROM {s}.stores WHERE store_key = $1 FOR UPDATE"),
            existing: format!("SELECT id FROM {s}.changes WHERE store_key = $1 AND id = ANY($2)"),
            // Numbers the rows `head + 1 …` in order, reading `head` from
            // the row this transaction has locked. No `ON CONFLICT`: an id
            // already stored (the one-round-trip append does not check
            // first) violates `changes_by_id`, which aborts the transaction;
            // the writer then appends again, checking first (`writer.rs`).
            insert: format!(
                "INSERT INTO {s}.changes (store_key, seq, id, doc_id, kind, meta, payload)
                 SELECT $1, h.head + u.ord, u.id, u.doc_id, u.kind, u.meta, u.payload
                 FROM (SELECT head FROM {s}.stores WHERE store_key = $1) AS h,
                      unnest($2::bytea[], $3::text[], $4::int2[], $5::bytea[], $6::bytea[])
                          WITH ORDINALITY AS u(id, doc_id, kind, meta, payload, ord)"
            ),
            // Adds each touched bucket's delta; a missing bucket row (never
            // created, or deleted by hand) fails the transaction, naming it.
            add_buckets: format!(
                "WITH upd AS (
                     UPDATE {s}.buckets AS b SET id_sum = b.id_sum + u.d::numeric, n = b.n + u.c
                     FROM unnest($2::int4[], $3::text[], $4::int8[]) AS u(bucket, d, c)
                     WHERE b.store_key = $1 AND b.bucket = u.bucket
                     RETURNING 1
                 )
                 SELECT CASE WHEN count(*) = $5::int8 THEN 1
                        ELSE ('cairn: a bucket row of store_key ' || $1::int8::text || ' is missing; '
                              || count(*)::text || ' of ' || $5::int8::text || ' found')::int END
                 FROM upd"
            ),
            create_bucket_head: format!(
                "INSERT INTO {s}.bucket_heads (store_key, head) VALUES ($1, 0)"
            ),
            bucket_head: format!("SELECT head FROM {s}.bucket_heads WHERE store_key = $1"),
            // Taken first by every fold, in every process: folds of one
            // store run one at a time. Appends never take it.
            lock_bucket_head: format!(
                "SELECT head FROM {s}.bucket_heads WHERE store_key = $1 FOR UPDATE"
            ),
            fold_ids: format!(
                "SELECT id FROM {s}.changes WHERE store_key = $1 AND seq > $2 AND seq <= $3"
            ),
            set_bucket_head: format!(
                "UPDATE {s}.bucket_heads SET head = $2 WHERE store_key = $1 AND head = $3"
            ),
            set_head: format!(
                "UPDATE {s}.stores SET head = head + $2 WHERE store_key = $1 RETURNING head"
            ),
            notify: format!(
                "SELECT pg_notify($1, store_key::text || ' ' || head::text)
                 FROM {s}.stores WHERE store_key = $2"
            ),
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
            // The buckets in `[$2, $3)`, then the ids in them that no fold
            // has added yet (a NULL bucket): one statement, so one snapshot
            // of the buckets, their head and the changes after it.
            bucket_range: format!(
                "SELECT bucket, id_sum::text, n, NULL::bytea FROM {s}.buckets
                 WHERE store_key = $1 AND bucket >= $2 AND bucket < $3
                 UNION ALL
                 SELECT NULL, NULL, NULL, c.id FROM {s}.bucket_heads AS h, {s}.changes AS c
                 WHERE h.store_key = $1 AND c.store_key = $1 AND c.seq > h.head
                   AND get_byte(c.id, 0) * 16 + get_byte(c.id, 1) / 16 >= $2
                   AND get_byte(c.id, 0) * 16 + get_byte(c.id, 1) / 16 < $3"
            ),
            channel: format!("cairn.{s}"),
        }
    }
}
