//! When to connect again: a sans-IO reconnect state machine, and which
//! errors are worth retrying soon.

use std::time::{Duration, Instant};

use cairn::Error;

use crate::cache::Backoff;
use crate::peer::{ConnectionState, Refusal};

/// Whether an error from connecting to a peer, or from a session with it,
/// is a refusal that retrying cannot fix (`Some`) or a transient failure
/// (`None`: a lost path, a timeout, a busy or rate-limited peer).
///
/// ```
/// use cairn::Error;
/// use cairn_protocol::{Refusal, classify};
/// assert_eq!(classify(&Error::Closed), None);
/// assert_eq!(
///     classify(&Error::Unauthorized { reason: "not on the list".into() }),
///     Some(Refusal::Unauthorized)
/// );
/// ```
pub fn classify(e: &Error) -> Option<Refusal> {
    match e {
        Error::Unauthorized { .. } => Some(Refusal::Unauthorized),
        Error::NotFound { .. } => Some(Refusal::UnknownStore),
        Error::StoreMismatch { .. } => Some(Refusal::StoreMismatch),
        Error::UnsupportedVersion { .. } => Some(Refusal::Version),
        e if e.is_retryable() => None,
        _ => Some(Refusal::Other),
    }
}

/// A reconnect state machine with no clock and no I/O: the caller says
/// what happened and when; the dialer says when to try next and what state
/// to show.
///
/// - Transient failures back off exponentially ([`Backoff`]) up to the cap,
///   and the attempt count is never reset by a failure.
/// - A refusal ([`classify`]) waits the longest delay at once: a
///   configuration error is never retried in a tight loop.
/// - Only a session that stayed connected for at least the longest delay
///   counts as healthy and resets the count, so a peer that accepts and
///   then drops us at once is retried with backoff too.
///
/// ```
/// use std::time::{Duration, Instant};
/// use cairn_protocol::{Backoff, ConnectionState, Dialer};
/// let mut d = Dialer::new(Backoff { min: Duration::from_millis(50), max: Duration::from_secs(5) });
/// let t0 = Instant::now();
/// d.dialing();
/// let (at, state) = d.failed(t0, None);
/// assert_eq!(at, t0 + Duration::from_millis(50));
/// assert_eq!(state, ConnectionState::Retrying { attempt: 1, delay: Duration::from_millis(50) });
/// let (at, _) = d.failed(at, None);
/// assert_eq!(at, t0 + Duration::from_millis(150)); // 50, then 100
/// ```
#[derive(Debug, Clone)]
pub struct Dialer {
    backoff: Backoff,
    attempt: u32,
    connected_since: Option<Instant>,
}

impl Dialer {
    /// A dialer that has not tried yet.
    pub fn new(backoff: Backoff) -> Self {
        Dialer {
            backoff,
            attempt: 0,
            connected_since: None,
        }
    }

    /// An attempt starts: the state to show.
    pub fn dialing(&mut self) -> ConnectionState {
        self.connected_since = None;
        ConnectionState::Connecting
    }

    /// The attempt succeeded at `now`: the state to show.
    pub fn connected(&mut self, now: Instant) -> ConnectionState {
        self.connected_since = Some(now);
        ConnectionState::Connected
    }

    /// Failures since the last healthy session.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The attempt, or the session, failed at `now`, with `refusal` if the
    /// error was permanent ([`classify`]). Returns when to try again and
    /// the state to show until then.
    pub fn failed(&mut self, now: Instant, refusal: Option<Refusal>) -> (Instant, ConnectionState) {
        if let Some(since) = self.connected_since.take()
            && now.saturating_duration_since(since) >= self.backoff.max
        {
            self.attempt = 0;
        }
        self.attempt = self.attempt.saturating_add(1);
        match refusal {
            Some(reason) => {
                let delay = self.backoff.max;
                (
                    now + delay,
                    ConnectionState::Refused {
                        reason,
                        retry_in: delay,
                    },
                )
            }
            None => {
                let delay = self.backoff.delay(self.attempt);
                (
                    now + delay,
                    ConnectionState::Retrying {
                        attempt: self.attempt,
                        delay,
                    },
                )
            }
        }
    }

    /// The longest delay.
    pub fn max_delay(&self) -> Duration {
        self.backoff.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialer() -> Dialer {
        Dialer::new(Backoff {
            min: Duration::from_millis(10),
            max: Duration::from_secs(1),
        })
    }

    #[test]
    fn transient_failures_back_off_and_never_reset_on_failure() {
        let mut d = dialer();
        let mut now = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..10 {
            d.dialing();
            let (at, _) = d.failed(now, None);
            delays.push(at - now);
            now = at;
        }
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        // A session that connects and drops at once is a failure too: the
        // backoff keeps growing instead of starting over.
        d.dialing();
        d.connected(now);
        let (at, state) = d.failed(now + Duration::from_millis(5), None);
        assert_eq!(at - now, Duration::from_millis(1005));
        assert!(matches!(
            state,
            ConnectionState::Retrying { attempt: 11, .. }
        ));
    }

    #[test]
    fn a_healthy_session_resets_the_backoff() {
        let mut d = dialer();
        let now = Instant::now();
        for _ in 0..5 {
            d.failed(now, None);
        }
        d.connected(now);
        let later = now + Duration::from_secs(2);
        let (at, state) = d.failed(later, None);
        assert_eq!(at - later, Duration::from_millis(10));
        assert_eq!(
            state,
            ConnectionState::Retrying {
                attempt: 1,
                delay: Duration::from_millis(10)
            }
        );
    }

    #[test]
    fn a_refusal_waits_the_longest_delay_at_once() {
        let mut d = dialer();
        let now = Instant::now();
        let (at, state) = d.failed(now, Some(Refusal::Unauthorized));
        assert_eq!(at - now, Duration::from_secs(1));
        assert_eq!(
            state,
            ConnectionState::Refused {
                reason: Refusal::Unauthorized,
                retry_in: Duration::from_secs(1)
            }
        );
        // However often: never faster than the cap.
        let mut t = at;
        for _ in 0..100 {
            let (next, _) = d.failed(t, Some(Refusal::UnknownStore));
            assert_eq!(next - t, Duration::from_secs(1));
            t = next;
        }
    }

    #[test]
    fn classify_separates_refusals_from_transient_failures() {
        use cairn::StoreId;
        let sid = StoreId::new("a").unwrap();
        assert_eq!(
            classify(&Error::NotFound { what: "x".into() }),
            Some(Refusal::UnknownStore)
        );
        assert_eq!(
            classify(&Error::StoreMismatch {
                expected: sid.clone(),
                found: sid
            }),
            Some(Refusal::StoreMismatch)
        );
        assert_eq!(
            classify(&Error::UnsupportedVersion {
                what: "protocol",
                found: 1,
                supported: 2,
                hint: String::new()
            }),
            Some(Refusal::Version)
        );
        assert_eq!(
            classify(&Error::Protocol { reason: "x".into() }),
            Some(Refusal::Other)
        );
        assert_eq!(
            classify(&Error::Timeout {
                what: "x".into(),
                after: Duration::from_secs(1)
            }),
            None
        );
        assert_eq!(
            classify(&Error::RateLimited {
                what: "x".into(),
                retry_after: Duration::from_secs(1)
            }),
            None
        );
        assert_eq!(classify(&Error::backend("quic", true, "lost")), None);
        assert_eq!(
            classify(&Error::backend("quic", false, "tls")),
            Some(Refusal::Other)
        );
    }
}
