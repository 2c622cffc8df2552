//! `cargo bench -p cairn-postgres`: every figure against a baseline
//! measured in the same run on the same server, each comparison run
//! `CAIRN_PG_BENCH_RUNS` times (default 3) and reported as a range.
//!
//! 1. Append N × 1 KiB (N = `CAIRN_PG_BENCH_N`, default 100,000) at batch
//!    1, 100 and 1,000, against raw inserts of the same rows into a table
//!    of the same shape and indexes: a multi-row `INSERT`, and `COPY`
//!    (binary), one transaction per batch. (Batch 1 uses
//!    `CAIRN_PG_BENCH_N1`, default 20,000: one commit per change.)
//! 2. 16 concurrent appenders on one store, one change per append:
//!    commits/s and p99, against 16 connections doing raw single-row
//!    inserts.
//! 3. A pull of N changes over QUIC into an empty `QuicStore`, from a
//!    PostgreSQL-backed relay against a redb-backed one.
//! 4. Live propagation across two relays (two `PostgresDb`s: two pools, two
//!    listeners) over one database: p50 and p99, against one relay.
//!
//! Runs against `CAIRN_PG_URL` if set, else starts its own throwaway
//! cluster (as `cargo xtask test` does).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/common/cluster.rs"]
mod cluster;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::encoding::encode_meta;
use cairn::{AppendOnlyStore, Change, ChangeBuilder, ChangeKind, DocId, Keypair, StoreId};
use cairn_memory::MemoryStore;
use cairn_postgres::{PostgresDb, PostgresOptions};
use cairn_quic::{Acl, QuicServer, QuicStore, QuicStoreOptions, ServerOptions, Stores};
use futures::StreamExt;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn changes(n: usize, size: usize, salt: u64) -> Vec<Change> {
    (0..n)
        .map(|i| {
            ChangeBuilder::new(
                ChangeKind::Change,
                DocId::new(format!("doc-{}", i % 100)).unwrap(),
            )
            .created_at(salt * 1_000_000_000 + i as u64)
            .payload(vec![(i % 251) as u8; size])
            .build()
            .unwrap()
        })
        .collect()
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn range(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

static SCHEMA_N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn schema() -> String {
    format!(
        "bench_{:x}_{}",
        cairn::random_u64() >> 24,
        SCHEMA_N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

async fn raw_client(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// A table of the same shape and indexes as the store's `changes`.
async fn raw_table(c: &Client) -> String {
    let s = schema();
    c.batch_execute(&format!(
        "CREATE SCHEMA {s};
         CREATE TABLE {s}.raw (store_key bigint NOT NULL, seq bigint NOT NULL, id bytea NOT NULL,
             doc_id text NOT NULL, kind smallint NOT NULL, meta bytea NOT NULL,
             payload bytea NOT NULL, PRIMARY KEY (store_key, seq));
         CREATE UNIQUE INDEX ON {s}.raw (store_key, id);
         CREATE INDEX ON {s}.raw (store_key, doc_id, seq);"
    ))
    .await
    .unwrap();
    format!("{s}.raw")
}

struct Row {
    id: Vec<u8>,
    doc: String,
    kind: i16,
    meta: Vec<u8>,
    payload: Vec<u8>,
}

fn rows(data: &[Change]) -> Vec<Row> {
    data.iter()
        .map(|c| Row {
            id: c.meta.id.as_bytes().to_vec(),
            doc: c.meta.doc_id.as_str().to_owned(),
            kind: i16::from(c.meta.kind.code()),
            meta: encode_meta(&c.meta),
            payload: c.payload.to_vec(),
        })
        .collect()
}

/// The multi-row `INSERT` baseline: a table and its prepared statement
/// for exactly `batch` rows.
struct RawInsert {
    stmt: tokio_postgres::Statement,
}

impl RawInsert {
    async fn new(c: &Client, batch: usize) -> Self {
        let table = raw_table(c).await;
        let values: Vec<String> = (0..batch)
            .map(|r| {
                let b = r * 7;
                format!(
                    "(${},${},${},${},${},${},${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7
                )
            })
            .collect();
        let stmt = c
            .prepare(&format!("INSERT INTO {table} VALUES {}", values.join(",")))
            .await
            .unwrap();
        RawInsert { stmt }
    }

    /// Insert `chunk` as sequence numbers `first..`, one statement.
    async fn run(&self, c: &Client, chunk: &[Row], first: i64) -> Duration {
        let key = 1i64;
        let seqs: Vec<i64> = (first..first + chunk.len() as i64).collect();
        let t = Instant::now();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(chunk.len() * 7);
        for (r, s) in chunk.iter().zip(&seqs) {
            params.extend([
                &key as &(dyn ToSql + Sync),
                s,
                &r.id,
                &r.doc,
                &r.kind,
                &r.meta,
                &r.payload,
            ]);
        }
        c.execute(&self.stmt, &params).await.unwrap();
        t.elapsed()
    }
}

/// The binary `COPY` baseline: one `COPY` per batch.
async fn raw_copy(c: &Client, sql: &str, chunk: &[Row], first: i64) -> Duration {
    let types = [
        Type::INT8,
        Type::INT8,
        Type::BYTEA,
        Type::TEXT,
        Type::INT2,
        Type::BYTEA,
        Type::BYTEA,
    ];
    let key = 1i64;
    let t = Instant::now();
    let sink = c.copy_in(sql).await.unwrap();
    let writer = BinaryCopyInWriter::new(sink, &types);
    futures::pin_mut!(writer);
    for (i, r) in chunk.iter().enumerate() {
        let seq = first + i as i64;
        writer
            .as_mut()
            .write(&[&key, &seq, &r.id, &r.doc, &r.kind, &r.meta, &r.payload])
            .await
            .unwrap();
    }
    writer.finish().await.unwrap();
    t.elapsed()
}

/// One `append` of `chunk`, timed from the call (the clone of the batch
/// the call consumes is made before).
async fn cairn_append(store: &dyn AppendOnlyStore, chunk: &[Change]) -> Duration {
    let owned = chunk.to_vec();
    let t = Instant::now();
    store.append(owned).await.unwrap();
    t.elapsed()
}

/// A turn in [`append_run`]: this many batches, and at least
/// [`TURN_MIN_CHANGES`] changes.
const TURN: usize = 10;
const TURN_MIN_CHANGES: usize = 1_000;

/// One run at one batch size. The three contenders take turns of [`TURN`]
/// batches (at least [`TURN_MIN_CHANGES`] changes), in an order that rotates with the turn, each into its own
/// fresh table on the same server: a checkpoint, an autovacuum or a
/// neighbour's load then falls on all three alike instead of on whichever
/// happened to be running, which is what made whole-run ratios swing.
/// Cairn's turn ends with `fold_fingerprints`, counted: the bucket work
/// its appends left to the background fold is done inside its own turn,
/// never during a baseline's.
/// Returns the total time of each: (cairn, INSERT, COPY).
async fn append_run(
    url: &str,
    c: &Client,
    data: &[Change],
    raw_rows: &[Row],
    batch: usize,
) -> (Duration, Duration, Duration) {
    let store = PostgresDb::connect_with(url, PostgresOptions::default().schema(schema()))
        .await
        .unwrap()
        .store(StoreId::new("bench/append").unwrap())
        .await
        .unwrap();
    let insert = RawInsert::new(c, batch).await;
    let copy_sql = format!("COPY {} FROM STDIN (FORMAT binary)", raw_table(c).await);
    let mut total = [Duration::ZERO; 3];
    let whole = data.len() / batch * batch;
    let per_turn = (batch * TURN).max(TURN_MIN_CHANGES).div_ceil(batch) * batch;
    let turns: Vec<(usize, &[Change])> = data[..whole].chunks(per_turn).enumerate().collect();
    for (t, turn) in turns {
        for k in 0..3 {
            let who = (t + k) % 3;
            for (i, chunk) in turn.chunks(batch).enumerate() {
                let at = t * per_turn + i * batch;
                let rows = &raw_rows[at..at + chunk.len()];
                let first = at as i64 + 1;
                total[who] += match who {
                    0 => cairn_append(&store, chunk).await,
                    1 => insert.run(c, rows, first).await,
                    _ => raw_copy(c, &copy_sql, rows, first).await,
                };
            }
            if who == 0 {
                let t = Instant::now();
                store.fold_fingerprints().await.unwrap();
                total[0] += t.elapsed();
            }
        }
    }
    assert_eq!(store.head().await.unwrap().seq as usize, whole);
    assert_eq!(store.fold_fingerprints().await.unwrap() as usize, whole);
    (total[0], total[1], total[2])
}

async fn appends(url: &str, runs: usize) {
    let n = env_num("CAIRN_PG_BENCH_N", 100_000);
    let n1 = env_num("CAIRN_PG_BENCH_N1", 20_000);
    let c = raw_client(url).await;
    println!("## append N × 1 KiB (rates in changes/s; ratio = cairn / baseline)");
    let batches: Vec<usize> = std::env::var("CAIRN_PG_BENCH_BATCHES")
        .unwrap_or_else(|_| "1,100,1000".into())
        .split(',')
        .filter_map(|b| b.trim().parse().ok())
        .collect();
    for batch in batches {
        let count = if batch == 1 { n1 } else { n } / batch * batch;
        let data = changes(count, 1024, batch as u64);
        let raw_rows = rows(&data);
        let (mut rc, mut ri, mut rp, mut vs_i, mut vs_c) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            let (tc, ti, tp) = append_run(url, &c, &data, &raw_rows, batch).await;
            let rate = |t: Duration| count as f64 / t.as_secs_f64();
            println!(
                "batch {batch:>5} run {run}: cairn {:>8.0}/s  INSERT {:>8.0}/s  COPY {:>8.0}/s  \
                 cairn/INSERT {:.2}×  cairn/COPY {:.2}×",
                rate(tc),
                rate(ti),
                rate(tp),
                ti.as_secs_f64() / tc.as_secs_f64(),
                tp.as_secs_f64() / tc.as_secs_f64()
            );
            rc.push(rate(tc));
            ri.push(rate(ti));
            rp.push(rate(tp));
            vs_i.push(ti.as_secs_f64() / tc.as_secs_f64());
            vs_c.push(tp.as_secs_f64() / tc.as_secs_f64());
        }
        let f = |v: &[f64]| {
            let (a, b) = range(v);
            format!("{a:.0}–{b:.0}")
        };
        let g = |v: &[f64]| {
            let (a, b) = range(v);
            format!("{a:.2}–{b:.2}×")
        };
        println!(
            "RESULT append batch {batch} ({count} changes): cairn {} /s | INSERT {} /s | COPY {} /s | \
             vs INSERT {} | vs COPY {}",
            f(&rc),
            f(&ri),
            f(&rp),
            g(&vs_i),
            g(&vs_c)
        );
    }
}

async fn concurrent(url: &str, runs: usize) {
    const TASKS: usize = 16;
    let per = env_num("CAIRN_PG_BENCH_PER_TASK", 200);
    println!("## {TASKS} concurrent appenders, one store, one change per append");
    let (mut cr, mut cp, mut rr, mut rp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let store = PostgresDb::connect_with(
            url,
            PostgresOptions::default().schema(schema()).pool_size(TASKS),
        )
        .await
        .unwrap()
        .store(StoreId::new("bench/concurrent").unwrap())
        .await
        .unwrap();
        let t = Instant::now();
        let mut hs = Vec::new();
        for k in 0..TASKS {
            let store = store.clone();
            let data = changes(per, 1024, 100 + (run * TASKS + k) as u64);
            hs.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for c in data {
                    let t = Instant::now();
                    store.append(vec![c]).await.unwrap();
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for h in hs {
            lat.extend(h.await.unwrap());
        }
        let el = t.elapsed();
        let rate = (TASKS * per) as f64 / el.as_secs_f64();
        let p99 = pct(&mut lat, 0.99);
        // Baseline: the same rows, single-row INSERT from 16 connections.
        let admin = raw_client(url).await;
        let table = raw_table(&admin).await;
        let seq = Arc::new(std::sync::atomic::AtomicI64::new(1));
        let t = Instant::now();
        let mut hs = Vec::new();
        for k in 0..TASKS {
            let (url, table, seq) = (url.to_owned(), table.clone(), seq.clone());
            let data = rows(&changes(per, 1024, 10_000 + (run * TASKS + k) as u64));
            hs.push(tokio::spawn(async move {
                let c = raw_client(&url).await;
                let stmt = c
                    .prepare(&format!("INSERT INTO {table} VALUES (1,$1,$2,$3,$4,$5,$6)"))
                    .await
                    .unwrap();
                let mut lat = Vec::with_capacity(per);
                for r in data {
                    let s = seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let t = Instant::now();
                    c.execute(&stmt, &[&s, &r.id, &r.doc, &r.kind, &r.meta, &r.payload])
                        .await
                        .unwrap();
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut rlat = Vec::new();
        for h in hs {
            rlat.extend(h.await.unwrap());
        }
        let rel = t.elapsed();
        let rrate = (TASKS * per) as f64 / rel.as_secs_f64();
        let rp99 = pct(&mut rlat, 0.99);
        println!(
            "run {run}: cairn {rate:.0} commits/s p99 {:.2} ms | raw INSERT {rrate:.0} commits/s p99 {:.2} ms | ratio {:.2}×",
            p99.as_secs_f64() * 1e3,
            rp99.as_secs_f64() * 1e3,
            rate / rrate
        );
        cr.push(rate);
        cp.push(p99.as_secs_f64() * 1e3);
        rr.push(rrate);
        rp.push(rp99.as_secs_f64() * 1e3);
    }
    let ratios: Vec<f64> = cr.iter().zip(&rr).map(|(a, b)| a / b).collect();
    let (a, b) = range(&cr);
    let (c, d) = range(&cp);
    let (e, f) = range(&rr);
    let (g, h) = range(&rp);
    let (i, j) = range(&ratios);
    println!(
        "RESULT concurrent: cairn {a:.0}–{b:.0} commits/s, p99 {c:.1}–{d:.1} ms | raw {e:.0}–{f:.0} commits/s, p99 {g:.1}–{h:.1} ms | ratio {i:.2}–{j:.2}×"
    );
}

async fn pull_once(store: Arc<dyn AppendOnlyStore>, sid: &StoreId, n: usize) -> Duration {
    let skey = Keypair::generate();
    let ckey = Keypair::generate();
    let server = QuicServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &skey,
        Arc::new(Stores::new().with(store)),
        Arc::new(Acl::open()),
        ServerOptions::default(),
    )
    .unwrap();
    let t = Instant::now();
    let q = QuicStore::new(
        Arc::new(MemoryStore::new(sid.clone())),
        server.local_addr(),
        server.peer_id(),
        &ckey,
        QuicStoreOptions::default(),
    )
    .unwrap();
    q.wait_connected(Duration::from_secs(600)).await.unwrap();
    let e = t.elapsed();
    assert_eq!(q.head().await.unwrap().seq as usize, n);
    q.close().await;
    server.shutdown().await;
    e
}

async fn pull(url: &str, runs: usize) {
    let n = env_num("CAIRN_PG_BENCH_N", 100_000);
    let sid = StoreId::new("bench/pull").unwrap();
    let data = changes(n, 1024, 7);
    let pg = PostgresDb::connect_with(url, PostgresOptions::default().schema(schema()))
        .await
        .unwrap()
        .store(sid.clone())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let redb = cairn_redb::RedbStore::open(dir.path().join("pull.redb"), sid.clone())
        .await
        .unwrap();
    for chunk in data.chunks(5000) {
        pg.append(chunk.to_vec()).await.unwrap();
        redb.append(chunk.to_vec()).await.unwrap();
    }
    drop(data);
    println!("## pull {n} × 1 KiB over QUIC into an empty QuicStore");
    let (mut tp, mut tr, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let p = pull_once(Arc::new(pg.clone()), &sid, n).await;
        let r = pull_once(Arc::new(redb.clone()), &sid, n).await;
        println!(
            "run {run}: postgres relay {:.2} s ({:.0}/s) | redb relay {:.2} s ({:.0}/s) | ratio {:.2}×",
            p.as_secs_f64(),
            n as f64 / p.as_secs_f64(),
            r.as_secs_f64(),
            n as f64 / r.as_secs_f64(),
            r.as_secs_f64() / p.as_secs_f64()
        );
        tp.push(p.as_secs_f64());
        tr.push(r.as_secs_f64());
        ratio.push(r.as_secs_f64() / p.as_secs_f64());
    }
    let (a, b) = range(&tp);
    let (c, d) = range(&tr);
    let (e, f) = range(&ratio);
    println!(
        "RESULT pull: postgres relay {a:.2}–{b:.2} s | redb relay {c:.2}–{d:.2} s | throughput ratio {e:.2}–{f:.2}×"
    );
}

/// p50 and p99 of `samples` appends through `from`, each timed until `to`'s
/// subscription delivers it.
async fn propagation(
    from: &QuicStore,
    to: &QuicStore,
    samples: usize,
    salt: u64,
) -> (Duration, Duration) {
    let mut sub = to.subscribe().await.unwrap();
    let mut lat = Vec::with_capacity(samples);
    for c in changes(samples, 256, salt) {
        let id = c.id();
        let t = Instant::now();
        from.append(vec![c]).await.unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), sub.next())
                .await
                .expect("delivered within 20 s")
                .unwrap()
                .unwrap();
            if m.id == id {
                break;
            }
        }
        lat.push(t.elapsed());
    }
    (pct(&mut lat, 0.5), pct(&mut lat, 0.99))
}

async fn live(url: &str, runs: usize) {
    let samples = env_num("CAIRN_PG_BENCH_LIVE", 300);
    println!("## live propagation, {samples} appends per run");
    let sid = StoreId::new("bench/live").unwrap();
    let s = schema();
    let mut relays = Vec::new();
    for _ in 0..2 {
        let store = PostgresDb::connect_with(url, PostgresOptions::default().schema(&s))
            .await
            .unwrap()
            .store(sid.clone())
            .await
            .unwrap();
        relays.push(
            QuicServer::bind(
                "127.0.0.1:0".parse().unwrap(),
                &Keypair::generate(),
                Arc::new(Stores::new().with(Arc::new(store))),
                Arc::new(Acl::open()),
                ServerOptions::default(),
            )
            .unwrap(),
        );
    }
    let connect = |r: &QuicServer| {
        let q = QuicStore::new(
            Arc::new(MemoryStore::new(sid.clone())),
            r.local_addr(),
            r.peer_id(),
            &Keypair::generate(),
            QuicStoreOptions::default(),
        )
        .unwrap();
        async move {
            q.wait_connected(Duration::from_secs(30)).await.unwrap();
            q
        }
    };
    let writer = connect(&relays[0]).await;
    let same = connect(&relays[0]).await;
    let other = connect(&relays[1]).await;
    let (mut a50, mut a99, mut s50, mut s99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let (o50, o99) = propagation(&writer, &other, samples, 1000 + run as u64).await;
        let (m50, m99) = propagation(&writer, &same, samples, 2000 + run as u64).await;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "run {run}: across two relays p50 {:.2} ms p99 {:.2} ms | one relay p50 {:.2} ms p99 {:.2} ms",
            ms(o50),
            ms(o99),
            ms(m50),
            ms(m99)
        );
        a50.push(ms(o50));
        a99.push(ms(o99));
        s50.push(ms(m50));
        s99.push(ms(m99));
    }
    let r = |v: &[f64]| {
        let (a, b) = range(v);
        format!("{a:.2}–{b:.2} ms")
    };
    println!(
        "RESULT live: across two relays p50 {} p99 {} | one relay p50 {} p99 {}",
        r(&a50),
        r(&a99),
        r(&s50),
        r(&s99)
    );
}

fn main() {
    let runs = env_num("CAIRN_PG_BENCH_RUNS", 3).max(1);
    let only = std::env::var("CAIRN_PG_BENCH_ONLY").unwrap_or_default();
    let cluster = match std::env::var(cairn_postgres::TEST_URL_ENV) {
        Ok(u) if !u.is_empty() => {
            println!("benchmarking against {u}");
            None
        }
        _ => {
            let c = cluster::Cluster::start_new().expect("start a throwaway PostgreSQL cluster");
            println!("benchmarking against a throwaway cluster on {}", c.url());
            Some(c)
        }
    };
    let url = match &cluster {
        Some(c) => c.url(),
        None => std::env::var(cairn_postgres::TEST_URL_ENV).unwrap_or_default(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let want = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
        if want("append") {
            appends(&url, runs).await;
        }
        if want("concurrent") {
            concurrent(&url, runs).await;
        }
        if want("pull") {
            pull(&url, runs).await;
        }
        if want("live") {
            live(&url, runs).await;
        }
    });
    drop(cluster);
}
