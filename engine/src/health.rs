//! Why a link is not up: each peer's state and the last thing that went wrong, kept as it
//! happens, so `show` can answer what WireGuard leaves silent ("latest handshake: (none)").
//!
//! Owns: the per-peer record (handshake attempts since the last success and since when, the
//! last error with how often and since when, where the endpoint came from) and the rules that
//! turn it into a [`LinkState`]. Doesn't own: the events themselves (the engine calls in when
//! it sends an initiation, completes a handshake or refuses a packet) or the states only the
//! daemon knows (an endpoint host name still resolving, DNS and send errors: it reports those
//! through [`crate::Engine::note_error`]).

use std::time::Duration;

use crate::Instant;

/// A session younger than this is up (WireGuard's REJECT_AFTER_TIME: older keys are dead).
pub const UP_WITHIN: Duration = Duration::from_secs(180);

/// What a peer's link is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// A handshake within the last 180 s, and no handshake retries since.
    Up,
    /// Initiations sent since the last handshake (or none ever), none answered yet.
    Connecting,
    /// No session, nothing being tried (an on-demand link with no traffic).
    Down,
    /// Nowhere to send: no endpoint configured or learned.
    NoEndpoint,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Up => "up",
            LinkState::Connecting => "connecting",
            LinkState::Down => "down",
            LinkState::NoEndpoint => "no-endpoint",
        }
    }
}

/// Where a peer's endpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointSource {
    /// An address in the configuration.
    Config,
    /// A host name in the configuration, resolved.
    Dns,
    /// The peer's own authenticated packets (roaming), or remembered from a previous run.
    Learned,
}

impl EndpointSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointSource::Config => "config",
            EndpointSource::Dns => "dns",
            EndpointSource::Learned => "learned",
        }
    }
}

/// Something that went wrong with a peer's link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Our initiations went unanswered.
    NoResponse,
    /// We refused its handshake: its timestamp was not newer than the last one (its clock went
    /// back, or a replay).
    OldTimestamp,
    /// We refused a message for a bad MAC or one that did not decrypt (a handshake response
    /// that does not open usually means the preshared keys differ).
    BadMac,
    /// A datagram for this peer came from outside its `allowed-endpoints`.
    SourceNotAllowed,
    /// Reported by the daemon: a DNS failure, a send error.
    Other(String),
}

impl Reason {
    /// The text `show` prints and `last_error.reason` holds.
    pub fn text(&self) -> String {
        match self {
            Reason::NoResponse => "no-response".into(),
            Reason::OldTimestamp => "refused-by-us: replay or old timestamp".into(),
            Reason::BadMac => "refused-by-us: bad mac".into(),
            Reason::SourceNotAllowed => "refused-by-us: source address not allowed".into(),
            Reason::Other(s) => s.clone(),
        }
    }

    /// What to check, for the human output and `doctor`.
    pub fn hint(&self) -> &'static str {
        match self {
            Reason::NoResponse => {
                "the peer does not answer: does it have our public key, and is its UDP port reachable?"
            }
            Reason::OldTimestamp => {
                "the peer's clock is behind the last handshake it sent (or this was a replay): check NTP on the peer"
            }
            Reason::BadMac => {
                "its messages do not authenticate: check the preshared key on both sides"
            }
            Reason::SourceNotAllowed => {
                "its packets come from an address outside allowed-endpoints: if the peer really moved, add its new address there"
            }
            Reason::Other(_) => "",
        }
    }
}

impl Reason {
    /// The `reason` label of `sitelink_peer_handshake_failures_total`: a short fixed word,
    /// never the free text of a DNS or send error (labels must have few values).
    pub fn label(&self) -> &'static str {
        match self {
            Reason::NoResponse => "no_response",
            Reason::OldTimestamp => "old_timestamp",
            Reason::BadMac => "bad_mac",
            Reason::SourceNotAllowed => "source_not_allowed",
            Reason::Other(text) if text.starts_with("dns:") => "dns",
            Reason::Other(text) if text.starts_with("send:") => "send",
            Reason::Other(_) => "other",
        }
    }
}

/// Every `reason` label, in the order [`Failures`] keeps them.
pub const FAILURE_LABELS: [&str; 7] = [
    "no_response",
    "old_timestamp",
    "bad_mac",
    "source_not_allowed",
    "dns",
    "send",
    "other",
];

/// How often each kind of failure happened to a peer since it was added (counters only go
/// up: what Prometheus' `_total` needs; `last_error` says what is happening now).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failures([u64; FAILURE_LABELS.len()]);

impl Failures {
    fn add(&mut self, reason: &Reason, n: u64) {
        let label = reason.label();
        if let Some(i) = FAILURE_LABELS.iter().position(|l| *l == label) {
            self.0[i] = self.0[i].saturating_add(n);
        }
    }

    /// `(label, count)` for every kind, zeros included (a series that exists from the start).
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        FAILURE_LABELS.iter().copied().zip(self.0.iter().copied())
    }
}

/// The last error: what, when first and last in this run of it, how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    pub reason: Reason,
    pub since: Instant,
    pub at: Instant,
    pub count: u64,
}

/// A peer's health record.
#[derive(Debug, Clone)]
pub struct Health {
    /// Initiations sent since the last completed handshake.
    pub attempts: u32,
    /// When the first of them was sent.
    pub trying_since: Option<Instant>,
    pub last_error: Option<LastError>,
    pub endpoint_source: Option<EndpointSource>,
    pub failures: Failures,
    /// When we last sent it an initiation (its TAI64N timestamp is the wall clock then).
    pub last_initiation: Option<Instant>,
}

/// Authenticated traffic this recent shows a session working even while a rekey goes
/// unanswered (KEEPALIVE_TIMEOUT + REKEY_TIMEOUT: a live peer sends within this).
pub const ALIVE_WITHIN: Duration = Duration::from_secs(15);

impl Health {
    pub fn new(endpoint_source: Option<EndpointSource>) -> Self {
        Self {
            attempts: 0,
            trying_since: None,
            last_error: None,
            endpoint_source,
            failures: Failures::default(),
            last_initiation: None,
        }
    }

    /// We sent an initiation. One sent while an earlier one is unanswered means that one went
    /// unanswered: a `no-response` error, counting the unanswered initiations.
    pub fn initiation_sent(&mut self, now: Instant) {
        if self.attempts > 0 {
            let since = self.trying_since.unwrap_or(now);
            let count = u64::from(self.attempts);
            self.last_error = Some(LastError {
                reason: Reason::NoResponse,
                since,
                at: now,
                count,
            });
            self.failures.add(&Reason::NoResponse, 1);
        }
        self.attempts = self.attempts.saturating_add(1);
        self.trying_since.get_or_insert(now);
        self.last_initiation = Some(now);
    }

    /// A handshake completed (either direction).
    pub fn handshake_completed(&mut self) {
        self.attempts = 0;
        self.trying_since = None;
    }

    /// Something went wrong: a repeat of the last error counts up, another one replaces it.
    pub fn error(&mut self, reason: Reason, now: Instant) {
        self.failures.add(&reason, 1);
        match &mut self.last_error {
            Some(e) if e.reason == reason => {
                e.at = now;
                e.count += 1;
            }
            other => {
                *other = Some(LastError {
                    reason,
                    since: now,
                    at: now,
                    count: 1,
                })
            }
        }
    }

    /// The link's state at `now`, given what the rest of the peer record says (and when
    /// its last authenticated datagram arrived: the lane's traffic).
    pub fn state(
        &self,
        now: Instant,
        has_endpoint: bool,
        handshake_age: Option<Duration>,
        has_session: bool,
        last_received: Option<Instant>,
    ) -> LinkState {
        // A rekey that is answered has one attempt outstanding for a round trip. Retries (two
        // or more unanswered) mean the peer does not answer, unless its traffic still arrives
        // (a lost response while data flows).
        let answering = self.attempts < 2
            || last_received.is_some_and(|t| now.saturating_duration_since(t) < ALIVE_WITHIN);
        if has_session && handshake_age.is_some_and(|age| age < UP_WITHIN) && answering {
            return LinkState::Up;
        }
        if !has_endpoint {
            return LinkState::NoEndpoint;
        }
        if self.attempts > 0 {
            LinkState::Connecting
        } else {
            LinkState::Down
        }
    }
}
