//! A contacts app on `cairn-tenant`: `cargo run -p tenant-app`.

use std::sync::Arc;

use automerge::ROOT;
use automerge::transaction::Transactable;
use cairn::sync::sync;
use cairn::{DynAppendOnlyStore, Keypair, StoreId, SyncOptions};
use cairn_memory::MemoryStore;
use cairn_tenant::{Database, DbOptions, Tenant, TenantConfig, db_store_id, directory_store_id};

fn mem(id: &StoreId) -> Arc<DynAppendOnlyStore> {
    Arc::new(MemoryStore::new(id.clone()))
}

struct Device {
    tenant: Tenant,
    contacts: Database,
}

async fn device(config: &TenantConfig, user: &Keypair) -> cairn_tenant::Result<Device> {
    let tenant = Tenant::open(config.clone(), mem(&directory_store_id(&config.id)?)).await?;
    let contacts = tenant
        .open_db(
            "contacts",
            mem(&db_store_id(&config.id, "contacts")?),
            user.clone(),
            DbOptions::default(),
        )
        .await?;
    Ok(Device { tenant, contacts })
}

/// Sync a device with the relay: the directory first, then the contacts.
async fn sync_with_relay(
    d: &Device,
    relay: &[Arc<DynAppendOnlyStore>; 2],
) -> cairn_tenant::Result<()> {
    sync(
        d.tenant.directory_store().as_ref(),
        relay[0].as_ref(),
        &SyncOptions::default(),
    )
    .await?;
    d.tenant.refresh_directory().await?;
    sync(
        d.contacts.store().as_ref(),
        relay[1].as_ref(),
        &SyncOptions::default(),
    )
    .await?;
    Ok(())
}

fn show(doc: &automerge::AutoCommit) -> String {
    serde_json::to_string(&automerge::AutoSerde::from(doc)).unwrap_or_default()
}

#[tokio::main]
async fn main() -> cairn_tenant::Result<()> {
    let (config, admin) = TenantConfig::create("acme")?;
    let (alice, bob) = (Keypair::generate(), Keypair::generate());
    let relay = [
        mem(&directory_store_id("acme")?),
        mem(&db_store_id("acme", "contacts")?),
    ];

    let laptop = device(&config, &alice).await?;
    laptop
        .tenant
        .add_user(&admin, "alice", alice.author())
        .await?;
    laptop.tenant.add_user(&admin, "bob", bob.author()).await?;
    let phone = device(&config, &bob).await?;

    let ada = laptop
        .contacts
        .create(|d| d.put(ROOT, "name", "Ada Lovelace").map(|_| ()))
        .await?;
    sync_with_relay(&laptop, &relay).await?;
    sync_with_relay(&phone, &relay).await?;

    // Offline, both edit the same contact.
    laptop
        .contacts
        .update(&ada, |d| {
            d.put(ROOT, "email", "ada@example.org").map(|_| ())
        })
        .await?;
    phone
        .contacts
        .update(&ada, |d| {
            d.put(ROOT, "phone", "+44 20 7946 0000").map(|_| ())
        })
        .await?;

    // Someone with the tenant key but not in the directory writes too.
    let mallory = Keypair::generate();
    let intruder = laptop
        .tenant
        .open_db(
            "contacts",
            Arc::clone(&relay[1]),
            mallory,
            DbOptions::default(),
        )
        .await?;
    intruder
        .update(&ada, |d| d.put(ROOT, "name", "Eve").map(|_| ()))
        .await?;

    for d in [&laptop, &phone, &laptop] {
        sync_with_relay(d, &relay).await?;
    }
    for (name, d) in [("laptop", &laptop), ("phone", &phone)] {
        let loaded = d.contacts.load(&ada).await?;
        println!("{name}: {}", show(&loaded.doc));
        for r in &loaded.rejected {
            println!("  refused {}: {}", r.id.short(), r.reason);
        }
    }
    let relay_changes = relay[1]
        .get_changes(&relay[1].all_change_ids().await?)
        .await?;
    let readable = relay_changes
        .iter()
        .filter(|c| c.payload.windows(3).any(|w| w == b"Ada"))
        .count();
    println!(
        "relay holds {} changes; {readable} readable",
        relay_changes.len()
    );
    Ok(())
}
