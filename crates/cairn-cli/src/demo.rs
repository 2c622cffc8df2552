//! `cairn demo`: one process, a QUIC relay over redb and two devices of one
//! tenant with redb caches. They edit one contact while offline, reconnect,
//! converge, and see a live update; the relay only ever holds ciphertext.

use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use cairn::{AppendOnlyStore, DynAppendOnlyStore, Keypair, StoreId};
use cairn_quic::{Acl, Permission, QuicServer, QuicStore, QuicStoreOptions, ServerOptions, Stores};
use cairn_redb::RedbStore;
use cairn_tenant::{Database, DbOptions, Tenant, TenantConfig, db_store_id, directory_store_id};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{CliError, Result, fail};

const PATIENCE: Duration = Duration::from_secs(20);

struct Device {
    name: &'static str,
    user: Keypair,
    dir_cache: Arc<DynAppendOnlyStore>,
    db_cache: Arc<DynAppendOnlyStore>,
}

struct Online {
    dir: Arc<QuicStore>,
    db: Arc<QuicStore>,
    tenant: Tenant,
    contacts: Database,
}

async fn connect(d: &Device, server: &QuicServer, config: &TenantConfig) -> Result<Online> {
    let q = |cache: &Arc<DynAppendOnlyStore>| {
        QuicStore::new(
            Arc::clone(cache),
            server.local_addr(),
            server.peer_id(),
            &d.user,
            QuicStoreOptions::default(),
        )
        .map(Arc::new)
    };
    let (dir, db) = (q(&d.dir_cache)?, q(&d.db_cache)?);
    dir.wait_connected(PATIENCE).await?;
    db.wait_connected(PATIENCE).await?;
    let tenant = Tenant::open(config.clone(), dir.clone()).await?;
    let contacts = tenant
        .open_db("contacts", db.clone(), d.user.clone(), DbOptions::default())
        .await?;
    Ok(Online {
        dir,
        db,
        tenant,
        contacts,
    })
}

impl Online {
    /// Wait until the relay has confirmed every local append (appends
    /// return once the change is in the local cache and its outbox).
    async fn flush(&self) -> Result<()> {
        self.dir.flush(PATIENCE).await?;
        self.db.flush(PATIENCE).await?;
        Ok(())
    }

    async fn close(self) {
        self.dir.close().await;
        self.db.close().await;
    }
}

fn json(doc: &AutoCommit) -> Result<String> {
    Ok(serde_json::to_string(&automerge::AutoSerde::from(doc))?)
}

fn put(
    key: &'static str,
    value: &'static str,
) -> impl FnOnce(&mut AutoCommit) -> std::result::Result<(), automerge::AutomergeError> + Send {
    move |d| d.put(ROOT, key, value).map(|_| ())
}

/// Run the demo with `notes` offline notes per device.
pub async fn run(notes: usize) -> Result<()> {
    let started = Instant::now();
    let tmp = tempfile::tempdir()?;
    let (config, admin) = TenantConfig::create("demo")?;
    let (dir_id, db_id) = (
        directory_store_id("demo")?,
        db_store_id("demo", "contacts")?,
    );
    let open = |name: &str, id: &StoreId| {
        let path = tmp.path().join(name);
        let id = id.clone();
        async move {
            RedbStore::open(path, id)
                .await
                .map(|s| Arc::new(s) as Arc<DynAppendOnlyStore>)
        }
    };

    println!("== Cairn demo: one tenant, two devices, a relay that cannot read");
    let devices = [
        Device {
            name: "laptop",
            user: Keypair::generate(),
            dir_cache: open("laptop-directory.redb", &dir_id).await?,
            db_cache: open("laptop-contacts.redb", &db_id).await?,
        },
        Device {
            name: "phone",
            user: Keypair::generate(),
            dir_cache: open("phone-directory.redb", &dir_id).await?,
            db_cache: open("phone-contacts.redb", &db_id).await?,
        },
    ];

    // The relay: redb stores, no tenant key, only the two devices allowed.
    let relay_dir = open("relay-directory.redb", &dir_id).await?;
    let relay_db = open("relay-contacts.redb", &db_id).await?;
    let mut acl = Acl::new();
    for d in &devices {
        acl = acl
            .allow(&dir_id, d.user.author(), Permission::ReadWrite)
            .allow(&db_id, d.user.author(), Permission::ReadWrite);
    }
    let relay_key = Keypair::generate();
    let server = QuicServer::bind(
        "127.0.0.1:0"
            .parse()
            .map_err(|e| CliError::new(format!("{e}")))?,
        &relay_key,
        Arc::new(Stores::new().with(relay_dir.clone()).with(relay_db.clone())),
        Arc::new(acl),
        ServerOptions::default(),
    )?;
    println!(
        "relay    quic://{}  peer {}  (redb in {})",
        server.local_addr(),
        server.peer_id().short(),
        tmp.path().display()
    );
    for d in &devices {
        println!(
            "{:<8} peer {}  (redb cache)",
            d.name,
            d.user.author().short()
        );
    }

    // 1. Online: the admin admits both users; the laptop creates a contact.
    let laptop = connect(&devices[0], &server, &config).await?;
    laptop
        .tenant
        .add_user(&admin, "alice (laptop)", devices[0].user.author())
        .await?;
    laptop
        .tenant
        .add_user(&admin, "bob (phone)", devices[1].user.author())
        .await?;
    let contact = laptop.contacts.create(put("name", "Ada Lovelace")).await?;
    laptop.flush().await?;
    let phone = connect(&devices[1], &server, &config).await?;
    let seen = phone.contacts.load(&contact).await?;
    println!(
        "\n1. online: laptop created contact {contact}; phone sees {}",
        json(&seen.doc)?
    );
    laptop.close().await;
    phone.close().await;

    // 2. Offline: both edit the same contact, and write notes, against their
    //    local caches only.
    println!("\n2. offline: both devices edit the contact and write {notes} notes each");
    let bar = ProgressBar::new((2 * notes) as u64);
    bar.set_style(
        ProgressStyle::with_template("   {bar:40} {pos}/{len} offline changes {msg}")
            .map_err(|e| CliError::new(e.to_string()))?
            .progress_chars("=> "),
    );
    let mut offline = Vec::new();
    for d in &devices {
        let tenant = Tenant::open(config.clone(), d.dir_cache.clone()).await?;
        let db = tenant
            .open_db(
                "contacts",
                d.db_cache.clone(),
                d.user.clone(),
                DbOptions::default(),
            )
            .await?;
        offline.push(db);
    }
    offline[0]
        .update(&contact, put("email", "ada@analytical.engine"))
        .await?;
    offline[1]
        .update(&contact, put("phone", "+44 20 7946 0000"))
        .await?;
    for i in 0..notes {
        for (k, db) in offline.iter().enumerate() {
            let text = format!("note {i} from {}", devices[k].name);
            db.create(move |d| d.put(ROOT, "text", text).map(|_| ()))
                .await?;
            bar.inc(1);
        }
    }
    bar.finish_with_message("written");
    for (k, db) in offline.iter().enumerate() {
        println!(
            "   {:<6} sees {}",
            devices[k].name,
            json(&db.load(&contact).await?.doc)?
        );
    }
    drop(offline);

    // 3. Reconnect: each device syncs both ways on connect.
    println!("\n3. reconnect and sync through the relay");
    let before: Vec<u64> = futures::future::try_join_all(
        devices
            .iter()
            .map(|d| async { Ok::<_, cairn::Error>(d.db_cache.head().await?.seq) }),
    )
    .await?;
    let t = Instant::now();
    let laptop = connect(&devices[0], &server, &config).await?;
    let phone = connect(&devices[1], &server, &config).await?;
    // The laptop connected first, so it must catch up with what the phone
    // pushed after it; an explicit sync does that and reports.
    let report = laptop.db.sync().await?;
    let converge = t.elapsed();
    for (k, d) in devices.iter().enumerate() {
        let after = d.db_cache.head().await?.seq;
        println!("   {:<6} {:>5} -> {:>5} changes", d.name, before[k], after);
    }
    println!("   laptop's catch-up sync: {report}");
    println!("   converged in {converge:.1?}");
    let a = laptop.contacts.load(&contact).await?;
    let b = phone.contacts.load(&contact).await?;
    let (ja, jb) = (json(&a.doc)?, json(&b.doc)?);
    println!("   laptop: {ja}\n   phone:  {jb}");
    if ja != jb || !ja.contains("analytical") || !ja.contains("7946") {
        return fail("the devices did not converge on the merged contact");
    }
    if laptop.db.all_change_ids().await? != phone.db.all_change_ids().await? {
        return fail("the devices hold different change sets");
    }

    // 4. What the relay holds: everything, readable by nobody there.
    let ids = relay_db.all_change_ids().await?;
    let mut leaked = 0;
    for chunk in ids.chunks(256) {
        for c in relay_db.get_changes(chunk).await? {
            if [&b"Ada"[..], b"analytical", b"7946", b"note "]
                .iter()
                .any(|n| c.payload.windows(n.len()).any(|w| w == *n))
            {
                leaked += 1;
            }
        }
    }
    println!(
        "\n4. the relay stores {} changes ({} directory entries); plaintext found in {leaked} of them",
        ids.len(),
        relay_dir.head().await?.seq
    );
    if leaked > 0 {
        return fail("plaintext reached the relay");
    }

    // 5. Live: the phone is subscribed; the laptop edits; the change arrives.
    let mut live = phone.db.subscribe().await?;
    let t = Instant::now();
    let new_ids = laptop
        .contacts
        .update(&contact, put("note", "met at the Royal Society"))
        .await?;
    let mut arrived = 0;
    while arrived < new_ids.len() {
        match tokio::time::timeout(PATIENCE, live.next()).await {
            Ok(Some(Ok(m))) if new_ids.contains(&m.id) => arrived += 1,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) | Err(_) => return fail("the live update did not arrive"),
        }
    }
    let lat = t.elapsed();
    let now = phone.contacts.load(&contact).await?;
    println!(
        "\n5. live: the laptop's edit reached the phone in {lat:.1?}: {}",
        json(&now.doc)?
    );

    laptop.close().await;
    phone.close().await;
    server.shutdown().await;
    println!("\ndone in {:.1?}", started.elapsed());
    Ok(())
}
