//! Store URLs: `memory:`, `redb:PATH`, `quic://HOST:PORT/STORE_ID?peer=PEER_ID[&cache=PATH]`,
//! `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?…]`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn::{AuthorId, DynAppendOnlyStore, Keypair, StoreId};
use cairn_memory::MemoryStore;
use cairn_postgres::PostgresDb;
use cairn_quic::{QuicStore, QuicStoreOptions};
use cairn_redb::RedbStore;

use crate::error::{CliError, Result, fail};

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A fresh in-memory store.
    Memory,
    /// A redb file.
    Redb(PathBuf),
    /// A remote store over QUIC, with an optional redb cache file.
    Quic {
        /// Server address.
        addr: SocketAddr,
        /// The store on the server.
        store: StoreId,
        /// The server's peer id (pinned).
        peer: AuthorId,
        /// A redb file to cache in (memory if absent).
        cache: Option<PathBuf>,
    },
    /// A store in a PostgreSQL database (the whole URL, as libpq takes it).
    Postgres(String),
}

impl StoreUrl {
    /// Parse a URL; the error says what form is expected.
    pub fn parse(s: &str) -> Result<StoreUrl> {
        if s == "memory:" || s == "memory" {
            return Ok(StoreUrl::Memory);
        }
        if let Some(path) = s.strip_prefix("redb:") {
            if path.is_empty() {
                return fail("redb: needs a path, e.g. redb:./data.redb");
            }
            return Ok(StoreUrl::Redb(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("quic://") {
            let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
            let Some((host, store)) = main.split_once('/') else {
                return fail(format!(
                    "{s}: expected quic://HOST:PORT/STORE_ID?peer=PEER_ID"
                ));
            };
            let addr = host
                .to_socket_addrs()
                .map_err(|e| CliError(format!("{s}: bad address {host:?}: {e}")))?
                .next()
                .ok_or_else(|| CliError(format!("{s}: {host:?} resolves to nothing")))?;
            let store = StoreId::new(store).map_err(|e| CliError(format!("{s}: store id: {e}")))?;
            let mut peer = None;
            let mut cache = None;
            for kv in query.split('&').filter(|kv| !kv.is_empty()) {
                match kv.split_once('=') {
                    Some(("peer", v)) => {
                        peer = Some(
                            v.parse::<AuthorId>()
                                .map_err(|e| CliError(format!("{s}: peer: {e}")))?,
                        )
                    }
                    Some(("cache", v)) => cache = Some(PathBuf::from(v)),
                    _ => {
                        return fail(format!(
                            "{s}: unknown parameter {kv:?} (known: peer, cache)"
                        ));
                    }
                }
            }
            let Some(peer) = peer else {
                return fail(format!(
                    "{s}: missing ?peer=PEER_ID (the server prints it at start)"
                ));
            };
            return Ok(StoreUrl::Quic {
                addr,
                store,
                peer,
                cache,
            });
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(s.to_owned()));
        }
        fail(format!(
            "{s}: unknown store URL (expected memory:, redb:PATH, postgres://USER@HOST/DB or quic://HOST:PORT/STORE_ID?peer=PEER_ID)"
        ))
    }

    /// The store id this URL names, if it names one.
    pub fn store_id(&self) -> Option<&StoreId> {
        match self {
            StoreUrl::Quic { store, .. } => Some(store),
            _ => None,
        }
    }
}

/// An opened store, plus its QUIC handle when remote.
pub struct Opened {
    /// The store.
    pub store: Arc<DynAppendOnlyStore>,
    /// The QUIC store, for state and explicit sync.
    pub quic: Option<Arc<QuicStore>>,
}

/// Open `url`; local stores get `store_id`. QUIC stores connect (and catch
/// up) before this returns, or fail after `timeout`.
pub async fn open(
    url: &StoreUrl,
    store_id: &StoreId,
    key: Option<&Keypair>,
    timeout: Duration,
) -> Result<Opened> {
    match url {
        StoreUrl::Memory => Ok(Opened {
            store: Arc::new(MemoryStore::new(store_id.clone())),
            quic: None,
        }),
        StoreUrl::Redb(path) => Ok(Opened {
            store: Arc::new(RedbStore::open(path, store_id.clone()).await?),
            quic: None,
        }),
        StoreUrl::Postgres(url) => Ok(Opened {
            store: Arc::new(postgres_db(url).await?.store(store_id.clone()).await?),
            quic: None,
        }),
        StoreUrl::Quic {
            addr,
            store,
            peer,
            cache,
        } => {
            let Some(key) = key else {
                return fail("a quic:// store needs an identity (--key)");
            };
            let cache: Arc<DynAppendOnlyStore> = match cache {
                Some(p) => Arc::new(RedbStore::open(p, store.clone()).await?),
                None => Arc::new(MemoryStore::new(store.clone())),
            };
            let q = Arc::new(QuicStore::new(
                cache,
                *addr,
                *peer,
                key,
                QuicStoreOptions::default(),
            )?);
            q.wait_connected(timeout).await.map_err(|e| {
                CliError(format!("cannot reach {addr} (peer {}): {e}", peer.short()))
            })?;
            Ok(Opened {
                store: q.clone(),
                quic: Some(q),
            })
        }
    }
}

/// One pool and one listener per database URL for the whole process: every
/// store served from the same database shares them.
async fn postgres_db(url: &str) -> Result<PostgresDb> {
    type Dbs = std::sync::Mutex<std::collections::HashMap<String, PostgresDb>>;
    static DBS: std::sync::OnceLock<Dbs> = std::sync::OnceLock::new();
    let dbs = DBS.get_or_init(Default::default);
    if let Some(db) = dbs.lock().unwrap_or_else(|e| e.into_inner()).get(url) {
        return Ok(db.clone());
    }
    let db = PostgresDb::connect(url).await?;
    dbs.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(url.to_owned(), db.clone());
    Ok(db)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_explains_errors() {
        assert_eq!(StoreUrl::parse("memory:").unwrap(), StoreUrl::Memory);
        assert_eq!(
            StoreUrl::parse("redb:/tmp/x.redb").unwrap(),
            StoreUrl::Redb("/tmp/x.redb".into())
        );
        let peer = "ab".repeat(32);
        let u = StoreUrl::parse(&format!(
            "quic://127.0.0.1:4433/acme/db/contacts?peer={peer}&cache=c.redb"
        ))
        .unwrap();
        match u {
            StoreUrl::Quic {
                addr, store, cache, ..
            } => {
                assert_eq!(addr.port(), 4433);
                assert_eq!(store.as_str(), "acme/db/contacts");
                assert_eq!(cache, Some(PathBuf::from("c.redb")));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            StoreUrl::parse("postgres://u@127.0.0.1:5432/db").unwrap(),
            StoreUrl::Postgres("postgres://u@127.0.0.1:5432/db".into())
        );
        for bad in [
            "",
            "redb:",
            "quic://127.0.0.1:1/x",
            "quic://127.0.0.1:1/x?peer=zz",
            "ftp://x",
            "quic://nohost",
        ] {
            let e = StoreUrl::parse(bad).unwrap_err();
            assert!(!e.0.is_empty(), "{bad}");
        }
    }
}
