//! The config file: TOML text in, a validated [`Config`] out.
//!
//! Loading happens in three steps. (1) toml parses the text into `Raw*` structs whose every
//! field is [`Spanned`], with `deny_unknown_fields`; syntax and structure errors are reworded
//! by [`Source`]. (2) Each raw value is parsed into its domain type ([`PublicKey`], [`Cidr`],
//! ...) and range-checked, with the span of the value for the error. (3) Cross-checks that need
//! the whole file: unique peer names and keys, no peer using our own key, no allowed-ips shared
//! by two peers.
//!
//! [`Config::validate`] runs the same checks on a value built in memory (a live change: a peer
//! added over the control socket, a WireGuard UAPI `set`), through the same `check_*` functions,
//! so a rule is written once; only the way the error is located differs (a line in the file, or
//! the peer and key of the change).
//!
//! Key files are read here (relative paths resolve against the config file's directory) and
//! refused if group or others may read them, like sshd does with host keys. Nothing here
//! touches the network. Writing the config back is `save.rs`.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read};
use std::net::IpAddr;
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use foldhash::HashMap;
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;
use zeroize::Zeroizing;

use crate::error::{describe, ConfigError, Scope, Source};
use crate::{
    Cidr, Endpoint, InterfaceName, KeyError, PresharedKey, PrivateKey, PublicKey, DEFAULT_MTU,
};

/// A validated configuration: one interface and its peers.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from, as given to [`Config::load`] or [`Config::parse`].
    pub path: PathBuf,
    /// The `[interface]` table.
    pub interface: Interface,
    /// The `[[peer]]` tables, in file order. May be empty. Shared (`Arc`): a change copies
    /// the list, not the peers, so peers it leaves alone stay the same allocation — which is
    /// also how the daemon tells them unchanged without comparing them.
    pub peers: Vec<Arc<Peer>>,
}

/// The local end: `[interface]`.
#[derive(Debug, Clone)]
pub struct Interface {
    /// `name`, or the config file's stem when absent.
    pub name: InterfaceName,
    /// From `private-key-file` (relative to the config file's directory) or `private-key`.
    /// Always `Some` for a config file; `None` only for a live interface set up without a key
    /// (WireGuard UAPI `private_key` all zero), which then sends and answers no handshakes.
    pub private_key: Option<PrivateKey>,
    /// `listen-port` (1-65535); `None` lets the OS pick.
    pub listen_port: Option<u16>,
    /// `address`: the interface's own addresses, host bits included. May be empty.
    pub addresses: Vec<Cidr>,
    /// `mtu`, default [`DEFAULT_MTU`]; 576-65535, and at least 1280 with an IPv6 address.
    pub mtu: u16,
    /// `control-group`: a group whose members may use the control and UAPI sockets
    /// (default: root only).
    pub control_group: Option<String>,
    /// `user`: the account sitelinkd switches to after creating the interface when started
    /// as root (keeping only CAP_NET_ADMIN).
    pub user: Option<String>,
    /// `fwmark`: the firewall mark on the tunnel's own UDP packets (`None`: no mark). With
    /// `table = "auto"` and a default route, [`DEFAULT_TABLE`] is used when none is set.
    pub fwmark: Option<u32>,
    /// `table`: where the routes for allowed-ips go.
    pub table: RouteTable,
    /// `metrics-listen`: where Prometheus metrics are served (`None`, the default: nowhere).
    pub metrics_listen: Option<MetricsListen>,
    /// `resolve-interval`: seconds between resolutions of host-name endpoints (1-86400,
    /// default [`DEFAULT_RESOLVE_INTERVAL`]).
    pub resolve_interval: u32,
    /// `mss-clamp` (default true): TCP SYNs through the tunnel get an MSS that fits `mtu`.
    pub mss_clamp: bool,
    /// `route-protocol`: the protocol number on every route sitelinkd installs (default
    /// [`DEFAULT_ROUTE_PROTOCOL`], "sitelink"), what a routing daemon selects them by.
    pub route_protocol: u8,
    /// `withdraw-when-down` (default false): a peer's routes (kernel and cryptokey routing)
    /// are withdrawn while it is down, and come back `up-after` seconds after it is up again.
    pub withdraw_when_down: bool,
    /// `down-after`: seconds without an authenticated packet after which a peer is down.
    /// `None`: per peer, 3 × its persistent-keepalive + 5 (180 + 15 without one).
    pub down_after: Option<u32>,
    /// `up-after` (default [`DEFAULT_UP_AFTER`]): seconds after a handshake, with the peer's
    /// packets still arriving, before it is up again (hold-down against flapping).
    pub up_after: u32,
    /// `on-peer-up` / `on-peer-down`: shell commands run when a peer goes up or down
    /// (`$1` the peer's name, `$2` "up" or "down"; environment `SITELINK_*`).
    pub on_peer_up: Option<String>,
    pub on_peer_down: Option<String>,
    /// `ha = "vrrp"` with `ha-address`: one of an HA pair, active only while this virtual
    /// address (moved by keepalived) is on this host.
    pub ha_address: Option<std::net::IpAddr>,
    /// `threads`: packet threads (1-64). `None`: one per core, at most [`DEFAULT_MAX_THREADS`].
    pub threads: Option<u16>,
}

/// Packet threads when `threads` is not set: one per core, but no more than this (each
/// thread holds about 10 MiB of packet buffers; see the README on scaling).
pub const DEFAULT_MAX_THREADS: u16 = 8;
/// The most packet threads `threads` may ask for.
pub const MAX_THREADS: u16 = 64;

/// Routes sitelinkd installs carry this protocol number unless `route-protocol` says
/// otherwise: 52, unused by iproute2's list, named "sitelink" by the package's
/// `/etc/iproute2/rt_protos.d/sitelink.conf`.
pub const DEFAULT_ROUTE_PROTOCOL: u8 = 52;
/// Seconds of hold-down before a peer that came back is up again, unless `up-after` says.
pub const DEFAULT_UP_AFTER: u32 = 3;

/// Host-name endpoints are resolved again this often (seconds) unless `resolve-interval` says.
pub const DEFAULT_RESOLVE_INTERVAL: u32 = 60;

/// `[interface] metrics-listen`: an `address:port` for HTTP (`GET /metrics`), or an absolute
/// path for a Unix socket (mode 0660, the control group's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    Tcp(std::net::SocketAddr),
    Unix(std::path::PathBuf),
}

impl std::fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsListen::Tcp(addr) => write!(f, "{addr}"),
            MetricsListen::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

impl std::str::FromStr for MetricsListen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.starts_with('/') {
            return Ok(MetricsListen::Unix(text.into()));
        }
        let addr: std::net::SocketAddr = text.parse().map_err(|_| {
            format!(
                "{text:?} is not an address:port or an absolute socket path; use e.g. \
                 \"127.0.0.1:9586\", \"[::1]:9586\" or \"/run/sitelink/metrics.sock\""
            )
        })?;
        if addr.port() == 0 {
            return Err(format!(
                "{text:?} has port 0; give the port Prometheus scrapes, e.g. 9586"
            ));
        }
        Ok(MetricsListen::Tcp(addr))
    }
}

impl Interface {
    /// Our public key (what remote sites put in their `public-key`); `None` without a key.
    pub fn public_key(&self) -> Option<PublicKey> {
        self.private_key.as_ref().map(PrivateKey::public_key)
    }

    /// The fwmark the UDP socket carries: `fwmark`, or with `table = "auto"` and a default
    /// route (`0.0.0.0/0` or `::/0`) among `peers`' allowed-ips, [`DEFAULT_TABLE`], as wg-quick
    /// does. `None`: no mark.
    pub fn effective_fwmark(&self, peers: &[Arc<Peer>]) -> Option<u32> {
        self.fwmark.or_else(|| {
            (self.table == RouteTable::Auto && has_default_route(peers)).then_some(DEFAULT_TABLE)
        })
    }
}

/// The routing table number (and fwmark) that `table = "auto"` uses for a default route when
/// `fwmark` is not set: wg-quick's choice.
pub const DEFAULT_TABLE: u32 = 51820;

/// `[interface] table`: where sitelinkd installs the routes for peers' allowed-ips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteTable {
    /// `"auto"` (default): the main table; a default route (`/0`) goes into its own table
    /// (the fwmark's number) with policy rules, so the tunnel's own packets do not loop.
    #[default]
    Auto,
    /// `"off"`: no routes at all; the operator routes.
    Off,
    /// A table number: every route, default routes included, goes there; no rules.
    Id(u32),
}

impl std::fmt::Display for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteTable::Auto => f.write_str("auto"),
            RouteTable::Off => f.write_str("off"),
            RouteTable::Id(n) => write!(f, "{n}"),
        }
    }
}

/// Whether some peer routes `0.0.0.0/0` or `::/0`.
pub fn has_default_route(peers: &[Arc<Peer>]) -> bool {
    peers
        .iter()
        .any(|p| p.allowed_ips.iter().any(|c| c.prefix_len() == 0))
}

/// A remote site: one `[[peer]]` table.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Unique, 1-63 characters of `[A-Za-z0-9._-]`; used in logs and status.
    pub name: String,
    /// Unique, and never our own public key.
    pub public_key: PublicKey,
    /// From `preshared-key-file` or `preshared-key`.
    pub preshared_key: Option<PresharedKey>,
    /// The `preshared-key-file` path as written in the config (kept so that saving the
    /// config writes the file reference back, never the key).
    pub preshared_key_file: Option<PathBuf>,
    /// Where to send handshakes first; `None` waits for the peer to contact us.
    pub endpoint: Option<Endpoint>,
    /// `endpoint = [first, more...]`: the rest of the list, tried in order after `endpoint`
    /// when handshakes to it fail. Empty for a single endpoint.
    pub more_endpoints: Vec<Endpoint>,
    /// Destinations routed to this peer and sources accepted from it: no host bits, no
    /// duplicates, none that another peer has too. Prefixes of different peers may nest: a
    /// destination goes to the peer with the longest matching prefix.
    pub allowed_ips: Vec<Cidr>,
    /// Seconds between keepalives (1-65535); `None` disables them.
    pub persistent_keepalive: Option<u16>,
    /// `allowed-endpoints`: source addresses the peer's packets may come from (handshakes,
    /// roaming, data); empty: any. A layer over the pinned key, not instead of it.
    pub allowed_endpoints: Vec<Cidr>,
}

impl Peer {
    /// Whether `ip` falls inside one of this peer's allowed-ips.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allowed_ips.iter().any(|cidr| cidr.contains(ip))
    }
}

impl Config {
    /// Peer `index` for changing (copied first if another config shares it).
    pub fn peer_mut(&mut self, index: usize) -> &mut Peer {
        Arc::make_mut(&mut self.peers[index])
    }

    /// Reads, permission-checks, parses and validates the config file at `path`.
    ///
    /// On top of [`Config::parse`], refuses a file that holds an inline `private-key` or
    /// `preshared-key` while group or others have any permission on it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_private_key(path, None)
    }

    /// [`Config::load`], but with the private key supplied by the caller (systemd's
    /// `LoadCredential=`) when `private_key` is `Some`: the config's `private-key-file` is then
    /// not read at all (the service user need not be able to read it).
    pub fn load_with_private_key(
        path: &Path,
        private_key: Option<PrivateKey>,
    ) -> Result<Config, ConfigError> {
        let (text, mode) = read_config_file(path)?;
        let (config, inline_secret) = parse_config(&text, path, private_key)?;
        if let Some(secret) = inline_secret {
            if mode & 0o077 != 0 {
                let source = Source { path, text: &text };
                return Err(source.error(
                    secret.span,
                    secret.scope,
                    secret.key,
                    format!(
                        "the config file holds an inline {} but is readable by group or others \
                         (mode {:04o}); run: chmod 600 {} (or move the key to {}-file)",
                        secret.what,
                        mode & 0o7777,
                        path.display(),
                        secret.key
                    ),
                ));
            }
        }
        Ok(config)
    }

    /// Parses and validates config `text` as if it had been read from `path`.
    ///
    /// `path` names the file in errors, gives the default interface name (its stem) and the
    /// directory that relative key file paths start from. Key files are read and
    /// permission-checked; the config file itself is not touched.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        parse_config(text, path, None).map(|(config, _)| config)
    }

    /// Runs every check [`Config::parse`] makes on the values themselves, on this config as it
    /// is in memory: for a live change (a peer added or changed over the control socket, a
    /// WireGuard UAPI `set`) before anything is applied.
    ///
    /// Checks the interface's `listen-port` (not 0), `address` (no duplicates), `mtu`
    /// (576-65535, at least 1280 with an IPv6 address), `control-group` and `user` (name
    /// syntax), `fwmark` (not 0) and `table`; and per peer, in order: the name's syntax, unique
    /// names, unique public keys that are not the interface's own, allowed-ips without host
    /// bits, not listed twice and not also another peer's (nesting is fine), and
    /// `persistent-keepalive` (1-65535). Reports the first problem found. A missing private key
    /// is allowed here (a live interface may have none); a config file must have one.
    ///
    /// The error has no path or line (see [`ConfigError::live_peer`]), e.g. `peer "site-c":
    /// allowed-ips: 198.19.2.0/24 is also in the allowed-ips of peer "site-b"; ...`. Key files
    /// are not read again. Linear in the number of peers and prefixes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_interface()?;
        let own_public_key = self.interface.public_key();
        let mut taken = Taken::with_capacity(self.peers.len());
        for (index, peer) in self.peers.iter().enumerate() {
            if let Err(message) = check_peer_name(&peer.name) {
                let scope = Scope::Peer { index, name: None };
                return Err(ConfigError::live(scope, "name", message));
            }
            let err = |key: &str, message: String| ConfigError::live_peer(&peer.name, key, message);
            let earlier = &self.peers[..index];
            check_unique_name(taken.name_holder(&peer.name, earlier, None))
                .map_err(|m| err("name", m))?;
            let holder = taken.key_holder(&peer.public_key, earlier, None);
            check_public_key(&peer.public_key, own_public_key.as_ref(), holder)
                .map_err(|m| err("public-key", m))?;
            for (at, cidr) in peer.allowed_ips.iter().enumerate() {
                check_allowed_ip(cidr, taken.prefix_holder(cidr, index, earlier, None))
                    .map_err(|m| err("allowed-ips", m))?;
                taken.prefixes.insert(*cidr, (index, at));
            }
            if let Some(seconds) = peer.persistent_keepalive {
                check_keepalive(seconds.into()).map_err(|m| err("persistent-keepalive", m))?;
            } else if self.interface.withdraw_when_down {
                return Err(err("persistent-keepalive", NEEDS_KEEPALIVE.into()));
            }
            taken.add_peer(Cow::Borrowed(&peer.name), peer.public_key, index);
        }
        Ok(())
    }

    /// The `[interface]` part of [`Config::validate`].
    pub(crate) fn validate_interface(&self) -> Result<(), ConfigError> {
        let iface = &self.interface;
        let err = |key: &str, message: String| ConfigError::live(Scope::Interface, key, message);
        if let Some(port) = iface.listen_port {
            check_listen_port(port.into()).map_err(|m| err("listen-port", m))?;
        }
        for (i, cidr) in iface.addresses.iter().enumerate() {
            check_address(cidr, &iface.addresses[..i]).map_err(|m| err("address", m))?;
        }
        check_mtu(iface.mtu.into(), &iface.addresses).map_err(|m| err("mtu", m))?;
        if let Some(user) = &iface.user {
            check_user_name(user).map_err(|m| err("user", m))?;
        }
        if let Some(group) = &iface.control_group {
            check_group_name(group).map_err(|m| err("control-group", m))?;
        }
        if let Some(mark) = iface.fwmark {
            check_fwmark(mark.into()).map_err(|m| err("fwmark", m))?;
        }
        check_table(&iface.table).map_err(|m| err("table", m))
    }
}

/// What the peers checked so far use, for the uniqueness rules: names, public keys and
/// prefixes (with the peer and position that has each).
/// Names are borrowed from the peers when validating a config in memory (no copies on the
/// path every live change takes) and owned while a file is parsed.
#[derive(Default)]
struct Taken<'a> {
    names: HashMap<Cow<'a, str>, usize>,
    keys: HashMap<PublicKey, usize>,
    prefixes: HashMap<Cidr, (usize, usize)>,
}

impl<'a> Taken<'a> {
    fn name_holder<'p>(
        &self,
        name: &str,
        peers: &'p [Arc<Peer>],
        lines: Option<&FileLines<'_>>,
    ) -> Option<Holder<'p>> {
        let &other = self.names.get(name)?;
        Some(Holder {
            name: &peers[other].name,
            line: lines.map(|l| l.line(l.peers[other].name)),
            same_peer: false,
        })
    }

    fn key_holder<'p>(
        &self,
        key: &PublicKey,
        peers: &'p [Arc<Peer>],
        lines: Option<&FileLines<'_>>,
    ) -> Option<Holder<'p>> {
        let &other = self.keys.get(key)?;
        Some(Holder {
            name: &peers[other].name,
            line: lines.map(|l| l.line(l.peers[other].public_key)),
            same_peer: false,
        })
    }

    /// Who has `cidr` already, for peer number `peer` (which may be `peers.len()`: not pushed
    /// yet, while a file is parsed).
    fn prefix_holder<'p>(
        &self,
        cidr: &Cidr,
        peer: usize,
        peers: &'p [Arc<Peer>],
        lines: Option<&FileLines<'_>>,
    ) -> Option<Holder<'p>> {
        let &(owner, at) = self.prefixes.get(cidr)?;
        if owner == peer {
            return Some(Holder {
                name: "",
                line: None,
                same_peer: true,
            });
        }
        Some(Holder {
            name: &peers[owner].name,
            line: lines.map(|l| l.line(l.peers[owner].allowed_ips[at])),
            same_peer: false,
        })
    }

    fn with_capacity(peers: usize) -> Self {
        Self {
            names: HashMap::with_capacity_and_hasher(peers, Default::default()),
            keys: HashMap::with_capacity_and_hasher(peers, Default::default()),
            prefixes: HashMap::with_capacity_and_hasher(peers, Default::default()),
        }
    }

    /// Records an accepted peer's name and key (its prefixes are recorded as they pass).
    fn add_peer(&mut self, name: Cow<'a, str>, key: PublicKey, index: usize) {
        self.names.insert(name, index);
        self.keys.insert(key, index);
    }
}

pub(crate) fn read_config_file(path: &Path) -> Result<(String, u32), ConfigError> {
    let io_error = |e: io::Error| ConfigError::file(path, "cannot read config file").with_source(e);
    let mut file = File::open(path).map_err(io_error)?;
    // Permissions from the open handle, so they belong to the bytes we read.
    let mode = file.metadata().map_err(io_error)?.permissions().mode();
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io_error)?;
    Ok((text, mode))
}

/// Where the config holds a secret inline, for the permission check in [`Config::load`].
struct InlineSecret {
    span: Range<usize>,
    scope: Scope,
    key: &'static str,
    what: &'static str,
}

// ---------------------------------------------------------------------------------------------
// Step 1: the raw shape of the file.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", expecting = "a table")]
struct RawConfig {
    interface: Spanned<RawInterface>,
    #[serde(default)]
    peer: Vec<Spanned<RawPeer>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", expecting = "a table")]
struct RawInterface {
    name: Option<Spanned<String>>,
    private_key_file: Option<Spanned<String>>,
    private_key: Option<Spanned<String>>,
    listen_port: Option<Spanned<Int>>,
    #[serde(default)]
    address: Vec<Spanned<String>>,
    mtu: Option<Spanned<Int>>,
    control_group: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    fwmark: Option<Spanned<Int>>,
    table: Option<Spanned<Typed<TableWords>>>,
    metrics_listen: Option<Spanned<String>>,
    resolve_interval: Option<Spanned<Int>>,
    mss_clamp: Option<bool>,
    route_protocol: Option<Spanned<Typed<ProtocolWords>>>,
    withdraw_when_down: Option<bool>,
    down_after: Option<Spanned<Int>>,
    up_after: Option<Spanned<Int>>,
    on_peer_up: Option<Spanned<String>>,
    on_peer_down: Option<Spanned<String>>,
    ha: Option<Spanned<String>>,
    ha_address: Option<Spanned<String>>,
    threads: Option<Spanned<Int>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", expecting = "a table")]
struct RawPeer {
    name: Spanned<String>,
    public_key: Spanned<String>,
    preshared_key_file: Option<Spanned<String>>,
    preshared_key: Option<Spanned<String>>,
    endpoint: Option<Spanned<RawEndpoints>>,
    allowed_ips: Vec<Spanned<String>>,
    persistent_keepalive: Option<Spanned<Int>>,
    #[serde(default)]
    allowed_endpoints: Vec<Spanned<String>>,
}

/// Any TOML integer, kept wide so that range errors are ours ("listen-port: 70000 is out of
/// range") rather than serde's ("expected u16").
#[derive(Clone, Copy)]
struct Int(i128);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Int;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Int, E> {
                Ok(Int(v.into()))
            }
            fn visit_i128<E>(self, v: i128) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_u128<E>(self, v: u128) -> Result<Int, E> {
                Ok(Int(i128::try_from(v).unwrap_or(i128::MAX)))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `endpoint`: one `host:port`, or a list of them tried in order.
#[derive(Deserialize)]
#[serde(untagged, expecting = "a host:port string or a list of them")]
enum RawEndpoints {
    One(String),
    Many(Vec<String>),
}

/// A word or a number (`table`, `route-protocol`), checked later (e.g. by [`parse_table`]).
pub(crate) enum WordOrNumber {
    Word(String),
    Number(i128),
}

/// A [`WordOrNumber`] read from the file; `W` says what serde's type error expects.
struct Typed<W>(WordOrNumber, std::marker::PhantomData<W>);

trait Expecting {
    const WHAT: &'static str;
}
struct TableWords;
impl Expecting for TableWords {
    const WHAT: &'static str = "\"auto\", \"off\" or a routing table number";
}
struct ProtocolWords;
impl Expecting for ProtocolWords {
    const WHAT: &'static str = "a route protocol number (0-255) or name";
}

impl<'de, W: Expecting> Deserialize<'de> for Typed<W> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<W>(std::marker::PhantomData<W>);
        impl<W: Expecting> serde::de::Visitor<'_> for Visitor<W> {
            type Value = Typed<W>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(W::WHAT)
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Typed(WordOrNumber::Word(v.to_owned()), self.0))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Typed(WordOrNumber::Number(v.into()), self.0))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Typed(WordOrNumber::Number(v.into()), self.0))
            }
        }
        deserializer.deserialize_any(Visitor(std::marker::PhantomData))
    }
}

/// `value` as a `T` if it lies in `range`.
fn in_range<T: TryFrom<i128>>(value: i128, range: Range<i128>) -> Option<T> {
    range.contains(&value).then(|| T::try_from(value).ok())?
}

// ---------------------------------------------------------------------------------------------
// Steps 2 and 3: raw values into domain types, then whole-file checks.

fn parse_config(
    text: &str,
    path: &Path,
    credential: Option<PrivateKey>,
) -> Result<(Config, Option<InlineSecret>), ConfigError> {
    let source = Source { path, text };
    let raw = parse_raw(&source)?;

    let mut inline_secret = None;
    let interface = build_interface(&source, raw.interface, &mut inline_secret, credential)?;
    let own_public_key = interface.public_key();

    let mut peers: Vec<Arc<Peer>> = Vec::with_capacity(raw.peer.len());
    // Per accepted peer: where its `name`, `public-key` and allowed-ips are.
    let mut seen: Vec<PeerLines> = Vec::with_capacity(raw.peer.len());
    let mut taken = Taken::with_capacity(raw.peer.len());
    for (index, raw_peer) in raw.peer.into_iter().enumerate() {
        let earlier = Earlier {
            peers: &peers,
            lines: FileLines {
                text: source.text,
                peers: &seen,
            },
            taken: &mut taken,
        };
        let (peer, lines) = build_peer(
            &source,
            index,
            raw_peer.into_inner(),
            own_public_key.as_ref(),
            earlier,
            &mut inline_secret,
        )?;
        if interface.withdraw_when_down && peer.persistent_keepalive.is_none() {
            let scope = Scope::Peer {
                index,
                name: Some(peer.name.clone()),
            };
            return Err(source.error(
                lines.name..lines.name + 1,
                scope,
                "persistent-keepalive",
                NEEDS_KEEPALIVE.to_string(),
            ));
        }
        taken.add_peer(Cow::Owned(peer.name.clone()), peer.public_key, index);
        peers.push(Arc::new(peer));
        seen.push(lines);
    }

    let config = Config {
        path: path.to_owned(),
        interface,
        peers,
    };
    Ok((config, inline_secret))
}

/// Step 1 alone: TOML syntax and the file's structure (known keys, value types), without
/// reading key files. Also used before saving, to refuse editing a file that no longer parses.
pub(crate) fn check_structure(text: &str, path: &Path) -> Result<(), ConfigError> {
    parse_raw(&Source { path, text }).map(drop)
}

fn parse_raw(source: &Source<'_>) -> Result<RawConfig, ConfigError> {
    let root = DeTable::parse(source.text).map_err(|e| source.syntax_error(&e))?;
    check_shape(source, root.get_ref())?;
    RawConfig::deserialize(toml::de::Deserializer::from(root)).map_err(|e| source.serde_error(&e))
}

/// Checks that `interface` is a table and `peer` an array of tables before serde sees them:
/// serde would accept an array as a struct and complain about its first field instead.
fn check_shape(source: &Source<'_>, root: &DeTable<'_>) -> Result<(), ConfigError> {
    for (key, value) in root {
        let name: &str = key.get_ref();
        let found = describe(value.get_ref());
        match (name, value.get_ref()) {
            ("interface", DeValue::Table(_)) => {}
            ("interface", _) => {
                return Err(source.shape_error(
                    value.span(),
                    name,
                    format!("expected one table, found {found}; write [interface] (single brackets) once"),
                ));
            }
            ("peer", DeValue::Array(peers)) => {
                if let Some(peer) = peers.iter().find(|p| !p.get_ref().is_table()) {
                    return Err(source.shape_error(
                        peer.span(),
                        name,
                        format!(
                            "expected an array of tables, found {} in it; write [[peer]] \
                             (double brackets) before each peer's keys",
                            describe(peer.get_ref())
                        ),
                    ));
                }
            }
            ("peer", _) => {
                return Err(source.shape_error(
                    value.span(),
                    name,
                    format!(
                        "expected an array of tables, found {found}; write [[peer]] (double \
                         brackets) before each peer's keys"
                    ),
                ));
            }
            // Unknown top-level keys are reported by serde, with the list of known ones.
            _ => {}
        }
    }
    Ok(())
}

/// Where an accepted peer's values are in the file (byte offsets), so a later conflict can
/// point back at them. Offsets become line numbers only for an error message: counting lines
/// for every value would make a file with many peers quadratic to load.
struct PeerLines {
    name: usize,
    public_key: usize,
    allowed_ips: Vec<usize>,
}

/// The earlier peers' places in the file being loaded.
struct FileLines<'a> {
    text: &'a str,
    peers: &'a [PeerLines],
}

impl FileLines<'_> {
    fn line(&self, offset: usize) -> usize {
        crate::error::line_col(self.text, offset).0
    }
}

fn build_interface(
    source: &Source<'_>,
    raw: Spanned<RawInterface>,
    inline_secret: &mut Option<InlineSecret>,
    credential: Option<PrivateKey>,
) -> Result<Interface, ConfigError> {
    let header = raw.span();
    let raw = raw.into_inner();
    let scope = Scope::Interface;
    let err = |span: Range<usize>, key: &str, message: String| {
        source.error(span, scope.clone(), key, message)
    };

    let name = match &raw.name {
        Some(name) => name
            .get_ref()
            .parse::<InterfaceName>()
            .map_err(|e| err(name.span(), "name", e.to_string()))?,
        None => {
            default_name(source.path).map_err(|message| err(header.clone(), "name", message))?
        }
    };

    let private_key = Some(match (&raw.private_key, &raw.private_key_file) {
        (Some(inline), Some(file)) => {
            let (later, key) = later_of(inline, "private-key", file, "private-key-file");
            return Err(err(
                later,
                key,
                "set either private-key or private-key-file, not both".into(),
            ));
        }
        (None, None) => {
            return Err(err(
                header,
                "private-key-file",
                format!(
                    "required key is missing; set private-key-file = \"/etc/sitelink/{name}.key\" \
                     (create it with `umask 077; sitelinkctl genkey > /etc/sitelink/{name}.key`), \
                     or an inline private-key"
                ),
            ));
        }
        (Some(inline), None) => {
            inline_secret.get_or_insert(InlineSecret {
                span: inline.span(),
                scope: scope.clone(),
                key: "private-key",
                what: "private key",
            });
            let inline = parse_key::<PrivateKey>(inline.get_ref(), KeyKind::Private)
                .map_err(|message| err(inline.span(), "private-key", message))?;
            credential.unwrap_or(inline)
        }
        (None, Some(file)) => match credential {
            Some(key) => key,
            None => read_key_file(source, file, &scope, "private-key-file", KeyKind::Private)?,
        },
    });

    let listen_port = match &raw.listen_port {
        None => None,
        Some(port) => Some(
            check_listen_port(port.get_ref().0)
                .map_err(|message| err(port.span(), "listen-port", message))?,
        ),
    };

    let mut addresses: Vec<Cidr> = Vec::with_capacity(raw.address.len());
    for text in &raw.address {
        let cidr = text.get_ref().parse::<Cidr>().map_err(|e| {
            err(
                text.span(),
                "address",
                format!("{e}; expected an address with its prefix, e.g. \"198.18.100.1/24\""),
            )
        })?;
        check_address(&cidr, &addresses).map_err(|message| err(text.span(), "address", message))?;
        addresses.push(cidr);
    }

    let mtu = match &raw.mtu {
        None => DEFAULT_MTU,
        Some(mtu) => check_mtu(mtu.get_ref().0, &addresses)
            .map_err(|message| err(mtu.span(), "mtu", message))?,
    };

    let control_group = match &raw.control_group {
        None => None,
        Some(group) => {
            check_group_name(group.get_ref())
                .map_err(|message| err(group.span(), "control-group", message))?;
            Some(group.get_ref().clone())
        }
    };

    let user = match &raw.user {
        None => None,
        Some(user) => {
            check_user_name(user.get_ref()).map_err(|message| err(user.span(), "user", message))?;
            Some(user.get_ref().clone())
        }
    };

    let fwmark = match &raw.fwmark {
        None => None,
        Some(mark) => Some(
            check_fwmark(mark.get_ref().0)
                .map_err(|message| err(mark.span(), "fwmark", message))?,
        ),
    };

    let table = match &raw.table {
        None => RouteTable::Auto,
        Some(table) => parse_table(&table.get_ref().0)
            .map_err(|message| err(table.span(), "table", message))?,
    };

    let metrics_listen = match &raw.metrics_listen {
        None => None,
        Some(text) => Some(
            text.get_ref()
                .parse::<MetricsListen>()
                .map_err(|message| err(text.span(), "metrics-listen", message))?,
        ),
    };

    let resolve_interval = match &raw.resolve_interval {
        None => DEFAULT_RESOLVE_INTERVAL,
        Some(v) => in_range(v.get_ref().0, 1..86401).ok_or_else(|| {
            err(
                v.span(),
                "resolve-interval",
                format!(
                    "{} is out of range; use 1-86400 seconds (default {DEFAULT_RESOLVE_INTERVAL})",
                    v.get_ref().0
                ),
            )
        })?,
    };

    let route_protocol = match &raw.route_protocol {
        None => DEFAULT_ROUTE_PROTOCOL,
        Some(p) => crate::protocols::parse(&p.get_ref().0)
            .map_err(|message| err(p.span(), "route-protocol", message))?,
    };
    let seconds = |value: &Option<Spanned<Int>>, key: &str, range: Range<i128>, default: &str| {
        value
            .as_ref()
            .map(|v| {
                in_range::<u32>(v.get_ref().0, range.clone()).ok_or_else(|| {
                    err(
                        v.span(),
                        key,
                        format!(
                            "{} is out of range; use {}-{} seconds ({default})",
                            v.get_ref().0,
                            range.start,
                            range.end - 1
                        ),
                    )
                })
            })
            .transpose()
    };
    let down_after = seconds(
        &raw.down_after,
        "down-after",
        1..3601,
        "default: 3 × the peer's persistent-keepalive + 5",
    )?;
    let up_after =
        seconds(&raw.up_after, "up-after", 0..3601, "default: 3")?.unwrap_or(DEFAULT_UP_AFTER);
    let command = |value: &Option<Spanned<String>>, key: &str| match value {
        None => Ok(None),
        Some(c) if c.get_ref().trim().is_empty() => Err(err(
            c.span(),
            key,
            "the command is empty; give a command line (run by /bin/sh -c, with the peer's name \
             as $1 and \"up\" or \"down\" as $2), or remove the key"
                .into(),
        )),
        Some(c) => Ok(Some(c.get_ref().clone())),
    };
    let on_peer_up = command(&raw.on_peer_up, "on-peer-up")?;
    let on_peer_down = command(&raw.on_peer_down, "on-peer-down")?;
    let ha_address = build_ha(&raw, &err)?;
    let threads = raw
        .threads
        .as_ref()
        .map(|v| {
            in_range::<u16>(v.get_ref().0, 1..i128::from(MAX_THREADS) + 1).ok_or_else(|| {
                err(
                    v.span(),
                    "threads",
                    format!(
                        "{} is out of range; use 1-{MAX_THREADS} packet threads (default: one \
                         per core, at most {DEFAULT_MAX_THREADS})",
                        v.get_ref().0
                    ),
                )
            })
        })
        .transpose()?;

    Ok(Interface {
        name,
        private_key,
        listen_port,
        addresses,
        mtu,
        control_group,
        user,
        fwmark,
        table,
        metrics_listen,
        resolve_interval,
        mss_clamp: raw.mss_clamp.unwrap_or(true),
        route_protocol,
        withdraw_when_down: raw.withdraw_when_down.unwrap_or(false),
        down_after,
        up_after,
        on_peer_up,
        on_peer_down,
        ha_address,
        threads,
    })
}

/// `ha` and `ha-address`: both or neither.
fn build_ha(
    raw: &RawInterface,
    err: &dyn Fn(Range<usize>, &str, String) -> ConfigError,
) -> Result<Option<std::net::IpAddr>, ConfigError> {
    let mode = match &raw.ha {
        None => None,
        Some(m) if m.get_ref() == "vrrp" => Some(m),
        Some(m) if m.get_ref() == "off" => None,
        Some(m) => {
            return Err(err(
                m.span(),
                "ha",
                format!(
                    "{:?} is not an HA mode; use \"vrrp\" (active while ha-address is on this \
                     host, moved by keepalived) or \"off\"",
                    m.get_ref()
                ),
            ))
        }
    };
    match (mode, &raw.ha_address) {
        (None, None) => Ok(None),
        (Some(m), None) => Err(err(
            m.span(),
            "ha-address",
            "required with ha = \"vrrp\": the virtual address keepalived moves to the active \
             gateway, e.g. ha-address = \"198.51.100.10\" (the peers use it as endpoint)"
                .into(),
        )),
        (None, Some(a)) if raw.ha.is_none() => Err(err(
            a.span(),
            "ha-address",
            "set without ha = \"vrrp\"; add it, or remove ha-address".into(),
        )),
        (None, Some(_)) => Ok(None),
        (Some(_), Some(a)) => a
            .get_ref()
            .parse::<std::net::IpAddr>()
            .map(Some)
            .map_err(|_| {
                err(
                    a.span(),
                    "ha-address",
                    format!(
                        "{:?} is not an IP address; give the virtual address alone, without a \
                         prefix or port, e.g. \"198.51.100.10\"",
                        a.get_ref()
                    ),
                )
            }),
    }
}

// ---------------------------------------------------------------------------------------------
// The rules on values, shared by the file parser (which adds the span of the value) and
// `Config::validate` (which adds the peer and key of a live change). Each returns the message.

fn check_listen_port(port: i128) -> Result<u16, String> {
    in_range(port, 1..65536).ok_or_else(|| {
        format!(
            "{port} is out of range; use a UDP port in 1-65535, or omit listen-port to let the \
             system pick one"
        )
    })
}

fn check_fwmark(mark: i128) -> Result<u32, String> {
    if mark == 0 {
        return Err("0 means no mark; omit fwmark instead".into());
    }
    in_range(mark, 1..(1 << 32)).ok_or_else(|| {
        format!("{mark} is out of range; use 1-4294967295 (e.g. 0xca6c), or omit fwmark")
    })
}

const TABLE_RULE: &str = "use \"auto\" (the default: main table, a default route in its own table \
     with policy rules), \"off\" (no routes), or a table number 1-4294967295 other than 255";

fn parse_table(raw: &WordOrNumber) -> Result<RouteTable, String> {
    let table = match raw {
        WordOrNumber::Word(w) if w == "auto" => RouteTable::Auto,
        WordOrNumber::Word(w) if w == "off" => RouteTable::Off,
        WordOrNumber::Word(w) => return Err(format!("{w:?} is not a table; {TABLE_RULE}")),
        WordOrNumber::Number(n) => match in_range::<u32>(*n, 1..(1 << 32)) {
            Some(n) => RouteTable::Id(n),
            None => return Err(format!("{n} is out of range; {TABLE_RULE}")),
        },
    };
    check_table(&table)?;
    Ok(table)
}

fn check_table(table: &RouteTable) -> Result<(), String> {
    match table {
        RouteTable::Id(0) => Err(format!("0 is not a table; {TABLE_RULE}")),
        RouteTable::Id(255) => Err(format!(
            "255 is the kernel's local table, which must not hold tunnel routes; {TABLE_RULE}"
        )),
        _ => Ok(()),
    }
}

/// `cidr` is the next interface address after `earlier`.
fn check_address(cidr: &Cidr, earlier: &[Cidr]) -> Result<(), String> {
    if earlier.contains(cidr) {
        return Err(format!("{cidr} is listed twice; remove one"));
    }
    Ok(())
}

fn check_mtu(mtu: i128, addresses: &[Cidr]) -> Result<u16, String> {
    let value: u16 = in_range(mtu, 576..65536)
        .ok_or_else(|| format!("{mtu} is out of range; use 576-65535 (default {DEFAULT_MTU})"))?;
    if let Some(v6) = addresses
        .iter()
        .find(|a| !a.is_ipv4())
        .filter(|_| value < 1280)
    {
        return Err(format!(
            "{value} is below 1280, the IPv6 minimum, and address {v6} is IPv6; use at least \
             1280 (default {DEFAULT_MTU})"
        ));
    }
    Ok(value)
}

/// A Unix group name as `groupadd` accepts it by default: 1-32 characters, a lowercase letter or
/// `_` first, then lowercase letters, digits, `_` or `-`, and optionally a final `$`.
fn check_group_name(name: &str) -> Result<(), String> {
    check_account_name(name, "group", "or omit control-group to allow root only")
}

fn check_user_name(name: &str) -> Result<(), String> {
    check_account_name(
        name,
        "user",
        "or omit user to keep the user sitelinkd was started as",
    )
}

/// A Unix user or group name (`what`), as Debian's adduser accepts by default.
fn check_account_name(name: &str, what: &str, omit: &str) -> Result<(), String> {
    let rule = format!(
        "a {what} name is 1-32 characters: a lowercase letter or `_` first, then lowercase \
         letters, digits, `_` or `-` (a final `$` is allowed), e.g. \"sitelink\""
    );
    let body = name.strip_suffix('$').unwrap_or(name);
    if body.is_empty() {
        return Err(format!("{what} name is empty; {rule}; {omit}"));
    }
    if name.chars().count() > 32 {
        return Err(format!(
            "{what} name is {} characters long; {rule}",
            name.chars().count()
        ));
    }
    let mut chars = body.chars();
    if let Some(first) = chars
        .next()
        .filter(|c| !(c.is_ascii_lowercase() || *c == '_'))
    {
        return Err(format!(
            "{what} name {name:?} starts with {first:?}; {rule}"
        ));
    }
    if let Some(ch) =
        chars.find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c)))
    {
        return Err(format!("{what} name {name:?} contains {ch:?}; {rule}"));
    }
    Ok(())
}

/// ` (line N)` after a reference to another place in the file; nothing for a live change.
fn at_line(line: Option<usize>) -> String {
    line.map(|line| format!(" (line {line})"))
        .unwrap_or_default()
}

/// Another peer that already has a name, public key or prefix being checked: its name, its
/// line in the file (`None` for a live change), and whether it is the very peer being checked
/// (a prefix listed twice).
pub(crate) struct Holder<'a> {
    pub name: &'a str,
    pub line: Option<usize>,
    pub same_peer: bool,
}

/// `name` is not used by another peer (`holder`, if one does).
pub(crate) fn check_unique_name(holder: Option<Holder<'_>>) -> Result<(), String> {
    let Some(holder) = holder else {
        return Ok(());
    };
    let user = match holder.line {
        Some(line) => format!("line {line}"),
        None => "another peer".to_owned(),
    };
    Err(format!(
        "duplicate peer name; {user} already uses it and peer names must be unique"
    ))
}

/// `key` is not the interface's own and not another peer's (`holder`).
pub(crate) fn check_public_key(
    key: &PublicKey,
    own: Option<&PublicKey>,
    holder: Option<Holder<'_>>,
) -> Result<(), String> {
    if Some(key) == own {
        return Err(
            "this is the interface's own public key; set the remote site's public key \
                    (run `sitelinkctl pubkey < its-private-key-file` there)"
                .into(),
        );
    }
    if let Some(holder) = holder {
        return Err(format!(
            "peer {:?}{} already has this public key; each peer needs its own",
            holder.name,
            at_line(holder.line)
        ));
    }
    Ok(())
}

/// `cidr` is the next allowed-ip of a peer: no host bits, and not had already (`holder`) by
/// this peer or another. Prefixes of different peers may nest (routing picks the longest
/// match); only the same prefix twice is ambiguous.
pub(crate) fn check_allowed_ip(cidr: &Cidr, holder: Option<Holder<'_>>) -> Result<(), String> {
    if cidr.has_host_bits() {
        return Err(format!(
            "{cidr} has host bits set; did you mean {}?",
            cidr.network()
        ));
    }
    let Some(holder) = holder else {
        return Ok(());
    };
    if holder.same_peer {
        return Err(format!("{cidr} is listed twice; remove one"));
    }
    Err(format!(
        "{cidr} is also in the allowed-ips of peer {:?}{}; a prefix can belong to one peer only, \
         so remove it from one of them (prefixes may nest, e.g. 198.19.0.0/16 on a hub and \
         198.19.2.0/24 on a branch: the longest match wins)",
        holder.name,
        at_line(holder.line)
    ))
}

pub(crate) fn check_keepalive(seconds: i128) -> Result<u16, String> {
    if seconds == 0 {
        return Err("0 is not allowed; omit the key to disable keepalives".into());
    }
    in_range(seconds, 1..65536).ok_or_else(|| {
        format!(
            "{seconds} is out of range; use 1-65535 seconds (25 is typical behind NAT), or omit \
             the key to disable keepalives"
        )
    })
}

/// The interface name implied by the config file name (`/etc/sitelink/sl0.toml` → `sl0`).
fn default_name(path: &Path) -> Result<InterfaceName, String> {
    let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
        return Err(format!(
            "no name is set and the config file name {:?} gives none; set name = \"sl0\" in \
             [interface]",
            path.display().to_string()
        ));
    };
    stem.parse().map_err(|e| {
        format!(
            "no name is set and the config file name {stem:?} is not a valid interface name \
             ({e}); set name = \"sl0\" in [interface]"
        )
    })
}

/// The span and key of whichever of two conflicting keys comes later in the file.
fn later_of<'k, T>(
    a: &Spanned<T>,
    a_key: &'k str,
    b: &Spanned<T>,
    b_key: &'k str,
) -> (Range<usize>, &'k str) {
    if a.span().start > b.span().start {
        (a.span(), a_key)
    } else {
        (b.span(), b_key)
    }
}

/// The peers before the one being built: the peers, where they are in the file, and what
/// they use (the new peer's prefixes are added to `taken` as they pass).
struct Earlier<'a> {
    peers: &'a [Arc<Peer>],
    lines: FileLines<'a>,
    taken: &'a mut Taken<'static>,
}

fn build_peer(
    source: &Source<'_>,
    index: usize,
    raw: RawPeer,
    own_public_key: Option<&PublicKey>,
    earlier: Earlier<'_>,
    inline_secret: &mut Option<InlineSecret>,
) -> Result<(Peer, PeerLines), ConfigError> {
    let Earlier {
        peers: earlier,
        lines: earlier_lines,
        taken,
    } = earlier;

    let name = raw.name.get_ref();
    if let Err(message) = check_peer_name(name) {
        let scope = Scope::Peer { index, name: None };
        return Err(source.error(raw.name.span(), scope, "name", message));
    }
    let scope = Scope::Peer {
        index,
        name: Some(name.clone()),
    };
    let err = |span: Range<usize>, key: &str, message: String| {
        source.error(span, scope.clone(), key, message)
    };
    check_unique_name(taken.name_holder(name, earlier, Some(&earlier_lines)))
        .map_err(|message| err(raw.name.span(), "name", message))?;

    let public_key = parse_key::<PublicKey>(raw.public_key.get_ref(), KeyKind::Public)
        .map_err(|message| err(raw.public_key.span(), "public-key", message))?;
    let holder = taken.key_holder(&public_key, earlier, Some(&earlier_lines));
    check_public_key(&public_key, own_public_key, holder)
        .map_err(|message| err(raw.public_key.span(), "public-key", message))?;

    let preshared_key = match (&raw.preshared_key, &raw.preshared_key_file) {
        (Some(inline), Some(file)) => {
            let (later, key) = later_of(inline, "preshared-key", file, "preshared-key-file");
            return Err(err(
                later,
                key,
                "set either preshared-key or preshared-key-file, not both".into(),
            ));
        }
        (None, None) => None,
        (Some(inline), None) => {
            inline_secret.get_or_insert(InlineSecret {
                span: inline.span(),
                scope: scope.clone(),
                key: "preshared-key",
                what: "preshared key",
            });
            Some(
                parse_key::<PresharedKey>(inline.get_ref(), KeyKind::Preshared)
                    .map_err(|message| err(inline.span(), "preshared-key", message))?,
            )
        }
        (None, Some(file)) => Some(read_key_file(
            source,
            file,
            &scope,
            "preshared-key-file",
            KeyKind::Preshared,
        )?),
    };

    let (endpoint, more_endpoints) = match &raw.endpoint {
        None => (None, Vec::new()),
        Some(value) => {
            let texts = match value.get_ref() {
                RawEndpoints::One(text) => std::slice::from_ref(text),
                RawEndpoints::Many(list) => list.as_slice(),
            };
            let mut all = Vec::with_capacity(texts.len());
            for text in texts {
                let e = text
                    .parse::<Endpoint>()
                    .map_err(|e| err(value.span(), "endpoint", format!("{text:?}: {e}")))?;
                if all.contains(&e) {
                    return Err(err(
                        value.span(),
                        "endpoint",
                        format!("{e} is listed twice; remove one"),
                    ));
                }
                all.push(e);
            }
            if all.is_empty() {
                return Err(err(
                    value.span(),
                    "endpoint",
                    "the list is empty; give at least one host:port, or omit endpoint for a peer that connects to us".into(),
                ));
            }
            let first = all.remove(0);
            (Some(first), all)
        }
    };

    let mut allowed_ips: Vec<Cidr> = Vec::with_capacity(raw.allowed_ips.len());
    let mut allowed_lines = Vec::with_capacity(raw.allowed_ips.len());
    for text in &raw.allowed_ips {
        let span = text.span();
        let cidr = text.get_ref().parse::<Cidr>().map_err(|e| {
            err(
                span.clone(),
                "allowed-ips",
                format!("{e}; expected a network such as \"198.19.2.0/24\" or \"fd19:2::/64\""),
            )
        })?;
        let holder = taken.prefix_holder(&cidr, index, earlier, Some(&earlier_lines));
        check_allowed_ip(&cidr, holder)
            .map_err(|message| err(span.clone(), "allowed-ips", message))?;
        taken.prefixes.insert(cidr, (index, allowed_ips.len()));
        allowed_lines.push(span.start);
        allowed_ips.push(cidr);
    }

    let persistent_keepalive = match &raw.persistent_keepalive {
        None => None,
        Some(value) => Some(
            check_keepalive(value.get_ref().0)
                .map_err(|message| err(value.span(), "persistent-keepalive", message))?,
        ),
    };

    let mut allowed_endpoints: Vec<Cidr> = Vec::with_capacity(raw.allowed_endpoints.len());
    for text in &raw.allowed_endpoints {
        let cidr = text.get_ref().parse::<Cidr>().map_err(|e| {
            err(
                text.span(),
                "allowed-endpoints",
                format!("{e}; expected a network such as \"198.18.0.0/24\" or \"2001:db8::/32\" (a single address: \"198.18.0.7/32\")"),
            )
        })?;
        if cidr.has_host_bits() {
            return Err(err(
                text.span(),
                "allowed-endpoints",
                format!(
                    "{cidr} has host bits set; write the network, {}",
                    cidr.network()
                ),
            ));
        }
        allowed_endpoints.push(cidr);
    }

    let lines = PeerLines {
        name: raw.name.span().start,
        public_key: raw.public_key.span().start,
        allowed_ips: allowed_lines,
    };
    let peer = Peer {
        name: name.clone(),
        public_key,
        preshared_key,
        preshared_key_file: raw
            .preshared_key_file
            .as_ref()
            .map(|f| PathBuf::from(f.get_ref())),
        endpoint,
        more_endpoints,
        allowed_ips,
        persistent_keepalive,
        allowed_endpoints,
    };
    Ok((peer, lines))
}

/// Why a peer needs a keepalive when routes follow liveness.
const NEEDS_KEEPALIVE: &str = "missing, and withdraw-when-down is on ([interface]): a peer's \
    liveness is judged from the packets it sends, and a peer without a keepalive would never \
    handshake again once its routes are withdrawn; set persistent-keepalive (e.g. 5) here and \
    on the other side, or turn withdraw-when-down off";

/// Peer names appear in logs, status output and metrics labels: keep them plain.
pub(crate) fn check_peer_name(name: &str) -> Result<(), String> {
    const RULE: &str = "use 1-63 letters, digits, `.`, `_` or `-`, e.g. \"site-b\"";
    if name.is_empty() {
        return Err(format!("peer name is empty; {RULE}"));
    }
    if let Some(ch) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
    {
        return Err(format!("peer name {name:?} contains {ch:?}; {RULE}"));
    }
    if name.len() > 63 {
        return Err(format!(
            "peer name is {} characters long; {RULE}",
            name.len()
        ));
    }
    Ok(())
}

/// Which key a string is meant to be, for the hint after a decoding error.
#[derive(Clone, Copy)]
enum KeyKind {
    Private,
    Public,
    Preshared,
}

impl KeyKind {
    fn file_description(self) -> &'static str {
        match self {
            KeyKind::Private => "private key file",
            KeyKind::Public => "public key file",
            KeyKind::Preshared => "preshared key file",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            KeyKind::Private => {
                "(a WireGuard private key is 44 base64 characters, e.g. from `sitelinkctl genkey`)"
            }
            KeyKind::Public => {
                "(a WireGuard key is 44 base64 characters, e.g. from \
                 `sitelinkctl genkey | sitelinkctl pubkey`)"
            }
            KeyKind::Preshared => {
                "(a preshared key is 44 base64 characters, e.g. from `wg genpsk` or \
                 `head -c 32 /dev/urandom | base64`)"
            }
        }
    }
}

/// Parses a key, turning the error into a message with a hint. Never echoes `text`.
fn parse_key<K: FromStr<Err = KeyError>>(text: &str, kind: KeyKind) -> Result<K, String> {
    text.parse()
        .map_err(|e: KeyError| format!("{e} {}", kind.hint()))
}

/// Reads and parses the key file named by `file` (the value of `key`), refusing one that group
/// or others may access.
fn read_key_file<K: FromStr<Err = KeyError>>(
    source: &Source<'_>,
    file: &Spanned<String>,
    scope: &Scope,
    key: &str,
    kind: KeyKind,
) -> Result<K, ConfigError> {
    let err = |message: String| source.error(file.span(), scope.clone(), key, message);
    if file.get_ref().is_empty() {
        return Err(err(format!(
            "empty path; set it to the {}, e.g. \"/etc/sitelink/sl0.key\"",
            kind.file_description()
        )));
    }
    let dir = source.path.parent().unwrap_or(Path::new(""));
    load_key_file(&dir.join(file.get_ref()), key, kind).map_err(|(message, io)| match io {
        Some(e) => err(message).with_source(e),
        None => err(message),
    })
}

/// Reads a preshared key file given at run time (`sitelinkctl peer add --preshared-key-file`),
/// with the same permission check and messages as a `preshared-key-file` in a config file.
/// Errors read `peer "<peer>": preshared-key-file: <file>: ...`.
pub fn load_preshared_key_file(path: &Path, peer: &str) -> Result<PresharedKey, ConfigError> {
    load_key_file(path, "preshared-key-file", KeyKind::Preshared).map_err(|(message, io)| {
        let e = ConfigError::live_peer(peer, "preshared-key-file", message);
        match io {
            Some(io) => e.with_source(io),
            None => e,
        }
    })
}

/// The one implementation of "read a key file": regular file, no group/other access, one
/// base64 key. Errors are a message (naming the file, never its contents) and the I/O cause.
fn load_key_file<K: FromStr<Err = KeyError>>(
    path: &Path,
    key: &str,
    kind: KeyKind,
) -> Result<K, (String, Option<io::Error>)> {
    let shown = path.display();
    let contents = match read_secret_file(path) {
        Ok(contents) => contents,
        Err(SecretFileError::Io(e)) => {
            let hint = match (e.kind(), kind) {
                (io::ErrorKind::NotFound, KeyKind::Private) => {
                    format!(" (create it with `umask 077; sitelinkctl genkey > {shown}`)")
                }
                _ => String::new(),
            };
            return Err((
                format!("cannot read {} {shown}{hint}", kind.file_description()),
                Some(e),
            ));
        }
        Err(SecretFileError::NotAFile) => {
            return Err((
                format!(
                    "{shown} is not a regular file; point {key} at the {}",
                    kind.file_description()
                ),
                None,
            ));
        }
        Err(SecretFileError::Mode(mode)) => {
            return Err((
                format!(
                    "{shown}: {} is readable by group or others (mode {mode:04o}); run: chmod 600 \
                     {shown}",
                    kind.file_description()
                ),
                None,
            ));
        }
    };
    let text = std::str::from_utf8(&contents).map_err(|_| KeyError::NotBase64);
    text.and_then(|t| t.trim().parse()).map_err(|e: KeyError| {
        (
            format!(
                "{shown}: {e} {} (the file must hold only the key)",
                kind.hint()
            ),
            None,
        )
    })
}

enum SecretFileError {
    Io(io::Error),
    NotAFile,
    Mode(u32),
}

/// Key files are one line; anything much longer is the wrong file, so stop reading there.
const MAX_KEY_FILE_LEN: u64 = 4096;

/// Reads a file that holds a secret, after checking (on the open handle) that it is a regular
/// file with no permissions for group or others. The buffer is wiped when dropped.
fn read_secret_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, SecretFileError> {
    let file = File::open(path).map_err(SecretFileError::Io)?;
    let metadata = file.metadata().map_err(SecretFileError::Io)?;
    if !metadata.is_file() {
        return Err(SecretFileError::NotAFile);
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Mode(mode));
    }
    // Room for the whole read up front: a reallocation would leave an unwiped copy behind.
    let mut contents = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_LEN as usize + 64));
    file.take(MAX_KEY_FILE_LEN)
        .read_to_end(&mut contents)
        .map_err(SecretFileError::Io)?;
    Ok(contents)
}

#[cfg(test)]
mod tests;
