//! Who a peer is and what it may do: peer ids, permissions, access
//! policies, the stores a server offers, and where a connection stands.
//! These sit below every transport, so that no transport depends on
//! another.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cairn::{AuthorId, DynAppendOnlyStore, StoreId};

use crate::message::Access;

/// A peer's id: its Ed25519 public key. Printed as 64 lowercase hex
/// characters; parses back with `str::parse`.
pub type PeerId = AuthorId;

/// What a peer may do with a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// Nothing: the connection is refused.
    None,
    /// Every read request, subscriptions included.
    Read,
    /// Reads and appends.
    ReadWrite,
}

impl Permission {
    /// Whether this permission allows `access`.
    pub fn allows(self, access: Access) -> bool {
        match access {
            Access::Read => self >= Permission::Read,
            Access::Write => self == Permission::ReadWrite,
        }
    }
}

/// Decides what each peer may do with each store.
pub trait AccessPolicy: Send + Sync + 'static {
    /// `peer`'s permission on `store`.
    fn permission(&self, peer: &PeerId, store: &StoreId) -> Permission;

    /// Whether the policy grants `peer` anything at all (on any store). A
    /// server uses it to tell a known peer that asked for a store nobody
    /// serves ("unknown store") from a stranger ("unauthorized"), without
    /// telling strangers which store ids exist. Defaults to `false`
    /// (strangers and known peers are told the same).
    fn knows(&self, peer: &PeerId) -> bool {
        let _ = peer;
        false
    }

    /// Whether `peer` may connect at all. A server asks right after the
    /// peer proved its key, before reading anything it sends, and closes
    /// the connection at once when not: a stranger cannot hold a
    /// connection open. Defaults to `true` (decide per store after the
    /// hello).
    fn may_connect(&self, peer: &PeerId) -> bool {
        let _ = peer;
        true
    }
}

/// A list of grants: per store, which peers may read and which may write,
/// plus an optional default for everyone.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    grants: HashMap<StoreId, HashMap<PeerId, Permission>>,
    everyone: HashMap<StoreId, Permission>,
    default: Option<Permission>,
}

impl Acl {
    /// Nobody may do anything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every authenticated peer may read and write every store (for tests
    /// and trusted networks).
    pub fn open() -> Self {
        Acl {
            default: Some(Permission::ReadWrite),
            ..Self::default()
        }
    }

    /// Grant `peer` `permission` on `store`.
    pub fn allow(mut self, store: &StoreId, peer: PeerId, permission: Permission) -> Self {
        self.grants
            .entry(store.clone())
            .or_default()
            .insert(peer, permission);
        self
    }

    /// Grant every peer `permission` on `store` (a peer's own grant wins).
    pub fn allow_everyone(mut self, store: &StoreId, permission: Permission) -> Self {
        self.everyone.insert(store.clone(), permission);
        self
    }
}

impl AccessPolicy for Acl {
    fn permission(&self, peer: &PeerId, store: &StoreId) -> Permission {
        if let Some(p) = self.grants.get(store).and_then(|g| g.get(peer)) {
            return *p;
        }
        if let Some(p) = self.everyone.get(store) {
            return *p;
        }
        self.default.unwrap_or(Permission::None)
    }

    fn knows(&self, peer: &PeerId) -> bool {
        self.default.is_some_and(|p| p != Permission::None)
            || self
                .grants
                .values()
                .any(|g| g.get(peer).is_some_and(|p| *p != Permission::None))
    }

    fn may_connect(&self, peer: &PeerId) -> bool {
        self.knows(peer) || self.everyone.values().any(|p| *p != Permission::None)
    }
}

/// Finds the store a client asks for by store id.
pub trait StoreProvider: Send + Sync + 'static {
    /// The store with this id, if served.
    fn get(&self, store_id: &StoreId) -> Option<Arc<DynAppendOnlyStore>>;

    /// The store `peer` reaches under `store_id`. Called only after the
    /// access policy allowed the peer. Defaults to [`get`](Self::get):
    /// every peer sees the same store. A provider can override it to give
    /// each peer its own store (a test server, a per-user mailbox).
    fn get_for(&self, peer: &PeerId, store_id: &StoreId) -> Option<Arc<DynAppendOnlyStore>> {
        let _ = peer;
        self.get(store_id)
    }
}

/// A fixed set of stores, keyed by their store ids.
#[derive(Debug, Default)]
pub struct Stores {
    map: RwLock<HashMap<StoreId, Arc<DynAppendOnlyStore>>>,
}

impl Stores {
    /// No stores.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve `store` (under its own store id).
    pub fn with(self, store: Arc<DynAppendOnlyStore>) -> Self {
        self.insert(store);
        self
    }

    /// Serve `store` from now on.
    pub fn insert(&self, store: Arc<DynAppendOnlyStore>) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.insert(store.store_id().clone(), store);
    }
}

impl StoreProvider for Stores {
    fn get(&self, store_id: &StoreId) -> Option<Arc<DynAppendOnlyStore>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(store_id).cloned()
    }
}

/// Admit `peer` to `store_id` after its hello: its permission and the
/// store it reaches, or the refusal to send it.
///
/// The policy is asked before the store is looked up, so a peer without
/// access cannot learn which store ids exist: only a peer the policy knows
/// (for some store) is told that a store id is not served
/// ([`Error::NotFound`](cairn::Error::NotFound), say for a typo); anyone
/// else is [`Error::Unauthorized`](cairn::Error::Unauthorized).
///
/// ```
/// use std::sync::Arc;
/// use cairn::{Error, Keypair, StoreId};
/// use cairn_protocol::{Acl, Permission, Stores, admit};
/// let sid = StoreId::new("notes").unwrap();
/// let stores = Stores::new().with(Arc::new(cairn_memory::MemoryStore::new(sid.clone())));
/// let (friend, stranger) = (Keypair::generate().author(), Keypair::generate().author());
/// let acl = Acl::new().allow(&sid, friend, Permission::Read);
/// assert_eq!(admit(&acl, &stores, &friend, &sid).unwrap().0, Permission::Read);
/// let typo = StoreId::new("nots").unwrap();
/// assert!(matches!(admit(&acl, &stores, &friend, &typo), Err(Error::NotFound { .. })));
/// assert!(matches!(admit(&acl, &stores, &stranger, &sid), Err(Error::Unauthorized { .. })));
/// assert!(matches!(admit(&acl, &stores, &stranger, &typo), Err(Error::Unauthorized { .. })));
/// ```
pub fn admit(
    policy: &dyn AccessPolicy,
    stores: &dyn StoreProvider,
    peer: &PeerId,
    store_id: &StoreId,
) -> cairn::Result<(Permission, Arc<DynAppendOnlyStore>)> {
    let not_found = || cairn::Error::NotFound {
        what: format!("store {store_id}"),
    };
    let perm = policy.permission(peer, store_id);
    if perm == Permission::None {
        return Err(if policy.knows(peer) && stores.get(store_id).is_none() {
            not_found()
        } else {
            cairn::Error::Unauthorized {
                reason: format!("peer {peer} may not access store {store_id}"),
            }
        });
    }
    let store = stores.get_for(peer, store_id).ok_or_else(not_found)?;
    Ok((perm, store))
}

/// Why a peer refused us in a way that retrying cannot fix (until someone
/// changes a configuration). See [`crate::classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The peer's policy does not let our key in, or not for this.
    Unauthorized,
    /// The peer's key is not the one we pinned.
    WrongPeerKey,
    /// The peer does not serve the store we asked for.
    UnknownStore,
    /// The peer serves another store id than ours.
    StoreMismatch,
    /// The peer speaks another protocol or format version.
    Version,
    /// Another permanent error (the peer broke the protocol, a quota…).
    Other,
}

/// Where a network store's connection to its peers stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Dialling and greeting the peer.
    Connecting,
    /// Greeted; caught up with the peer (pending local changes pushed,
    /// missing remote changes pulled) and receiving new ones live.
    Connected,
    /// Not connected (before the first attempt, after a loss, after close).
    Disconnected,
    /// Waiting `delay` before attempt number `attempt` (capped exponential
    /// backoff) after a transient failure.
    Retrying {
        /// The attempt about to be made (1 for the first retry).
        attempt: u32,
        /// How long until then.
        delay: Duration,
    },
    /// The peer refused us for a reason retrying cannot fix. The store
    /// tries again only after `retry_in` (the longest backoff), in case the
    /// configuration changed; the error itself is returned by
    /// `wait_connected` and by the store's `last_error`.
    Refused {
        /// Why.
        reason: Refusal,
        /// When the next attempt is made.
        retry_in: Duration,
    },
}
