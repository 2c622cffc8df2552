#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod net;
mod stores;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use cairn::{
    AcceptAll, AppendOnlyStore, Change, ChangeBuilder, ChangeId, ChangeKind, ChangeStream, DocId,
    Error, Keypair, Reconcile, Result, StoreId, SyncOptions, SyncState, TrustedAuthors, Verifier,
};
use cairn_memory::MemoryStore;
use cairn_protocol::{FrameDecoder, Message, RemoteStore, ServeOptions};
use futures::FutureExt;
use futures::executor::block_on;

pub use stores::DropEveryNth;

use net::{Event, Faults, Link, Net, SimCall, lock};
use stores::{Cell, Local, Withhold};

/// SplitMix64: the simulator's only source of randomness.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
}

/// What to simulate besides the defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimOptions {
    /// Make honest peer 0's store drop every `n`th new change while
    /// reporting it stored (a deliberate bug the simulator must catch).
    pub broken_drop_every: Option<u64>,
    /// Let honest peer 0 accept every change (when pulling and when
    /// serving appends) while the checker still holds it to the trusted-
    /// authors policy: it then stores refused changes, which the simulator
    /// must catch.
    pub broken_accept_all: bool,
}

/// The result of one simulated run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// blake3 over every scheduled event and decision, in order.
    pub trace: String,
    /// Invariant violations (empty: the run passed).
    pub violations: Vec<String>,
    /// Events traced.
    pub events: u64,
    /// Changes appended by honest peers.
    pub authored: usize,
    /// Changes the finished syncs transferred.
    pub transferred: u64,
    /// Syncs that ended in an error (timeouts, disconnects, refusals).
    pub failed_syncs: u64,
    /// Responses the correlator dropped as answering no pending request
    /// (duplicates and replayed frames).
    pub unsolicited: u64,
    /// Crash-restarts of redb peers.
    pub restarts: u64,
}

impl Outcome {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "CAIRN_SIM_SEED={} cargo test -p cairn-sim --test sim replay -- --nocapture",
            self.seed
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Honest,
    /// Holds copies of genuine changes with the signature stripped, serves
    /// and pushes them, and replays old response frames.
    Stripper,
    /// Lists changes but never serves them, and replays old frames.
    Withholder,
}

struct Peer {
    role: Role,
    key: Keypair,
    cell: Cell,
    /// The redb file, for crash-restart.
    redb: Option<PathBuf>,
    /// Whether the redb store flushes every commit.
    durable: bool,
    broken: bool,
    verifier: Arc<dyn Verifier>,
    /// The policy the peer applies (differs from `verifier` only for the
    /// deliberately broken peer).
    applied: Arc<dyn Verifier>,
    skew: i64,
    /// Ids in arrival order at the last check.
    seen: Vec<ChangeId>,
    /// Ids the store acknowledged as stored (local appends).
    acked: BTreeSet<ChangeId>,
    sub: Option<(ChangeStream, usize)>,
    delivered: Vec<ChangeId>,
    restarts: u64,
}

impl Peer {
    fn store(&self) -> Arc<dyn AppendOnlyStore> {
        lock(&self.cell).clone()
    }
}

type Op = Pin<Box<dyn Future<Output = Result<(u64, SyncState)>>>>;

const BASE_TIME: u64 = 1_700_000_000_000;
/// Most events one drive processes (every loop is bounded).
const MAX_EVENTS: usize = 200_000;

struct Sim {
    rng: Rng,
    net: Arc<Mutex<Net>>,
    peers: Vec<Peer>,
    store_id: StoreId,
    docs: Vec<DocId>,
    dir: tempfile::TempDir,
    violations: Vec<String>,
    ops: Vec<(String, Link, Op)>,
    /// Changes the checker found acceptable under the honest policy.
    verified: HashSet<ChangeId>,
    /// Where each pair's syncs got to (`SyncState`, resumed by the next).
    states: BTreeMap<Link, SyncState>,
    authored: usize,
    transferred: u64,
    failed_syncs: u64,
}

/// Run the simulation for `seed`. Never panics: a panic is a violation.
pub fn run(seed: u64, opts: SimOptions) -> Outcome {
    match catch_unwind(AssertUnwindSafe(|| run_inner(seed, opts))) {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => Outcome {
            seed,
            trace: String::new(),
            violations: vec![format!("setup failed: {e}")],
            events: 0,
            authored: 0,
            transferred: 0,
            failed_syncs: 0,
            unsolicited: 0,
            restarts: 0,
        },
        Err(p) => Outcome {
            seed,
            trace: String::new(),
            violations: vec![format!(
                "panic: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )],
            events: 0,
            authored: 0,
            transferred: 0,
            failed_syncs: 0,
            unsolicited: 0,
            restarts: 0,
        },
    }
}

fn run_inner(seed: u64, opts: SimOptions) -> Result<Outcome> {
    let mut sim = Sim::new(seed, opts)?;
    sim.run();
    let net = lock(&sim.net);
    Ok(Outcome {
        seed,
        trace: net.trace_hash(),
        violations: std::mem::take(&mut sim.violations),
        events: net.events,
        authored: sim.authored,
        transferred: sim.transferred,
        failed_syncs: sim.failed_syncs,
        unsolicited: net.unsolicited,
        restarts: sim.peers.iter().map(|p| p.restarts).sum(),
    })
}

impl Sim {
    fn new(seed: u64, opts: SimOptions) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let n = 3 + rng.pick(6);
        let hostile = rng.pick(3).min(n - 2);
        let honest = n - hostile;
        let store_id = StoreId::new("sim")?;
        let dir = tempfile::tempdir().map_err(Error::Io)?;
        let keys: Vec<Keypair> = (0..n)
            .map(|_| {
                let mut s = [0u8; 32];
                for chunk in s.chunks_mut(8) {
                    chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
                }
                Keypair::from_seed(s)
            })
            .collect();
        let trusted = Arc::new(TrustedAuthors::new(
            keys.iter().take(honest).map(Keypair::author),
        ));
        let use_redb = rng.chance(25);
        let mut peers = Vec::with_capacity(n);
        for (i, key) in keys.into_iter().enumerate() {
            let role = if i < honest {
                Role::Honest
            } else if i == honest {
                Role::Stripper
            } else {
                Role::Withholder
            };
            let redb = (role == Role::Honest && use_redb && i == honest - 1)
                .then(|| dir.path().join(format!("peer{i}-0.redb")));
            let durable = rng.chance(50);
            let store: Arc<dyn AppendOnlyStore> = match &redb {
                Some(path) => Arc::new(block_on(open_redb(path, &store_id, durable))?),
                None => Arc::new(MemoryStore::new(store_id.clone())),
            };
            let broken = i == 0 && opts.broken_drop_every.is_some();
            let store: Arc<dyn AppendOnlyStore> = match opts.broken_drop_every {
                Some(k) if broken => Arc::new(DropEveryNth::new(store, k)),
                _ => store,
            };
            let verifier: Arc<dyn Verifier> = if role == Role::Honest {
                trusted.clone()
            } else {
                Arc::new(AcceptAll)
            };
            let applied: Arc<dyn Verifier> = if i == 0 && opts.broken_accept_all {
                Arc::new(AcceptAll)
            } else {
                verifier.clone()
            };
            let skew = rng.below(10_001) as i64 - 5_000;
            peers.push(Peer {
                role,
                key,
                cell: Arc::new(Mutex::new(store)),
                redb,
                durable,
                broken,
                verifier,
                applied,
                skew,
                seen: Vec::new(),
                acked: BTreeSet::new(),
                sub: None,
                delivered: Vec::new(),
                restarts: 0,
            });
        }
        let max_frame = if rng.chance(50) {
            cairn_protocol::MIN_MAX_FRAME
        } else {
            cairn_protocol::DEFAULT_MAX_FRAME
        };
        let net = Net::new(Rng::new(rng.next_u64()), max_frame);
        let docs = (0..3)
            .map(|d| DocId::new(format!("doc{d}")))
            .collect::<Result<Vec<_>>>()?;
        let mut sim = Sim {
            rng,
            net: Arc::new(Mutex::new(net)),
            peers,
            store_id,
            docs,
            dir,
            violations: Vec::new(),
            ops: Vec::new(),
            verified: HashSet::new(),
            states: BTreeMap::new(),
            authored: 0,
            transferred: 0,
            failed_syncs: 0,
        };
        for i in 0..sim.peers.len() {
            if sim.peers[i].role == Role::Honest && sim.rng.chance(60) {
                sim.subscribe(i);
            }
        }
        {
            let mut net = lock(&sim.net);
            net.trace(b's', n as u64, hostile as u64);
        }
        Ok(sim)
    }

    fn honest(&self) -> Vec<usize> {
        (0..self.peers.len())
            .filter(|&i| self.peers[i].role == Role::Honest)
            .collect()
    }

    fn trace(&self, tag: u8, a: u64, b: u64) {
        lock(&self.net).trace(tag, a, b);
    }

    fn subscribe(&mut self, i: usize) {
        let store = self.peers[i].store();
        match block_on(store.subscribe()) {
            Ok(s) => {
                let start = self.peers[i].seen.len();
                self.peers[i].sub = Some((s, start));
                self.peers[i].delivered.clear();
            }
            Err(e) => self
                .violations
                .push(format!("peer {i}: subscribe failed: {e}")),
        }
    }

    fn run(&mut self) {
        let rounds = 4 + self.rng.below(6);
        for round in 0..rounds {
            self.set_faults();
            if round > 0 {
                self.peer_faults();
            }
            let actions = 1 + self.rng.below(6);
            for _ in 0..actions {
                self.action();
            }
            self.drive();
            self.check(false);
        }
        // Heal everything and converge.
        {
            let mut net = lock(&self.net);
            net.faults = Faults::default();
            net.cut.clear();
            net.trace(b'h', 0, 0);
        }
        self.drive();
        let honest = self.honest();
        if let Some((&hub, rest)) = honest.split_first() {
            for _ in 0..2 {
                for &p in rest {
                    self.start_sync(hub, p, 0, false);
                    self.drive();
                }
                for &p in rest {
                    self.start_sync(p, hub, 0, false);
                    self.drive();
                }
            }
        }
        self.check(true);
        // Nothing left running: every operation finished, no request
        // waits for an answer, and the remaining events are stale.
        self.drive();
        let net = lock(&self.net);
        let pending: usize = net.conns.values().map(|c| c.corr.pending()).sum();
        if pending > 0 {
            self.violations
                .push(format!("{pending} requests still pending at the end"));
        }
        if !self.ops.is_empty() || net.pending_events() > 0 {
            self.violations.push(format!(
                "{} operations and {} events left at the end",
                self.ops.len(),
                net.pending_events()
            ));
        }
    }

    fn set_faults(&mut self) {
        let n = self.peers.len();
        let r = &mut self.rng;
        let faults = Faults {
            loss: r.below(15),
            dup: r.below(15),
            delay_max: r.below(50),
            disconnect: r.below(5),
        };
        let mut cut = BTreeSet::new();
        if r.chance(30) {
            // A partition: a random side against the rest.
            let side: Vec<bool> = (0..n).map(|_| r.chance(50)).collect();
            for a in 0..n {
                for b in a + 1..n {
                    if side[a] != side[b] {
                        cut.insert((a, b));
                    }
                }
            }
        }
        let mut net = lock(&self.net);
        net.trace(b'f', faults.loss, cut.len() as u64);
        net.faults = faults;
        net.cut = cut;
    }

    /// Crash-restart a redb peer: its file as a crash leaves it is opened
    /// again (a durable store must have kept everything acknowledged).
    fn peer_faults(&mut self) {
        for i in 0..self.peers.len() {
            if self.peers[i].redb.is_none() || !self.rng.chance(40) {
                continue;
            }
            self.trace(b'c', i as u64, self.peers[i].restarts);
            if let Err(e) = self.crash_restart(i) {
                self.violations
                    .push(format!("peer {i}: reopening after a crash failed: {e}"));
            }
        }
    }

    fn crash_restart(&mut self, i: usize) -> Result<()> {
        let Some(old) = self.peers[i].redb.clone() else {
            return Ok(());
        };
        self.peers[i].restarts += 1;
        let image = self
            .dir
            .path()
            .join(format!("peer{i}-{}.redb", self.peers[i].restarts));
        // The bytes on disk now are what a crash leaves.
        std::fs::copy(&old, &image).map_err(Error::Io)?;
        let store = block_on(open_redb(&image, &self.store_id, self.peers[i].durable))?;
        let prev = std::mem::replace(&mut *lock(&self.peers[i].cell), Arc::new(store.clone()));
        drop(prev);
        // A durable store lost nothing; a non-durable one may have lost
        // recent appends, but holds a prefix of what it held.
        let ids = ids_of(&store)?;
        let p = &mut self.peers[i];
        if p.durable && ids != p.seen {
            self.violations.push(format!(
                "peer {i}: durable redb store held {} changes before a crash, {} after",
                p.seen.len(),
                ids.len()
            ));
        } else if !p.durable {
            if ids.len() > p.seen.len() || p.seen[..ids.len()] != ids[..] {
                self.violations.push(format!(
                    "peer {i}: non-durable redb store is not a prefix of what it held after a crash"
                ));
            }
            let kept: HashSet<ChangeId> = ids.iter().copied().collect();
            p.acked.retain(|id| kept.contains(id));
            // Its saved cursors say it holds what it lost; the store comes
            // back in a new epoch, and `SyncState::pulled_into` makes the
            // sync engine examine everything again (seeds 123, 642, 707
            // and 809 caught the engine trusting them).
            p.seen = ids;
        }
        self.peers[i].sub = None;
        self.peers[i].redb = Some(image);
        let _ = std::fs::remove_file(&old);
        if self.rng.chance(60) {
            self.subscribe(i);
        }
        Ok(())
    }

    fn action(&mut self) {
        let n = self.peers.len();
        let honest = self.honest();
        match self.rng.below(10) {
            0..=3 => {
                let p = honest[self.rng.pick(honest.len())];
                self.append(p);
            }
            4 => self.feed_hostile(),
            _ => {
                let a = self.rng.pick(n);
                let b = (a + 1 + self.rng.pick(n - 1)) % n;
                let dir = self.rng.below(3);
                let always = self.rng.chance(30);
                self.start_sync(a, b, dir, always);
            }
        }
    }

    fn make_change(&mut self, p: usize, deps: Vec<ChangeId>) -> Result<Change> {
        let doc = self.docs[self.rng.pick(self.docs.len())].clone();
        let now = lock(&self.net).now;
        let at = (BASE_TIME + now).saturating_add_signed(self.peers[p].skew);
        let len = self.rng.pick(48);
        let payload: Vec<u8> = (0..len).map(|_| self.rng.next_u64() as u8).collect();
        ChangeBuilder::new(ChangeKind::Change, doc)
            .deps(deps)
            .created_at(at)
            .payload(payload)
            .sign(&self.peers[p].key)
    }

    fn append(&mut self, p: usize) {
        let known = self.peers[p].seen.clone();
        let mut batch = Vec::new();
        let count = 1 + self.rng.pick(3);
        for _ in 0..count {
            let mut deps: Vec<ChangeId> = batch.last().map(Change::id).into_iter().collect();
            if !known.is_empty() && self.rng.chance(60) {
                deps.push(known[self.rng.pick(known.len())]);
            }
            match self.make_change(p, deps) {
                Ok(c) => batch.push(c),
                Err(e) => self.violations.push(format!("building a change: {e}")),
            }
        }
        let ids: Vec<ChangeId> = batch.iter().map(Change::id).collect();
        self.trace(b'a', p as u64, ids.len() as u64);
        match block_on(self.peers[p].store().append(batch)) {
            Ok(out) => {
                for id in out.new {
                    if !ids.contains(&id) {
                        self.violations
                            .push(format!("peer {p}: append reported {id}, not in the batch"));
                    }
                    self.peers[p].acked.insert(id);
                    self.authored += 1;
                }
            }
            Err(e) => self
                .violations
                .push(format!("peer {p}: append failed: {e}")),
        }
    }

    /// Give hostile peers material: stripped copies of genuine changes (and
    /// changes by their own untrusted key), and genuine copies to withhold.
    fn feed_hostile(&mut self) {
        let honest = self.honest();
        let src = honest[self.rng.pick(honest.len())];
        let ids = self.peers[src].seen.clone();
        for h in 0..self.peers.len() {
            let role = self.peers[h].role;
            if role == Role::Honest {
                continue;
            }
            let mut batch = Vec::new();
            if !ids.is_empty() {
                let id = ids[self.rng.pick(ids.len())];
                if let Ok(got) = block_on(self.peers[src].store().get_changes(&[id])) {
                    for c in got {
                        if role == Role::Stripper {
                            let m = &c.meta;
                            let stripped = ChangeBuilder::new(m.kind, m.doc_id.clone())
                                .deps(m.deps.clone())
                                .created_at(m.created_at)
                                .author(m.author)
                                .key_id(m.key_id.clone())
                                .payload(c.payload.clone())
                                .build();
                            match stripped {
                                Ok(s) if s.id() != c.id() => batch.push(s),
                                Ok(_) => self.violations.push(format!(
                                    "a copy of {id} without its signature has the genuine id"
                                )),
                                Err(e) => self.violations.push(format!("stripping: {e}")),
                            }
                        } else {
                            batch.push(c);
                        }
                    }
                }
            }
            if let Ok(own) = self.make_change(h, Vec::new()) {
                batch.push(own);
            }
            self.trace(b'e', h as u64, batch.len() as u64);
            if let Err(e) = block_on(self.peers[h].store().append(batch)) {
                self.violations
                    .push(format!("hostile peer {h}: append failed: {e}"));
            }
        }
    }

    /// Start a sync of `a` with the store served by `b` over the network:
    /// `dir` 0 pull, 1 push, 2 both.
    fn start_sync(&mut self, a: usize, b: usize, dir: u64, always: bool) {
        self.trace(b'y', (a * 16 + b) as u64, dir);
        let server = self.peers[b].store();
        let hello = match block_on(cairn_protocol::server_hello(server.as_ref(), 4096)) {
            Ok(h) => h,
            Err(e) => {
                self.violations.push(format!("hello: {e}"));
                return;
            }
        };
        // The hello travels through the real codec too.
        let hello = cairn_protocol::encode(&Message::Hello(hello), 4096).and_then(|bytes| {
            let mut dec = FrameDecoder::new(4096);
            dec.push(&bytes);
            match dec.pop()? {
                Some(m) => cairn_protocol::check_hello(m, Some(&self.store_id)),
                None => Err(Error::Protocol {
                    reason: "hello did not decode".into(),
                }),
            }
        });
        let hello = match hello {
            Ok(h) => h,
            Err(e) => {
                self.violations.push(format!("hello: {e}"));
                return;
            }
        };
        let local = Local {
            cell: self.peers[a].cell.clone(),
            store_id: self.store_id.clone(),
        };
        let call = Arc::new(SimCall {
            net: self.net.clone(),
            link: (a, b),
        });
        let remote = RemoteStore::new("sim", self.store_id.clone(), &hello, call);
        let mut opts = SyncOptions {
            batch_changes: 1 + self.rng.pick(8),
            verifier: self.peers[a].applied.clone(),
            state: self.states.get(&(a, b)).cloned().unwrap_or_default(),
            ..SyncOptions::default()
        };
        if always {
            opts.reconcile = Reconcile::Always;
        }
        let op: Op = Box::pin(async move {
            let r = match dir {
                0 => cairn::sync::pull(&local, &remote, &opts).await,
                1 => cairn::sync::push(&local, &remote, &opts).await,
                _ => cairn::sync::sync(&local, &remote, &opts).await,
            }?;
            Ok((r.pulled.changes + r.pushed.changes, r.state))
        });
        self.ops
            .push((format!("sync {a}<->{b} dir {dir}"), (a, b), op));
    }

    /// Poll every operation once, in order; finished ones are removed.
    fn poll_ops(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut i = 0;
        // Bounded by the number of operations.
        while i < self.ops.len() {
            let polled = catch_unwind(AssertUnwindSafe(|| self.ops[i].2.as_mut().poll(&mut cx)));
            match polled {
                Ok(Poll::Pending) => i += 1,
                Ok(Poll::Ready(r)) => {
                    let (name, link, _) = self.ops.remove(i);
                    let (tag, v) = match r {
                        Ok((n, state)) => {
                            self.transferred += n;
                            // Later syncs of this pair resume from here.
                            self.states.insert(link, state);
                            (b'k', n)
                        }
                        Err(_) => {
                            self.failed_syncs += 1;
                            (b'r', 0)
                        }
                    };
                    self.trace(tag, i as u64, v);
                    let _ = name;
                }
                Err(_) => {
                    let (name, _, _) = self.ops.remove(i);
                    self.violations.push(format!("{name} panicked"));
                }
            }
        }
    }

    /// Run operations and events until every operation finished and no
    /// event is left (bounded).
    fn drive(&mut self) {
        for _ in 0..MAX_EVENTS {
            self.poll_ops();
            let ev = lock(&self.net).pop();
            let Some(ev) = ev else {
                if !self.ops.is_empty() {
                    self.violations.push(format!(
                        "{} operations wait with no event left",
                        self.ops.len()
                    ));
                    self.ops.clear();
                }
                return;
            };
            self.handle(ev);
        }
        self.violations
            .push(format!("no quiescence after {MAX_EVENTS} events"));
        self.ops.clear();
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::ToServer {
                link,
                generation,
                bytes,
            } => self.serve_frame(link, generation, &bytes),
            Event::ToClient {
                link,
                generation,
                bytes,
            } => {
                let mut net = lock(&self.net);
                // Lengths, not bytes: responses carry store epochs, which
                // are random by design.
                net.trace(b'<', link.0 as u64, bytes.len() as u64);
                net.deliver_to_client(link, generation, &bytes, &mut self.violations);
                let disconnect = net.faults.disconnect;
                if net.rng.chance(disconnect) {
                    net.close(link);
                }
            }
            Event::Timeout {
                link,
                generation,
                id,
            } => {
                let mut net = lock(&self.net);
                let slot = match net.conns.get_mut(&link) {
                    Some(c) if c.generation == generation => c.corr.cancel(id),
                    _ => None,
                };
                if let Some(slot) = slot {
                    net.trace(b't', link.0 as u64, u64::from(id));
                    *lock(&slot) = Some(Err(net::timeout()));
                }
            }
        }
    }

    fn serve_frame(&mut self, link: Link, generation: u64, bytes: &[u8]) {
        let mut requests = Vec::new();
        {
            let mut net = lock(&self.net);
            net.trace(b'>', link.1 as u64, bytes.len() as u64);
            let Some(conn) = net.conns.get_mut(&link) else {
                return;
            };
            if conn.generation != generation {
                return;
            }
            conn.server_dec.push(bytes);
            let mut bad = false;
            for _ in 0..10_000 {
                match conn.server_dec.pop() {
                    Ok(None) => break,
                    Ok(Some(Message::Request { id, body })) => requests.push((id, body)),
                    Ok(Some(_)) => {}
                    Err(_) => {
                        bad = true;
                        break;
                    }
                }
            }
            if bad {
                net.close(link);
                return;
            }
        }
        let (client, server) = link;
        let role = self.peers[server].role;
        let store = self.peers[server].store();
        let served: Arc<dyn AppendOnlyStore> = if role == Role::Withholder {
            Arc::new(Withhold(store))
        } else {
            store
        };
        let opts = ServeOptions {
            verifier: self.peers[server].applied.clone(),
            ..ServeOptions::default()
        };
        let peer_id = self.peers[client].key.author();
        for (id, body) in requests {
            let response = block_on(cairn_protocol::dispatch(
                served.as_ref(),
                &peer_id,
                body,
                &opts,
            ));
            let mut net = lock(&self.net);
            let max_frame = net.max_frame;
            let msg = Message::Response { id, body: response };
            let frames = cairn_protocol::encode_frames(&msg, max_frame)
                .unwrap_or_else(|e| vec![cairn_protocol::error_reply(id, &e, max_frame)]);
            let replay = role != Role::Honest && net.rng.chance(40);
            let Some(conn) = net.conns.get_mut(&link) else {
                return;
            };
            if conn.generation != generation {
                return;
            }
            conn.sent.entry(id).or_default().push(msg);
            let old = if replay && !conn.recorded.is_empty() {
                let k = (id as usize).wrapping_mul(31) % conn.recorded.len();
                conn.recorded.get(k).cloned()
            } else {
                None
            };
            if conn.recorded.len() < 64 {
                conn.recorded.extend(frames.iter().cloned());
            }
            net.send_frames(link, generation, false, frames);
            if let Some(old) = old {
                net.trace(b'R', link.1 as u64, u64::from(id));
                net.send_frames(link, generation, false, vec![old]);
            }
        }
    }

    /// The invariants, at a quiescent point (`end`: after healing and a
    /// final round of syncs, so honest peers must have converged).
    fn check(&mut self, end: bool) {
        let mut sets: Vec<(usize, HashSet<ChangeId>)> = Vec::new();
        for i in self.honest() {
            let store = self.peers[i].store();
            let head = match block_on(store.head()) {
                Ok(h) => h,
                Err(e) => {
                    self.violations.push(format!("peer {i}: head: {e}"));
                    continue;
                }
            };
            let mut items = Vec::new();
            let mut after = 0;
            // Bounded: every page advances `after`.
            for _ in 0..100_000 {
                match block_on(store.scan(after, 256)) {
                    Ok(page) => {
                        let Some(last) = page.last() else { break };
                        if last.seq <= after {
                            self.violations
                                .push(format!("peer {i}: scan after {after} went back"));
                            break;
                        }
                        after = last.seq;
                        items.extend(page);
                    }
                    Err(e) => {
                        self.violations.push(format!("peer {i}: scan: {e}"));
                        break;
                    }
                }
            }
            let p = &self.peers[i];
            let mut v = Vec::new();
            let seqs_ok = items
                .iter()
                .enumerate()
                .all(|(k, it)| it.seq == k as u64 + 1)
                && items.len() as u64 == head.seq;
            if !seqs_ok {
                v.push(format!(
                    "peer {i}: sequence numbers are not 1..={} ({} items)",
                    head.seq,
                    items.len()
                ));
            }
            let ids: Vec<ChangeId> = items.iter().map(|it| it.meta.id).collect();
            let set: HashSet<ChangeId> = ids.iter().copied().collect();
            if set.len() != ids.len() {
                v.push(format!("peer {i}: a change is stored twice"));
            }
            for it in &items {
                // The id covers the whole record, and every honest peer has
                // the same policy: a change that passed once passes again.
                if self.verified.contains(&it.meta.id) {
                    continue;
                }
                if let Err(reason) = p.verifier.verify(&it.meta) {
                    v.push(format!(
                        "peer {i}: holds {} which its policy refuses ({reason})",
                        it.meta.id
                    ));
                } else {
                    self.verified.insert(it.meta.id);
                }
            }
            if ids.len() < p.seen.len() || ids[..p.seen.len()] != p.seen[..] {
                v.push(format!(
                    "peer {i}: lost or reordered changes it held (had {}, now {})",
                    p.seen.len(),
                    ids.len()
                ));
            }
            if let Some(lost) = p.acked.iter().find(|id| !set.contains(id)) {
                v.push(format!(
                    "peer {i}: acknowledged change {lost} is gone{}",
                    if p.broken { " (broken store)" } else { "" }
                ));
            }
            // Live subscription: each delivered change is held, once.
            let mut delivered = Vec::new();
            if let Some((stream, _)) = self.peers[i].sub.as_mut() {
                for _ in 0..100_000 {
                    match futures::StreamExt::next(stream).now_or_never() {
                        Some(Some(Ok(m))) => delivered.push(m.id),
                        Some(Some(Err(e))) => {
                            v.push(format!("peer {i}: subscription failed: {e}"));
                            break;
                        }
                        Some(None) | None => break,
                    }
                }
            }
            let p = &mut self.peers[i];
            p.delivered.extend(delivered);
            if let Some((_, start)) = &p.sub {
                let want = ids.get(*start..).unwrap_or_default();
                if p.delivered[..] != *want {
                    v.push(format!(
                        "peer {i}: subscription delivered {} changes, the store got {} since",
                        p.delivered.len(),
                        want.len()
                    ));
                }
            }
            p.seen = ids;
            self.violations.extend(v);
            sets.push((i, set));
        }
        if end {
            let union: HashSet<ChangeId> =
                sets.iter().flat_map(|(_, s)| s.iter().copied()).collect();
            for (i, s) in &sets {
                if s.len() != union.len() {
                    self.violations.push(format!(
                        "peer {i} holds {} of the {} changes honest peers hold after the final sync",
                        s.len(),
                        union.len()
                    ));
                }
            }
        }
        let n = self.violations.len() as u64;
        self.trace(b'v', n, end as u64);
    }
}

/// Run seeds `from..from + count`; the failures, each with its seed.
pub fn run_seeds(from: u64, count: u64, opts: SimOptions) -> Vec<Outcome> {
    (from..from.saturating_add(count))
        .map(|s| run(s, opts))
        .filter(|o| !o.passed())
        .collect()
}

async fn open_redb(
    path: &std::path::Path,
    store_id: &StoreId,
    durable: bool,
) -> Result<cairn_redb::RedbStore> {
    if durable {
        cairn_redb::RedbStore::open(path, store_id.clone()).await
    } else {
        cairn_redb::RedbStore::open_non_durable(path, store_id.clone()).await
    }
}

/// Every id of `store` in arrival order (bounded pages).
fn ids_of(store: &dyn AppendOnlyStore) -> Result<Vec<ChangeId>> {
    let mut out = Vec::new();
    let mut after = 0;
    for _ in 0..100_000 {
        let page = block_on(store.scan(after, 256))?;
        let Some(last) = page.last() else { break };
        if last.seq <= after {
            break;
        }
        after = last.seq;
        out.extend(page.into_iter().map(|i| i.meta.id));
    }
    Ok(out)
}
