//! Live updates: how a store learns that another process appended.
//!
//! Each [`PostgresDb`](crate::PostgresDb) runs one background task. With
//! [`LiveUpdates::Listen`] it holds one dedicated connection that `LISTEN`s
//! on the schema's channel; an append's transaction calls `pg_notify` with
//! `"<store_key> <head>"`, delivered at commit. With [`LiveUpdates::Poll`]
//! it reads the heads of the stores it has open at an interval instead, for
//! engines without `LISTEN`. Either way the task only publishes heads to
//! each store's [`SeqWatch`]; subscribers then scan from their own cursor
//! ([`cairn::tail`]), so a lost or merged notification never loses a change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use cairn::tail::SeqWatch;
use deadpool_postgres::Pool;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::schema::Sql;

/// How a store learns of appends made through other connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LiveUpdates {
    /// `LISTEN`/`NOTIFY` on one dedicated connection per
    /// [`PostgresDb`](crate::PostgresDb). The default.
    #[default]
    Listen,
    /// Read the heads of the open stores every interval (one small query
    /// per interval for all of them): for engines without `LISTEN`, such as
    /// CockroachDB. Appends through the same `PostgresDb` are still seen at
    /// once.
    Poll(Duration),
}

/// The stores a `PostgresDb` has open, by store key.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    watches: Mutex<HashMap<i64, Weak<SeqWatch>>>,
}

impl Registry {
    /// The watch for `key`, shared by every handle of that store, made
    /// (starting at `head`) if none is alive.
    pub(crate) fn watch(&self, key: i64, head: u64) -> Arc<SeqWatch> {
        let mut map = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(w) = map.get(&key).and_then(Weak::upgrade) {
            w.publish(head);
            return w;
        }
        let w = Arc::new(SeqWatch::new(head));
        map.insert(key, Arc::downgrade(&w));
        w
    }

    fn publish(&self, key: i64, head: u64) {
        let w = {
            let map = self.watches.lock().unwrap_or_else(|e| e.into_inner());
            map.get(&key).and_then(Weak::upgrade)
        };
        if let Some(w) = w {
            w.publish(head);
        }
    }

    fn keys(&self) -> Vec<i64> {
        let map = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|(_, w)| w.strong_count() > 0)
            .map(|(k, _)| *k)
            .collect()
    }
}

/// Read the committed head of every open store and publish it: after a
/// (re)connect, so notifications missed meanwhile cost nothing.
async fn refresh(pool: &Pool, sql: &Sql, registry: &Registry) -> Result<(), String> {
    let keys = registry.keys();
    if keys.is_empty() {
        return Ok(());
    }
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let rows = client
        .query(&sql.heads, &[&keys])
        .await
        .map_err(|e| e.to_string())?;
    for row in rows {
        let key: i64 = row.try_get(0).map_err(|e| e.to_string())?;
        let head: i64 = row.try_get(1).map_err(|e| e.to_string())?;
        registry.publish(key, u64::try_from(head).unwrap_or(0));
    }
    Ok(())
}

/// Parse a notification payload, `"<store_key> <head>"`.
pub(crate) fn parse_payload(payload: &str) -> Option<(i64, u64)> {
    let (k, h) = payload.split_once(' ')?;
    Some((k.parse().ok()?, h.parse().ok()?))
}

/// The background task for [`LiveUpdates::Listen`]: listen, and on any
/// failure reconnect with a capped backoff. Ends when the registry is gone.
pub(crate) async fn listen(
    config: tokio_postgres::Config,
    pool: Pool,
    sql: Arc<Sql>,
    registry: Weak<Registry>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if registry.strong_count() == 0 {
            return;
        }
        match listen_once(&config, &pool, &sql, &registry).await {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(error = %e, "cairn-postgres listener lost its connection; reconnecting");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One listening connection's life. `Ok` means the registry is gone.
async fn listen_once(
    config: &tokio_postgres::Config,
    pool: &Pool,
    sql: &Sql,
    registry: &Weak<Registry>,
) -> Result<(), String> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "cairn-postgres listener connection failed");
                    return;
                }
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN \"{}\"", sql.channel))
            .await
            .map_err(|e| e.to_string())?;
        // Listening now: anything committed from here on is notified, and
        // anything before is read here.
        if let Some(reg) = registry.upgrade() {
            refresh(pool, sql, &reg).await?;
        }
        loop {
            let Some(payload) = rx.recv().await else {
                return Err("listener connection closed".to_owned());
            };
            let Some(reg) = registry.upgrade() else {
                return Ok(());
            };
            match parse_payload(&payload) {
                Some((key, head)) => reg.publish(key, head),
                None => tracing::warn!(payload, "ignoring a malformed cairn notification"),
            }
        }
    }
    .await;
    driver.abort();
    result
}

/// The background task for [`LiveUpdates::Poll`].
pub(crate) async fn poll(pool: Pool, sql: Arc<Sql>, registry: Weak<Registry>, every: Duration) {
    let every = every.max(Duration::from_millis(1));
    loop {
        tokio::time::sleep(every).await;
        let Some(reg) = registry.upgrade() else {
            return;
        };
        if let Err(e) = refresh(&pool, &sql, &reg).await {
            tracing::debug!(error = %e, "cairn-postgres poll failed; trying again next interval");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_or_are_refused() {
        assert_eq!(parse_payload("7 42"), Some((7, 42)));
        for bad in ["", "7", "7 ", " 42", "x 1", "1 -1", "1 2 3"] {
            assert_eq!(parse_payload(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn handles_of_one_store_share_a_watch() {
        let reg = Registry::default();
        let a = reg.watch(1, 3);
        let b = reg.watch(1, 5);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.current(), 5);
        reg.publish(1, 9);
        assert_eq!(b.current(), 9);
        drop((a, b));
        assert!(reg.keys().is_empty());
    }
}
