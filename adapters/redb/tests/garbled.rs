//! Damaged and foreign files: opening returns a typed error, never panics,
//! and never serves damaged data as if it were intact.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::Path;

use cairn::{AppendOnlyStore, Change, Error};
use cairn_redb::{RedbOptions, RedbStore};
use common::{Rng, chain, doc, sid};

/// Build a real store with some history and return its changes.
async fn real_store(path: &Path) -> Vec<Change> {
    let store = RedbStore::open(path, sid()).await.unwrap();
    let mut all = Vec::new();
    for i in 0..20 {
        let batch = chain(&doc(&format!("d{}", i % 4)), 10, 200);
        store.append(batch.clone()).await.unwrap();
        all.extend(batch);
    }
    all
}

/// The errors a damaged file may produce.
fn typed(e: &Error) -> bool {
    matches!(
        e,
        Error::Corrupt { .. } | Error::Io(_) | Error::Backend { .. }
    )
}

/// What opening a damaged copy may do: fail with a typed error, or open and
/// then either serve exactly the original data or report it as corrupt.
/// Anything else (a panic, wrong data passing the check) fails the test.
async fn open_damaged(path: &Path, original: &[Change], verify: bool, what: &str) -> bool {
    let opts = RedbOptions::default().verify_on_open(verify);
    let store = match RedbStore::open_with(path, sid(), opts).await {
        Err(e) => {
            assert!(typed(&e), "{what}: unexpected error kind {e:?}");
            return false;
        }
        Ok(store) => store,
    };
    match store.check_consistency().await {
        Err(e) => {
            assert!(typed(&e), "{what}: {e:?}");
        }
        Ok(report) => {
            // It claims to be intact: then it must be exactly the original.
            assert_eq!(report.changes, original.len() as u64, "{what}");
            let ids: Vec<_> = original.iter().map(|c| c.id()).collect();
            match store.get_changes(&ids).await {
                Ok(got) => assert_eq!(
                    got, original,
                    "{what}: opened and passed the check but differs"
                ),
                Err(e) => assert!(typed(&e), "{what}: get_changes: {e:?}"),
            }
        }
    }
    true
}

#[tokio::test]
async fn garbage_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(cairn::random_u64());
    for (i, len) in [1usize, 7, 9, 100, 512, 4096, 5000, 65536, 1 << 20]
        .into_iter()
        .enumerate()
    {
        let path = dir.path().join(format!("garbage-{i}.redb"));
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let r = RedbStore::open(&path, sid()).await;
        assert!(
            matches!(r, Err(Error::Corrupt { .. }) | Err(Error::Io(_))),
            "{len}: {r:?}"
        );
    }
    let path = dir.path().join("text.redb");
    std::fs::write(&path, "this is not a database\n".repeat(100)).unwrap();
    assert!(RedbStore::open(&path, sid()).await.is_err());
    // A file starting with redb's magic number but garbage after it.
    let path = dir.path().join("magic.redb");
    let mut bytes = b"redb\x1A\x0A\xA9\x0D\x0A".to_vec();
    bytes.extend((0..8192).map(|_| rng.next() as u8));
    std::fs::write(&path, &bytes).unwrap();
    assert!(RedbStore::open(&path, sid()).await.is_err());
}

#[tokio::test]
async fn truncated_store_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("real.redb");
    let original = real_store(&path).await;
    let bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    let mut refused = 0;
    let cuts = [
        1,
        9,
        64,
        511,
        512,
        4095,
        4096,
        4097,
        8192,
        len / 4,
        len / 2,
        len - 4096,
        len - 1,
    ];
    for (i, cut) in cuts.into_iter().enumerate() {
        for verify in [false, true] {
            let p = dir.path().join(format!("cut-{i}-{verify}.redb"));
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let what = format!("truncated to {cut} of {len} (verify {verify})");
            if !open_damaged(&p, &original, verify, &what).await {
                refused += 1;
            }
        }
    }
    // Cutting into the committed data must be refused (the tail past the
    // last used page may be free space, so not every cut is).
    assert!(refused >= 2 * (cuts.len() - 2), "only {refused} refused");
}

#[tokio::test]
async fn flipped_bytes_never_panic_or_pass_as_intact() {
    flip_rounds(60).await;
}

#[tokio::test]
#[ignore = "stress test: run with --ignored"]
async fn stress_flipped_bytes() {
    flip_rounds(2000).await;
}

/// `rounds` copies of a real store with random bit flips. The seed is
/// printed; set `CAIRN_REDB_SEED` to replay one.
async fn flip_rounds(rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("real.redb");
    let original = real_store(&path).await;
    let bytes = std::fs::read(&path).unwrap();
    let seed = std::env::var("CAIRN_REDB_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(cairn::random_u64);
    eprintln!("flip seed {seed:#x}");
    let mut rng = Rng::new(seed);
    for i in 0..rounds {
        let mut damaged = bytes.clone();
        let flips = rng.range(1, 9);
        // Half the rounds hit the header pages, where redb keeps its roots.
        for _ in 0..flips {
            let at = if i % 2 == 0 {
                rng.range(0, 8192.min(damaged.len() as u64))
            } else {
                rng.range(0, damaged.len() as u64)
            } as usize;
            damaged[at] ^= 1 << rng.range(0, 8);
        }
        let verify = i % 3 == 0;
        let p = dir.path().join("flip.redb");
        std::fs::write(&p, &damaged).unwrap();
        open_damaged(
            &p,
            &original,
            verify,
            &format!("flip round {i} (verify {verify})"),
        )
        .await;
    }
}
