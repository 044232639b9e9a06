//! Rate limits for log lines caused by network input, so a flood of bad packets costs a
//! line every few seconds instead of filling the disk. Each line reports how many of its
//! kind were suppressed since the last one.

use std::sync::Mutex;
use std::time::Duration;

use crate::Instant;

const INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub(crate) enum LogKind {
    NoEndpoint,
    Encapsulate,
    Refused,
    UnknownKey,
    BadSource,
}

const KINDS: usize = 5;

/// Shared by the engine and the packet threads' fast path: a small lock, taken only for
/// packets that are refused.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: [Option<Instant>; KINDS],
    suppressed: [u64; KINDS],
}

impl LogLimiter {
    /// `Some(suppressed)` when a line of this kind may be logged now.
    pub(crate) fn allow(&self, kind: LogKind, now: Instant) -> Option<u64> {
        let k = kind as usize;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.last[k] {
            Some(t) if now < t + INTERVAL => {
                s.suppressed[k] += 1;
                None
            }
            _ => {
                s.last[k] = Some(now);
                Some(std::mem::take(&mut s.suppressed[k]))
            }
        }
    }
}
