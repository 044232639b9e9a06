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
    pub public_key: String,
    pub listen_port: u16,
    pub addresses: Vec<String>,
    pub mtu: u16,
    /// Packets the engine dropped, by reason (no_route, bad_source, unknown_key, ...).
    pub dropped: std::collections::BTreeMap<String, u64>,
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
}
