//! The tenant layer end to end: devices, relay, trust, keys, durability.
#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::sync::Arc;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT, ReadDoc};
use cairn::sync::sync;
use cairn::{
    AppendOnlyStore, ChangeId, ChangeKind, DynAppendOnlyStore, KeyId, Keypair, RejectReason,
    SyncOptions,
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
    // No refresh_directory: a load notices the directory store changed.
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

    // Revoking a user without keeping any of their changes rejects all of
    // them: the document is gone for this device.
    d.tenant
        .revoke_user(&admin, alice.author(), &[])
        .await
        .unwrap();
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
    let v2 = d.tenant.rotate_key(&KeyId::default()).unwrap();
    assert_eq!(
        d.tenant.config().keys.versions(&KeyId::default()).last(),
        Some(&v2)
    );
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

/// A tenant with an admin, users alice and bob, and their devices, all
/// synced through one relay.
struct Team {
    config: TenantConfig,
    admin: Keypair,
    alice: Keypair,
    bob: Keypair,
    a: Device,
    b: Device,
    relay_dir: Arc<DynAppendOnlyStore>,
    relay_db: Arc<DynAppendOnlyStore>,
}

async fn team() -> Team {
    let (config, admin) = TenantConfig::create("acme").unwrap();
    let (alice, bob) = (Keypair::generate(), Keypair::generate());
    let a = device(&config, alice.clone(), DbOptions::default()).await;
    let b = device(&config, bob.clone(), DbOptions::default()).await;
    a.tenant
        .add_user(&admin, "alice", alice.author())
        .await
        .unwrap();
    a.tenant
        .add_user(&admin, "bob", bob.author())
        .await
        .unwrap();
    let relay_dir = mem(directory_store_id("acme").unwrap());
    let relay_db = mem(db_store_id("acme", "contacts").unwrap());
    sync_via(&*relay_dir, &*relay_db, &a).await;
    sync_via(&*relay_dir, &*relay_db, &b).await;
    Team {
        config,
        admin,
        alice,
        bob,
        a,
        b,
        relay_dir,
        relay_db,
    }
}

#[tokio::test]
async fn revoking_keeps_earlier_edits_and_rejects_later_and_backdated_ones() {
    let t = team().await;
    let doc =
        t.b.db
            .create(|d| d.put(ROOT, "name", "Ada").map(|_| ()))
            .await
            .unwrap();
    sync_via(&*t.relay_dir, &*t.relay_db, &t.b).await;
    sync_via(&*t.relay_dir, &*t.relay_db, &t.a).await;
    t.a.db
        .update(&doc, |d| {
            d.put(ROOT, "email", "ada@example.org").map(|_| ())
        })
        .await
        .unwrap();
    sync_via(&*t.relay_dir, &*t.relay_db, &t.a).await;
    // The admin (on bob's device, which holds alice's edit) revokes alice.
    sync_via(&*t.relay_dir, &*t.relay_db, &t.b).await;
    t.b.tenant
        .revoke_user(&t.admin, t.alice.author(), &[&t.b.db])
        .await
        .unwrap();
    sync_via(&*t.relay_dir, &*t.relay_db, &t.b).await;
    // Alice, before seeing the revocation, edits again, and writes one more
    // change with a backdated clock.
    t.a.db
        .update(&doc, |d| d.put(ROOT, "phone", "+44").map(|_| ()))
        .await
        .unwrap();
    let backdated = cairn::ChangeBuilder::new(ChangeKind::Change, doc.clone())
        .created_at(1)
        .payload(b"not even a valid envelope".to_vec())
        .sign(&t.alice)
        .unwrap();
    t.a.db
        .store()
        .append(vec![backdated.clone()])
        .await
        .unwrap();
    sync_via(&*t.relay_dir, &*t.relay_db, &t.a).await;
    sync_via(&*t.relay_dir, &*t.relay_db, &t.b).await;
    let loaded = t.b.db.load(&doc).await.unwrap();
    assert_eq!(
        get_str(&loaded.doc, "email").as_deref(),
        Some("ada@example.org"),
        "kept"
    );
    assert_eq!(
        get_str(&loaded.doc, "phone"),
        None,
        "the later edit is rejected"
    );
    let revoked: Vec<_> = loaded
        .rejected
        .iter()
        .filter(|r| matches!(&r.reason, RejectReason::Policy(p) if p.contains("revoked")))
        .map(|r| r.id)
        .collect();
    assert_eq!(revoked.len(), 2, "{:?}", loaded.rejected);
    assert!(
        revoked.contains(&backdated.id()),
        "the backdated change is rejected too"
    );
    assert_eq!(loaded.applied, 2, "bob's create and alice's kept edit");
    // Alice's device, once it has the directory, agrees.
    let hers = t.a.db.load(&doc).await.unwrap();
    assert_eq!(get_str(&hers.doc, "phone"), None);
    assert_eq!(
        get_str(&hers.doc, "email").as_deref(),
        Some("ada@example.org")
    );
    let _ = &t.config;
}

#[tokio::test]
async fn a_trusted_edit_on_top_of_a_revoked_users_change_is_reported_not_counted() {
    let t = team().await;
    let doc =
        t.a.db
            .create(|d| d.put(ROOT, "name", "Ada").map(|_| ()))
            .await
            .unwrap();
    sync_via(&*t.relay_dir, &*t.relay_db, &t.a).await;
    // The admin revokes alice keeping only what the relay shows now.
    sync_via(&*t.relay_dir, &*t.relay_db, &t.b).await;
    // Bob's device holds a directory from before the revocation (stale):
    // alice edits, bob applies her edit and builds on it.
    t.a.db
        .update(&doc, |d| d.put(ROOT, "v", "alice").map(|_| ()))
        .await
        .unwrap();
    sync_via(&*t.relay_dir, &*t.relay_db, &t.a).await;
    sync_via(&*t.relay_dir, &*t.relay_db, &t.b).await;
    t.b.db
        .update(&doc, |d| {
            d.put(ROOT, "v", "bob on top of alice").map(|_| ())
        })
        .await
        .unwrap();
    // Now the revocation, written by an admin device that had only alice's
    // first change.
    let admin_dev = device(&t.config, t.admin.clone(), DbOptions::default()).await;
    let first_only = mem(db_store_id("acme", "contacts").unwrap());
    let first = t.a.db.store().changes_for_doc(&doc, false).await.unwrap();
    let first_ids = [first[0].id];
    first_only
        .append(t.a.db.store().get_changes(&first_ids).await.unwrap())
        .await
        .unwrap();
    sync(
        admin_dev.tenant.directory_store().as_ref(),
        &*t.relay_dir,
        &SyncOptions::default(),
    )
    .await
    .unwrap();
    let admin_db = admin_dev
        .tenant
        .open_db(
            "contacts",
            first_only,
            t.admin.clone(),
            DbOptions::default(),
        )
        .await
        .unwrap();
    admin_dev
        .tenant
        .revoke_user(&t.admin, t.alice.author(), &[&admin_db])
        .await
        .unwrap();
    sync(
        admin_dev.tenant.directory_store().as_ref(),
        &*t.relay_dir,
        &SyncOptions::default(),
    )
    .await
    .unwrap();
    sync_via(&*t.relay_dir, &*t.relay_db, &t.b).await;
    let loaded = t.b.db.load(&doc).await.unwrap();
    assert_eq!(get_str(&loaded.doc, "name").as_deref(), Some("Ada"));
    assert_eq!(
        get_str(&loaded.doc, "v"),
        None,
        "neither alice's edit nor bob's on top of it"
    );
    assert_eq!(loaded.applied, 1, "only the kept create is in the document");
    assert!(
        loaded.rejected.iter().any(
            |r| matches!(&r.reason, RejectReason::Policy(p) if p.contains("depends on a change that was not applied"))
        ),
        "bob's edit is reported, not silently queued: {:?}",
        loaded.rejected
    );
    let _ = &t.bob;
}

#[tokio::test]
async fn a_snapshot_from_a_stale_directory_does_not_carry_a_revoked_users_edits() {
    let t = team().await;
    let opts = DbOptions {
        snapshot_every: 1,
        ..DbOptions::default()
    };
    let doc =
        t.a.db
            .create(|d| d.put(ROOT, "name", "Ada").map(|_| ()))
            .await
            .unwrap();
    sync_via(&*t.relay_dir, &*t.relay_db, &t.a).await;
    // The admin revokes alice, keeping her create.
    let admin_dev = device(&t.config, t.admin.clone(), DbOptions::default()).await;
    sync_via(&*t.relay_dir, &*t.relay_db, &admin_dev).await;
    admin_dev
        .tenant
        .revoke_user(&t.admin, t.alice.author(), &[&admin_dev.db])
        .await
        .unwrap();
    // Alice edits; bob's device, which never saw the revocation, applies
    // the edit and writes a snapshot (signed by bob, a trusted user).
    t.a.db
        .update(&doc, |d| d.put(ROOT, "v", "after revocation").map(|_| ()))
        .await
        .unwrap();
    sync_via(&*t.relay_dir, &*t.relay_db, &t.a).await;
    let stale_bob =
        t.b.tenant
            .open_db("contacts", Arc::clone(t.b.db.store()), t.bob.clone(), opts)
            .await
            .unwrap();
    sync(
        t.b.db.store().as_ref(),
        &*t.relay_db,
        &SyncOptions::default(),
    )
    .await
    .unwrap();
    let ids = stale_bob
        .update(&doc, |d| d.put(ROOT, "w", "bob").map(|_| ()))
        .await
        .unwrap();
    assert_eq!(ids.len(), 2, "bob's edit and a snapshot");
    sync(
        t.b.db.store().as_ref(),
        &*t.relay_db,
        &SyncOptions::default(),
    )
    .await
    .unwrap();
    // The admin's device loads: the snapshot covers a rejected change, so
    // it is skipped; the history without alice's late edit is loaded.
    sync_via(&*t.relay_dir, &*t.relay_db, &admin_dev).await;
    let loaded = admin_dev.db.load(&doc).await.unwrap();
    assert_eq!(
        get_str(&loaded.doc, "v"),
        None,
        "the revoked edit is not carried by the snapshot"
    );
    assert!(
        loaded.rejected.iter().any(|r| r.id == ids[1]
            && matches!(&r.reason, RejectReason::Policy(p) if p.contains("snapshot not used"))),
        "{:?}",
        loaded.rejected
    );
}

#[tokio::test]
async fn a_sealed_change_replayed_into_another_database_does_not_open() {
    let t = team().await;
    let doc =
        t.a.db
            .create(|d| d.put(ROOT, "secret", "s3").map(|_| ()))
            .await
            .unwrap();
    // Copy alice's signed change, unchanged, into another database of the
    // same tenant, under the same document id.
    let changes = t.a.db.store().changes_for_doc(&doc, false).await.unwrap();
    let ids: Vec<_> = changes.iter().map(|m| m.id).collect();
    let copies = t.a.db.store().get_changes(&ids).await.unwrap();
    let other = mem(db_store_id("acme", "other").unwrap());
    other.append(copies).await.unwrap();
    let other_db =
        t.a.tenant
            .open_db("other", other, t.alice.clone(), DbOptions::default())
            .await
            .unwrap();
    let loaded = other_db.load_any(&doc).await.unwrap();
    assert_eq!(loaded.applied, 0);
    assert_eq!(get_str(&loaded.doc, "secret"), None);
    assert!(
        loaded.rejected.iter().all(
            |r| matches!(&r.reason, RejectReason::Policy(p) if p.contains("authentication failed"))
        ),
        "{:?}",
        loaded.rejected
    );
}

/// The deps of the first change an `update` returned.
async fn deps_of(d: &Device, ids: &[ChangeId]) -> Vec<ChangeId> {
    let metas = d.db.store().get_metas(&ids[..1]).await.unwrap();
    metas[0].deps.clone()
}

#[tokio::test]
async fn an_edit_of_an_open_document_builds_on_what_a_sync_brought() {
    let t = team().await;
    let doc =
        t.b.db
            .create(|d| d.put(ROOT, "name", "Ada").map(|_| ()))
            .await
            .unwrap();
    sync_via(&*t.relay_dir, &*t.relay_db, &t.b).await;
    sync_via(&*t.relay_dir, &*t.relay_db, &t.a).await;
    // Alice edits twice: the document stays open on her device.
    for v in ["a1", "a2"] {
        t.a.db
            .update(&doc, move |d| d.put(ROOT, "alice", v).map(|_| ()))
            .await
            .unwrap();
    }
    sync_via(&*t.relay_dir, &*t.relay_db, &t.a).await;
    sync_via(&*t.relay_dir, &*t.relay_db, &t.b).await;
    let bobs =
        t.b.db
            .update(&doc, |d| d.put(ROOT, "bob", "b1").map(|_| ()))
            .await
            .unwrap();
    sync_via(&*t.relay_dir, &*t.relay_db, &t.b).await;
    sync_via(&*t.relay_dir, &*t.relay_db, &t.a).await;
    // Her next edit sees Bob's, which arrived by sync: it depends on it
    // (an edit on the stale open copy would be concurrent with it; Automerge
    // also names the actor's own previous change).
    let hers =
        t.a.db
            .update(&doc, |d| d.put(ROOT, "alice", "a3").map(|_| ()))
            .await
            .unwrap();
    assert!(deps_of(&t.a, &hers).await.contains(&bobs[0]));
    // And another Database on the same store is "elsewhere" too.
    let other =
        t.a.tenant
            .open_db(
                "contacts",
                t.a.db.store().clone(),
                t.alice.clone(),
                DbOptions::default(),
            )
            .await
            .unwrap();
    let theirs = other
        .update(&doc, |d| d.put(ROOT, "other", "o1").map(|_| ()))
        .await
        .unwrap();
    let again =
        t.a.db
            .update(&doc, |d| d.put(ROOT, "alice", "a4").map(|_| ()))
            .await
            .unwrap();
    assert!(deps_of(&t.a, &again).await.contains(&theirs[0]));
    let loaded = t.a.db.load(&doc).await.unwrap();
    assert_eq!(get_str(&loaded.doc, "alice").as_deref(), Some("a4"));
    assert_eq!(get_str(&loaded.doc, "bob").as_deref(), Some("b1"));
    assert_eq!(get_str(&loaded.doc, "other").as_deref(), Some("o1"));
}

#[tokio::test]
async fn a_revocation_closes_open_documents() {
    let t = team().await;
    let doc =
        t.a.db
            .create(|d| d.put(ROOT, "name", "Ada").map(|_| ()))
            .await
            .unwrap();
    let created = t.a.db.store().changes_for_doc(&doc, false).await.unwrap()[0].id;
    sync_via(&*t.relay_dir, &*t.relay_db, &t.a).await;
    sync_via(&*t.relay_dir, &*t.relay_db, &t.b).await;
    let bobs =
        t.b.db
            .update(&doc, |d| d.put(ROOT, "bob", "b1").map(|_| ()))
            .await
            .unwrap();
    sync_via(&*t.relay_dir, &*t.relay_db, &t.b).await;
    sync_via(&*t.relay_dir, &*t.relay_db, &t.a).await;
    // Open on Alice's device, with Bob's edit in it.
    let first =
        t.a.db
            .update(&doc, |d| d.put(ROOT, "alice", "a1").map(|_| ()))
            .await
            .unwrap();
    assert!(deps_of(&t.a, &first).await.contains(&bobs[0]));
    // The admin revokes Bob, keeping none of his changes; only the
    // directory reaches Alice.
    t.b.tenant
        .revoke_user(&t.admin, t.bob.author(), &[])
        .await
        .unwrap();
    for dir in [t.b.tenant.directory_store(), t.a.tenant.directory_store()] {
        sync(dir.as_ref(), &*t.relay_dir, &SyncOptions::default())
            .await
            .unwrap();
    }
    // Her next edit is made on the document as the new directory reads it:
    // Bob's edit is refused, and her edit on top of it is not counted, so
    // it builds on her create (the stale open copy would build on `a1`).
    let next =
        t.a.db
            .update(&doc, |d| d.put(ROOT, "alice", "a2").map(|_| ()))
            .await
            .unwrap();
    assert_eq!(deps_of(&t.a, &next).await, vec![created]);
    let loaded = t.a.db.load(&doc).await.unwrap();
    assert_eq!(get_str(&loaded.doc, "bob"), None);
    assert_eq!(get_str(&loaded.doc, "alice").as_deref(), Some("a2"));
}

#[tokio::test]
async fn a_failed_edit_leaves_nothing_behind_in_the_open_document() {
    let t = team().await;
    let doc =
        t.a.db
            .create(|d| d.put(ROOT, "name", "Ada").map(|_| ()))
            .await
            .unwrap();
    t.a.db
        .update(&doc, |d| d.put(ROOT, "n", "1").map(|_| ()))
        .await
        .unwrap();
    let e =
        t.a.db
            .update(&doc, |d| {
                d.put(ROOT, "half", "done")?;
                Err(automerge::AutomergeError::Fail)
            })
            .await
            .unwrap_err();
    assert!(matches!(e, TenantError::Automerge(_)), "{e}");
    let ids =
        t.a.db
            .update(&doc, |d| d.put(ROOT, "n", "2").map(|_| ()))
            .await
            .unwrap();
    assert_eq!(
        ids.len(),
        1,
        "one commit, carrying nothing of the failed edit"
    );
    let loaded = t.a.db.load(&doc).await.unwrap();
    assert_eq!(get_str(&loaded.doc, "half"), None);
    assert_eq!(get_str(&loaded.doc, "n").as_deref(), Some("2"));
}
