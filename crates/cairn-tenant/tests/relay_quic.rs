//! Two devices of one tenant converge through a QUIC relay that holds no
//! tenant key: it stores and forwards ciphertext it cannot read.
#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::sync::Arc;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT, ReadDoc};
use cairn::{AppendOnlyStore, DynAppendOnlyStore, Keypair};
use cairn_memory::MemoryStore;
use cairn_quic::{Acl, Permission, QuicServer, QuicStore, QuicStoreOptions, ServerOptions, Stores};
use cairn_tenant::{DbOptions, Tenant, TenantConfig, db_store_id, directory_store_id};

const T: Duration = Duration::from_secs(20);

fn get_str(doc: &AutoCommit, key: &str) -> Option<String> {
    match doc.get(ROOT, key).ok()?? {
        (automerge::Value::Scalar(s), _) => s.as_str().map(str::to_owned),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_offline_edits_converge_through_a_quic_relay() {
    let (config, admin) = TenantConfig::create("acme").unwrap();
    let (dir_id, db_id) = (
        directory_store_id("acme").unwrap(),
        db_store_id("acme", "contacts").unwrap(),
    );
    let (alice, bob) = (Keypair::generate(), Keypair::generate());
    let relay_dir: Arc<DynAppendOnlyStore> = Arc::new(MemoryStore::new(dir_id.clone()));
    let relay_db: Arc<DynAppendOnlyStore> = Arc::new(MemoryStore::new(db_id.clone()));
    let mut acl = Acl::new();
    for k in [&alice, &bob] {
        acl = acl.allow(&dir_id, k.author(), Permission::ReadWrite).allow(
            &db_id,
            k.author(),
            Permission::ReadWrite,
        );
    }
    let server = QuicServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &Keypair::generate(),
        Arc::new(Stores::new().with(relay_dir.clone()).with(relay_db.clone())),
        Arc::new(acl),
        ServerOptions::default(),
    )
    .unwrap();

    // Each device: memory caches behind QuicStores to the relay.
    let caches: Vec<(Arc<DynAppendOnlyStore>, Arc<DynAppendOnlyStore>)> = (0..2)
        .map(|_| {
            (
                Arc::new(MemoryStore::new(dir_id.clone())) as Arc<DynAppendOnlyStore>,
                Arc::new(MemoryStore::new(db_id.clone())) as Arc<DynAppendOnlyStore>,
            )
        })
        .collect();
    let connect = |i: usize, key: &Keypair| {
        let q = |c: &Arc<DynAppendOnlyStore>| {
            Arc::new(
                QuicStore::new(
                    c.clone(),
                    server.local_addr(),
                    server.peer_id(),
                    key,
                    QuicStoreOptions::default(),
                )
                .unwrap(),
            )
        };
        (q(&caches[i].0), q(&caches[i].1))
    };

    // Online: the admin (on device 0) admits both users; device 0 creates.
    let (d0, b0) = connect(0, &alice);
    d0.wait_connected(T).await.unwrap();
    b0.wait_connected(T).await.unwrap();
    let t0 = Tenant::open(config.clone(), d0.clone()).await.unwrap();
    t0.add_user(&admin, "alice", alice.author()).await.unwrap();
    t0.add_user(&admin, "bob", bob.author()).await.unwrap();
    let db0 = t0
        .open_db("contacts", b0.clone(), alice.clone(), DbOptions::default())
        .await
        .unwrap();
    let id = db0
        .create(|d| d.put(ROOT, "name", "Ada").map(|_| ()))
        .await
        .unwrap();
    let (d1, b1) = connect(1, &bob);
    d1.wait_connected(T).await.unwrap();
    b1.wait_connected(T).await.unwrap();
    for q in [&d0, &b0, &d1, &b1] {
        q.close().await;
    }

    // Offline: both edit the same contact against their caches.
    let off0 = Tenant::open(config.clone(), caches[0].0.clone())
        .await
        .unwrap();
    let off1 = Tenant::open(config.clone(), caches[1].0.clone())
        .await
        .unwrap();
    let o0 = off0
        .open_db(
            "contacts",
            caches[0].1.clone(),
            alice.clone(),
            DbOptions::default(),
        )
        .await
        .unwrap();
    let o1 = off1
        .open_db(
            "contacts",
            caches[1].1.clone(),
            bob.clone(),
            DbOptions::default(),
        )
        .await
        .unwrap();
    o0.update(&id, |d| d.put(ROOT, "email", "ada@example.org").map(|_| ()))
        .await
        .unwrap();
    o1.update(&id, |d| d.put(ROOT, "phone", "+44 1234").map(|_| ()))
        .await
        .unwrap();

    // Reconnect: connecting syncs both ways; device 0 then catches up.
    let (_d0, b0) = connect(0, &alice);
    let (_d1, b1) = connect(1, &bob);
    b0.wait_connected(T).await.unwrap();
    b1.wait_connected(T).await.unwrap();
    // Each caught up (pull, then push) before it said Connected, but one
    // may have pulled before the other pushed: an explicit sync on each
    // settles it, whatever the order of the two catch-ups.
    b0.sync().await.unwrap();
    b1.sync().await.unwrap();
    assert_eq!(
        b0.all_change_ids().await.unwrap(),
        b1.all_change_ids().await.unwrap()
    );
    for (t, key, store) in [(&off0, &alice, &b0), (&off1, &bob, &b1)] {
        let db = t
            .open_db("contacts", store.clone(), key.clone(), DbOptions::default())
            .await
            .unwrap();
        let loaded = db.load(&id).await.unwrap();
        assert!(loaded.rejected.is_empty(), "{:?}", loaded.rejected);
        assert_eq!(get_str(&loaded.doc, "name").as_deref(), Some("Ada"));
        assert_eq!(
            get_str(&loaded.doc, "email").as_deref(),
            Some("ada@example.org")
        );
        assert_eq!(get_str(&loaded.doc, "phone").as_deref(), Some("+44 1234"));
    }

    // The relay holds all of it, as ciphertext.
    let ids = relay_db.all_change_ids().await.unwrap();
    assert_eq!(ids.len(), 3);
    for c in relay_db.get_changes(&ids).await.unwrap() {
        for needle in [&b"Ada"[..], b"example.org", b"1234"] {
            assert!(
                !c.payload.windows(needle.len()).any(|w| w == needle),
                "plaintext at the relay"
            );
        }
    }
    server.shutdown().await;
}
