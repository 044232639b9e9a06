//! Importing wg-quick configuration files (`/etc/wireguard/wg0.conf`) into sitelink TOML.
//!
//! Owns: reading the INI dialect wg-quick accepts (sections and keys case-insensitive,
//! `#` comments anywhere on a line, repeated `Address`/`AllowedIPs`/`DNS` lines, comma lists),
//! mapping each setting to its sitelink equivalent or to a [`Note`] saying what to do instead,
//! and writing the TOML with the comments kept next to what they described. Doesn't own: files
//! (the caller reads the input and writes key files) or the final validation (the caller runs
//! [`crate::Config::parse`] on the result, which applies every sitelink rule).
//!
//! Keys: the result holds the private and preshared keys, and [`Import::to_toml`] writes them
//! inline or as key file paths; nothing here prints or logs them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::{Cidr, Endpoint, PresharedKey, PrivateKey, PublicKey};

/// A wg-quick file, read.
pub struct Import {
    pub interface: Interface,
    pub peers: Vec<Peer>,
    /// Settings without an equivalent, each with what to do instead.
    pub notes: Vec<Note>,
}

#[derive(Default)]
pub struct Interface {
    /// Comments above `[Interface]` (and at the top of the file).
    pub comments: Vec<String>,
    pub private_key: Option<PrivateKey>,
    pub listen_port: Option<u16>,
    pub addresses: Vec<Cidr>,
    pub mtu: Option<u16>,
    /// `"auto"`, `"off"` or a number, as sitelink writes it.
    pub table: Option<String>,
    pub fwmark: Option<u32>,
    /// Comments above or after each key, by sitelink key.
    pub key_comments: Vec<(&'static str, String)>,
}

pub struct Peer {
    pub name: String,
    pub comments: Vec<String>,
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<Endpoint>,
    pub allowed_ips: Vec<Cidr>,
    pub persistent_keepalive: Option<u16>,
    pub key_comments: Vec<(&'static str, String)>,
    /// The line of its `[Peer]` header.
    pub line: usize,
}

/// A wg-quick setting that was not imported (or was changed on the way), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub line: usize,
    pub key: String,
    pub message: String,
}

/// Input that cannot be imported: the line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ImportError {}

/// Where [`Import::to_toml`] puts the keys.
pub enum Keys<'a> {
    /// In the TOML itself (`private-key = "..."`): the output must then be mode 0600.
    Inline,
    /// As paths into this directory: [`private_key_file`] and [`preshared_key_file`].
    Files(&'a Path),
}

/// The key file of interface `name` under `dir`.
pub fn private_key_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.key"))
}

/// The preshared key file of `peer` of interface `name` under `dir`.
pub fn preshared_key_file(dir: &Path, name: &str, peer: &str) -> PathBuf {
    dir.join(format!("{name}-{peer}.psk"))
}

enum Section {
    None,
    Interface,
    Peer(Box<PeerDraft>),
}

#[derive(Default)]
struct PeerDraft {
    line: usize,
    comments: Vec<String>,
    name: Option<String>,
    public_key: Option<PublicKey>,
    preshared_key: Option<PresharedKey>,
    endpoint: Option<Endpoint>,
    allowed_ips: Vec<Cidr>,
    persistent_keepalive: Option<u16>,
    key_comments: Vec<(&'static str, String)>,
}

/// Reads wg-quick `text`.
pub fn parse(text: &str) -> Result<Import, ImportError> {
    let mut iface = Interface::default();
    let mut seen_interface = false;
    let mut peers: Vec<PeerDraft> = Vec::new();
    let mut notes = Vec::new();
    let mut section = Section::None;
    // Comment lines waiting for the next key or section.
    let mut pending: Vec<String> = Vec::new();

    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |message: String| ImportError { line, message };
        let (content, comment) = match raw.find('#') {
            Some(at) => (&raw[..at], Some(raw[at + 1..].trim().to_string())),
            None => (raw, None),
        };
        let content = content.trim();
        if content.is_empty() {
            if let Some(c) = comment.filter(|c| !c.is_empty() || !pending.is_empty()) {
                pending.push(c);
            }
            continue;
        }
        if let Some(header) = content.strip_prefix('[') {
            let Some(header) = header.strip_suffix(']') else {
                return Err(err(format!(
                    "{content:?} is not a section header; write [Interface] or [Peer]"
                )));
            };
            if let Section::Peer(p) = std::mem::replace(&mut section, Section::None) {
                peers.push(*p);
            }
            let name = pending.iter().find_map(|c| name_comment(c));
            match header.trim().to_ascii_lowercase().as_str() {
                "interface" => {
                    if seen_interface {
                        return Err(err(
                            "a second [Interface] section; a file describes one interface".into(),
                        ));
                    }
                    seen_interface = true;
                    iface.comments.append(&mut pending);
                    section = Section::Interface;
                }
                "peer" => {
                    section = Section::Peer(Box::new(PeerDraft {
                        line,
                        comments: std::mem::take(&mut pending),
                        name,
                        ..PeerDraft::default()
                    }))
                }
                other => {
                    return Err(err(format!(
                        "unknown section [{other}]; wg-quick files have [Interface] and [Peer]"
                    )))
                }
            }
            continue;
        }
        let Some((key, value)) = content.split_once('=') else {
            return Err(err(format!("{content:?} is not `Key = value`")));
        };
        let (key, value) = (key.trim(), value.trim());
        let lower = key.to_ascii_lowercase();
        let mut comments = std::mem::take(&mut pending);
        comments.extend(comment.filter(|c| !c.is_empty()));
        match &mut section {
            Section::None => {
                return Err(err(format!(
                    "{key} is outside a section; it belongs under [Interface] or [Peer]"
                )))
            }
            Section::Interface => {
                let target =
                    interface_key(&mut iface, &mut notes, line, key, &lower, value).map_err(err)?;
                if let Some(target) = target {
                    iface
                        .key_comments
                        .extend(comments.into_iter().map(|c| (target, c)));
                } else {
                    iface.comments.extend(comments);
                }
            }
            Section::Peer(p) => {
                // A name comment inside the section (before its keys) names it too.
                if p.name.is_none() {
                    p.name = comments.iter().find_map(|c| name_comment(c));
                }
                let target = peer_key(p, key, &lower, value).map_err(err)?;
                p.key_comments
                    .extend(comments.into_iter().map(|c| (target, c)));
            }
        }
    }
    if let Section::Peer(p) = section {
        peers.push(*p);
    }
    if !seen_interface {
        return Err(ImportError {
            line: 1,
            message: "no [Interface] section; this does not look like a wg-quick file".into(),
        });
    }
    let peers = name_peers(peers)?;
    Ok(Import {
        interface: iface,
        peers,
        notes,
    })
}

/// `Name = site-b`, `name: site-b`, `friendly_name = site-b` (what wg-easy and other
/// generators write above or inside a peer).
fn name_comment(comment: &str) -> Option<String> {
    let (key, value) = comment.split_once(['=', ':'])?;
    let key = key.trim().to_ascii_lowercase();
    if !matches!(key.as_str(), "name" | "friendly_name" | "peer") {
        return None;
    }
    let name: String = value
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    (!name.trim_matches('-').is_empty()).then(|| name.trim_matches('-').to_string())
}

/// Applies an `[Interface]` key; returns the sitelink key it became (for its comments).
fn interface_key(
    iface: &mut Interface,
    notes: &mut Vec<Note>,
    line: usize,
    key: &str,
    lower: &str,
    value: &str,
) -> Result<Option<&'static str>, String> {
    let mut note = |message: &str| {
        notes.push(Note {
            line,
            key: key.to_string(),
            message: message.to_string(),
        })
    };
    Ok(Some(match lower {
        "privatekey" => {
            iface.private_key = Some(
                value
                    .parse()
                    .map_err(|e| format!("PrivateKey: not a valid key ({e}); `wg genkey` makes one"))?,
            );
            "private-key"
        }
        "listenport" => {
            let port: u16 = value
                .parse()
                .map_err(|_| format!("ListenPort: {value:?} is not a port (1-65535)"))?;
            iface.listen_port = (port != 0).then_some(port);
            "listen-port"
        }
        "address" => {
            for item in list(value) {
                iface.addresses.push(cidr_or_host(item).map_err(|e| format!("Address: {e}"))?);
            }
            "address"
        }
        "mtu" => {
            iface.mtu = Some(
                value
                    .parse()
                    .map_err(|_| format!("MTU: {value:?} is not a number"))?,
            );
            "mtu"
        }
        "table" => {
            let table = match value.to_ascii_lowercase().as_str() {
                "off" => "off".to_string(),
                "auto" => "auto".to_string(),
                "main" => {
                    note("Table = main became table = \"auto\": routes go into the main table, default routes into their own table with rules, so the tunnel's packets do not loop");
                    "auto".to_string()
                }
                number => number
                    .parse::<u32>()
                    .map_err(|_| format!("Table: {value:?} is not auto, off, main or a number"))?
                    .to_string(),
            };
            iface.table = Some(table);
            "table"
        }
        "fwmark" => {
            iface.fwmark = if value.eq_ignore_ascii_case("off") {
                None
            } else {
                let mark = match value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")) {
                    Some(hex) => u32::from_str_radix(hex, 16),
                    None => value.parse(),
                }
                .map_err(|_| format!("FwMark: {value:?} is not a number (decimal or 0x hex) or off"))?;
                (mark != 0).then_some(mark)
            };
            "fwmark"
        }
        "dns" => {
            note("not imported: sitelink does not change the host's resolver; site-to-site gateways usually keep theirs. Configure DNS on the hosts (resolvectl, /etc/resolv.conf) if needed");
            return Ok(None);
        }
        "preup" | "postup" | "predown" | "postdown" => {
            note("not imported: sitelink runs no hook commands. Firewall and NAT rules belong in nftables (/etc/nftables.conf); something that must run with the tunnel can be a systemd unit with After=/BindsTo=sitelinkd@NAME.service");
            return Ok(None);
        }
        "saveconfig" => {
            note("not imported: use `sitelinkctl save` (or --save on peer changes), which writes the running peers back into the TOML keeping comments");
            return Ok(None);
        }
        _ => return Err(format!("{key} is not a wg-quick [Interface] setting (PrivateKey, ListenPort, Address, MTU, Table, FwMark, DNS, PreUp, PostUp, PreDown, PostDown, SaveConfig)")),
    }))
}

/// Applies a `[Peer]` key; returns the sitelink key it became.
fn peer_key(
    p: &mut PeerDraft,
    key: &str,
    lower: &str,
    value: &str,
) -> Result<&'static str, String> {
    Ok(match lower {
        "publickey" => {
            p.public_key = Some(value.parse().map_err(|e| {
                format!("PublicKey: not a valid key ({e}); it is the peer's `wg pubkey` output")
            })?);
            "public-key"
        }
        "presharedkey" => {
            p.preshared_key = Some(
                value
                    .parse()
                    .map_err(|e| format!("PresharedKey: not a valid key ({e})"))?,
            );
            "preshared-key"
        }
        "endpoint" => {
            p.endpoint = Some(value.parse().map_err(|e| {
                format!("Endpoint: {e}; write host:port, IPv4:port or [IPv6]:port")
            })?);
            "endpoint"
        }
        "allowedips" => {
            for item in list(value) {
                let cidr = cidr_or_host(item).map_err(|e| format!("AllowedIPs: {e}"))?;
                // wg masks host bits away; sitelink insists on the network form.
                let cidr = cidr.network();
                if !p.allowed_ips.contains(&cidr) {
                    p.allowed_ips.push(cidr);
                }
            }
            "allowed-ips"
        }
        "persistentkeepalive" => {
            p.persistent_keepalive = if value.eq_ignore_ascii_case("off") {
                None
            } else {
                let seconds: u16 = value.parse().map_err(|_| {
                    format!("PersistentKeepalive: {value:?} is not a number of seconds (0-65535) or off")
                })?;
                (seconds != 0).then_some(seconds)
            };
            "persistent-keepalive"
        }
        _ => {
            return Err(format!(
                "{key} is not a wg-quick [Peer] setting (PublicKey, PresharedKey, Endpoint, AllowedIPs, PersistentKeepalive)"
            ))
        }
    })
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// `198.18.0.1/24`, or a bare address (a host: /32 or /128), as wg-quick takes them.
fn cidr_or_host(text: &str) -> Result<Cidr, String> {
    if text.contains('/') {
        return text.parse().map_err(|e| format!("{text:?}: {e}"));
    }
    let addr: std::net::IpAddr = text
        .parse()
        .map_err(|_| format!("{text:?} is not an address or prefix"))?;
    let prefix = if addr.is_ipv4() { 32 } else { 128 };
    Cidr::new(addr, prefix).map_err(|e| format!("{text:?}: {e}"))
}

/// Gives every peer a unique name: its name comment, else `wg-` and 8 hex digits of its key
/// (what peers added through `wg` are called).
fn name_peers(drafts: Vec<PeerDraft>) -> Result<Vec<Peer>, ImportError> {
    let mut taken = std::collections::HashSet::new();
    let mut peers = Vec::with_capacity(drafts.len());
    for d in drafts {
        let Some(public_key) = d.public_key else {
            return Err(ImportError {
                line: d.line,
                message: "this [Peer] has no PublicKey".into(),
            });
        };
        let base = d
            .name
            .unwrap_or_else(|| format!("wg-{}", &public_key.to_hex()[..8]));
        let mut name = base.clone();
        let mut n = 2;
        while !taken.insert(name.clone()) {
            name = format!("{base}-{n}");
            n += 1;
        }
        peers.push(Peer {
            name,
            comments: d.comments,
            public_key,
            preshared_key: d.preshared_key,
            endpoint: d.endpoint,
            allowed_ips: d.allowed_ips,
            persistent_keepalive: d.persistent_keepalive,
            key_comments: d.key_comments,
            line: d.line,
        });
    }
    Ok(peers)
}

impl Import {
    /// The sitelink TOML for interface `name`, keys placed per `keys`.
    pub fn to_toml(&self, name: &str, source: &str, keys: Keys<'_>) -> String {
        let mut out = format!("# Imported from {source} by `sitelinkctl import`.\n");
        let i = &self.interface;
        for c in &i.comments {
            comment(&mut out, c);
        }
        out.push_str("[interface]\n");
        let _ = writeln!(out, "name = {}", quote(name));
        let key_line = |out: &mut String, comments: &[(&str, String)], key: &str, value: String| {
            for (_, c) in comments.iter().filter(|(k, _)| *k == key) {
                comment(out, c);
            }
            let _ = writeln!(out, "{key} = {value}");
        };
        match (&i.private_key, &keys) {
            (Some(k), Keys::Inline) => key_line(
                &mut out,
                &i.key_comments,
                "private-key",
                quote(&k.expose_base64()),
            ),
            (Some(_), Keys::Files(dir)) => key_line(
                &mut out,
                &i.key_comments,
                "private-key-file",
                quote(&private_key_file(dir, name).display().to_string()),
            ),
            (None, _) => {
                out.push_str("# no PrivateKey in the wg-quick file: add private-key-file\n")
            }
        }
        if let Some(port) = i.listen_port {
            key_line(&mut out, &i.key_comments, "listen-port", port.to_string());
        }
        if !i.addresses.is_empty() {
            key_line(&mut out, &i.key_comments, "address", array(&i.addresses));
        }
        if let Some(mtu) = i.mtu {
            key_line(&mut out, &i.key_comments, "mtu", mtu.to_string());
        }
        if let Some(table) = &i.table {
            let value = if table.parse::<u32>().is_ok() {
                table.clone()
            } else {
                quote(table)
            };
            key_line(&mut out, &i.key_comments, "table", value);
        }
        if let Some(mark) = i.fwmark {
            key_line(&mut out, &i.key_comments, "fwmark", format!("{mark:#x}"));
        }
        for p in &self.peers {
            out.push('\n');
            for c in &p.comments {
                comment(&mut out, c);
            }
            out.push_str("[[peer]]\n");
            let _ = writeln!(out, "name = {}", quote(&p.name));
            key_line(
                &mut out,
                &p.key_comments,
                "public-key",
                quote(&p.public_key.to_string()),
            );
            match (&p.preshared_key, &keys) {
                (Some(k), Keys::Inline) => key_line(
                    &mut out,
                    &p.key_comments,
                    "preshared-key",
                    quote(&k.expose_base64()),
                ),
                (Some(_), Keys::Files(dir)) => key_line(
                    &mut out,
                    &p.key_comments,
                    "preshared-key-file",
                    quote(&preshared_key_file(dir, name, &p.name).display().to_string()),
                ),
                (None, _) => {}
            }
            if let Some(e) = &p.endpoint {
                key_line(&mut out, &p.key_comments, "endpoint", quote(&e.to_string()));
            }
            key_line(
                &mut out,
                &p.key_comments,
                "allowed-ips",
                array(&p.allowed_ips),
            );
            if let Some(k) = p.persistent_keepalive {
                key_line(
                    &mut out,
                    &p.key_comments,
                    "persistent-keepalive",
                    k.to_string(),
                );
            }
        }
        out
    }
}

fn comment(out: &mut String, text: &str) {
    if text.is_empty() {
        out.push_str("#\n");
    } else {
        let _ = writeln!(out, "# {text}");
    }
}

/// A TOML basic string.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn array(items: &[Cidr]) -> String {
    let inner: Vec<String> = items.iter().map(|c| quote(&c.to_string())).collect();
    format!("[{}]", inner.join(", "))
}

#[cfg(test)]
mod tests;
