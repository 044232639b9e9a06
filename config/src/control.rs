//! The control socket protocol between `sitelinkd` and `sitelinkctl`.
//!
//! Transport: a Unix stream socket at [`crate::control_socket_path`]. Framing: one JSON
//! object per line. The client sends one [`Request`] line; the daemon answers with one
//! [`Response`] line and closes. Requests over [`MAX_REQUEST`] bytes, or not finished within
//! a few seconds, get an error response.
//!
//! Stability: the `show` result ([`Status`]) is the documented `sitelinkctl show --json`
//! schema. Fields are only ever added, never renamed or removed.

use serde::{Deserialize, Serialize};

/// Largest request line the daemon reads.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Interface and peer status.
    Show,
    /// Add a peer. Reply: a [`ChangeReply`].
    PeerAdd {
        peer: PeerArgs,
        #[serde(default)]
        save: bool,
    },
    /// Change fields of the peer named `name`. Reply: a [`ChangeReply`].
    PeerSet {
        name: String,
        changes: PeerChanges,
        #[serde(default)]
        save: bool,
    },
    /// Remove the peer with this name or base64 public key. Reply: a [`ChangeReply`].
    PeerRemove {
        peer: String,
        #[serde(default)]
        save: bool,
    },
    /// Re-read the config file and apply the difference. Reply: a [`ChangeReply`].
    Reload,
    /// Write the running peer set to the config file. Reply: a [`ChangeReply`].
    Save,
    /// Stream events: the reply is `{"ok":"events"}` and then one JSON object per line as
    /// they happen (see `daemon/src/events.rs`), until the client closes the connection.
    Events,
}

/// A new peer, as the operator typed it; the daemon parses and validates every field with
/// the config file's rules.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PeerArgs {
    pub name: String,
    pub public_key: String,
    pub allowed_ips: Vec<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub persistent_keepalive: Option<u16>,
    #[serde(default)]
    pub preshared_key_file: Option<String>,
}

/// Changes to a peer; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PeerChanges {
    pub rename: Option<String>,
    pub public_key: Option<String>,
    pub allowed_ips: Option<Vec<String>>,
    pub endpoint: Option<String>,
    pub clear_endpoint: bool,
    pub persistent_keepalive: Option<u16>,
    pub clear_persistent_keepalive: bool,
    pub preshared_key_file: Option<String>,
    pub clear_preshared_key: bool,
}

/// The reply to a change: a one-line summary, its parts, and the file written if saved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChangeReply {
    pub summary: String,
    pub details: serde_json::Value,
    pub saved: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    Ok { ok: serde_json::Value },
    Err { error: String },
}

/// `show`: the interface and its peers. Never contains private or preshared keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub interface: InterfaceStatus,
    pub peers: Vec<PeerStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InterfaceStatus {
    pub name: String,
    /// `null` while the interface has no private key (set up through the WireGuard UAPI
    /// without one); it then sends and answers no handshakes.
    pub public_key: Option<String>,
    pub listen_port: u16,
    pub addresses: Vec<String>,
    pub mtu: u16,
    /// The firewall mark on the tunnel's own UDP packets; `null` for none.
    #[serde(default)]
    pub fwmark: Option<u32>,
    /// Where routes go: `"auto"`, `"off"` or a table number.
    #[serde(default)]
    pub table: String,
    /// Packets the engine dropped, by reason (no_route, bad_source, unknown_key, ...).
    pub dropped: std::collections::BTreeMap<String, u64>,
    /// What became of handshake messages (they wait in their own queue, behind a gate).
    #[serde(default)]
    pub handshakes: HandshakeCounters,
    /// The config file the daemon loaded (`null` for an interface without one).
    #[serde(default)]
    pub config_path: Option<String>,
    /// One of an HA pair (`ha = "vrrp"`): its virtual address and whether this gateway is
    /// `active` (the address is here) or `standby`; `null` without HA.
    #[serde(default)]
    pub ha: Option<HaStatus>,
}

/// See [`InterfaceStatus::ha`]. `error` says why a gateway that has the address is not
/// active (its clock is behind the last handshake it sent).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HaStatus {
    pub address: String,
    pub state: String,
    #[serde(default)]
    pub error: Option<String>,
}

/// Handshake messages: queued for the handshake thread, dropped because the queue was full,
/// let through to a handshake, dropped for their source's rate, answered with a cookie reply
/// (under load), dropped because the cookie-reply budget was spent, invalid (bad mac1), or from
/// an unknown key.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HandshakeCounters {
    pub queued: u64,
    pub queue_full: u64,
    pub processed: u64,
    pub rate_limited: u64,
    pub cookie_replies: u64,
    pub cookie_budget_spent: u64,
    pub invalid: u64,
    /// Initiations from keys that are not our peers (opened, then dropped).
    #[serde(default)]
    pub unknown_key: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    pub name: String,
    pub public_key: String,
    /// `ip:port` or `[ip]:port`; `null` until known.
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// Unix seconds of the latest handshake; `null` if none yet.
    pub latest_handshake: Option<u64>,
    /// Bytes of WireGuard datagrams received from / sent to this peer.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Seconds; `null` when off.
    pub persistent_keepalive: Option<u16>,
    /// `up` (a handshake within 180 s), `connecting` (initiations sent, none answered yet),
    /// `down`, `no-endpoint`, `resolving` (its host name has not resolved yet).
    #[serde(default)]
    pub state: String,
    /// Initiations sent since the last completed handshake, and (unix seconds) since when.
    #[serde(default)]
    pub handshake_attempts: u32,
    #[serde(default)]
    pub trying_since: Option<u64>,
    /// What went wrong last; `null` if nothing has in this run.
    #[serde(default)]
    pub last_error: Option<LastError>,
    /// Where `endpoint` came from: `config`, `dns` or `learned` (the peer's own packets, or
    /// remembered from a previous run); `null` without one.
    #[serde(default)]
    pub endpoint_source: Option<String>,
    /// For a host-name endpoint: the name as configured (`host:port`), and when (unix
    /// seconds) it last resolved; `null` otherwise, or before the first resolution.
    #[serde(default)]
    pub endpoint_name: Option<String>,
    #[serde(default)]
    pub resolved_at: Option<u64>,
    /// Whether the peer is up for routing (`down-after`, `up-after`, `withdraw-when-down`).
    #[serde(default)]
    pub liveness: Option<PeerLiveness>,
}

/// A peer's state for routing: `up`, `hold-down` (a handshake, waiting `up-after`) or `down`,
/// since when (unix seconds), and whether its routes are withdrawn.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerLiveness {
    pub state: String,
    pub since: u64,
    pub withdrawn: bool,
}

/// A peer's last error: `reason` (`no-response`, `refused-by-us: replay or old timestamp`,
/// `refused-by-us: bad mac`, `dns: ...`), what to check (`hint`), the first and latest time of
/// this run of it (unix seconds) and how often it happened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastError {
    pub reason: String,
    #[serde(default)]
    pub hint: String,
    pub since: u64,
    pub at: u64,
    pub count: u64,
}
