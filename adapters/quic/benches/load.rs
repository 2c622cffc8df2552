//! Load on one `QuicServer` over a durable `RedbStore` (a temp file), on
//! loopback (127.0.0.1 only):
//!
//! 1. 100 clients append 1,000 signed changes each (one change of 64 bytes
//!    per append, all clients at once) while 10 live subscribers watch; then
//!    0 lost and 0 duplicated is checked (the server store, read back with
//!    paged `scan`, holds exactly the 100,000 ids, and each subscriber saw
//!    each id exactly once);
//! 2. 1,000 idle authenticated connections (raw quinn, TLS with a client
//!    key each and the hello exchanged), held at once;
//! 3. a baseline, in the same run: the same appends (the same signed
//!    changes, the signature checked as the server's `RequireSignature`
//!    does) by as many tasks straight into a durable `RedbStore` in this
//!    process, with no network, protocol or subscribers.
//!
//! The server runs in a child process (this binary, run again with
//! `CAIRN_LOAD_ROLE=server`), so its memory and CPU are its own: the parent
//! reads `/proc/<child>/status` (VmRSS, VmHWM) and `/proc/<child>/stat`
//! (utime + stime). Clients run in the parent.
//!
//! - Append latency: from a client's append call until the server's answer,
//!   which it sends once the change is committed to the redb file. The
//!   writers are `QuicClient`s calling `remote_append` — the request the
//!   `QuicStore` outbox sends, without the cache, and without the
//!   subscription a `QuicStore` always opens (100 of them would be 110
//!   subscribers, each sent all 100,000 changes).
//! - Propagation: from the start of that append call until a subscriber
//!   (`QuicClient::subscribe`, the server's live notifications) yields the
//!   change; every subscriber's sightings count.
//! - The bench's `ServerOptions` raise `max_connections_per_ip` (default
//!   64) and `max_connections` (default 1024) to 4096: every client is on
//!   127.0.0.1. The rest are the defaults, with `RequireSignature` as the
//!   verifier.
//!
//! `CAIRN_LOAD_WRITER=quicstore` makes the writers `QuicStore`s (a memory
//! cache each) that `append` and then `flush` every change: the latency is
//! then until the outbox has the server's confirmation, and every writer is
//! also a subscriber (a `QuicStore` always subscribes), so run it smaller.
//!
//! Lines start with `load ` and are `key=value` pairs. `CAIRN_LOAD_CLIENTS`,
//! `CAIRN_LOAD_APPENDS`, `CAIRN_LOAD_SUBSCRIBERS` and `CAIRN_LOAD_IDLE`
//! change the sizes.
//!
//! Run: `cargo bench -p cairn-quic --bench load`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn::AppendOnlyStore;
use cairn::{
    Change, ChangeBuilder, ChangeId, ChangeKind, DocId, Keypair, RequireSignature, StoreId,
};
use cairn_memory::MemoryStore;
use cairn_protocol::{FrameDecoder, Message, RemoteCalls, client_hello, encode};
use cairn_quic::*;
use cairn_redb::RedbStore;
use futures::StreamExt;

const ROLE: &str = "CAIRN_LOAD_ROLE";
const SEED: &str = "CAIRN_LOAD_SEED";
/// Every wait of the bench ends by then at the latest.
const DEADLINE: Duration = Duration::from_secs(600);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sid() -> StoreId {
    StoreId::new("bench/load").unwrap()
}

fn server_options() -> ServerOptions {
    ServerOptions {
        max_connections: 4096,
        max_connections_per_ip: 4096,
        verifier: Arc::new(RequireSignature),
        ..ServerOptions::default()
    }
}

// ---- the server process -------------------------------------------------

/// Serve until stdin says `stop` (or closes).
fn run_server() {
    let seed: [u8; 32] = hex::decode(std::env::var(SEED).unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let key = Keypair::from_seed(seed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path().join("load.redb"), sid())
            .await
            .unwrap();
        let server = QuicServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            &key,
            Arc::new(Stores::new().with(Arc::new(store))),
            Arc::new(Acl::open()),
            server_options(),
        )
        .unwrap();
        println!("ready {}", server.local_addr());
        std::io::stdout().flush().unwrap();
        // Wait for `stop` or the parent's end, off the executor.
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin().lock().read_line(&mut line).unwrap_or(0) > 0 {
                if line.trim() == "stop" {
                    break;
                }
                line.clear();
            }
        })
        .await;
        server.shutdown().await;
    });
}

/// The server child; killed if the bench ends early.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    peer_id: PeerId,
}

impl ServerProcess {
    fn start() -> Self {
        let key = Keypair::generate();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(ROLE, "server")
            .env(SEED, hex::encode(key.seed()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server process did not start within 30 s");
        let addr = line
            .trim()
            .strip_prefix("ready ")
            .expect("the server process did not say ready")
            .parse()
            .unwrap();
        ServerProcess {
            child,
            addr,
            peer_id: key.author(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ask it to shut down; kill it if it has not exited within 20 s.
    fn stop(mut self) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = stdin.write_all(b"stop\n");
            let _ = stdin.flush();
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "the server process failed: {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server process did not stop within 20 s");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---- /proc ----------------------------------------------------------------

/// A field of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: &str, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU time of a process so far, in seconds.
fn cpu_s(pid: &str, hz: f64) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name's closing parenthesis: field 3 (state) on;
    // utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / hz
}

// ---- the clients ----------------------------------------------------------

/// The `p` quantile (zero for no samples).
fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    let last = v.len().saturating_sub(1);
    v.get((last as f64 * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// `appends` signed changes for one client: a chain in a document of its own.
fn changes_of(client: usize, appends: usize) -> Vec<Change> {
    let key = Keypair::generate();
    let doc = DocId::new(format!("doc-{client}")).unwrap();
    let mut out: Vec<Change> = Vec::with_capacity(appends);
    for i in 0..appends {
        let mut b = ChangeBuilder::new(ChangeKind::Change, doc.clone())
            .created_at(1_700_000_000_000 + i as u64)
            .payload(vec![(client ^ i) as u8; 64]);
        if let Some(prev) = out.last() {
            b = b.deps([prev.id()]);
        }
        out.push(b.sign(&key).unwrap());
    }
    out
}

/// Connect and exchange hellos on a raw quinn connection.
async fn idle_session(ep: &quinn::Endpoint, srv: &ServerProcess) -> quinn::Connection {
    let cfg = cairn_quic::config::client_config(&Keypair::generate(), srv.peer_id).unwrap();
    let conn = ep
        .connect_with(cfg, srv.addr, "cairn")
        .unwrap()
        .await
        .unwrap();
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    let hello = Message::Hello(client_hello(sid(), 1 << 24));
    s.write_all(&encode(&hello, 1 << 24).unwrap())
        .await
        .unwrap();
    s.finish().unwrap();
    let bytes = r.read_to_end(1 << 16).await.unwrap();
    let mut dec = FrameDecoder::new(1 << 24);
    dec.push(&bytes);
    assert!(
        matches!(dec.pop().unwrap(), Some(Message::Hello(_))),
        "the server did not greet back"
    );
    conn
}

/// How a load client appends.
enum Writer {
    /// `remote_append`, answered after the server's commit.
    Client(QuicClient),
    /// `append` into its cache, then `flush` until the outbox has the
    /// server's confirmation.
    Store(QuicStore),
}

async fn run(srv: &ServerProcess) {
    let clients = env_usize("CAIRN_LOAD_CLIENTS", 100);
    let appends = env_usize("CAIRN_LOAD_APPENDS", 1000);
    let idle = env_usize("CAIRN_LOAD_IDLE", 1000);
    let subscribers = env_usize("CAIRN_LOAD_SUBSCRIBERS", 10);
    let quicstore = std::env::var("CAIRN_LOAD_WRITER").as_deref() == Ok("quicstore");
    let total = clients * appends;
    let pid = srv.pid().to_string();
    let hz = clock_ticks();
    let max_frame = cairn_protocol::DEFAULT_MAX_FRAME;

    // Signed before the clock starts.
    let work: Vec<Vec<Change>> = (0..clients).map(|c| changes_of(c, appends)).collect();
    let baseline_work = work.clone();
    let index: Arc<HashMap<ChangeId, usize>> = Arc::new(
        work.iter()
            .flatten()
            .enumerate()
            .map(|(i, c)| (c.id(), i))
            .collect(),
    );
    assert_eq!(index.len(), total);
    // When each change's append started, in µs since `epoch` (+1; 0 = not yet).
    let epoch = Instant::now();
    let started: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());

    let rss0 = status_kib(&pid, "VmRSS:");
    let (cpu0, my_cpu0) = (cpu_s(&pid, hz), cpu_s("self", hz));

    // Subscribers first; `subscribe` returns once the server confirmed it.
    let mut subs = Vec::new();
    for _ in 0..subscribers {
        let c = QuicClient::connect(
            srv.addr,
            srv.peer_id,
            &Keypair::generate(),
            &sid(),
            max_frame,
        )
        .await
        .unwrap();
        let mut stream = c.subscribe().await.unwrap();
        let (index, started) = (index.clone(), started.clone());
        subs.push(tokio::spawn(async move {
            let mut seen = vec![0u32; total];
            let mut distinct = 0;
            let mut prop = Vec::with_capacity(total);
            let deadline = tokio::time::Instant::now() + DEADLINE;
            while distinct < total {
                let Ok(Some(item)) = tokio::time::timeout_at(deadline, stream.next()).await else {
                    break;
                };
                let now = epoch.elapsed().as_micros() as u64;
                let m = item.expect("a subscription failed");
                let i = *index.get(&m.id).expect("a change nobody appended");
                seen[i] += 1;
                if seen[i] == 1 {
                    distinct += 1;
                    let t0 = started[i].load(Ordering::Acquire);
                    assert!(t0 > 0, "notified before its append started");
                    prop.push(Duration::from_micros(now.saturating_sub(t0 - 1)));
                }
            }
            let done = epoch.elapsed();
            drop(stream);
            c.close().await;
            (seen, prop, done)
        }));
    }

    let mut writers = Vec::new();
    for _ in 0..clients {
        let key = Keypair::generate();
        writers.push(if quicstore {
            let cache = Arc::new(MemoryStore::new(sid()));
            let store = QuicStore::new(
                cache,
                srv.addr,
                srv.peer_id,
                &key,
                QuicStoreOptions::default(),
            )
            .unwrap();
            store.wait_connected(Duration::from_secs(60)).await.unwrap();
            Writer::Store(store)
        } else {
            Writer::Client(
                QuicClient::connect(srv.addr, srv.peer_id, &key, &sid(), max_frame)
                    .await
                    .unwrap(),
            )
        });
    }
    let go = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::new();
    let mut offset = 0;
    for (writer, changes) in writers.into_iter().zip(work) {
        let (go, started) = (go.clone(), started.clone());
        let first = offset;
        offset += changes.len();
        tasks.push(tokio::spawn(async move {
            go.wait().await;
            let mut lat = Vec::with_capacity(changes.len());
            for (k, change) in changes.into_iter().enumerate() {
                let t = Instant::now();
                started[first + k].store(epoch.elapsed().as_micros() as u64 + 1, Ordering::Release);
                let out = match &writer {
                    Writer::Client(c) => c.remote_append(vec![change]).await.unwrap(),
                    Writer::Store(s) => {
                        let out = s.append(vec![change]).await.unwrap();
                        s.flush(DEADLINE).await.unwrap();
                        out
                    }
                };
                lat.push(t.elapsed());
                assert_eq!(out.new.len(), 1, "an append stored nothing new");
            }
            let done = epoch.elapsed();
            match writer {
                Writer::Client(c) => c.close().await,
                Writer::Store(s) => s.close().await,
            }
            (lat, done)
        }));
    }
    go.wait().await;
    let t = Instant::now();
    let mut lat = Vec::with_capacity(total);
    let mut last_done = Duration::ZERO;
    for task in tasks {
        let (l, done) = task.await.unwrap();
        lat.extend(l);
        last_done = last_done.max(done);
    }
    // From the start until the last append was answered (closing the
    // clients not counted).
    let elapsed = last_done.saturating_sub(t.duration_since(epoch));
    let mut prop = Vec::with_capacity(total * subscribers);
    let mut duplicated = 0usize;
    let mut lost = 0usize;
    let mut last_seen = Duration::ZERO;
    for sub in subs {
        let (seen, p, done) = sub.await.unwrap();
        last_seen = last_seen.max(done);
        lost += seen.iter().filter(|&&n| n == 0).count();
        duplicated += seen
            .iter()
            .map(|&n| n.saturating_sub(1) as usize)
            .sum::<usize>();
        prop.extend(p);
    }
    // From the start of the appends until the last subscriber saw its last.
    let all_seen = last_seen.saturating_sub(t.duration_since(epoch));
    let hwm = status_kib(&pid, "VmHWM:");
    let rss1 = status_kib(&pid, "VmRSS:");
    let (cpu1, my_cpu1) = (cpu_s(&pid, hz), cpu_s("self", hz));

    // What the server holds, read back by paged scan.
    let reader = QuicClient::connect(
        srv.addr,
        srv.peer_id,
        &Keypair::generate(),
        &sid(),
        max_frame,
    )
    .await
    .unwrap();
    let mut held = vec![0u32; total];
    let (mut after, mut items, mut pages) = (0u64, 0usize, 0usize);
    while pages < total + 1 {
        let page = reader.remote_scan(after, 10_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        pages += 1;
        for item in &page {
            items += 1;
            held[*index
                .get(&item.meta.id)
                .expect("the server holds a stranger")] += 1;
        }
    }
    reader.close().await;
    let server_lost = held.iter().filter(|&&n| n == 0).count();
    let server_dup = items - (total - server_lost);

    println!(
        "load clients={clients} appends={appends} subscribers={subscribers} changes={total} payload_bytes=64 signed=true store=redb-durable writer={}",
        if quicstore { "quicstore" } else { "client" }
    );
    println!(
        "load check server_ids={items} server_lost={server_lost} server_duplicated={server_dup} subscriber_lost={lost} subscriber_duplicated={duplicated}"
    );
    println!(
        "load append_latency n={} p50_ms={} p99_ms={} max_ms={} confirmed_by={}",
        lat.len(),
        ms(pct(&mut lat, 0.5)),
        ms(pct(&mut lat, 0.99)),
        ms(pct(&mut lat, 1.0)),
        if quicstore {
            "quicstore_flush"
        } else {
            "remote_append_response"
        },
    );
    println!(
        "load propagation n={} p50_ms={} p99_ms={} max_ms={}",
        prop.len(),
        ms(pct(&mut prop, 0.5)),
        ms(pct(&mut prop, 0.99)),
        ms(pct(&mut prop, 1.0)),
    );
    println!(
        "load throughput changes_per_s={:.0} appends_s={:.2} all_seen_s={:.2}",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        all_seen.as_secs_f64(),
    );
    println!(
        "load server_rss before_mib={:.1} after_mib={:.1} peak_mib={:.1} measured=child_process_proc_status",
        mib(rss0),
        mib(rss1),
        mib(hwm),
    );
    println!(
        "load cpu server_s={:.2} clients_s={:.2} server_cpu_per_change_us={:.1}",
        cpu1 - cpu0,
        my_cpu1 - my_cpu0,
        (cpu1 - cpu0) * 1e6 / total as f64,
    );
    assert_eq!(
        (items, server_lost, server_dup, lost, duplicated),
        (total, 0, 0, 0, 0),
        "changes lost or duplicated"
    );

    // Idle authenticated connections, held at once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle0 = status_kib(&pid, "VmRSS:");
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let t = Instant::now();
    let mut conns = Vec::with_capacity(idle);
    let mut pending =
        futures::stream::iter((0..idle).map(|_| idle_session(&ep, srv))).buffer_unordered(32);
    while let Some(c) = tokio::time::timeout(DEADLINE, pending.next())
        .await
        .expect("idle connections took too long")
    {
        conns.push(c);
    }
    drop(pending);
    let opened = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let open = conns.iter().filter(|c| c.close_reason().is_none()).count();
    let rss_idle1 = status_kib(&pid, "VmRSS:");
    let hwm_idle = status_kib(&pid, "VmHWM:");
    println!(
        "load idle_connections held={open} of={idle} open_s={:.2} server_rss_before_mib={:.1} server_rss_with_mib={:.1} per_connection_kib={:.1} server_peak_mib={:.1}",
        opened.as_secs_f64(),
        mib(rss_idle0),
        mib(rss_idle1),
        rss_idle1.saturating_sub(rss_idle0) as f64 / idle.max(1) as f64,
        mib(hwm_idle),
    );
    assert_eq!(open, idle, "the server closed idle connections early");
    for c in &conns {
        c.close(0u32.into(), b"done");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), ep.wait_idle()).await;
    drop(conns);

    baseline(baseline_work, hz).await;
}

/// The same appends straight into a durable `RedbStore` in this process.
async fn baseline(work: Vec<Vec<Change>>, hz: f64) {
    use cairn::Verifier;
    let total: usize = work.iter().map(Vec::len).sum();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        RedbStore::open(dir.path().join("baseline.redb"), sid())
            .await
            .unwrap(),
    );
    let cpu0 = cpu_s("self", hz);
    let go = Arc::new(tokio::sync::Barrier::new(work.len() + 1));
    let mut tasks = Vec::new();
    for changes in work {
        let (go, store) = (go.clone(), store.clone());
        tasks.push(tokio::spawn(async move {
            go.wait().await;
            let mut lat = Vec::with_capacity(changes.len());
            for change in changes {
                let t = Instant::now();
                RequireSignature.verify(&change.meta).unwrap();
                let out = store.append(vec![change]).await.unwrap();
                lat.push(t.elapsed());
                assert_eq!(out.new.len(), 1, "an append stored nothing new");
            }
            lat
        }));
    }
    go.wait().await;
    let t = Instant::now();
    let mut lat = Vec::with_capacity(total);
    for task in tasks {
        lat.extend(task.await.unwrap());
    }
    let elapsed = t.elapsed();
    let cpu = cpu_s("self", hz) - cpu0;
    assert_eq!(store.head().await.unwrap().seq as usize, total);
    println!(
        "load baseline=redb_in_process changes={total} p50_ms={} p99_ms={} changes_per_s={:.0} cpu_s={cpu:.2}",
        ms(pct(&mut lat, 0.5)),
        ms(pct(&mut lat, 0.99)),
        total as f64 / elapsed.as_secs_f64(),
    );
}

fn main() {
    if std::env::var(ROLE).as_deref() == Ok("server") {
        run_server();
        return;
    }
    let srv = ServerProcess::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { tokio::time::timeout(DEADLINE * 2, run(&srv)).await })
        .expect("the load bench took over 20 minutes");
    drop(rt);
    srv.stop();
}
