//! Shared code of the fuzz targets: fixtures (keys, a base config), the canonical TOML
//! rendering used by `config_toml`'s round-trip check, and the two-engine world that the
//! `engine_datagram_*` targets drive with a decoded sequence of [`engine::Op`]s.
//!
//! Nothing here links libFuzzer: the `write_seeds` example uses it to write the seed corpora.

pub mod engine;

use std::fmt::Write as _;
use std::path::Path;

use sitelink_config::{Config, PrivateKey, PublicKey, RouteTable};

/// The path every fuzzed config "comes from": its stem gives the default interface name, and
/// relative key file paths resolve under a directory that does not exist.
pub const CONFIG_PATH: &str = "/nonexistent/sitelink-fuzz/sl0.toml";

/// A TOML basic string holding `s`.
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A fixed private key: 32 times `byte`.
pub fn private_key(byte: u8) -> PrivateKey {
    PrivateKey::from_bytes([byte; 32])
}

/// The public key of [`private_key`]`(byte)`.
pub fn public_key(byte: u8) -> PublicKey {
    private_key(byte).public_key()
}

/// A realistic config text (inline keys only, so parsing reads no files): the base config of
/// `uapi_request` and a seed of `config_toml`.
pub fn base_config_text() -> String {
    format!(
        r#"# sitelink fuzz fixture
[interface]
name = "sl0"
private-key = "{key}"
listen-port = 51820
address = ["198.18.100.1/24", "fd18:100::1/64"]
mtu = 1420
fwmark = 0xca6c
table = "auto"

[[peer]]
name = "site-b"
public-key = "{b}"
preshared-key = "{psk}"
endpoint = "198.18.0.2:51820"
allowed-ips = ["198.19.2.0/24", "fd19:2::/64"]
persistent-keepalive = 25

[[peer]]
name = "site-c"
public-key = "{c}"
endpoint = "gw-c.example.net:51820"
allowed-ips = ["198.19.0.0/16", "198.19.3.0/24"]

[[peer]]
name = "roaming"
public-key = "{d}"
allowed-ips = ["0.0.0.0/0"]
"#,
        key = private_key(0x77).expose_base64(),
        b = public_key(0xbb),
        psk = sitelink_config::PresharedKey::from_bytes([0x5b; 32]).expose_base64(),
        c = public_key(0xcc),
        d = public_key(0xdd),
    )
}

/// The base config, parsed (panics if the fixture is wrong).
pub fn base_config() -> Config {
    Config::parse(&base_config_text(), Path::new(CONFIG_PATH)).expect("the fixture config parses")
}

/// `config` written back as TOML with every value explicit and every secret inline: parsing
/// it must give the same config ([`fingerprint`]).
pub fn render_config(config: &Config) -> String {
    let i = &config.interface;
    let mut out = String::from("[interface]\n");
    let _ = writeln!(out, "name = {}", toml_str(i.name.as_str()));
    if let Some(key) = &i.private_key {
        let _ = writeln!(out, "private-key = {}", toml_str(&key.expose_base64()));
    }
    if let Some(port) = i.listen_port {
        let _ = writeln!(out, "listen-port = {port}");
    }
    let addresses: Vec<String> = i
        .addresses
        .iter()
        .map(|c| toml_str(&c.to_string()))
        .collect();
    let _ = writeln!(out, "address = [{}]", addresses.join(", "));
    let _ = writeln!(out, "mtu = {}", i.mtu);
    if let Some(group) = &i.control_group {
        let _ = writeln!(out, "control-group = {}", toml_str(group));
    }
    if let Some(user) = &i.user {
        let _ = writeln!(out, "user = {}", toml_str(user));
    }
    if let Some(mark) = i.fwmark {
        let _ = writeln!(out, "fwmark = {mark}");
    }
    match i.table {
        RouteTable::Auto => out.push_str("table = \"auto\"\n"),
        RouteTable::Off => out.push_str("table = \"off\"\n"),
        RouteTable::Id(n) => {
            let _ = writeln!(out, "table = {n}");
        }
    }
    for peer in &config.peers {
        out.push_str("\n[[peer]]\n");
        let _ = writeln!(out, "name = {}", toml_str(&peer.name));
        let _ = writeln!(
            out,
            "public-key = {}",
            toml_str(&peer.public_key.to_string())
        );
        if let Some(psk) = &peer.preshared_key {
            let _ = writeln!(out, "preshared-key = {}", toml_str(&psk.expose_base64()));
        }
        if let Some(endpoint) = &peer.endpoint {
            let _ = writeln!(out, "endpoint = {}", toml_str(&endpoint.to_string()));
        }
        let ips: Vec<String> = peer
            .allowed_ips
            .iter()
            .map(|c| toml_str(&c.to_string()))
            .collect();
        let _ = writeln!(out, "allowed-ips = [{}]", ips.join(", "));
        if let Some(k) = peer.persistent_keepalive {
            let _ = writeln!(out, "persistent-keepalive = {k}");
        }
    }
    out
}

/// Every value of `config` that parsing decides, secrets as hex, as one comparable string.
/// (`preshared_key_file` is left out: [`render_config`] writes the key inline.)
pub fn fingerprint(config: &Config) -> String {
    let i = &config.interface;
    let hex = |b: &[u8; 32]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut out = format!(
        "name={} key={:?} port={:?} addr={:?} mtu={} group={:?} user={:?} fwmark={:?} table={:?}\n",
        i.name,
        i.private_key.as_ref().map(|k| hex(k.as_bytes())),
        i.listen_port,
        i.addresses,
        i.mtu,
        i.control_group,
        i.user,
        i.fwmark,
        i.table,
    );
    for p in &config.peers {
        let _ = writeln!(
            out,
            "peer name={:?} key={} psk={:?} endpoint={:?} ips={:?} keepalive={:?}",
            p.name,
            p.public_key,
            p.preshared_key.as_ref().map(|k| hex(k.as_bytes())),
            p.endpoint,
            p.allowed_ips,
            p.persistent_keepalive,
        );
    }
    out
}
