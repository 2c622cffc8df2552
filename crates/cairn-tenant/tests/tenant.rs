//! The tenant layer end to end: devices, relay, trust, keys, durability.
#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::sync::Arc;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT, ReadDoc};
use cairn::sync::sync;
use cairn::{
    AppendOnlyStore, ChangeKind, DynAppendOnlyStore, KeyId, Keypair, RejectReason, SyncOptions,
};
use cairn_memory::MemoryStore;
use cairn_tenant::{DbOptions, Tenant, TenantConfig, TenantError, db_store_id, directory_store_id};

fn get_str(doc: &AutoCommit, key: &str) -> Option<String> {
    match doc.get(ROOT, key).ok()?? {
        (automerge::Value::Scalar(s), _) => s.as_str().map(str::to_owned),
        _ => None,
    }
}

fn mem(id: cairn::StoreId) -> Arc<DynAppendOnlyStore> {
    Arc::new(MemoryStore::new(id))
}

struct Device {
    tenant: Tenant,
    db: cairn_tenant::Database,
}

async fn device(config: &TenantConfig, user: Keypair, opts: DbOptions) -> Device {
    let tenant = Tenant::open(config.clone(), mem(directory_store_id(&config.id).unwrap()))
        .await
        .unwrap();
    let db = tenant
        .open_db(
            "contacts",
            mem(db_store_id(&config.id, "contacts").unwrap()),
            user,
            opts,
        )
        .await
        .unwrap();
    Device { tenant, db }
}

/// Sync a device's directory and database with the relay's.
async fn sync_via(relay_dir: &DynAppendOnlyStore, relay_db: &DynAppendOnlyStore, d: &Device) {
    sync(
        d.tenant.directory_store().as_ref(),
        relay_dir,
        &SyncOptions::default(),
    )
    .await
    .unwrap();
    d.tenant.refresh_directory().await.unwrap();
    sync(d.db.store().as_ref(), relay_db, &SyncOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn two_devices_edit_offline_and_converge_through_a_relay_that_sees_only_ciphertext() {
    let (config, admin) = TenantConfig::create("acme").unwrap();
    let (alice, bob) = (Keypair::generate(), Keypair::generate());
    let laptop = device(&config, alice.clone(), DbOptions::default()).await;
    laptop
        .tenant
        .add_user(&admin, "alice", alice.author())
        .await
        .unwrap();
    laptop
        .tenant
        .add_user(&admin, "bob", bob.author())
        .await
        .unwrap();
    let phone = device(&config, bob, DbOptions::default()).await;

    // The relay holds stores but no tenant key.
    let relay_dir = mem(directory_store_id("acme").unwrap());
    let relay_db = mem(db_store_id("acme", "contacts").unwrap());

    let id = laptop
        .db
        .create(|d| d.put(ROOT, "name", "Ada Lovelace").map(|_| ()))
        .await
        .unwrap();
    sync_via(relay_dir.as_ref(), relay_db.as_ref(), &laptop).await;
    sync_via(relay_dir.as_ref(), relay_db.as_ref(), &phone).await;

    // Both edit the same contact while offline.
    laptop
        .db
        .update(&id, |d| {
            d.put(ROOT, "email", "ada@analytical.engine").map(|_| ())
        })
        .await
        .unwrap();
    phone
        .db
        .update(&id, |d| {
            d.put(ROOT, "phone", "+44 20 7946 0000").map(|_| ())
        })
        .await
        .unwrap();

    for d in [&laptop, &phone, &laptop] {
        sync_via(relay_dir.as_ref(), relay_db.as_ref(), d).await;
    }
    let a = laptop.db.load(&id).await.unwrap();
    let b = phone.db.load(&id).await.unwrap();
    assert!(
        a.rejected.is_empty() && b.rejected.is_empty(),
        "{:?} {:?}",
        a.rejected,
        b.rejected
    );
    for doc in [&a.doc, &b.doc] {
        assert_eq!(get_str(doc, "name").as_deref(), Some("Ada Lovelace"));
        assert_eq!(
            get_str(doc, "email").as_deref(),
            Some("ada@analytical.engine")
        );
        assert_eq!(get_str(doc, "phone").as_deref(), Some("+44 20 7946 0000"));
    }
    let (mut da, mut db) = (a.doc, b.doc);
    assert_eq!(da.get_heads(), db.get_heads(), "the same merged document");

    // The relay holds every change but can read none of them.
    let ids = relay_db.all_change_ids().await.unwrap();
    assert_eq!(ids.len(), 3);
    let mut all_ids = ids.clone();
    all_ids.extend(relay_dir.all_change_ids().await.unwrap());
    let relay_changes = relay_db.get_changes(&ids).await.unwrap();
    let relay_dir_changes = relay_dir
        .get_changes(&relay_dir.all_change_ids().await.unwrap())
        .await
        .unwrap();
    for c in relay_changes.iter().chain(&relay_dir_changes) {
        for needle in [
            &b"Ada"[..],
            b"analytical",
            b"7946",
            b"alice",
            b"bob",
            b"email",
        ] {
            assert!(
                !c.payload.windows(needle.len()).any(|w| w == needle),
                "plaintext leaked to the relay"
            );
        }
    }
}

#[tokio::test]
async fn a_change_signed_by_an_unknown_key_is_rejected_and_reported() {
    let (config, admin) = TenantConfig::create("acme").unwrap();
    let alice = Keypair::generate();
    let d = device(&config, alice.clone(), DbOptions::default()).await;
    d.tenant
        .add_user(&admin, "alice", alice.author())
        .await
        .unwrap();
    let id =
        d.db.create(|doc| doc.put(ROOT, "name", "Ada").map(|_| ()))
            .await
            .unwrap();

    // Mallory has the tenant key (say, a stolen laptop config) but is not
    // in the directory.
    let mallory = Keypair::generate();
    let intruder = d
        .tenant
        .open_db(
            "contacts",
            Arc::clone(d.db.store()),
            mallory.clone(),
            DbOptions::default(),
        )
        .await
        .unwrap();
    let err = intruder
        .update(&id, |doc| doc.put(ROOT, "name", "Eve").map(|_| ()))
        .await;
    assert!(
        err.is_ok(),
        "the store itself accepts signed changes: {err:?}"
    );

    let loaded = d.db.load(&id).await.unwrap();
    assert_eq!(
        get_str(&loaded.doc, "name").as_deref(),
        Some("Ada"),
        "untrusted edit not applied"
    );
    assert_eq!(loaded.rejected.len(), 1);
    assert_eq!(
        loaded.rejected[0].reason,
        RejectReason::UntrustedAuthor(mallory.author())
    );

    // Revoking a user rejects their later loads too.
    d.tenant.revoke_user(&admin, alice.author()).await.unwrap();
    assert!(matches!(
        d.db.load(&id).await,
        Err(TenantError::NotFound(_))
    ));
    // Only the admin may change the directory.
    assert!(matches!(
        d.tenant
            .add_user(&mallory, "mallory", mallory.author())
            .await,
        Err(TenantError::NotAdmin(_))
    ));
}

#[tokio::test]
async fn a_rotated_key_still_opens_old_documents() {
    let (config, admin) = TenantConfig::create("acme").unwrap();
    let alice = Keypair::generate();
    let d = device(&config, alice.clone(), DbOptions::default()).await;
    d.tenant
        .add_user(&admin, "alice", alice.author())
        .await
        .unwrap();
    let old =
        d.db.create(|doc| doc.put(ROOT, "v", "before").map(|_| ()))
            .await
            .unwrap();
    assert_eq!(d.tenant.rotate_key(&KeyId::default()).unwrap(), 2);
    let new =
        d.db.create(|doc| doc.put(ROOT, "v", "after").map(|_| ()))
            .await
            .unwrap();
    d.db.update(&old, |doc| {
        doc.put(ROOT, "w", "edited after rotation").map(|_| ())
    })
    .await
    .unwrap();
    let o = d.db.load(&old).await.unwrap();
    assert_eq!(get_str(&o.doc, "v").as_deref(), Some("before"));
    assert_eq!(
        get_str(&o.doc, "w").as_deref(),
        Some("edited after rotation")
    );
    assert_eq!(
        get_str(&d.db.load(&new).await.unwrap().doc, "v").as_deref(),
        Some("after")
    );

    // A device with only the old key version cannot read the new payloads,
    // and says so instead of dropping them.
    let stale = Tenant::open(config.clone(), Arc::clone(d.tenant.directory_store()))
        .await
        .unwrap();
    let stale_db = stale
        .open_db(
            "contacts",
            Arc::clone(d.db.store()),
            alice,
            DbOptions::default(),
        )
        .await
        .unwrap();
    let partial = stale_db.load(&old).await.unwrap();
    assert_eq!(partial.rejected.len(), 1, "{:?}", partial.rejected);
    assert!(
        matches!(partial.rejected[0].reason, RejectReason::Policy(ref r) if r.contains("unknown key"))
    );
}

#[tokio::test]
async fn snapshots_are_written_and_loading_keeps_a_concurrent_offline_branch() {
    let (config, admin) = TenantConfig::create("acme").unwrap();
    let (alice, bob) = (Keypair::generate(), Keypair::generate());
    let opts = DbOptions {
        snapshot_every: 5,
        ..DbOptions::default()
    };
    let a = device(&config, alice.clone(), opts.clone()).await;
    a.tenant
        .add_user(&admin, "alice", alice.author())
        .await
        .unwrap();
    a.tenant
        .add_user(&admin, "bob", bob.author())
        .await
        .unwrap();
    let b = device(&config, bob, opts).await;
    sync(
        a.tenant.directory_store().as_ref(),
        b.tenant.directory_store().as_ref(),
        &SyncOptions::default(),
    )
    .await
    .unwrap();
    b.tenant.refresh_directory().await.unwrap();

    let id =
        a.db.create(|d| d.put(ROOT, "n", 0).map(|_| ()))
            .await
            .unwrap();
    sync(
        a.db.store().as_ref(),
        b.db.store().as_ref(),
        &SyncOptions::default(),
    )
    .await
    .unwrap();
    // Offline: b makes one edit; a makes enough to trigger a snapshot.
    b.db.update(&id, |d| d.put(ROOT, "offline", "kept").map(|_| ()))
        .await
        .unwrap();
    for i in 1..=6i64 {
        a.db.update(&id, |d| d.put(ROOT, "n", i).map(|_| ()))
            .await
            .unwrap();
    }
    let snaps =
        a.db.store()
            .changes_for_doc(&id, false)
            .await
            .unwrap()
            .iter()
            .filter(|m| m.kind == ChangeKind::Snapshot)
            .count();
    assert_eq!(snaps, 1, "one snapshot after five changes");
    sync(
        a.db.store().as_ref(),
        b.db.store().as_ref(),
        &SyncOptions::default(),
    )
    .await
    .unwrap();
    let plan = a.db.store().changes_for_doc(&id, true).await.unwrap();
    assert_eq!(
        plan[0].kind,
        ChangeKind::Snapshot,
        "loading starts at the snapshot"
    );
    assert!(
        plan.len() < 9,
        "covered history is skipped: {} entries",
        plan.len()
    );
    let loaded = a.db.load(&id).await.unwrap();
    assert_eq!(
        loaded
            .doc
            .get(ROOT, "n")
            .unwrap()
            .map(|(v, _)| v.to_string()),
        Some("6".into())
    );
    assert_eq!(
        get_str(&loaded.doc, "offline").as_deref(),
        Some("kept"),
        "the offline branch is applied"
    );
    assert!(loaded.rejected.is_empty(), "{:?}", loaded.rejected);
}

#[tokio::test]
async fn list_and_delete() {
    let (config, admin) = TenantConfig::create("acme").unwrap();
    let alice = Keypair::generate();
    let d = device(&config, alice.clone(), DbOptions::default()).await;
    d.tenant
        .add_user(&admin, "alice", alice.author())
        .await
        .unwrap();
    let x =
        d.db.create(|doc| doc.put(ROOT, "k", "x").map(|_| ()))
            .await
            .unwrap();
    let y = d.db.create(|_| Ok(())).await.unwrap();
    let mut want = vec![x.clone(), y.clone()];
    want.sort();
    assert_eq!(d.db.list().await.unwrap(), want);
    d.db.delete(&x).await.unwrap();
    assert_eq!(d.db.list().await.unwrap(), vec![y.clone()]);
    assert!(matches!(d.db.load(&x).await, Err(TenantError::NotFound(_))));
    assert!(d.db.load_any(&x).await.unwrap().deleted);
    assert!(d.db.load(&y).await.is_ok(), "an empty document exists");
}

#[tokio::test]
async fn wrong_store_ids_are_refused() {
    let (config, _admin) = TenantConfig::create("acme").unwrap();
    let wrong = mem(cairn::StoreId::new("other/directory").unwrap());
    assert!(Tenant::open(config.clone(), wrong).await.is_err());
    let t = Tenant::open(config, mem(directory_store_id("acme").unwrap()))
        .await
        .unwrap();
    let res = t
        .open_db(
            "contacts",
            mem(db_store_id("acme", "other").unwrap()),
            Keypair::generate(),
            DbOptions::default(),
        )
        .await;
    assert!(matches!(
        res,
        Err(TenantError::Store(cairn::Error::StoreMismatch { .. }))
    ));
    assert!(TenantConfig::create("a/b").is_err());
}

#[tokio::test]
async fn documents_reload_from_redb_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (config, admin) = TenantConfig::create("acme").unwrap();
    let alice = Keypair::generate();
    let open = |name: &'static str| {
        let path = dir.path().join(name);
        async move {
            cairn_redb::RedbStore::open(&path, sid_for(name))
                .await
                .unwrap()
        }
    };
    fn sid_for(name: &str) -> cairn::StoreId {
        if name == "dir.redb" {
            directory_store_id("acme").unwrap()
        } else {
            db_store_id("acme", "contacts").unwrap()
        }
    }
    let id = {
        let tenant = Tenant::open(config.clone(), Arc::new(open("dir.redb").await))
            .await
            .unwrap();
        tenant
            .add_user(&admin, "alice", alice.author())
            .await
            .unwrap();
        let db = tenant
            .open_db(
                "contacts",
                Arc::new(open("db.redb").await),
                alice.clone(),
                DbOptions::default(),
            )
            .await
            .unwrap();
        let id = db
            .create(|d| d.put(ROOT, "name", "Ada").map(|_| ()))
            .await
            .unwrap();
        db.update(&id, |d| d.put(ROOT, "city", "London").map(|_| ()))
            .await
            .unwrap();
        id
    };
    let tenant = Tenant::open(config, Arc::new(open("dir.redb").await))
        .await
        .unwrap();
    let db = tenant
        .open_db(
            "contacts",
            Arc::new(open("db.redb").await),
            alice,
            DbOptions::default(),
        )
        .await
        .unwrap();
    let loaded = db.load(&id).await.unwrap();
    assert_eq!(get_str(&loaded.doc, "name").as_deref(), Some("Ada"));
    assert_eq!(get_str(&loaded.doc, "city").as_deref(), Some("London"));
    assert_eq!(db.list().await.unwrap(), vec![id]);
}
