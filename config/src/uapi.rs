//! The WireGuard cross-platform userspace API (UAPI, <https://www.wireguard.com/xplatform/>):
//! the text protocol that stock `wg show`, `wg set`, `wg syncconf` and `wg showconf` speak on
//! `/var/run/wireguard/<name>.sock`.
//!
//! This module owns the protocol and nothing else: reading one request ([`read_request`] from
//! a reader, or line by line with a [`RequestParser`], which is how the daemon streams a `set`
//! of many megabytes without holding its text), turning a `set` into the desired [`Config`]
//! ([`apply_set`]) and writing replies
//! ([`format_get`], [`format_errno`], [`OK_REPLY`]). It owns no socket and changes nothing: the
//! daemon accepts connections, validates the config [`apply_set`] returns with the same checks
//! as a config reload, and applies it through the same path. So a `set` takes effect completely
//! or not at all, where wireguard-go applies each line as it reads it and stops at the first
//! bad one.
//!
//! Semantics follow wireguard-go (`device/uapi.go`), with these deliberate differences:
//! - a `set` must end with its blank line; one cut short by EOF is refused (`EPROTO`) rather
//!   than applied as far as it got;
//! - `listen_port=0` (what `wg setconf` sends for a file without `ListenPort`) keeps the port
//!   in use instead of moving to a random one;
//! - `protocol_version` other than 1 is refused with `EPROTONOSUPPORT`, as the Linux kernel
//!   does (wireguard-go says `EINVAL`);
//! - an unknown operation gets an `EINVAL` reply (wireguard-go closes the connection silently);
//! - the private key is kept exactly as sent (wireguard-go clamps it; X25519 clamps anyway, so
//!   only the bytes `get` echoes differ).
//!
//! Replies carry Linux errno values, negated as wireguard-go sends them (`errno=-22`); wg(8)
//! negates them back and prints `strerror`.

use std::sync::Arc;

use foldhash::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::io::{self, BufRead, Read as _};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

use crate::{Cidr, Config, Endpoint, Peer, PresharedKey, PrivateKey, PublicKey};

/// The Linux errno values this module answers with (sent negated, e.g. `errno=-22`).
pub mod errno {
    /// Reading the request failed.
    pub const EIO: i32 = 5;
    /// A key or value is not acceptable.
    pub const EINVAL: i32 = 22;
    /// The request is not framed as the protocol says (no `=`, cut short, not UTF-8).
    pub const EPROTO: i32 = 71;
    /// The request is longer than the daemon accepts.
    pub const EMSGSIZE: i32 = 90;
    /// A port that is taken.
    pub const EADDRINUSE: i32 = 98;
    /// `protocol_version` other than 1.
    pub const EPROTONOSUPPORT: i32 = 93;
    /// A setting sitelink does not implement.
    pub const EOPNOTSUPP: i32 = 95;
}

/// The reply to a successful `set` (a successful `get` ends with it too).
pub const OK_REPLY: &str = "errno=0\n\n";

/// The largest part of a client's text quoted back in an error message.
const QUOTE_MAX: usize = 40;

// ---------------------------------------------------------------------------------------------
// Errors.

/// An error reply: `errno=-<errno>` like wireguard-go, plus a message for our log.
///
/// Messages never contain key material: a bad key is described by its length or the position
/// of the bad character, not quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UapiError {
    /// A positive Linux errno, e.g. [`errno::EINVAL`]; the reply sends it negated.
    pub errno: i32,
    /// What was wrong, with the request line it was found on.
    pub message: String,
}

impl UapiError {
    /// An error with `errno` (positive) and `message`.
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        Self {
            errno,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(errno::EINVAL, message)
    }

    fn protocol(message: impl Into<String>) -> Self {
        Self::new(errno::EPROTO, message)
    }

    fn at_line(self, line: usize) -> Self {
        Self {
            errno: self.errno,
            message: format!("line {line}: {}", self.message),
        }
    }
}

impl fmt::Display for UapiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.errno {
            errno::EIO => "EIO",
            errno::EINVAL => "EINVAL",
            errno::EPROTO => "EPROTO",
            errno::EMSGSIZE => "EMSGSIZE",
            errno::EPROTONOSUPPORT => "EPROTONOSUPPORT",
            errno::EOPNOTSUPP => "EOPNOTSUPP",
            errno::EADDRINUSE => "EADDRINUSE",
            _ => return write!(f, "{} (errno {})", self.message, self.errno),
        };
        write!(f, "{} ({name})", self.message)
    }
}

impl std::error::Error for UapiError {}

/// An error reply, `errno=-N\n\n`. An errno of 0 or below is answered as `EIO`: an error must
/// never read as success.
pub fn format_errno(e: &UapiError) -> String {
    let errno = Some(e.errno).filter(|&n| n > 0).unwrap_or(errno::EIO);
    format!("errno=-{errno}\n\n")
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// One request from a UAPI client.
#[derive(Debug, Clone)]
pub enum Request {
    /// `get=1`: report the device; answer with [`format_get`].
    Get,
    /// `set=1`: change the device; turn into a config with [`apply_set`].
    Set(DeviceSet),
}

/// The lines of a `set` request, parsed. Fields left `None`/`false`/empty change nothing.
#[derive(Debug, Clone, Default)]
pub struct DeviceSet {
    /// `private_key`: the interface's new private key; all-zero means "no key".
    pub private_key: Option<PrivateKey>,
    /// `listen_port`: `Some(0)` means no particular port.
    pub listen_port: Option<u16>,
    /// `fwmark`: `Some(0)` removes the mark.
    pub fwmark: Option<u32>,
    /// `replace_peers=true`: remove every existing peer before processing `peers`.
    pub replace_peers: bool,
    /// One entry per `public_key=` line, in request order (a key may appear more than once).
    pub peers: Vec<PeerSet>,
}

/// The lines after one `public_key=`, parsed.
#[derive(Debug, Clone)]
pub struct PeerSet {
    /// `public_key`: the peer these lines are about.
    pub public_key: PublicKey,
    /// `remove=true`: remove the peer; every other field of this entry is then ignored.
    pub remove: bool,
    /// `update_only=true`: change the peer only if it exists; never create it.
    pub update_only: bool,
    /// `preshared_key`: `Some(None)` (an all-zero key on the wire) removes the key.
    pub preshared_key: Option<Option<PresharedKey>>,
    /// `endpoint`: always an IP literal and port (wg resolves names before sending).
    pub endpoint: Option<Endpoint>,
    /// `persistent_keepalive_interval` in seconds; `Some(0)` turns keepalives off.
    pub persistent_keepalive: Option<u16>,
    /// `replace_allowed_ips=true`: remove the peer's allowed-ips before adding `allowed_ips`.
    ///
    /// When parsed, a `replace_allowed_ips` after some `allowed_ip` lines also drops those
    /// from `allowed_ips`, so that this order of application is the order of the request.
    pub replace_allowed_ips: bool,
    /// `allowed_ip` lines in order: `(true, cidr)` adds, `(false, cidr)` (sent as `-cidr`)
    /// removes.
    pub allowed_ips: Vec<(bool, Cidr)>,
    /// `protocol_version`: must be 1 if present.
    pub protocol_version: Option<u32>,
}

impl PeerSet {
    /// An entry for `public_key` that changes nothing yet.
    pub fn new(public_key: PublicKey) -> Self {
        Self {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
            protocol_version: None,
        }
    }
}

/// Reads one request from a UAPI client: `get=1\n\n`, or `set=1\n` + `key=value` lines + `\n`.
///
/// Returns `Ok(None)` on a clean EOF before the first byte (the client is done). Reads at most
/// `max_bytes` of this request, and never past its end, so a client may send several requests
/// on one connection. After an error the position in `r` is unspecified: send the error reply
/// and close the connection.
///
/// Errors: a request over `max_bytes` ([`errno::EMSGSIZE`]); a line without `=`, a request cut
/// short by EOF, non-UTF-8 text ([`errno::EPROTO`]); an unknown operation or key, a bad value, a
/// key in the wrong place ([`errno::EINVAL`]); `protocol_version` other than 1
/// ([`errno::EPROTONOSUPPORT`]); a read error ([`errno::EIO`]). Values are checked for form
/// here; what they mean for the interface is [`apply_set`]'s question.
pub fn read_request(r: &mut impl BufRead, max_bytes: usize) -> Result<Option<Request>, UapiError> {
    let mut reader = LineReader {
        inner: r,
        max_bytes,
        remaining: max_bytes,
        line: Zeroizing::new(Vec::with_capacity(LINE_CAPACITY)),
        line_no: 0,
    };
    if reader.at_eof()? {
        return Ok(None);
    }
    let mut parser = RequestParser::new();
    loop {
        let line = reader.next_line()?;
        if let Some(request) = parser.line(line)? {
            return Ok(Some(request));
        }
    }
}

/// Room for any line wg sends (the longest is a 76-byte key line), so that a line holding a
/// private key is never copied by a reallocation that would leave it unwiped.
pub const LINE_CAPACITY: usize = 256;

/// Reads lines of one request, counting bytes against its limit.
struct LineReader<'r, R> {
    inner: &'r mut R,
    max_bytes: usize,
    remaining: usize,
    /// The current line; wiped when dropped because it may hold a private key.
    line: Zeroizing<Vec<u8>>,
    line_no: usize,
}

impl<R: BufRead> LineReader<'_, R> {
    fn at_eof(&mut self) -> Result<bool, UapiError> {
        loop {
            match self.inner.fill_buf() {
                Ok(buf) => return Ok(buf.is_empty()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(&e)),
            }
        }
    }

    /// The next line's text, without its `\n`.
    fn next_line(&mut self) -> Result<&[u8], UapiError> {
        self.line.clear();
        self.line_no += 1;
        if self.remaining == 0 {
            return Err(too_big(self.line_no, self.max_bytes));
        }
        let limit = u64::try_from(self.remaining).unwrap_or(u64::MAX);
        let read = (&mut *self.inner)
            .take(limit)
            .read_until(b'\n', &mut self.line)
            .map_err(|e| read_error(&e))?;
        self.remaining -= read;
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
            return Ok(&self.line);
        }
        if self.remaining == 0 {
            return Err(too_big(self.line_no, self.max_bytes));
        }
        Err(cut_short(self.line_no))
    }
}

/// The error for a request longer than `max_bytes`, found at line `line`.
pub fn too_big(line: usize, max_bytes: usize) -> UapiError {
    UapiError::new(
        errno::EMSGSIZE,
        format!("line {line}: the request is longer than {max_bytes} bytes"),
    )
}

/// Parses one request fed to it a line at a time, so that a caller reading a socket can
/// stream a `set` of any length: memory grows with what the request asks for (peers and
/// prefixes), never with its text. The caller bounds the bytes it reads.
#[derive(Debug)]
pub struct RequestParser {
    line_no: usize,
    state: ParseState,
}

#[derive(Debug)]
enum ParseState {
    /// Expecting `get=1` or `set=1`.
    Operation,
    /// After `get=1`: expecting the blank line.
    Get,
    Set(DeviceSet),
    /// A request was returned; feeding more is an error.
    Done,
}

impl Default for RequestParser {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestParser {
    pub fn new() -> Self {
        Self {
            line_no: 0,
            state: ParseState::Operation,
        }
    }

    /// The number of lines fed so far.
    pub fn line_no(&self) -> usize {
        self.line_no
    }

    /// Whether a `set` is being read (the caller then knows that lines follow until a blank
    /// one, which it must read to the end before replying to an error).
    pub fn in_set(&self) -> bool {
        matches!(self.state, ParseState::Set(_))
    }

    /// Feeds the next line, without its `\n`. Returns the request once its blank line came.
    /// Errors name the line.
    pub fn line(&mut self, raw: &[u8]) -> Result<Option<Request>, UapiError> {
        self.line_no += 1;
        let line_no = self.line_no;
        match &mut self.state {
            ParseState::Operation => {
                self.state = match raw {
                    b"get=1" => ParseState::Get,
                    b"set=1" => ParseState::Set(DeviceSet::default()),
                    other => {
                        return Err(UapiError::invalid(format!(
                            "line {line_no}: unknown operation {}; expected get=1 or set=1",
                            quote(&String::from_utf8_lossy(other))
                        )))
                    }
                };
                Ok(None)
            }
            ParseState::Get => {
                if !raw.is_empty() {
                    return Err(UapiError::invalid(format!(
                        "line {line_no}: unexpected {} after get=1; a get request is \"get=1\\n\\n\"",
                        quote(&String::from_utf8_lossy(raw))
                    )));
                }
                self.state = ParseState::Done;
                Ok(Some(Request::Get))
            }
            ParseState::Set(set) => {
                // wireguard-go's line scanner drops a `\r` before the `\n`; so do we.
                let line = raw.strip_suffix(b"\r").unwrap_or(raw);
                if line.is_empty() {
                    let set = std::mem::take(set);
                    self.state = ParseState::Done;
                    return Ok(Some(Request::Set(set)));
                }
                set_line(set, line).map_err(|e| e.at_line(line_no))?;
                Ok(None)
            }
            ParseState::Done => Err(UapiError::invalid(format!(
                "line {line_no}: text after the end of the request"
            ))),
        }
    }
}

fn read_error(e: &io::Error) -> UapiError {
    UapiError::new(errno::EIO, format!("reading the request failed: {e}"))
}

fn cut_short(line: usize) -> UapiError {
    UapiError::protocol(format!(
        "line {line}: the request ended before the blank line that terminates it"
    ))
}

/// `text` in quotes and escaped, shortened to [`QUOTE_MAX`] characters.
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_MAX) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}

/// The keys allowed before the first `public_key`, and after it.
const DEVICE_KEYS: [&str; 4] = ["private_key", "listen_port", "fwmark", "replace_peers"];
const PEER_KEYS: [&str; 8] = [
    "update_only",
    "remove",
    "preshared_key",
    "endpoint",
    "persistent_keepalive_interval",
    "replace_allowed_ips",
    "allowed_ip",
    "protocol_version",
];

/// One `key=value` line of a `set`.
fn set_line(set: &mut DeviceSet, line: &[u8]) -> Result<(), UapiError> {
    let Ok(text) = std::str::from_utf8(line) else {
        return Err(UapiError::protocol("not UTF-8 text"));
    };
    let Some((key, value)) = text.split_once('=') else {
        return Err(UapiError::protocol(format!(
            "expected key=value, found {}",
            quote(text)
        )));
    };
    if key == "public_key" {
        let bytes = hex_key(key, value)?;
        set.peers.push(PeerSet::new(PublicKey::from_bytes(*bytes)));
        return Ok(());
    }
    match set.peers.last_mut() {
        Some(peer) => peer_line(peer, key, value),
        None => device_line(set, key, value),
    }
}

fn device_line(set: &mut DeviceSet, key: &str, value: &str) -> Result<(), UapiError> {
    match key {
        "private_key" => {
            let bytes = hex_key(key, value)?;
            set.private_key = Some(PrivateKey::from_bytes(*bytes));
        }
        "listen_port" => set.listen_port = Some(number(key, value, "a port number (0-65535)")?),
        "fwmark" => set.fwmark = Some(number(key, value, "a number (0-4294967295)")?),
        "replace_peers" => set.replace_peers = flag(key, value)?,
        _ if PEER_KEYS.contains(&key) => {
            return Err(UapiError::invalid(format!(
                "{key} is a peer key; it must follow the public_key line of the peer it changes"
            )))
        }
        _ => {
            return Err(UapiError::invalid(format!(
                "unknown device key {}; expected one of {}, or public_key",
                quote(key),
                DEVICE_KEYS.join(", ")
            )))
        }
    }
    Ok(())
}

fn peer_line(peer: &mut PeerSet, key: &str, value: &str) -> Result<(), UapiError> {
    match key {
        "update_only" => peer.update_only = flag(key, value)?,
        "remove" => peer.remove = flag(key, value)?,
        "preshared_key" => {
            let bytes = hex_key(key, value)?;
            peer.preshared_key =
                Some((*bytes != [0; 32]).then(|| PresharedKey::from_bytes(*bytes)));
        }
        "endpoint" => peer.endpoint = Some(ip_endpoint(value)?),
        "persistent_keepalive_interval" => {
            peer.persistent_keepalive = Some(number(key, value, "a number of seconds (0-65535)")?);
        }
        "replace_allowed_ips" => {
            peer.replace_allowed_ips = flag(key, value)?;
            // Replacing drops what earlier lines of this peer added, too.
            peer.allowed_ips.clear();
        }
        "allowed_ip" => {
            let (add, text) = match value.strip_prefix('-') {
                Some(rest) => (false, rest),
                None => (true, value),
            };
            let cidr = text
                .contains('/')
                .then(|| text.parse::<Cidr>())
                .ok_or_else(|| {
                    UapiError::invalid(format!(
                        "allowed_ip: {} has no /prefix; expected e.g. 198.19.2.0/24",
                        quote(text)
                    ))
                })?
                .map_err(|e| UapiError::invalid(format!("allowed_ip: {e}")))?;
            peer.allowed_ips.push((add, cidr));
        }
        "protocol_version" => {
            let version = number(key, value, "a number")?;
            check_protocol_version(version)?;
            peer.protocol_version = Some(version);
        }
        _ if DEVICE_KEYS.contains(&key) => {
            return Err(UapiError::invalid(format!(
                "{key} is a device key; device keys must come before the first public_key line"
            )))
        }
        _ => {
            return Err(UapiError::invalid(format!(
                "unknown peer key {}; expected one of {}, or public_key",
                quote(key),
                PEER_KEYS.join(", ")
            )))
        }
    }
    Ok(())
}

/// A 32-byte key written as 64 hex digits (either case). The error names `key` but never
/// quotes the value: it may be a secret.
fn hex_key(key: &str, value: &str) -> Result<Zeroizing<[u8; 32]>, UapiError> {
    if value.len() != 64 {
        return Err(UapiError::invalid(format!(
            "{key}: expected 64 hex digits, found {} characters",
            value.chars().count()
        )));
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    let digits = value.as_bytes();
    for (i, byte) in bytes.iter_mut().enumerate() {
        let digit = |at: usize| {
            char::from(digits[at]).to_digit(16).ok_or_else(|| {
                UapiError::invalid(format!(
                    "{key}: character {} is not a hex digit; expected 64 hex digits",
                    at + 1
                ))
            })
        };
        // Both digits are below 16, so the value fits in a byte.
        *byte = (digit(2 * i)? * 16 + digit(2 * i + 1)?) as u8;
    }
    Ok(bytes)
}

/// A decimal number of type `T`: digits only, like Go's `strconv.ParseUint` (no sign, no
/// spaces).
fn number<T: std::str::FromStr>(key: &str, value: &str, what: &str) -> Result<T, UapiError> {
    value
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| value.parse().ok())
        .flatten()
        .ok_or_else(|| UapiError::invalid(format!("{key}: {} is not {what}", quote(value))))
}

/// The value of a flag key, which must be `true` (there is no way to send `false`).
fn flag(key: &str, value: &str) -> Result<bool, UapiError> {
    if value == "true" {
        return Ok(true);
    }
    Err(UapiError::invalid(format!(
        "{key}: the only valid value is true, found {}",
        quote(value)
    )))
}

fn ip_endpoint(value: &str) -> Result<Endpoint, UapiError> {
    let endpoint: Endpoint = value
        .parse()
        .map_err(|e| UapiError::invalid(format!("endpoint: {e}")))?;
    if endpoint.ip().is_none() {
        return Err(UapiError::invalid(format!(
            "endpoint: {} is not an IP address and port; UAPI clients resolve names before \
             sending them",
            quote(value)
        )));
    }
    Ok(endpoint)
}

fn check_protocol_version(version: u32) -> Result<(), UapiError> {
    if version == 1 {
        return Ok(());
    }
    Err(UapiError::new(
        errno::EPROTONOSUPPORT,
        format!("protocol_version: {version} is not supported; only version 1 exists"),
    ))
}

// ---------------------------------------------------------------------------------------------
// Applying a set.

/// The desired config after applying `set` to `current`, with WireGuard semantics.
///
/// In order: `private_key` (all-zero means no key: the interface then sends and answers no
/// handshakes; a peer holding the new key's public half is removed, as wireguard-go does),
/// `listen_port` (0 means no particular port: the one in use stays), `fwmark` (0 removes the
/// mark), `replace_peers` (every existing peer is removed, then the listed ones are processed
/// as new), then each peer entry in request order:
/// - `protocol_version` other than 1 fails ([`errno::EPROTONOSUPPORT`]);
/// - an entry for the interface's own public key is ignored, as wireguard-go does;
/// - `remove` removes the peer if it exists, and nothing else in the entry counts;
/// - an unknown key is skipped with `update_only`, else becomes a new peer with no endpoint,
///   keys or allowed-ips. It is named as it was in `current` if it was there (a peer re-created
///   by `replace_peers` or `remove` keeps its name), else `wg-` + the first 8 hex digits of its
///   key, with `-2`, `-3`, ... added if that name is taken;
/// - `preshared_key` sets or (all-zero) removes the key and drops `preshared_key_file`, except
///   that the very key `current` has for this peer keeps its file reference (so `wg syncconf`
///   of `wg showconf` output does not turn key files into inline secrets);
/// - `endpoint`; `persistent_keepalive_interval` (0 turns keepalives off);
/// - `replace_allowed_ips` clears the peer's allowed-ips; each `allowed_ip` then adds (host bits
///   cleared, like wg) or removes a prefix. Adding a prefix another peer has moves it to this
///   peer, as WireGuard's routing table does; removing one the peer lacks changes nothing.
///   Prefixes of different peers may nest (routing picks the longest match).
///
/// Does not validate rules across peers: the daemon validates the result as it validates a
/// reloaded config file.
pub fn apply_set(current: &Config, set: &DeviceSet) -> Result<Config, UapiError> {
    let mut interface = current.interface.clone();
    if let Some(key) = &set.private_key {
        interface.private_key = (key.as_bytes() != &[0; 32]).then(|| key.clone());
    }
    if let Some(port) = set.listen_port {
        interface.listen_port = (port != 0).then_some(port);
    }
    if let Some(mark) = set.fwmark {
        interface.fwmark = (mark != 0).then_some(mark);
    }

    let own_key = interface.public_key();
    let mut peers = Peers::new(current, set.replace_peers);
    if let (Some(_), Some(own)) = (&set.private_key, &own_key) {
        peers.remove(own);
    }
    for entry in &set.peers {
        if let Some(version) = entry.protocol_version {
            check_protocol_version(version).map_err(|e| UapiError {
                errno: e.errno,
                message: format!("peer {}: {}", entry.public_key, e.message),
            })?;
        }
        if Some(entry.public_key) == own_key {
            continue;
        }
        if entry.remove {
            peers.remove(&entry.public_key);
            continue;
        }
        let slot = match peers.slot_of(&entry.public_key) {
            Some(slot) => slot,
            None if entry.update_only => continue,
            None => peers.create(entry.public_key),
        };
        peers.update(slot, entry);
    }

    Ok(Config {
        path: current.path.clone(),
        interface,
        peers: peers.finish(),
    })
}

/// The peer list while a set is applied. Removed peers stay in `slots` (marked dead) so that
/// indexes stay valid; allowed-ips are owned through `owner`, and a touched peer's own list may
/// hold stale or repeated entries until [`Peers::finish`] filters it. Every step is a hash
/// lookup, so a request of many thousands of lines costs linear time; peers the request does
/// not touch stay the very `Arc` they were, so the daemon sees at once that they are unchanged.
struct Peers<'c> {
    slots: Vec<Slot>,
    by_key: HashMap<PublicKey, usize>,
    /// Which slot each allowed-ip belongs to now.
    owner: HashMap<Cidr, usize>,
    names: HashSet<String>,
    /// The peers of the current config, for names and key files of re-created peers.
    previous: HashMap<PublicKey, &'c Peer>,
}

struct Slot {
    peer: Arc<Peer>,
    live: bool,
    /// Changed by the request (its allowed-ips need filtering in `finish`).
    touched: bool,
}

impl<'c> Peers<'c> {
    fn new(current: &'c Config, replace: bool) -> Self {
        let n = current.peers.len();
        let mut peers = Peers {
            slots: Vec::with_capacity(n),
            by_key: HashMap::with_capacity_and_hasher(n, Default::default()),
            owner: HashMap::default(),
            names: HashSet::with_capacity_and_hasher(n, Default::default()),
            previous: current.peers.iter().map(|p| (p.public_key, &**p)).collect(),
        };
        if replace {
            return peers;
        }
        for peer in &current.peers {
            let slot = peers.slots.len();
            peers.by_key.insert(peer.public_key, slot);
            peers.names.insert(peer.name.clone());
            for cidr in &peer.allowed_ips {
                peers.owner.insert(*cidr, slot);
            }
            peers.slots.push(Slot {
                peer: Arc::clone(peer),
                live: true,
                touched: false,
            });
        }
        peers
    }

    fn slot_of(&self, key: &PublicKey) -> Option<usize> {
        self.by_key.get(key).copied()
    }

    /// Peer `slot` for changing.
    fn peer_mut(&mut self, slot: usize) -> &mut Peer {
        let entry = &mut self.slots[slot];
        entry.touched = true;
        Arc::make_mut(&mut entry.peer)
    }

    fn remove(&mut self, key: &PublicKey) {
        let Some(slot) = self.by_key.remove(key) else {
            return;
        };
        self.clear_allowed_ips(slot);
        let entry = &mut self.slots[slot];
        entry.live = false;
        self.names.remove(&entry.peer.name);
    }

    /// Adds a peer with nothing but its key and a name.
    fn create(&mut self, key: PublicKey) -> usize {
        let name = match self.previous.get(&key) {
            Some(old) if !self.names.contains(&old.name) => old.name.clone(),
            _ => self.fresh_name(&key),
        };
        let slot = self.slots.len();
        self.by_key.insert(key, slot);
        self.names.insert(name.clone());
        self.slots.push(Slot {
            peer: Arc::new(Peer {
                name,
                public_key: key,
                preshared_key: None,
                preshared_key_file: None,
                endpoint: None,
                allowed_ips: Vec::new(),
                persistent_keepalive: None,
                allowed_endpoints: Vec::new(),
                more_endpoints: Vec::new(),
            }),
            live: true,
            touched: true,
        });
        slot
    }

    /// `wg-` and the first 8 hex digits of the key; `-2`, `-3`, ... appended while taken.
    fn fresh_name(&self, key: &PublicKey) -> String {
        let mut base = key.to_hex();
        base.truncate(8);
        let base = format!("wg-{base}");
        let mut name = base.clone();
        let mut n = 2u32;
        while self.names.contains(&name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        name
    }

    fn clear_allowed_ips(&mut self, slot: usize) {
        for cidr in std::mem::take(&mut self.peer_mut(slot).allowed_ips) {
            if self.owner.get(&cidr) == Some(&slot) {
                self.owner.remove(&cidr);
            }
        }
    }

    fn update(&mut self, slot: usize, entry: &PeerSet) {
        if let Some(psk) = &entry.preshared_key {
            let previous = self.previous.get(&entry.public_key).copied();
            let file = previous.and_then(|old| {
                let same = match (psk, &old.preshared_key) {
                    (Some(new), Some(old_key)) => new.as_bytes() == old_key.as_bytes(),
                    _ => false,
                };
                same.then(|| old.preshared_key_file.clone()).flatten()
            });
            let peer = self.peer_mut(slot);
            peer.preshared_key = psk.clone();
            peer.preshared_key_file = file;
        }
        let peer = self.peer_mut(slot);
        if let Some(endpoint) = &entry.endpoint {
            peer.endpoint = Some(endpoint.clone());
            // `wg set ... endpoint` names one endpoint: it replaces a configured list.
            peer.more_endpoints.clear();
        }
        if let Some(seconds) = entry.persistent_keepalive {
            peer.persistent_keepalive = (seconds != 0).then_some(seconds);
        }
        if entry.replace_allowed_ips {
            self.clear_allowed_ips(slot);
        }
        for &(add, cidr) in &entry.allowed_ips {
            let cidr = cidr.network();
            if add {
                match self.owner.insert(cidr, slot) {
                    Some(owner) if owner == slot => {}
                    moved_from => {
                        // The previous owner's list now holds a stale entry.
                        if let Some(other) = moved_from {
                            self.slots[other].touched = true;
                        }
                        self.peer_mut(slot).allowed_ips.push(cidr);
                    }
                }
            } else if self.owner.get(&cidr) == Some(&slot) {
                self.owner.remove(&cidr);
            }
        }
    }

    /// The live peers in order (existing ones first, as they were, then new ones), each with
    /// the allowed-ips it still owns, once each. Untouched peers are passed on as they were.
    fn finish(self) -> Vec<Arc<Peer>> {
        let owner = self.owner;
        self.slots
            .into_iter()
            .enumerate()
            .filter(|(_, slot)| slot.live)
            .map(|(index, slot)| {
                let mut peer = slot.peer;
                if slot.touched {
                    let mut seen = HashSet::default();
                    Arc::make_mut(&mut peer)
                        .allowed_ips
                        .retain(|cidr| owner.get(cidr) == Some(&index) && seen.insert(*cidr));
                }
                peer
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Get.

/// What `get` reports: the interface as running, not as configured.
pub struct DeviceState<'a> {
    /// The interface's private key (`None`: no key; the line is left out).
    pub private_key: Option<&'a PrivateKey>,
    /// The bound UDP port (0 if not bound: then the line is left out, as wireguard-go does).
    pub listen_port: u16,
    /// The mark on the UDP socket (`None`: the line is left out).
    pub fwmark: Option<u32>,
    /// The peers, in the order to report them.
    pub peers: Vec<PeerState>,
}

/// One peer as `get` reports it. (No `Debug`: it would print the preshared key.)
#[derive(Clone)]
pub struct PeerState {
    /// The peer's key.
    pub public_key: PublicKey,
    /// The preshared key's bytes, if any.
    pub preshared_key: Option<[u8; 32]>,
    /// The address handshakes and data currently go to, if known.
    pub endpoint: Option<SocketAddr>,
    /// Keepalive interval in seconds; `None` when off.
    pub persistent_keepalive: Option<u16>,
    /// When the latest handshake completed; `None` if never.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// The peer's allowed-ips.
    pub allowed_ips: Vec<Cidr>,
}

/// The full `get` reply, ending with `errno=0\n\n`, in wireguard-go's order: `private_key`
/// (hex, unless none), `listen_port` (unless 0), `fwmark` (unless none), then per peer `public_key`, `preshared_key` (64 zeros when
/// none), `protocol_version=1`, `endpoint` (if any; IPv6 in brackets, IPv4-mapped IPv6 as IPv4),
/// `last_handshake_time_sec`/`_nsec` (Unix time; 0 and 0 if never), `tx_bytes`, `rx_bytes`,
/// `persistent_keepalive_interval` (0 when off) and one `allowed_ip` per prefix.
///
/// The reply holds the private and preshared keys: send it and drop it, never log it.
pub fn format_get(state: &DeviceState<'_>) -> String {
    let mut out = Reply(String::with_capacity(128 + 400 * state.peers.len()));
    if let Some(key) = state.private_key {
        out.key("private_key", key.as_bytes());
    }
    if state.listen_port != 0 {
        out.line("listen_port", state.listen_port);
    }
    if let Some(mark) = state.fwmark {
        out.line("fwmark", mark);
    }
    for peer in &state.peers {
        out.key("public_key", peer.public_key.as_bytes());
        out.key(
            "preshared_key",
            peer.preshared_key.as_ref().unwrap_or(&[0; 32]),
        );
        out.line("protocol_version", 1);
        if let Some(endpoint) = peer.endpoint {
            out.line("endpoint", unmapped(endpoint));
        }
        let since_epoch = peer
            .last_handshake
            .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        out.line("last_handshake_time_sec", since_epoch.as_secs());
        out.line("last_handshake_time_nsec", since_epoch.subsec_nanos());
        out.line("tx_bytes", peer.tx_bytes);
        out.line("rx_bytes", peer.rx_bytes);
        out.line(
            "persistent_keepalive_interval",
            peer.persistent_keepalive.unwrap_or(0),
        );
        for cidr in &peer.allowed_ips {
            out.line("allowed_ip", cidr.network());
        }
    }
    out.0.push_str(OK_REPLY);
    out.0
}

/// The text of a reply being built.
struct Reply(String);

impl Reply {
    fn line(&mut self, key: &str, value: impl fmt::Display) {
        // Writing into a String cannot fail.
        let _ = writeln!(self.0, "{key}={value}");
    }

    fn key(&mut self, key: &str, bytes: &[u8; 32]) {
        self.0.push_str(key);
        self.0.push('=');
        for byte in bytes {
            // As above: cannot fail.
            let _ = write!(self.0, "{byte:02x}");
        }
        self.0.push('\n');
    }
}

/// `[::ffff:198.18.0.2]:51820` (as a dual-stack socket reports an IPv4 sender) as
/// `198.18.0.2:51820`, which is what the user configured and expects to see.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    /// RFC 7748 section 6.1, Alice: the interface key of these tests.
    const ALICE_HEX: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    const ALICE_PUBLIC_HEX: &str =
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    /// Peer keys: 32 times this byte. B and C are in the fixture, D and E are not.
    const B: u8 = 0xbb;
    const C: u8 = 0xcc;
    const D: u8 = 0xdd;
    const E: u8 = 0xe1;
    /// site-b's preshared key, from its key file.
    const PSK_B: u8 = 0x5b;

    fn bytes_of(hex: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    fn alice() -> PrivateKey {
        PrivateKey::from_bytes(bytes_of(ALICE_HEX))
    }

    fn key(byte: u8) -> PublicKey {
        PublicKey::from_bytes([byte; 32])
    }

    fn hex(byte: u8) -> String {
        format!("{byte:02x}").repeat(32)
    }

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    fn cidrs(texts: &[&str]) -> Vec<Cidr> {
        texts.iter().map(|t| cidr(t)).collect()
    }

    /// A config in a temporary `/etc/sitelink` with key files (mode 0600), two peers.
    struct Fixture {
        _dir: tempfile::TempDir,
        config: Config,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, contents: String| {
            let path = dir.path().join(name);
            fs::write(&path, contents).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        };
        write("sl0.key", format!("{}\n", alice().expose_base64()));
        write(
            "site-b.psk",
            format!(
                "{}\n",
                PresharedKey::from_bytes([PSK_B; 32]).expose_base64()
            ),
        );
        let text = format!(
            r#"[interface]
private-key-file = "sl0.key"
listen-port = 51820
address = ["198.18.100.1/24", "fd18:100::1/64"]

[[peer]]
name = "site-b"
public-key = "{}"
preshared-key-file = "site-b.psk"
endpoint = "gw-b.example.net:51820"
allowed-ips = ["198.19.2.0/24", "fd19:2::/64"]
persistent-keepalive = 25

[[peer]]
name = "site-c"
public-key = "{}"
endpoint = "198.18.0.3:51820"
allowed-ips = ["198.19.3.0/24"]
"#,
            key(B),
            key(C)
        );
        let config = Config::parse(&text, &dir.path().join("sl0.toml")).unwrap();
        Fixture { _dir: dir, config }
    }

    fn read(text: &str) -> Result<Option<Request>, UapiError> {
        read_request(&mut text.as_bytes(), 4096)
    }

    #[track_caller]
    fn set_of(text: &str) -> DeviceSet {
        match read(text) {
            Ok(Some(Request::Set(set))) => set,
            other => panic!("expected a set request, got {other:?}"),
        }
    }

    /// Asserts that reading `text` fails with `errno` and a message containing every needle.
    #[track_caller]
    fn read_error(text: &str, errno: i32, needles: &[&str]) -> UapiError {
        let error = match read(text) {
            Err(e) => e,
            Ok(request) => panic!("expected an error for {text:?}, got {request:?}"),
        };
        check(&error, errno, needles);
        error
    }

    #[track_caller]
    fn check(error: &UapiError, errno: i32, needles: &[&str]) {
        assert_eq!(error.errno, errno, "{error}");
        for needle in needles {
            assert!(error.message.contains(needle), "{needle:?} in: {error}");
        }
    }

    #[track_caller]
    fn apply(config: &Config, text: &str) -> Result<Config, UapiError> {
        apply_set(config, &set_of(text))
    }

    #[track_caller]
    fn peer<'c>(config: &'c Config, name: &str) -> &'c Peer {
        let names: Vec<&str> = config.peers.iter().map(|p| p.name.as_str()).collect();
        config
            .peers
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no peer {name:?} in {names:?}"))
    }

    fn names(config: &Config) -> Vec<&str> {
        config.peers.iter().map(|p| p.name.as_str()).collect()
    }

    fn psk_bytes(peer: &Peer) -> Option<[u8; 32]> {
        peer.preshared_key.as_ref().map(|k| *k.as_bytes())
    }

    // -----------------------------------------------------------------------------------------
    // Reading requests.

    #[test]
    fn reads_what_wg_set_sends() {
        // wg set sl0 peer <D> allowed-ips 198.19.3.0/24,fd19:3::/64 \
        //     endpoint 198.18.0.9:51820 persistent-keepalive 25
        let text = format!(
            "set=1\npublic_key={}\nendpoint=198.18.0.9:51820\npersistent_keepalive_interval=25\n\
             replace_allowed_ips=true\nallowed_ip=198.19.3.0/24\nallowed_ip=fd19:3::/64\n\n",
            hex(D)
        );
        let set = set_of(&text);
        assert!(set.private_key.is_none());
        assert_eq!(
            (set.listen_port, set.fwmark, set.replace_peers),
            (None, None, false)
        );
        assert_eq!(set.peers.len(), 1);
        let p = &set.peers[0];
        assert_eq!(p.public_key, key(D));
        assert!(!p.remove && !p.update_only);
        assert!(p.preshared_key.is_none());
        assert_eq!(p.endpoint, Some("198.18.0.9:51820".parse().unwrap()));
        assert_eq!(p.persistent_keepalive, Some(25));
        assert!(p.replace_allowed_ips);
        assert_eq!(
            p.allowed_ips,
            vec![(true, cidr("198.19.3.0/24")), (true, cidr("fd19:3::/64"))]
        );
        assert_eq!(p.protocol_version, None);
    }

    /// What `wg syncconf sl0 file` sends when the file drops site-c, drops site-b's preshared
    /// key and keepalive, and adds D (setconf always sends the device keys; removals first).
    fn syncconf_text() -> String {
        format!(
            "set=1\nprivate_key={ALICE_HEX}\nlisten_port=51820\nfwmark=0\n\
             public_key={c}\nremove=true\n\
             public_key={b}\npreshared_key={zero}\nendpoint=198.18.0.2:51820\n\
             persistent_keepalive_interval=0\nreplace_allowed_ips=true\nallowed_ip=198.19.2.0/24\n\
             public_key={d}\nprotocol_version=1\nendpoint=[fd18::9]:51820\n\
             replace_allowed_ips=true\nallowed_ip=198.19.4.0/24\nallowed_ip=fd19:4::/64\n\n",
            c = hex(C),
            b = hex(B),
            d = hex(D),
            zero = hex(0),
        )
    }

    #[test]
    fn reads_what_wg_syncconf_sends() {
        let set = set_of(&syncconf_text());
        assert_eq!(
            set.private_key.as_ref().unwrap().as_bytes(),
            &bytes_of(ALICE_HEX)
        );
        assert_eq!(
            (set.listen_port, set.fwmark, set.replace_peers),
            (Some(51820), Some(0), false)
        );
        assert_eq!(set.peers.len(), 3);

        let c = &set.peers[0];
        assert_eq!(c.public_key, key(C));
        assert!(c.remove);

        let b = &set.peers[1];
        assert_eq!(b.public_key, key(B));
        assert!(!b.remove);
        assert!(matches!(b.preshared_key, Some(None)), "zero key = remove");
        assert_eq!(b.endpoint, Some("198.18.0.2:51820".parse().unwrap()));
        assert_eq!(b.persistent_keepalive, Some(0));
        assert!(b.replace_allowed_ips);
        assert_eq!(b.allowed_ips, vec![(true, cidr("198.19.2.0/24"))]);

        let d = &set.peers[2];
        assert_eq!(d.protocol_version, Some(1));
        assert_eq!(d.endpoint, Some("[fd18::9]:51820".parse().unwrap()));
        assert_eq!(d.endpoint.as_ref().unwrap().host(), "fd18::9");
        assert_eq!(d.allowed_ips.len(), 2);
    }

    #[test]
    fn reads_incremental_allowed_ips() {
        // wg set sl0 peer <B> allowed-ips +198.19.9.0/24,-fd19:2::/64
        let text = format!(
            "set=1\npublic_key={}\nallowed_ip=198.19.9.0/24\nallowed_ip=-fd19:2::/64\n\n",
            hex(B)
        );
        let p = &set_of(&text).peers[0];
        assert!(!p.replace_allowed_ips);
        assert_eq!(
            p.allowed_ips,
            vec![(true, cidr("198.19.9.0/24")), (false, cidr("fd19:2::/64"))]
        );
    }

    #[test]
    fn reads_replace_peers_update_only_and_a_preshared_key() {
        let psk = "01".repeat(32);
        let text = format!(
            "set=1\nreplace_peers=true\npublic_key={}\nupdate_only=true\npreshared_key={psk}\n\
             public_key={}\npreshared_key={}\n\n",
            hex(B),
            hex(C),
            hex(0)
        );
        let set = set_of(&text);
        assert!(set.replace_peers);
        assert!(set.peers[0].update_only);
        let psk = set.peers[0]
            .preshared_key
            .as_ref()
            .unwrap()
            .as_ref()
            .unwrap();
        assert_eq!(psk.as_bytes(), &[1; 32]);
        assert!(!set.peers[1].update_only);
        assert!(matches!(set.peers[1].preshared_key, Some(None)));
    }

    #[test]
    fn replace_allowed_ips_drops_the_lines_before_it() {
        let text = format!(
            "set=1\npublic_key={}\nallowed_ip=10.0.0.0/8\nreplace_allowed_ips=true\n\
             allowed_ip=10.1.0.0/16\n\n",
            hex(B)
        );
        let p = &set_of(&text).peers[0];
        assert!(p.replace_allowed_ips);
        assert_eq!(p.allowed_ips, vec![(true, cidr("10.1.0.0/16"))]);
    }

    #[test]
    fn keys_are_hex_in_either_case() {
        let upper = hex(0xab).to_uppercase();
        let set = set_of(&format!("set=1\npublic_key={upper}\n\n"));
        assert_eq!(set.peers[0].public_key, key(0xab));
    }

    #[test]
    fn reads_get_and_stops_at_the_end_of_each_request() {
        let text = "get=1\n\nset=1\nlisten_port=7\n\nget=1\n\n";
        let mut stream = text.as_bytes();
        assert!(matches!(
            read_request(&mut stream, 64),
            Ok(Some(Request::Get))
        ));
        match read_request(&mut stream, 64) {
            Ok(Some(Request::Set(set))) => assert_eq!(set.listen_port, Some(7)),
            other => panic!("expected set, got {other:?}"),
        }
        assert!(matches!(
            read_request(&mut stream, 64),
            Ok(Some(Request::Get))
        ));
        assert!(
            matches!(read_request(&mut stream, 64), Ok(None)),
            "clean EOF"
        );
        assert!(matches!(read_request(&mut &b""[..], 0), Ok(None)));
    }

    #[test]
    fn accepts_crlf_line_ends_in_set() {
        let set = set_of("set=1\nlisten_port=9\r\n\r\n");
        assert_eq!(set.listen_port, Some(9));
    }

    #[test]
    fn refuses_bad_hex_without_quoting_it() {
        let short = &ALICE_HEX[..63];
        let e = read_error(
            &format!("set=1\nprivate_key={short}\n\n"),
            errno::EINVAL,
            &["line 2: private_key: expected 64 hex digits, found 63 characters"],
        );
        assert!(!e.message.contains(short) && !e.to_string().contains(short));

        let bad = format!("{}g{}", &ALICE_HEX[..10], &ALICE_HEX[11..]);
        let e = read_error(
            &format!("set=1\nprivate_key={bad}\n\n"),
            errno::EINVAL,
            &["private_key: character 11 is not a hex digit"],
        );
        assert!(!e.message.contains(&bad[..10]));

        read_error(
            &format!("set=1\npublic_key={}\n\n", &hex(B)[..62]),
            errno::EINVAL,
            &["line 2: public_key: expected 64 hex digits, found 62"],
        );
        read_error(
            &format!("set=1\npublic_key={}\npreshared_key=zz\n\n", hex(B)),
            errno::EINVAL,
            &["line 3: preshared_key: expected 64 hex digits, found 2"],
        );
    }

    #[test]
    fn refuses_unknown_and_misplaced_keys() {
        read_error(
            "set=1\nlisten_port=1\nmtu=1420\n\n",
            errno::EINVAL,
            &["line 3: unknown device key \"mtu\"", "listen_port"],
        );
        read_error(
            &format!("set=1\npublic_key={}\nname=site-d\n\n", hex(D)),
            errno::EINVAL,
            &["line 3: unknown peer key \"name\"", "allowed_ip"],
        );
        read_error(
            &format!("set=1\npublic_key={}\nlisten_port=1\n\n", hex(D)),
            errno::EINVAL,
            &[
                "line 3: listen_port is a device key",
                "before the first public_key",
            ],
        );
        read_error(
            "set=1\nendpoint=198.18.0.9:51820\n\n",
            errno::EINVAL,
            &["line 2: endpoint is a peer key", "public_key"],
        );
        // Quoted client text is escaped and shortened.
        let e = read_error(
            &format!("set=1\n{}\x07=1\n\n", "k".repeat(500)),
            errno::EINVAL,
            &[],
        );
        assert!(e.message.len() < 200, "{e}");
    }

    #[test]
    fn protocol_version_must_be_1() {
        let one = format!("set=1\npublic_key={}\nprotocol_version=1\n\n", hex(D));
        assert_eq!(set_of(&one).peers[0].protocol_version, Some(1));
        read_error(
            &format!("set=1\npublic_key={}\nprotocol_version=2\n\n", hex(D)),
            errno::EPROTONOSUPPORT,
            &["line 3: protocol_version: 2 is not supported"],
        );
        read_error(
            &format!("set=1\npublic_key={}\nprotocol_version=0\n\n", hex(D)),
            errno::EPROTONOSUPPORT,
            &[],
        );
        read_error(
            &format!("set=1\npublic_key={}\nprotocol_version=one\n\n", hex(D)),
            errno::EINVAL,
            &["protocol_version: \"one\" is not a number"],
        );
    }

    #[test]
    fn refuses_bad_values() {
        let p = format!("set=1\npublic_key={}\n", hex(D));
        let cases: &[(String, &str)] = &[
            (
                "set=1\nlisten_port=65536\n\n".into(),
                "listen_port: \"65536\" is not a port",
            ),
            (
                "set=1\nlisten_port=+1\n\n".into(),
                "listen_port: \"+1\" is not",
            ),
            ("set=1\nlisten_port=\n\n".into(), "listen_port: \"\" is not"),
            (
                "set=1\nfwmark=-1\n\n".into(),
                "fwmark: \"-1\" is not a number",
            ),
            (
                "set=1\nreplace_peers=false\n\n".into(),
                "replace_peers: the only valid value is true",
            ),
            (
                format!("{p}remove=1\n\n"),
                "remove: the only valid value is true, found \"1\"",
            ),
            (
                format!("{p}update_only=yes\n\n"),
                "update_only: the only valid value",
            ),
            (
                format!("{p}replace_allowed_ips=\n\n"),
                "replace_allowed_ips: the only",
            ),
            (
                format!("{p}persistent_keepalive_interval=off\n\n"),
                "persistent_keepalive_interval",
            ),
            (
                format!("{p}persistent_keepalive_interval=65536\n\n"),
                "persistent_keepalive_interval",
            ),
            (
                format!("{p}endpoint=gw-d.example.net:51820\n\n"),
                "not an IP address and port",
            ),
            (
                format!("{p}endpoint=198.18.0.9\n\n"),
                "endpoint: missing `:port`",
            ),
            (
                format!("{p}endpoint=fd18::9:51820\n\n"),
                "endpoint: IPv6 address must be in brackets",
            ),
            (
                format!("{p}allowed_ip=198.19.3.1\n\n"),
                "allowed_ip: \"198.19.3.1\" has no /prefix",
            ),
            (
                format!("{p}allowed_ip=198.19.3.0/33\n\n"),
                "allowed_ip: prefix length /33",
            ),
            (
                format!("{p}allowed_ip=--10.0.0.0/8\n\n"),
                "allowed_ip: `-10.0.0.0` is not",
            ),
        ];
        for (text, needle) in cases {
            read_error(text, errno::EINVAL, &[needle]);
        }
    }

    #[test]
    fn enforces_the_size_limit() {
        let text = format!("set=1\npublic_key={}\nallowed_ip=10.0.0.0/8\n\n", hex(D));
        assert!(
            read_request(&mut text.as_bytes(), text.len()).is_ok(),
            "exact fit"
        );
        let e = read_request(&mut text.as_bytes(), text.len() - 1).unwrap_err();
        check(&e, errno::EMSGSIZE, &["line 4: the request is longer than"]);

        // One endless line is cut off at the limit, not buffered whole.
        let mut endless = std::io::BufReader::new(
            b"set=1\nlisten_port=".chain(std::io::repeat(b'1').take(10_000_000)),
        );
        let e = read_request(&mut endless, 1024).unwrap_err();
        check(
            &e,
            errno::EMSGSIZE,
            &["line 2: the request is longer than 1024 bytes"],
        );

        // Many short lines count too.
        let many = format!("set=1\n{}\n", "listen_port=1\n".repeat(1000));
        let e = read_request(&mut many.as_bytes(), 4096).unwrap_err();
        assert_eq!(e.errno, errno::EMSGSIZE);
        let e = read_request(&mut &b"get=1\n\n"[..], 6).unwrap_err();
        check(
            &e,
            errno::EMSGSIZE,
            &["line 2: the request is longer than 6 bytes"],
        );
    }

    #[test]
    fn refuses_requests_cut_short() {
        let cut = &["the request ended before the blank line that terminates it"];
        read_error(
            &format!("set=1\npublic_key={}\n", hex(D)),
            errno::EPROTO,
            cut,
        );
        read_error("set=1\nlisten_port=1", errno::EPROTO, cut);
        read_error("set=1\n", errno::EPROTO, cut);
        read_error("get=1\n", errno::EPROTO, &["line 2: the request ended"]);
        read_error("get=1", errno::EPROTO, &["line 1: the request ended"]);
    }

    #[test]
    fn refuses_malformed_lines_and_operations() {
        read_error(
            "set=1\nlisten_port 51820\n\n",
            errno::EPROTO,
            &["line 2: expected key=value, found \"listen_port 51820\""],
        );
        read_error("set=1\nlisten_port=\u{fffd}\n\n", errno::EINVAL, &[]);
        let e = read_request(&mut &b"set=1\nlisten_port=\xff\n\n"[..], 64).unwrap_err();
        check(&e, errno::EPROTO, &["line 2: not UTF-8 text"]);
        read_error(
            "show=1\n\n",
            errno::EINVAL,
            &["line 1: unknown operation \"show=1\""],
        );
        read_error("get=1\r\n\n", errno::EINVAL, &["unknown operation"]);
        read_error(
            "get=1\nx\n",
            errno::EINVAL,
            &["line 2: unexpected \"x\" after get=1"],
        );
    }

    #[test]
    fn read_errors_are_eio() {
        struct Broken;
        impl std::io::Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("connection reset"))
            }
        }
        let e = read_request(&mut std::io::BufReader::new(Broken), 64).unwrap_err();
        check(
            &e,
            errno::EIO,
            &["reading the request failed: connection reset"],
        );
    }

    #[test]
    fn mangled_requests_never_panic() {
        // A cheap stand-in for a fuzzer: flip, drop and duplicate bytes of real requests.
        let known = [
            errno::EIO,
            errno::EINVAL,
            errno::EPROTO,
            errno::EMSGSIZE,
            errno::EPROTONOSUPPORT,
        ];
        let seeds = [syncconf_text(), "get=1\n\n".to_string()];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let fixture = fixture();
        let (mut sets, mut errors) = (0, 0);
        for round in 0..3000 {
            let mut bytes = seeds[round % 2].clone().into_bytes();
            for _ in 0..1 + next() % 4 {
                let at = (next() % bytes.len() as u64) as usize;
                match next() % 3 {
                    0 => bytes[at] = (next() % 256) as u8,
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, bytes[at]),
                }
                if bytes.is_empty() {
                    bytes.push(b'\n');
                }
            }
            match read_request(&mut bytes.as_slice(), 1024) {
                Ok(Some(Request::Set(set))) => {
                    sets += 1;
                    // Whatever parsed applies without panicking, or fails with a known errno.
                    if let Err(e) = apply_set(&fixture.config, &set) {
                        assert!([errno::EINVAL, errno::EOPNOTSUPP].contains(&e.errno), "{e}");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    errors += 1;
                    assert!(known.contains(&e.errno), "{e}");
                    assert!(!e.message.contains(ALICE_HEX), "key material in: {e}");
                }
            }
        }
        assert!(sets > 10 && errors > 100, "sets {sets}, errors {errors}");
    }

    // -----------------------------------------------------------------------------------------
    // Applying a set.

    #[test]
    fn wg_set_adds_a_peer_named_after_its_key() {
        let f = fixture();
        let text = format!(
            "set=1\npublic_key={}\nendpoint=198.18.0.9:51820\npersistent_keepalive_interval=25\n\
             replace_allowed_ips=true\nallowed_ip=198.19.4.0/24\nallowed_ip=fd19:4::/64\n\n",
            hex(D)
        );
        let config = apply(&f.config, &text).unwrap();
        assert_eq!(names(&config), ["site-b", "site-c", "wg-dddddddd"]);
        let d = peer(&config, "wg-dddddddd");
        assert_eq!(d.public_key, key(D));
        assert_eq!(d.endpoint, Some("198.18.0.9:51820".parse().unwrap()));
        assert_eq!(d.persistent_keepalive, Some(25));
        assert_eq!(d.allowed_ips, cidrs(&["198.19.4.0/24", "fd19:4::/64"]));
        assert!(d.preshared_key.is_none() && d.preshared_key_file.is_none());

        // Everything else is untouched.
        assert_eq!(config.path, f.config.path);
        assert_eq!(config.interface.listen_port, Some(51820));
        assert_eq!(config.interface.addresses, f.config.interface.addresses);
        let b = peer(&config, "site-b");
        assert_eq!(b.endpoint, Some("gw-b.example.net:51820".parse().unwrap()));
        assert_eq!(psk_bytes(b), Some([PSK_B; 32]));
        assert_eq!(b.preshared_key_file, Some(PathBuf::from("site-b.psk")));
    }

    #[test]
    fn wg_syncconf_request_gives_the_files_config() {
        let f = fixture();
        let config = apply(&f.config, &syncconf_text()).unwrap();
        assert_eq!(names(&config), ["site-b", "wg-dddddddd"]);
        assert_eq!(
            config.interface.private_key.as_ref().unwrap().as_bytes(),
            &bytes_of(ALICE_HEX)
        );
        assert_eq!(config.interface.listen_port, Some(51820));

        let b = peer(&config, "site-b");
        assert!(b.preshared_key.is_none() && b.preshared_key_file.is_none());
        assert_eq!(b.endpoint, Some("198.18.0.2:51820".parse().unwrap()));
        assert_eq!(b.persistent_keepalive, None);
        assert_eq!(b.allowed_ips, cidrs(&["198.19.2.0/24"]));

        let d = peer(&config, "wg-dddddddd");
        assert_eq!(d.endpoint, Some("[fd18::9]:51820".parse().unwrap()));
        assert_eq!(d.allowed_ips, cidrs(&["198.19.4.0/24", "fd19:4::/64"]));
    }

    #[test]
    fn private_key_is_replaced_and_all_zero_means_no_key() {
        let f = fixture();
        let new = PrivateKey::from_bytes([0x48; 32]);
        let text = format!("set=1\nprivate_key={}\n\n", hex(0x48));
        let config = apply(&f.config, &text).unwrap();
        assert_eq!(
            config.interface.private_key.as_ref().unwrap().as_bytes(),
            new.as_bytes()
        );
        assert_eq!(config.interface.public_key(), Some(new.public_key()));
        assert_eq!(names(&config), ["site-b", "site-c"]);

        // `wg setconf` of a file without PrivateKey sends 64 zeros: the interface has no key.
        let config = apply(&f.config, &format!("set=1\nprivate_key={}\n\n", hex(0))).unwrap();
        assert!(config.interface.private_key.is_none());
        assert_eq!(config.interface.public_key(), None);
        assert_eq!(names(&config), ["site-b", "site-c"], "peers stay");
        config.validate().unwrap();
        // ... and gets one back later.
        let config = apply(&config, &text).unwrap();
        assert_eq!(config.interface.public_key(), Some(new.public_key()));
    }

    #[test]
    fn the_interfaces_own_key_is_never_a_peer() {
        let f = fixture();
        // A new private key whose public half is site-c's: wg drops that peer.
        let mut config = f.config.clone();
        let new = PrivateKey::from_bytes([0x48; 32]);
        config.peer_mut(1).public_key = new.public_key();
        let text = format!("set=1\nprivate_key={}\n\n", hex(0x48));
        assert_eq!(names(&apply(&config, &text).unwrap()), ["site-b"]);

        // An entry for our own public key is ignored, as wireguard-go does.
        let text = format!("set=1\npublic_key={ALICE_PUBLIC_HEX}\nallowed_ip=10.9.0.0/16\n\n");
        assert_eq!(
            names(&apply(&f.config, &text).unwrap()),
            ["site-b", "site-c"]
        );
    }

    #[test]
    fn listen_port_zero_lets_the_system_pick() {
        let f = fixture();
        let config = apply(&f.config, "set=1\nlisten_port=51821\n\n").unwrap();
        assert_eq!(config.interface.listen_port, Some(51821));
        let config = apply(&f.config, "set=1\nlisten_port=0\n\n").unwrap();
        assert_eq!(config.interface.listen_port, None);
    }

    #[test]
    fn fwmark_is_set_and_zero_removes_it() {
        let f = fixture();
        let config = apply(&f.config, "set=1\nfwmark=51820\n\n").unwrap();
        assert_eq!(config.interface.fwmark, Some(51820));
        assert_eq!(names(&config), ["site-b", "site-c"]);
        let config = apply(&config, "set=1\nfwmark=0\n\n").unwrap();
        assert_eq!(config.interface.fwmark, None);
        let e = read_error("set=1\nfwmark=-1\n\n", errno::EINVAL, &["fwmark"]);
        assert_eq!(format_errno(&e), "errno=-22\n\n");
    }

    #[test]
    fn replace_peers_removes_all_then_processes_the_listed_ones() {
        let f = fixture();
        let text = format!(
            "set=1\nreplace_peers=true\npublic_key={}\nallowed_ip=198.19.3.0/24\n\
             public_key={}\nallowed_ip=198.19.4.0/24\n\n",
            hex(C),
            hex(D)
        );
        let config = apply(&f.config, &text).unwrap();
        // site-c was removed and created again: its name stays, its state does not.
        assert_eq!(names(&config), ["site-c", "wg-dddddddd"]);
        let c = peer(&config, "site-c");
        assert_eq!(c.endpoint, None);
        assert_eq!(c.allowed_ips, cidrs(&["198.19.3.0/24"]));

        let config = apply(&f.config, "set=1\nreplace_peers=true\n\n").unwrap();
        assert!(config.peers.is_empty());
    }

    #[test]
    fn update_only_never_creates() {
        let f = fixture();
        let text = format!(
            "set=1\npublic_key={}\nupdate_only=true\nallowed_ip=10.4.0.0/16\n\
             public_key={}\nupdate_only=true\npersistent_keepalive_interval=10\n\n",
            hex(D),
            hex(C)
        );
        let config = apply(&f.config, &text).unwrap();
        assert_eq!(names(&config), ["site-b", "site-c"]);
        assert_eq!(peer(&config, "site-c").persistent_keepalive, Some(10));
    }

    #[test]
    fn new_peer_names_avoid_taken_ones() {
        let f = fixture();
        let mut config = f.config.clone();
        config.peer_mut(0).name = "wg-e1e1e1e1".into();
        config.peer_mut(1).name = "wg-e1e1e1e1-2".into();
        let text = format!("set=1\npublic_key={}\n\n", hex(E));
        let config = apply(&config, &text).unwrap();
        assert_eq!(
            names(&config),
            ["wg-e1e1e1e1", "wg-e1e1e1e1-2", "wg-e1e1e1e1-3"]
        );
    }

    #[test]
    fn remove_removes_and_frees_allowed_ips() {
        let f = fixture();
        // site-c goes; D takes its prefix in the same request; removing an unknown peer and
        // lines after remove change nothing.
        let text = format!(
            "set=1\npublic_key={}\nremove=true\nallowed_ip=10.0.0.0/8\n\
             public_key={}\nallowed_ip=198.19.3.0/24\npublic_key={}\nremove=true\n\n",
            hex(C),
            hex(D),
            hex(E)
        );
        let config = apply(&f.config, &text).unwrap();
        assert_eq!(names(&config), ["site-b", "wg-dddddddd"]);
        assert_eq!(
            peer(&config, "wg-dddddddd").allowed_ips,
            cidrs(&["198.19.3.0/24"])
        );
    }

    #[test]
    fn preshared_key_set_removed_or_kept_with_its_file() {
        let f = fixture();
        let set = |psk: String| format!("set=1\npublic_key={}\npreshared_key={psk}\n\n", hex(B));

        let config = apply(&f.config, &set(hex(0x77))).unwrap();
        let b = peer(&config, "site-b");
        assert_eq!(psk_bytes(b), Some([0x77; 32]));
        assert_eq!(
            b.preshared_key_file, None,
            "the file no longer holds the key"
        );

        let config = apply(&f.config, &set(hex(0))).unwrap();
        let b = peer(&config, "site-b");
        assert!(b.preshared_key.is_none() && b.preshared_key_file.is_none());

        // wg showconf | wg syncconf sends the key loaded from the file: keep the reference.
        let config = apply(&f.config, &set(hex(PSK_B))).unwrap();
        let b = peer(&config, "site-b");
        assert_eq!(psk_bytes(b), Some([PSK_B; 32]));
        assert_eq!(b.preshared_key_file, Some(PathBuf::from("site-b.psk")));

        let config = apply(&f.config, &format!("set=1\npublic_key={}\n\n", hex(B))).unwrap();
        assert_eq!(
            psk_bytes(peer(&config, "site-b")),
            Some([PSK_B; 32]),
            "absent = kept"
        );
    }

    #[test]
    fn endpoint_and_keepalive() {
        let f = fixture();
        let text = format!(
            "set=1\npublic_key={}\nendpoint=[fd18::2]:51999\npersistent_keepalive_interval=0\n\
             public_key={}\npersistent_keepalive_interval=15\n\n",
            hex(B),
            hex(C)
        );
        let config = apply(&f.config, &text).unwrap();
        let b = peer(&config, "site-b");
        assert_eq!(b.endpoint, Some("[fd18::2]:51999".parse().unwrap()));
        assert_eq!(b.persistent_keepalive, None, "0 turns keepalives off");
        let c = peer(&config, "site-c");
        assert_eq!(c.persistent_keepalive, Some(15));
        assert_eq!(
            c.endpoint,
            Some("198.18.0.3:51820".parse().unwrap()),
            "kept"
        );
    }

    #[test]
    fn allowed_ips_add_remove_replace() {
        let f = fixture();
        let on_b = |lines: &str| {
            let text = format!("set=1\npublic_key={}\n{lines}\n", hex(B));
            apply(&f.config, &text).unwrap().peers[0]
                .allowed_ips
                .clone()
        };
        assert_eq!(
            on_b("allowed_ip=198.19.9.1/24\nallowed_ip=fd19:9::1/64\n"),
            cidrs(&[
                "198.19.2.0/24",
                "fd19:2::/64",
                "198.19.9.0/24",
                "fd19:9::/64"
            ]),
            "added as networks, host bits cleared"
        );
        assert_eq!(
            on_b("allowed_ip=198.19.2.0/24\n"),
            cidrs(&["198.19.2.0/24", "fd19:2::/64"]),
            "adding one it has changes nothing"
        );
        assert_eq!(on_b("allowed_ip=-fd19:2::/64\n"), cidrs(&["198.19.2.0/24"]));
        assert_eq!(
            on_b("allowed_ip=-10.0.0.0/8\nallowed_ip=-198.19.3.0/24\n"),
            cidrs(&["198.19.2.0/24", "fd19:2::/64"]),
            "removing one it lacks (or another peer's) changes nothing"
        );
        assert_eq!(
            on_b("replace_allowed_ips=true\nallowed_ip=198.19.5.0/24\n"),
            cidrs(&["198.19.5.0/24"])
        );
        assert_eq!(on_b("replace_allowed_ips=true\n"), vec![]);
        assert_eq!(
            on_b("allowed_ip=-198.19.2.0/24\nallowed_ip=198.19.2.0/24\n"),
            cidrs(&["198.19.2.0/24", "fd19:2::/64"]),
            "removed then added again: once"
        );
    }

    #[test]
    fn adding_another_peers_prefix_moves_it() {
        let f = fixture();
        let text = format!("set=1\npublic_key={}\nallowed_ip=198.19.3.0/24\n\n", hex(B));
        let config = apply(&f.config, &text).unwrap();
        assert_eq!(
            peer(&config, "site-b").allowed_ips,
            cidrs(&["198.19.2.0/24", "fd19:2::/64", "198.19.3.0/24"])
        );
        assert_eq!(peer(&config, "site-c").allowed_ips, vec![]);

        // And back again within one request.
        let text = format!(
            "set=1\npublic_key={}\nallowed_ip=198.19.3.0/24\npublic_key={}\n\
             allowed_ip=198.19.3.0/24\n\n",
            hex(B),
            hex(C)
        );
        let config = apply(&f.config, &text).unwrap();
        assert_eq!(peer(&config, "site-b").allowed_ips.len(), 2);
        assert_eq!(
            peer(&config, "site-c").allowed_ips,
            cidrs(&["198.19.3.0/24"])
        );
    }

    #[test]
    fn entries_for_one_key_compose() {
        let f = fixture();
        let text = format!(
            "set=1\npublic_key={d}\nallowed_ip=10.4.0.0/16\npublic_key={d}\nupdate_only=true\n\
             endpoint=198.18.0.4:1\n\n",
            d = hex(D)
        );
        let config = apply(&f.config, &text).unwrap();
        let d = peer(&config, "wg-dddddddd");
        assert_eq!(d.allowed_ips, cidrs(&["10.4.0.0/16"]));
        assert_eq!(d.endpoint, Some("198.18.0.4:1".parse().unwrap()));
    }

    #[test]
    fn apply_checks_what_read_request_would() {
        let f = fixture();
        let mut entry = PeerSet::new(key(D));
        entry.protocol_version = Some(2);
        let set = DeviceSet {
            peers: vec![entry],
            ..DeviceSet::default()
        };
        let e = apply_set(&f.config, &set).unwrap_err();
        check(&e, errno::EPROTONOSUPPORT, &["protocol_version: 2"]);
    }

    // -----------------------------------------------------------------------------------------
    // Replies.

    #[test]
    fn get_reply_is_exact() {
        let private = alice();
        let handshake = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let state = DeviceState {
            private_key: Some(&private),
            fwmark: None,
            listen_port: 51820,
            peers: vec![
                PeerState {
                    public_key: key(B),
                    preshared_key: Some([PSK_B; 32]),
                    endpoint: Some("198.18.0.2:51820".parse().unwrap()),
                    persistent_keepalive: Some(25),
                    last_handshake: Some(handshake),
                    rx_bytes: 1_234_567,
                    tx_bytes: 89,
                    allowed_ips: cidrs(&["198.19.2.0/24", "fd19:2::/64"]),
                },
                PeerState {
                    public_key: key(C),
                    preshared_key: None,
                    endpoint: Some("[fd18::3]:51821".parse().unwrap()),
                    persistent_keepalive: None,
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 148,
                    allowed_ips: cidrs(&["198.19.3.0/24"]),
                },
            ],
        };
        let expected = format!(
            "private_key={ALICE_HEX}\n\
             listen_port=51820\n\
             public_key={b}\n\
             preshared_key={psk}\n\
             protocol_version=1\n\
             endpoint=198.18.0.2:51820\n\
             last_handshake_time_sec=1700000000\n\
             last_handshake_time_nsec=123456789\n\
             tx_bytes=89\n\
             rx_bytes=1234567\n\
             persistent_keepalive_interval=25\n\
             allowed_ip=198.19.2.0/24\n\
             allowed_ip=fd19:2::/64\n\
             public_key={c}\n\
             preshared_key={zero}\n\
             protocol_version=1\n\
             endpoint=[fd18::3]:51821\n\
             last_handshake_time_sec=0\n\
             last_handshake_time_nsec=0\n\
             tx_bytes=148\n\
             rx_bytes=0\n\
             persistent_keepalive_interval=0\n\
             allowed_ip=198.19.3.0/24\n\
             errno=0\n\n",
            b = hex(B),
            c = hex(C),
            psk = hex(PSK_B),
            zero = hex(0),
        );
        assert_eq!(format_get(&state), expected);
    }

    #[test]
    fn get_reply_edge_cases() {
        let private = alice();
        let state = DeviceState {
            private_key: Some(&private),
            fwmark: None,
            listen_port: 0,
            peers: vec![PeerState {
                public_key: key(D),
                preshared_key: None,
                endpoint: Some("[::ffff:198.18.0.4]:51820".parse().unwrap()),
                persistent_keepalive: None,
                last_handshake: Some(UNIX_EPOCH - Duration::from_secs(5)),
                rx_bytes: u64::MAX,
                tx_bytes: 0,
                allowed_ips: vec![cidr("198.19.4.1/24")],
            }],
        };
        let reply = format_get(&state);
        assert!(!reply.contains("listen_port"), "0 = not bound: left out");
        assert!(reply.contains("\nendpoint=198.18.0.4:51820\n"), "{reply}");
        assert!(reply.contains("\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"));
        assert!(reply.contains(&format!("\nrx_bytes={}\n", u64::MAX)));
        assert!(reply.contains("\nallowed_ip=198.19.4.0/24\n"));
        assert!(reply.ends_with("allowed_ip=198.19.4.0/24\nerrno=0\n\n"));

        let empty = DeviceState {
            private_key: Some(&private),
            fwmark: None,
            listen_port: 1,
            peers: vec![],
        };
        assert_eq!(
            format_get(&empty),
            format!("private_key={ALICE_HEX}\nlisten_port=1\nerrno=0\n\n")
        );
    }

    #[test]
    fn error_replies() {
        let e = UapiError::new(errno::EINVAL, "line 2: listen_port: \"x\" is not a port");
        assert_eq!(format_errno(&e), "errno=-22\n\n");
        assert_eq!(
            e.to_string(),
            "line 2: listen_port: \"x\" is not a port (EINVAL)"
        );
        assert_eq!(UapiError::new(7, "odd").to_string(), "odd (errno 7)");
        assert_eq!(format_errno(&UapiError::new(0, "no errno")), "errno=-5\n\n");
        assert_eq!(
            format_errno(&UapiError::new(-71, "negated")),
            "errno=-5\n\n"
        );
        assert_eq!(OK_REPLY, "errno=0\n\n");
    }
}
