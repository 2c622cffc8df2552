//! The on-disk layout: table definitions, key and value encodings, opening
//! or initialising a file, and the full consistency check.
//!
//! docs/redb.md describes the same layout for humans; keep them in step.

use std::collections::HashSet;

use cairn::{ChangeId, ChangeMeta, Digest, Error, Result, StoreId};
use redb::{
    AccessGuard, Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableError,
};

use crate::error::{corrupt, map};

/// The layout version this build writes and reads. Version 4 holds change
/// records of format v2 (ids that cover the signature); version 3 and older
/// hold format v1 records, which cannot be converted (their ids would
/// change), so they are refused with [`Error::UnsupportedVersion`].
pub(crate) const SCHEMA_VERSION: u32 = 4;

/// Marks a redb file as a Cairn store.
pub(crate) const FORMAT: &[u8] = b"cairn-redb";

/// id → seq (u64 big-endian, 8 bytes) ++ `cairn::encoding::encode_meta` record.
pub(crate) const CHANGES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("changes");
/// seq → payload bytes. Keyed by sequence number, not id, so appends write
/// payloads at the right edge of the tree instead of into random leaves.
pub(crate) const PAYLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("payloads");
/// seq → id: local arrival order, `1..=head` with no gaps; the last key is
/// the head sequence number.
pub(crate) const SEQS: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("seqs");
/// (doc id, seq) → id: the per-document index, in arrival order per document.
pub(crate) const DOCS: TableDefinition<(&str, u64), &[u8; 32]> = TableDefinition::new("docs");
/// bucket (the first 12 bits of an id, 0..4096) → `cairn::Fingerprint`
/// bytes (40) of the ids in that bucket, as of sequence `KEY_BUCKETS_SEQ`.
/// A checkpoint of the in-memory fingerprints: written with the append
/// that crosses every 10,000 changes and at close; on open, the ids after
/// the checkpoint are replayed from `seqs`.
pub(crate) const BUCKETS: TableDefinition<u16, &[u8]> = TableDefinition::new("buckets");
/// Store-wide values, see the `KEY_*` constants.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// `FORMAT`.
pub(crate) const KEY_FORMAT: &str = "format";
/// u32 big-endian.
pub(crate) const KEY_SCHEMA: &str = "schema_version";
/// UTF-8 store id.
pub(crate) const KEY_STORE_ID: &str = "store_id";
/// u64 big-endian, random at creation.
pub(crate) const KEY_EPOCH: &str = "epoch";
/// u64 big-endian: the sequence number the `buckets` table reflects.
pub(crate) const KEY_BUCKETS_SEQ: &str = "buckets_seq";
/// u64 big-endian, milliseconds since the Unix epoch, informational.
pub(crate) const KEY_CREATED_AT: &str = "created_at";

/// What `open_or_init` found.
pub(crate) struct Opened {
    pub(crate) epoch: u64,
    pub(crate) head: u64,
}

/// What an existing store file records about itself.
pub(crate) struct Existing {
    pub(crate) store_id: StoreId,
    pub(crate) opened: Opened,
}

/// Read (and check) the meta table, or initialise an empty redb file.
pub(crate) fn open_or_init(db: &Database, store_id: &StoreId) -> Result<Opened> {
    let rtx = db.begin_read().map_err(map)?;
    let Some(found) = read_existing(&rtx)? else {
        drop(rtx);
        return init(db, store_id);
    };
    if &found.store_id != store_id {
        return Err(Error::StoreMismatch {
            expected: store_id.clone(),
            found: found.store_id,
        });
    }
    Ok(found.opened)
}

/// Read (and check) the meta table of an existing store; `None` for a redb
/// database with no tables at all (a file redb just created).
pub(crate) fn read_existing(rtx: &ReadTransaction) -> Result<Option<Existing>> {
    let meta = match rtx.open_table(META) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => {
            let tables = rtx.list_tables().map_err(map)?.count()
                + rtx.list_multimap_tables().map_err(map)?.count();
            if tables > 0 {
                return Err(corrupt(
                    "a redb database without cairn's `meta` table: not a Cairn store",
                ));
            }
            return Ok(None);
        }
        Err(e) => return Err(map(e)),
    };
    let get = |key: &str| -> Result<Vec<u8>> {
        meta.get(key)
            .map_err(map)?
            .map(|v| v.value().to_vec())
            .ok_or_else(|| corrupt(format!("meta table lacks `{key}`: not a Cairn store")))
    };
    let format = get(KEY_FORMAT)?;
    if format != FORMAT {
        return Err(corrupt(format!(
            "format marker is {:?}, expected {:?}: not a Cairn store",
            String::from_utf8_lossy(&format),
            String::from_utf8_lossy(FORMAT)
        )));
    }
    let version = u32::from_be_bytes(
        get(KEY_SCHEMA)?
            .try_into()
            .map_err(|_| corrupt("schema version is not 4 bytes"))?,
    );
    if version != SCHEMA_VERSION {
        return Err(Error::UnsupportedVersion {
            what: "cairn-redb file",
            found: version,
            supported: SCHEMA_VERSION,
            hint: if version < SCHEMA_VERSION {
                "it holds format v1 changes, whose ids do not cover their signatures and \
                 cannot be converted; move it aside and sync a new file from a peer that runs \
                 this version"
            } else {
                "it was written by a newer cairn-redb; upgrade to open it"
            }
            .to_owned(),
        });
    }
    let stored = String::from_utf8(get(KEY_STORE_ID)?)
        .ok()
        .and_then(|s| StoreId::new(s).ok())
        .ok_or_else(|| corrupt("stored store id is not a valid store id"))?;
    let epoch = be_u64(&get(KEY_EPOCH)?, "epoch")?;

    // Cheap structural checks (redb keeps table lengths in the tree headers,
    // and `last` walks one path): catch a file that is not what it claims
    // without scanning it.
    let changes = rtx.open_table(CHANGES).map_err(map)?;
    let payloads = rtx.open_table(PAYLOADS).map_err(map)?;
    let seqs = rtx.open_table(SEQS).map_err(map)?;
    let docs = rtx.open_table(DOCS).map_err(map)?;
    let head = last_seq(&seqs)?;
    let lens = [
        ("changes", changes.len().map_err(map)?),
        ("payloads", payloads.len().map_err(map)?),
        ("seqs", seqs.len().map_err(map)?),
        ("docs", docs.len().map_err(map)?),
    ];
    for (name, len) in lens {
        if len != head {
            return Err(corrupt(format!(
                "table `{name}` holds {len} entries but the last sequence number is {head}"
            )));
        }
    }
    Ok(Some(Existing {
        store_id: stored,
        opened: Opened { epoch, head },
    }))
}

fn init(db: &Database, store_id: &StoreId) -> Result<Opened> {
    let epoch = cairn::random_u64();
    let mut wtx = db.begin_write().map_err(map)?;
    // Creation is always durable, whatever the store's append durability.
    wtx.set_durability(Durability::Immediate).map_err(map)?;
    {
        wtx.open_table(CHANGES).map_err(map)?;
        wtx.open_table(PAYLOADS).map_err(map)?;
        wtx.open_table(SEQS).map_err(map)?;
        wtx.open_table(DOCS).map_err(map)?;
        wtx.open_table(BUCKETS).map_err(map)?;
        let mut meta = wtx.open_table(META).map_err(map)?;
        meta.insert(KEY_FORMAT, FORMAT).map_err(map)?;
        meta.insert(KEY_SCHEMA, &SCHEMA_VERSION.to_be_bytes()[..])
            .map_err(map)?;
        meta.insert(KEY_STORE_ID, store_id.as_str().as_bytes())
            .map_err(map)?;
        meta.insert(KEY_EPOCH, &epoch.to_be_bytes()[..])
            .map_err(map)?;
        meta.insert(KEY_BUCKETS_SEQ, &0u64.to_be_bytes()[..])
            .map_err(map)?;
        meta.insert(KEY_CREATED_AT, &cairn::now_millis().to_be_bytes()[..])
            .map_err(map)?;
    }
    wtx.commit().map_err(map)?;
    Ok(Opened { epoch, head: 0 })
}

/// The head sequence number: the last key of `seqs`, 0 when empty.
fn last_seq<T: ReadableTable<u64, &'static [u8; 32]>>(seqs: &T) -> Result<u64> {
    Ok(seqs.last().map_err(map)?.map_or(0, |(k, _)| k.value()))
}

fn be_u64(b: &[u8], what: &str) -> Result<u64> {
    let arr: [u8; 8] = b
        .try_into()
        .map_err(|_| corrupt(format!("{what} is not 8 bytes")))?;
    Ok(u64::from_be_bytes(arr))
}

/// Encode a `CHANGES` value into `out` (cleared first, so the writer reuses
/// one buffer).
pub(crate) fn encode_change_value(seq: u64, meta: &ChangeMeta, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&cairn::encoding::encode_meta(meta));
}

/// Decode a `CHANGES` value stored under `key`; the id is recomputed and
/// must match the key.
pub(crate) fn decode_change_value(key: &[u8; 32], value: &[u8]) -> Result<(u64, ChangeMeta)> {
    if value.len() < 8 {
        return Err(corrupt(format!(
            "change record of {} is {} bytes",
            ChangeId::from_bytes(*key),
            value.len()
        )));
    }
    let seq = be_u64(&value[..8], "change sequence")?;
    let meta = cairn::encoding::decode_meta(&value[8..]).map_err(|e| {
        corrupt(format!(
            "change record of {}: {e}",
            ChangeId::from_bytes(*key)
        ))
    })?;
    if meta.id.as_bytes() != key {
        return Err(corrupt(format!(
            "change stored under {} hashes to {}",
            ChangeId::from_bytes(*key),
            meta.id
        )));
    }
    Ok((seq, meta))
}

/// The payload stored at `seq` for `meta`, checked against its length and
/// hash.
pub(crate) fn verified_payload<'a, T: ReadableTable<u64, &'static [u8]>>(
    payloads: &'a T,
    seq: u64,
    meta: &ChangeMeta,
) -> Result<AccessGuard<'a, &'static [u8]>> {
    let payload = payloads
        .get(seq)
        .map_err(map)?
        .ok_or_else(|| corrupt(format!("payload of {} is missing", meta.id)))?;
    let bytes = payload.value();
    if bytes.len() as u64 != meta.payload_len || Digest::of(bytes) != meta.payload_hash {
        return Err(corrupt(format!(
            "payload of {} does not match its hash",
            meta.id
        )));
    }
    Ok(payload)
}

/// What [`RedbStore::check_consistency`](crate::RedbStore::check_consistency)
/// verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ConsistencyReport {
    /// Changes held (= the head sequence number).
    pub changes: u64,
    /// Distinct documents.
    pub docs: u64,
    /// Sum of payload lengths.
    pub payload_bytes: u64,
    /// The head sequence number (the last key of the `seqs` table).
    pub head_seq: u64,
}

/// Check every invariant of the layout in one read transaction.
pub(crate) fn check(
    rtx: &ReadTransaction,
) -> Result<(ConsistencyReport, cairn::FingerprintBuckets)> {
    let changes = rtx.open_table(CHANGES).map_err(map)?;
    let payloads = rtx.open_table(PAYLOADS).map_err(map)?;
    let seqs = rtx.open_table(SEQS).map_err(map)?;
    let docs = rtx.open_table(DOCS).map_err(map)?;
    let head = last_seq(&seqs)?;

    let mut report = ConsistencyReport {
        head_seq: head,
        ..ConsistencyReport::default()
    };
    let mut doc_names = HashSet::new();
    let mut want = cairn::FingerprintBuckets::default();
    // Every seq 1..=head points to a change that records the same seq, whose
    // id matches its header, whose payload verifies, and that is indexed
    // under its document.
    for (expect, entry) in (1u64..).zip(seqs.range(1u64..).map_err(map)?) {
        let (k, v) = entry.map_err(map)?;
        let (seq, id) = (k.value(), *v.value());
        if seq != expect {
            return Err(corrupt(format!(
                "sequence gap: found {seq}, expected {expect}"
            )));
        }
        let value = changes.get(&id).map_err(map)?.ok_or_else(|| {
            corrupt(format!(
                "seq {seq} points to {} which is not stored",
                ChangeId::from_bytes(id)
            ))
        })?;
        let (stored_seq, meta) = decode_change_value(&id, value.value())?;
        if stored_seq != seq {
            return Err(corrupt(format!(
                "{} records seq {stored_seq} but seq {seq} points to it",
                meta.id
            )));
        }
        verified_payload(&payloads, seq, &meta)?;
        report.payload_bytes += meta.payload_len;
        let indexed = docs
            .get((meta.doc_id.as_str(), seq))
            .map_err(map)?
            .map(|v| *v.value());
        if indexed != Some(id) {
            return Err(corrupt(format!(
                "doc index lacks {} (doc {}, seq {seq})",
                meta.id, meta.doc_id
            )));
        }
        if !doc_names.contains(meta.doc_id.as_str()) {
            doc_names.insert(meta.doc_id.as_str().to_owned());
        }
        want.add(&meta.id);
        report.changes += 1;
    }
    if report.changes != head {
        return Err(corrupt(format!(
            "{} sequence entries but the last sequence number is {head}",
            report.changes
        )));
    }
    for (name, len) in [
        ("changes", changes.len().map_err(map)?),
        ("payloads", payloads.len().map_err(map)?),
        ("seqs", seqs.len().map_err(map)?),
        ("docs", docs.len().map_err(map)?),
    ] {
        if len != head {
            return Err(corrupt(format!(
                "table `{name}` holds {len} entries but the last sequence number is {head}"
            )));
        }
    }
    // Same count and every change indexed under (its doc, its seq): the doc
    // index holds nothing else, since its keys are unique.
    report.docs = doc_names.len() as u64;
    // The bucket checkpoint plus replay agrees with the ids. `want` was
    // built in the walk above: each seq's change records that seq, so the
    // ids are distinct, and there are as many as `changes` holds, so they
    // are exactly its keys.
    if load_buckets(rtx, head)?.buckets != want {
        return Err(corrupt("bucket fingerprints disagree with the stored ids"));
    }
    Ok((report, want))
}

/// Decode one `BUCKETS` value.
pub(crate) fn decode_bucket(bytes: &[u8]) -> Result<cairn::Fingerprint> {
    let arr: &[u8; 40] = bytes.try_into().map_err(|_| {
        corrupt(format!(
            "bucket fingerprint is {} bytes, not 40",
            bytes.len()
        ))
    })?;
    Ok(cairn::Fingerprint::from_bytes(arr))
}

/// Bucket fingerprints loaded by [`load_buckets`].
pub(crate) struct LoadedBuckets {
    /// As of the head.
    pub(crate) buckets: cairn::FingerprintBuckets,
    /// Buckets that differ from the checkpoint (the replayed ids' buckets).
    pub(crate) dirty: std::collections::BTreeSet<u16>,
    /// Ids replayed after the checkpoint.
    pub(crate) replayed: u64,
}

/// The bucket fingerprints as of `head`: the checkpoint in `buckets`, plus
/// the ids appended after it, replayed from `seqs` (bounded by the
/// checkpoint interval, not the store). Also says what the replay changed,
/// so the writer's next checkpoint includes it.
pub(crate) fn load_buckets(rtx: &ReadTransaction, head: u64) -> Result<LoadedBuckets> {
    let meta = rtx.open_table(META).map_err(map)?;
    let at = meta
        .get(KEY_BUCKETS_SEQ)
        .map_err(map)?
        .map(|v| be_u64(v.value(), "buckets seq"))
        .transpose()?
        .ok_or_else(|| corrupt("meta table lacks the buckets checkpoint"))?;
    if at > head {
        return Err(corrupt(format!(
            "bucket checkpoint at seq {at} is past the head {head}"
        )));
    }
    let table = rtx.open_table(BUCKETS).map_err(map)?;
    let mut out = cairn::FingerprintBuckets::default();
    for entry in table.iter().map_err(map)? {
        let (k, v) = entry.map_err(map)?;
        out.set(usize::from(k.value()), decode_bucket(v.value())?);
    }
    let seqs = rtx.open_table(SEQS).map_err(map)?;
    let mut dirty = std::collections::BTreeSet::new();
    let mut replayed = 0;
    for entry in seqs.range(at + 1..=head).map_err(map)? {
        let id = ChangeId::from_bytes(*entry.map_err(map)?.1.value());
        out.add(&id);
        dirty.insert(cairn::FingerprintBuckets::bucket_of(&id) as u16);
        replayed += 1;
    }
    Ok(LoadedBuckets {
        buckets: out,
        dirty,
        replayed,
    })
}
