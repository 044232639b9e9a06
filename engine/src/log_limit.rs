//! Rate limits for log lines caused by network input, so a flood of bad packets costs a
//! line every few seconds instead of filling the disk. Each line reports how many of its
//! kind were suppressed since the last one.

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

#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    last: [Option<Instant>; KINDS],
    suppressed: [u64; KINDS],
}

impl LogLimiter {
    /// `Some(suppressed)` when a line of this kind may be logged now.
    pub(crate) fn allow(&mut self, kind: LogKind, now: Instant) -> Option<u64> {
        let k = kind as usize;
        match self.last[k] {
            Some(t) if now < t + INTERVAL => {
                self.suppressed[k] += 1;
                None
            }
            _ => {
                self.last[k] = Some(now);
                Some(std::mem::take(&mut self.suppressed[k]))
            }
        }
    }
}
