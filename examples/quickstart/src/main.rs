//! Two devices' stores edited apart, then synced, with the report printed.
//!
//! `cargo run -p quickstart`

use std::sync::Arc;

use cairn::sync::sync;
use cairn::{
    AppendOnlyStore, AppendOnlyStoreExt, ChangeBuilder, ChangeKind, DocId, Keypair, StoreId,
    SyncEvent, SyncOptions, TrustedAuthors,
};
use cairn_memory::MemoryStore;

#[tokio::main]
async fn main() -> cairn::Result<()> {
    let store_id = StoreId::new("acme/contacts")?;
    let (alice, bob) = (Keypair::generate(), Keypair::generate());
    let laptop = MemoryStore::new(store_id.clone());
    let phone = MemoryStore::new(store_id.clone());

    // Both devices start from the same document...
    let doc = DocId::new("contact-ada")?;
    let create = ChangeBuilder::new(ChangeKind::Create, doc.clone())
        .payload(&b"{name: 'Ada'}"[..])
        .sign(&alice)?;
    laptop.append_one(create.clone()).await?;
    phone.append_one(create.clone()).await?;

    // ...then edit it while offline, concurrently.
    let on_laptop = ChangeBuilder::new(ChangeKind::Change, doc.clone())
        .deps([create.id()])
        .payload(&b"{email: 'ada@example.org'}"[..])
        .sign(&alice)?;
    laptop.append_one(on_laptop).await?;
    let on_phone = ChangeBuilder::new(ChangeKind::Change, doc.clone())
        .deps([create.id()])
        .payload(&b"{phone: '+44 20 7946 0000'}"[..])
        .sign(&bob)?;
    phone.append_one(on_phone).await?;
    for i in 0..1000 {
        let c = ChangeBuilder::new(ChangeKind::Create, DocId::new(format!("note-{i}"))?)
            .payload(vec![0u8; 1024])
            .sign(if i % 2 == 0 { &alice } else { &bob })?;
        if i % 2 == 0 {
            laptop.append_one(c).await?;
        } else {
            phone.append_one(c).await?;
        }
    }
    println!(
        "before: laptop holds {} changes, phone holds {}",
        laptop.len(),
        phone.len()
    );

    // Sync, accepting only signed changes from the two known authors.
    let opts = SyncOptions::default()
        .verifier(TrustedAuthors::new([alice.author(), bob.author()]))
        .on_progress(|ev| {
            if let SyncEvent::Finished {
                direction,
                transferred,
            } = ev
            {
                println!("  {direction}: {transferred} changes");
            }
        });
    let report = sync(&laptop, &phone, &opts).await?;
    println!("sync: {report}");
    println!(
        "after: laptop holds {} changes, phone holds {}",
        laptop.len(),
        phone.len()
    );
    assert_eq!(
        laptop.all_change_ids().await?,
        phone.all_change_ids().await?
    );

    // Load the document: both concurrent edits are there, in dependency order.
    let stores: [Arc<cairn::DynAppendOnlyStore>; 2] = [Arc::new(laptop), Arc::new(phone)];
    for (name, store) in ["laptop", "phone"].iter().zip(&stores) {
        let changes = store.load_doc(&doc).await?;
        let text: Vec<String> = changes
            .iter()
            .map(|c| String::from_utf8_lossy(&c.payload).into_owned())
            .collect();
        println!("{name} loads {doc}: {}", text.join(" + "));
    }

    // A second sync with the saved state examines only what changed since.
    let again = sync(
        stores[0].as_ref(),
        stores[1].as_ref(),
        &SyncOptions::default().resume(report.state),
    )
    .await?;
    println!(
        "re-sync: {} changes examined, {} transferred",
        again.pulled.examined + again.pushed.examined,
        again.pulled.changes + again.pushed.changes
    );
    Ok(())
}
