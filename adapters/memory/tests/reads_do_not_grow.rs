//! Reading a memory store does not grow it: every payload gets its shared
//! form when it is appended, not on its first read (a `Bytes` built from a
//! `Vec` allocates its reference count on its first clone, which made a
//! pull of a whole store look like it grew by 24 B a change).
//!
//! The only test in its binary: it counts the process's live heap.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
// The counting allocator must implement `GlobalAlloc`, which is unsafe; it
// only forwards to `System` and counts. No other code here is unsafe.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use cairn::{AppendOnlyStore, Change, ChangeBuilder, ChangeId, ChangeKind, DocId, StoreId};
use cairn_memory::MemoryStore;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            LIVE.fetch_add(l.size() as isize, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size() as isize, Ordering::SeqCst);
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn reading_every_change_leaves_the_heap_as_it_was() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = MemoryStore::new(StoreId::new("t/reads").unwrap());
        let n = 10_000usize;
        let changes: Vec<Change> = (0..n)
            .map(|i| {
                ChangeBuilder::new(ChangeKind::Change, DocId::new("d").unwrap())
                    .created_at(i as u64)
                    .payload(vec![(i % 251) as u8; 64])
                    .build()
                    .unwrap()
            })
            .collect();
        let ids: Vec<ChangeId> = changes.iter().map(Change::id).collect();
        store.append(changes).await.unwrap();
        let before = LIVE.load(Ordering::SeqCst);
        for chunk in ids.chunks(1000) {
            let got = store.get_changes(chunk).await.unwrap();
            assert_eq!(got.len(), chunk.len());
        }
        let grown = LIVE.load(Ordering::SeqCst) - before;
        // 24 B a change (240 KB here) when payloads were shared on first
        // read; allow a little for anything incidental.
        assert!(
            grown < 16 * 1024,
            "reading {n} changes grew the heap by {grown} bytes"
        );
    });
}
