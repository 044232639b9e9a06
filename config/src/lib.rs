//! The sitelink configuration model: WireGuard keys, CIDRs, endpoints, interface names, and the
//! TOML config file that ties them together.
//!
//! This crate owns *what a valid configuration is*: every type here is parsed once
//! ("parse, don't validate") so the engine and daemon never re-check a key length or a prefix.
//! [`Config::load`] reads `/etc/sitelink/<name>.toml`, refuses key material that other users can
//! read, and reports every problem as `file:line:col: scope: key: what is wrong and how to fix it`.
//!
//! It also writes the running peer set back into the file ([`Config::save`], comments kept,
//! atomic) and holds the two local protocols' types ([`control`], [`uapi`]). It does not own
//! anything that happens after loading: no sockets, no TUN devices, no routes, no DNS
//! resolution at load time ([`Endpoint::resolve`] is called by the daemon when it wants), and
//! it never writes key files.
//!
//! ```toml
//! [interface]
//! name = "sl0"                                  # optional; default: the config file's stem
//! private-key-file = "/etc/sitelink/sl0.key"    # or: private-key = "<base64>"
//! listen-port = 51820                           # optional; random if absent
//! address = ["198.18.100.1/24", "fd18:100::1/64"]
//! mtu = 1420                                    # optional
//!
//! [[peer]]
//! name = "site-b"
//! public-key = "<base64>"
//! preshared-key-file = "/etc/sitelink/site-b.psk"   # optional (or preshared-key = "<base64>")
//! endpoint = "gw-b.example.net:51820"           # optional
//! allowed-ips = ["198.18.100.2/32", "198.19.2.0/24", "fd19:2::/64"]
//! persistent-keepalive = 25                     # optional, seconds
//! ```

// Tests may unwrap: a panic there is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cidr;
mod config;
pub mod control;
mod endpoint;
mod error;
mod index;
mod key;
mod name;
pub mod protocols;
pub mod save;
pub mod uapi;
pub mod wgquick;

use std::path::PathBuf;

pub use cidr::{Cidr, CidrError};
pub use config::{
    has_default_route, load_preshared_key_file, Config, Interface, MetricsListen, Peer, RouteTable,
    DEFAULT_MAX_THREADS, DEFAULT_ROUTE_PROTOCOL, DEFAULT_TABLE, DEFAULT_UP_AFTER, MAX_THREADS,
};
pub use endpoint::{Endpoint, EndpointError};
pub use error::ConfigError;
pub use index::{Delta, PeerIndex};
pub use key::{KeyError, PresharedKey, PrivateKey, PublicKey};
pub use name::{InterfaceName, InterfaceNameError};

/// The tunnel MTU used when the config does not set `mtu`: 1500 minus the 80 bytes of
/// WireGuard-over-IPv6 overhead, the same default as `wg-quick`.
pub const DEFAULT_MTU: u16 = 1420;

/// The environment variable that overrides [`run_dir`] (tests, unprivileged runs).
pub const RUN_DIR_ENV: &str = "SITELINK_RUN_DIR";

/// The directory for control sockets: `$SITELINK_RUN_DIR` if set and non-empty, else
/// `/run/sitelink`.
pub fn run_dir() -> PathBuf {
    match std::env::var_os(RUN_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from("/run/sitelink"),
    }
}

/// The control socket of one interface: `run_dir()/<name>.sock`.
pub fn control_socket_path(name: &InterfaceName) -> PathBuf {
    run_dir().join(format!("{name}.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_socket_is_named_after_the_interface() {
        // Only this test touches the variable, so there is no race with other tests.
        let name: InterfaceName = "sl0".parse().unwrap();
        std::env::set_var(RUN_DIR_ENV, "/tmp/sitelink-test-run");
        assert_eq!(
            control_socket_path(&name),
            PathBuf::from("/tmp/sitelink-test-run/sl0.sock")
        );
        std::env::remove_var(RUN_DIR_ENV);
        assert_eq!(run_dir(), PathBuf::from("/run/sitelink"));
        assert_eq!(
            control_socket_path(&name),
            PathBuf::from("/run/sitelink/sl0.sock")
        );
    }
}
