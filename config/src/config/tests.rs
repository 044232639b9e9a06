//! Config loading: the happy path, one test per validation error (each asserting file, line,
//! section and key in the message), and key/config file permissions.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::*;

const PATH: &str = "/etc/sitelink/sl0.toml";

/// RFC 7748 section 6.1, Alice: our interface key in these tests.
fn alice() -> PrivateKey {
    let hex = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    PrivateKey::from_bytes(bytes)
}

fn alice_b64() -> String {
    alice().expose_base64()
}

fn new_public() -> String {
    PrivateKey::generate().public_key().to_string()
}

/// A minimal `[interface]` with an inline key, 2 lines long; peers start on line 4.
fn interface() -> String {
    format!("[interface]\nprivate-key = \"{}\"\n", alice_b64())
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(PATH))
}

/// Asserts that `text` fails at `line` with `scope_key` (e.g. `peer "site-b": public-key`) and
/// every needle in the message, and that the message never contains our private key.
#[track_caller]
fn expect_error(text: &str, line: usize, scope_key: &str, needles: &[&str]) -> ConfigError {
    let error = match parse(text) {
        Ok(_) => panic!("config parsed but should fail at line {line}:\n{text}"),
        Err(e) => e,
    };
    check_error(&error, PATH, line, scope_key, needles);
    error
}

#[track_caller]
fn check_error(error: &ConfigError, path: &str, line: usize, scope_key: &str, needles: &[&str]) {
    let message = error.to_string();
    let prefix = format!("{path}:{line}:");
    assert!(
        message.starts_with(&prefix),
        "expected prefix {prefix:?} in: {message}"
    );
    assert_eq!(error.line(), Some(line), "{message}");
    assert!(
        scope_key.is_empty() || message.contains(&format!(": {scope_key}: ")),
        "expected {scope_key:?} in: {message}"
    );
    for needle in needles {
        assert!(
            message.contains(needle),
            "expected {needle:?} in: {message}"
        );
    }
    assert!(
        !message.contains(&alice_b64()),
        "key material in: {message}"
    );
}

/// A temporary `/etc/sitelink`.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }

    fn write(&self, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = self.0.path().join(name);
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }
}

// ---------------------------------------------------------------------------------------------
// Valid configs.

#[test]
fn full_config_with_key_files_loads() {
    let dir = Dir::new();
    dir.write("sl0.key", &format!("{}\n", alice_b64()), 0o600);
    let psk_b = PresharedKey::generate();
    let psk_c = PresharedKey::generate();
    let psk_b_path = dir.write("site-b.psk", &format!("{}\n", psk_b.expose_base64()), 0o600);
    let (pub_b, pub_c) = (new_public(), new_public());
    let text = format!(
        r#"# site A
[interface]
private-key-file = "sl0.key"    # relative to this file
listen-port = 51820
address = ["198.18.100.1/24", "fd18:100::1/64"]

[[peer]]
name = "site-b"
public-key = "{pub_b}"
preshared-key-file = "{}"
endpoint = "gw-b.example.net:51820"
allowed-ips = ["198.18.100.2/32", "198.19.2.0/24", "fd19:2::/64"]
persistent-keepalive = 25

[[peer]]
name = "site-c"
public-key = "{pub_c}"
preshared-key = "{}"
endpoint = "[fd00::3]:51820"
allowed-ips = ["198.19.3.0/24"]
"#,
        psk_b_path.display(),
        psk_c.expose_base64()
    );
    let path = dir.write("sl0.toml", &text, 0o600);

    let config = Config::load(&path).unwrap();
    assert_eq!(config.path, path);
    let iface = &config.interface;
    assert_eq!(iface.name.as_str(), "sl0", "name defaults to the file stem");
    assert_eq!(
        iface.private_key.as_ref().unwrap().as_bytes(),
        alice().as_bytes()
    );
    assert_eq!(
        iface.public_key().unwrap().to_hex(),
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    );
    assert_eq!(iface.listen_port, Some(51820));
    assert_eq!(
        iface.addresses,
        vec![
            "198.18.100.1/24".parse::<Cidr>().unwrap(),
            "fd18:100::1/64".parse().unwrap()
        ]
    );
    assert_eq!(iface.mtu, DEFAULT_MTU);
    assert_eq!(iface.mtu, 1420);

    assert_eq!(config.peers.len(), 2);
    let b = &config.peers[0];
    assert_eq!(b.name, "site-b");
    assert_eq!(b.public_key.to_string(), pub_b);
    assert_eq!(
        b.preshared_key.as_ref().unwrap().as_bytes(),
        psk_b.as_bytes()
    );
    let endpoint = b.endpoint.as_ref().unwrap();
    assert_eq!(
        (endpoint.host(), endpoint.port()),
        ("gw-b.example.net", 51820)
    );
    assert_eq!(
        b.allowed_ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["198.18.100.2/32", "198.19.2.0/24", "fd19:2::/64"]
    );
    assert_eq!(b.persistent_keepalive, Some(25));
    assert!(b.allows("198.19.2.9".parse().unwrap()));
    assert!(!b.allows("198.19.3.9".parse().unwrap()));

    let c = &config.peers[1];
    assert_eq!(c.name, "site-c");
    assert_eq!(c.public_key.to_string(), pub_c);
    assert_eq!(
        c.preshared_key.as_ref().unwrap().as_bytes(),
        psk_c.as_bytes()
    );
    assert_eq!(
        c.endpoint.as_ref().unwrap().ip(),
        Some("[fd00::3]:51820".parse().unwrap())
    );
    assert_eq!(c.persistent_keepalive, None);
}

#[test]
fn minimal_config_with_inline_key_and_defaults() {
    let text = format!("{}address = []\n", interface());
    let config = parse(&text).unwrap();
    assert_eq!(config.path, Path::new(PATH));
    assert_eq!(config.interface.name.as_str(), "sl0");
    assert_eq!(config.interface.listen_port, None);
    assert_eq!(config.interface.mtu, 1420);
    assert!(config.interface.addresses.is_empty());
    assert!(config.peers.is_empty(), "zero peers is valid");
    assert_eq!(
        config.interface.private_key.as_ref().unwrap().as_bytes(),
        alice().as_bytes()
    );

    // Without `address` at all, and with an explicit name and MTU.
    let text = format!(
        "[interface]\nname = \"wan0\"\nprivate-key = \"{}\"\nmtu = 1280\nlisten-port = 65535\n",
        alice_b64()
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.interface.name.as_str(), "wan0");
    assert_eq!(config.interface.mtu, 1280);
    assert_eq!(config.interface.listen_port, Some(65535));
    assert!(config.interface.addresses.is_empty());
}

#[test]
fn peer_without_optional_keys_and_empty_allowed_ips() {
    let text = format!(
        "{}\n[[peer]]\nname = \"a\"\npublic-key = \"{}\"\nallowed-ips = []\n",
        interface(),
        new_public()
    );
    let config = parse(&text).unwrap();
    let peer = &config.peers[0];
    assert!(peer.preshared_key.is_none());
    assert!(peer.endpoint.is_none());
    assert!(peer.allowed_ips.is_empty());
    assert!(peer.persistent_keepalive.is_none());
}

#[test]
fn key_files_may_have_surrounding_whitespace() {
    let dir = Dir::new();
    dir.write("k", &format!("{}\r\n\n", alice_b64()), 0o400);
    let text = "[interface]\nprivate-key-file = \"k\"\n";
    let path = dir.write("wg0.toml", text, 0o644);
    let config = Config::load(&path).unwrap();
    assert_eq!(config.interface.name.as_str(), "wg0");
    assert_eq!(
        config.interface.private_key.as_ref().unwrap().as_bytes(),
        alice().as_bytes()
    );
}

// ---------------------------------------------------------------------------------------------
// TOML-level errors.

#[test]
fn toml_syntax_error() {
    let text = format!("{}listen-port = \n", interface());
    let error = expect_error(&text, 3, "", &[]);
    assert!(error.to_string().contains("TOML syntax error"), "{error}");

    let text = format!("{}\n[[peer]]\nname = \"unterminated\n", interface());
    expect_error(&text, 5, "", &["TOML syntax error"]);
}

#[test]
fn syntax_error_does_not_echo_the_line() {
    // toml's own Display quotes the offending line, which here holds the key.
    let text = format!("[interface]\nprivate-key = \"{}\" x\n", alice_b64());
    expect_error(&text, 2, "", &["TOML syntax error"]);
}

#[test]
fn duplicate_key_is_a_syntax_error() {
    let text = format!("{}mtu = 1400\nmtu = 1500\n", interface());
    expect_error(&text, 4, "", &["duplicate key"]);
}

#[test]
fn unknown_key_in_interface_lists_allowed_keys() {
    let text = format!("{}listen_port = 51820\n", interface());
    expect_error(
        &text,
        3,
        "interface: listen_port",
        &[
            "unknown key",
            "`listen-port`",
            "`private-key-file`",
            "`mtu`",
        ],
    );
}

#[test]
fn unknown_key_in_peer_names_the_peer() {
    let text = format!(
        "{}\n[[peer]]\nname = \"site-b\"\npublic-key = \"{}\"\nallowed-ips = []\nkeepalive = 25\n",
        interface(),
        new_public()
    );
    let error = expect_error(
        &text,
        8,
        "peer \"site-b\": keepalive",
        &["unknown key", "`persistent-keepalive`", "`allowed-ips`"],
    );
    assert_eq!(error.peer(), Some("site-b"));
    assert_eq!(error.key(), Some("keepalive"));
}

#[test]
fn unknown_table() {
    let text = format!("{}\n[peers]\nname = \"x\"\n", interface());
    expect_error(&text, 4, "peers", &["unknown key", "`interface` or `peer`"]);
}

#[test]
fn missing_required_key_in_peer() {
    let text = format!(
        "{}\n[[peer]]\nname = \"site-b\"\nallowed-ips = []\n",
        interface()
    );
    expect_error(
        &text,
        4,
        "peer \"site-b\": public-key",
        &["required key is missing", "sitelinkctl pubkey"],
    );

    let text = format!(
        "{}\n[[peer]]\npublic-key = \"{}\"\nallowed-ips = []\n",
        interface(),
        new_public()
    );
    expect_error(&text, 4, "peer #1: name", &["required key is missing"]);

    let text = format!(
        "{}\n[[peer]]\nname = \"site-b\"\npublic-key = \"{}\"\n",
        interface(),
        new_public()
    );
    expect_error(
        &text,
        4,
        "peer \"site-b\": allowed-ips",
        &["required key is missing", "198.19.2.0/24"],
    );
}

#[test]
fn missing_interface_table() {
    let text = format!(
        "[[peer]]\nname = \"x\"\npublic-key = \"{}\"\nallowed-ips = []\n",
        new_public()
    );
    let error = expect_error(
        &text,
        1,
        "interface",
        &["required key is missing", "[interface]"],
    );
    assert!(
        error
            .to_string()
            .starts_with(&format!("{PATH}:1:1: interface: ")),
        "{error}"
    );
    expect_error("", 1, "interface", &["required key is missing"]);
}

#[test]
fn wrong_types() {
    let text = format!("{}mtu = \"1420\"\n", interface());
    expect_error(
        &text,
        3,
        "interface: mtu",
        &["wrong type: expected an integer, found a string"],
    );

    let text = format!("{}listen-port = 51820.0\n", interface());
    expect_error(&text, 3, "interface: listen-port", &["expected an integer"]);

    let text = format!("{}address = \"198.18.100.1/24\"\n", interface());
    expect_error(
        &text,
        3,
        "interface: address",
        &["expected an array, found a string"],
    );

    let text = format!(
        "{}\n[[peer]]\nname = \"b\"\npublic-key = \"{}\"\nallowed-ips = [\"198.19.2.0/24\", 7]\n",
        interface(),
        new_public()
    );
    expect_error(
        &text,
        7,
        "peer \"b\": allowed-ips",
        &["expected a string, found an integer"],
    );

    let text = format!("{}\n[peer]\nname = \"b\"\n", interface());
    expect_error(&text, 4, "peer", &["found a table; write [[peer]]"]);

    let text = format!("peer = [1]\n{}", interface());
    expect_error(&text, 1, "peer", &["found an integer in it"]);

    // After [interface], a bare key belongs to that table.
    let text = format!("{}peer = [1]\n", interface());
    expect_error(&text, 3, "interface: peer", &["unknown key"]);

    let text = format!("[[interface]]\nprivate-key = \"{}\"\n", alice_b64());
    expect_error(
        &text,
        1,
        "interface",
        &["found an array; write [interface]"],
    );

    let text = format!("{}mtu = 1979-05-27\n", interface());
    expect_error(
        &text,
        3,
        "interface: mtu",
        &["expected an integer, found a date-time"],
    );
}

#[test]
fn wrong_type_never_echoes_string_values() {
    // A key pasted into the wrong place must not end up in logs.
    let text = format!("{}mtu = \"{}\"\n", interface(), new_public());
    let error = parse(&text).unwrap_err().to_string();
    assert!(
        !error.contains(&text[text.len() - 46..text.len() - 2]),
        "{error}"
    );
    assert!(error.contains("found a string"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// Keys.

#[test]
fn bad_base64_public_key() {
    let text = format!(
        "{}\n[[peer]]\nname = \"site-b\"\npublic-key = \"not base64!\"\nallowed-ips = []\n",
        interface()
    );
    let error = expect_error(
        &text,
        6,
        "peer \"site-b\": public-key",
        &["not valid base64", "44 base64 characters"],
    );
    assert_eq!(error.column(), Some(14));
}

#[test]
fn wrong_length_public_key_matches_documented_message() {
    use base64::Engine as _;
    let short = base64::engine::general_purpose::STANDARD.encode([7u8; 31]);
    let text = format!(
        "{}\n[[peer]]\nname = \"site-b\"\npublic-key = \"{short}\"\nallowed-ips = []\n",
        interface()
    );
    let error = parse(&text).unwrap_err();
    assert_eq!(
        error.to_string(),
        "/etc/sitelink/sl0.toml:6:14: peer \"site-b\": public-key: decodes to 31 bytes, \
         expected 32 (a WireGuard key is 44 base64 characters, e.g. from \
         `sitelinkctl genkey | sitelinkctl pubkey`)"
    );
}

#[test]
fn bad_inline_private_key_is_not_echoed() {
    let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXM=";
    let text = format!("[interface]\nprivate-key = \"{secret}\"\n");
    let error = expect_error(
        &text,
        2,
        "interface: private-key",
        &["decodes to 29 bytes, expected 32", "sitelinkctl genkey"],
    );
    assert!(!error.to_string().contains(secret));
}

#[test]
fn bad_preshared_key() {
    let text = format!(
        "{}\n[[peer]]\nname = \"b\"\npublic-key = \"{}\"\npreshared-key = \"abc\"\nallowed-ips = []\n",
        interface(),
        new_public()
    );
    expect_error(
        &text,
        7,
        "peer \"b\": preshared-key",
        &["not valid base64", "preshared key is 44 base64 characters"],
    );
}

#[test]
fn both_private_key_forms() {
    let text = format!("{}private-key-file = \"sl0.key\"\n", interface());
    expect_error(
        &text,
        3,
        "interface: private-key-file",
        &["set either private-key or private-key-file, not both"],
    );
}

#[test]
fn neither_private_key_form() {
    let text = "# comment\n[interface]\nlisten-port = 51820\n";
    expect_error(
        text,
        2,
        "interface: private-key-file",
        &[
            "required key is missing",
            "/etc/sitelink/sl0.key",
            "private-key",
        ],
    );
}

#[test]
fn both_preshared_key_forms() {
    let psk = PresharedKey::generate().expose_base64();
    let text = format!(
        "{}\n[[peer]]\nname = \"b\"\npublic-key = \"{}\"\npreshared-key-file = \"b.psk\"\n\
         preshared-key = \"{psk}\"\nallowed-ips = []\n",
        interface(),
        new_public()
    );
    let error = expect_error(
        &text,
        8,
        "peer \"b\": preshared-key",
        &["set either preshared-key or preshared-key-file, not both"],
    );
    assert!(!error.to_string().contains(&psk));
}

#[test]
fn peer_key_equal_to_own_public_key() {
    let text = format!(
        "{}\n[[peer]]\nname = \"loop\"\npublic-key = \"{}\"\nallowed-ips = []\n",
        interface(),
        alice().public_key()
    );
    expect_error(
        &text,
        6,
        "peer \"loop\": public-key",
        &["the interface's own public key"],
    );
}

#[test]
fn duplicate_public_key() {
    let key = new_public();
    let text = format!(
        "{}\n[[peer]]\nname = \"b\"\npublic-key = \"{key}\"\nallowed-ips = []\n\n\
         [[peer]]\nname = \"c\"\npublic-key = \"{key}\"\nallowed-ips = []\n",
        interface()
    );
    expect_error(
        &text,
        11,
        "peer \"c\": public-key",
        &["peer \"b\" (line 6) already has this public key"],
    );
}

// ---------------------------------------------------------------------------------------------
// Peers.

#[test]
fn duplicate_peer_name() {
    let text = format!(
        "{}\n[[peer]]\nname = \"b\"\npublic-key = \"{}\"\nallowed-ips = []\n\n\
         [[peer]]\nname = \"b\"\npublic-key = \"{}\"\nallowed-ips = []\n",
        interface(),
        new_public(),
        new_public()
    );
    expect_error(
        &text,
        10,
        "peer \"b\": name",
        &["duplicate peer name", "line 5"],
    );
}

#[test]
fn bad_peer_name() {
    let text = format!(
        "{}\n[[peer]]\npublic-key = \"{}\"\nname = \"site b\"\nallowed-ips = []\n",
        interface(),
        new_public()
    );
    expect_error(&text, 6, "peer #1: name", &["contains ' '", "1-63 letters"]);

    let long = "x".repeat(64);
    let text = format!(
        "{}\n[[peer]]\nname = \"{long}\"\npublic-key = \"{}\"\nallowed-ips = []\n",
        interface(),
        new_public()
    );
    expect_error(&text, 5, "peer #1: name", &["64 characters long"]);
}

#[test]
fn nested_allowed_ips_of_different_peers_are_accepted() {
    // A hub with the whole range, a branch with part of it, and a default route: routing
    // picks the longest match, as WireGuard does.
    let text = format!(
        "{}\n[[peer]]\nname = \"hub\"\npublic-key = \"{}\"\n\
         allowed-ips = [\"198.19.0.0/16\", \"0.0.0.0/0\", \"::/0\"]\n\n\
         [[peer]]\nname = \"branch-b\"\npublic-key = \"{}\"\n\
         allowed-ips = [\"198.19.2.0/24\", \"198.19.2.128/25\", \"fd19:2::/64\"]\n",
        interface(),
        new_public(),
        new_public()
    );
    let config = Config::parse(&text, Path::new("/etc/sitelink/sl0.toml")).unwrap();
    assert_eq!(config.peers[0].allowed_ips.len(), 3);
    assert_eq!(config.peers[1].allowed_ips.len(), 3);
    assert!(crate::has_default_route(&config.peers));
    config.validate().unwrap();
}

#[test]
fn the_same_prefix_on_two_peers_names_both() {
    let text = format!(
        "{}\n[[peer]]\nname = \"site-b\"\npublic-key = \"{}\"\n\
         allowed-ips = [\"198.18.100.2/32\", \"198.19.2.0/24\"]\n\n\
         [[peer]]\nname = \"site-c\"\npublic-key = \"{}\"\n\
         allowed-ips = [\n  \"198.19.3.0/24\",\n  \"198.19.2.0/24\",\n]\n",
        interface(),
        new_public(),
        new_public()
    );
    let error = expect_error(
        &text,
        14,
        "peer \"site-c\": allowed-ips",
        &[
            "198.19.2.0/24 is also in the allowed-ips of peer \"site-b\" (line 7)",
            "belong to one peer only",
            "the longest match wins",
        ],
    );
    assert_eq!(error.column(), Some(3));
}

#[test]
fn the_same_ipv6_default_route_on_two_peers_is_refused() {
    let text = format!(
        "{}\n[[peer]]\nname = \"b\"\npublic-key = \"{}\"\nallowed-ips = [\"::/0\"]\n\n\
         [[peer]]\nname = \"c\"\npublic-key = \"{}\"\nallowed-ips = [\"fd19:3::/64\", \"::/0\"]\n",
        interface(),
        new_public(),
        new_public()
    );
    expect_error(
        &text,
        12,
        "peer \"c\": allowed-ips",
        &["::/0 is also in the allowed-ips of peer \"b\" (line 7)"],
    );
}

#[test]
fn many_peers_and_prefixes_load_in_linear_time() {
    // 20,000 peers and a peer with 50,000 prefixes: quadratic checks would take minutes.
    let mut text = interface();
    for i in 0..20_000u32 {
        let [_, _, hi, lo] = i.to_be_bytes();
        let mut key = [7u8; 32];
        key[..4].copy_from_slice(&i.to_be_bytes());
        text += &format!(
            "\n[[peer]]\nname = \"p{i}\"\npublic-key = \"{}\"\nallowed-ips = [\"198.18.{hi}.{lo}/32\"]\n",
            PublicKey::from_bytes(key)
        );
    }
    let prefixes: Vec<String> = (0..50_000u32)
        .map(|i| format!("\"fd00:{:x}:{:x}::/48\"", i >> 16, i & 0xffff))
        .collect();
    text += &format!(
        "\n[[peer]]\nname = \"wide\"\npublic-key = \"{}\"\nallowed-ips = [{}]\n",
        new_public(),
        prefixes.join(", ")
    );
    let start = std::time::Instant::now();
    let config = Config::parse(&text, Path::new("/etc/sitelink/sl0.toml")).unwrap();
    config.validate().unwrap();
    assert_eq!(config.peers.len(), 20_001);
    // Generous: a debug build does this in well under a second.
    assert!(
        start.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn fwmark_and_table() {
    let parse = |extra: &str| {
        let text = format!("{}{extra}", interface());
        Config::parse(&text, Path::new("/etc/sitelink/sl0.toml"))
    };
    let iface = parse("").unwrap().interface;
    assert_eq!((iface.fwmark, iface.table), (None, crate::RouteTable::Auto));
    let iface = parse("fwmark = 0xca6c\ntable = 1234\n").unwrap().interface;
    assert_eq!(
        (iface.fwmark, iface.table),
        (Some(51820), crate::RouteTable::Id(1234))
    );
    assert_eq!(
        parse("table = \"off\"\n").unwrap().interface.table,
        crate::RouteTable::Off
    );
    assert_eq!(
        parse("table = \"auto\"\n").unwrap().interface.table,
        crate::RouteTable::Auto
    );
    for (extra, needle) in [
        ("fwmark = 0\n", "fwmark: 0 means no mark; omit fwmark"),
        (
            "fwmark = 4294967296\n",
            "fwmark: 4294967296 is out of range",
        ),
        (
            "table = \"main\"\n",
            "table: \"main\" is not a table; use \"auto\"",
        ),
        ("table = 255\n", "table: 255 is the kernel's local table"),
        ("table = 0\n", "table: 0 is out of range"),
        ("table = true\n", "table"),
    ] {
        let e = parse(extra).unwrap_err().to_string();
        assert!(e.contains(needle), "{extra:?}: {e}");
        assert!(e.contains("sl0.toml:"), "{e}");
    }
}

#[test]
fn metrics_listen_is_an_address_or_a_socket_path() {
    let parse = |extra: &str| {
        let text = format!("{}{extra}", interface());
        Config::parse(&text, Path::new("/etc/sitelink/sl0.toml"))
    };
    assert_eq!(parse("").unwrap().interface.metrics_listen, None);
    assert_eq!(
        parse("metrics-listen = \"127.0.0.1:9586\"\n")
            .unwrap()
            .interface
            .metrics_listen,
        Some(MetricsListen::Tcp("127.0.0.1:9586".parse().unwrap()))
    );
    assert_eq!(
        parse("metrics-listen = \"[::1]:9586\"\n")
            .unwrap()
            .interface
            .metrics_listen,
        Some(MetricsListen::Tcp("[::1]:9586".parse().unwrap()))
    );
    assert_eq!(
        parse("metrics-listen = \"/run/sitelink/m.sock\"\n")
            .unwrap()
            .interface
            .metrics_listen,
        Some(MetricsListen::Unix("/run/sitelink/m.sock".into()))
    );
    for extra in [
        "metrics-listen = \"localhost:9586\"\n",
        "metrics-listen = \"9586\"\n",
        "metrics-listen = \"run/m.sock\"\n",
    ] {
        expect_error(
            &format!("{}{extra}", interface()),
            3,
            "interface: metrics-listen",
            &[
                "is not an address:port or an absolute socket path",
                "127.0.0.1:9586",
            ],
        );
    }
    expect_error(
        &format!("{}metrics-listen = \"127.0.0.1:0\"\n", interface()),
        3,
        "interface: metrics-listen",
        &["port 0", "9586"],
    );
}

#[test]
fn endpoint_may_be_a_list_tried_in_order() {
    let peer = |endpoint: &str| {
        format!(
            "{}\n[[peer]]\nname = \"b\"\npublic-key = \"{}\"\nallowed-ips = []\nendpoint = {endpoint}\n",
            interface(),
            new_public()
        )
    };
    let config = parse(&peer("[\"gw-b1.example.net:51820\", \"198.18.0.7:51820\"]")).unwrap();
    let p = &config.peers[0];
    assert_eq!(
        p.endpoint.as_ref().unwrap().to_string(),
        "gw-b1.example.net:51820"
    );
    assert_eq!(p.more_endpoints.len(), 1);
    assert_eq!(p.more_endpoints[0].to_string(), "198.18.0.7:51820");
    let single = parse(&peer("\"198.18.0.7:51820\"")).unwrap();
    assert!(single.peers[0].more_endpoints.is_empty());
    expect_error(
        &peer("[]"),
        8,
        "peer \"b\": endpoint",
        &["the list is empty"],
    );
    expect_error(
        &peer("[\"198.18.0.7:51820\", \"198.18.0.7:51820\"]"),
        8,
        "peer \"b\": endpoint",
        &["listed twice"],
    );
    expect_error(
        &peer("[\"198.18.0.7:51820\", \"no-port\"]"),
        8,
        "peer \"b\": endpoint",
        &["\"no-port\""],
    );
    expect_error(&peer("7"), 8, "peer \"b\": endpoint", &["host:port"]);
}

#[test]
fn allowed_endpoints_are_networks() {
    let peer = |extra: &str| {
        format!(
            "{}\n[[peer]]\nname = \"b\"\npublic-key = \"{}\"\nallowed-ips = []\n{extra}",
            interface(),
            new_public()
        )
    };
    let config = parse(&peer(
        "allowed-endpoints = [\"198.18.0.0/24\", \"2001:db8::/32\"]\n",
    ))
    .unwrap();
    assert_eq!(
        config.peers[0].allowed_endpoints,
        vec![cidr("198.18.0.0/24"), cidr("2001:db8::/32")]
    );
    assert!(parse(&peer("")).unwrap().peers[0]
        .allowed_endpoints
        .is_empty());
    expect_error(
        &peer("allowed-endpoints = [\"198.18.0.7/24\"]\n"),
        8,
        "peer \"b\": allowed-endpoints",
        &["host bits", "198.18.0.0/24"],
    );
    expect_error(
        &peer("allowed-endpoints = [\"gw.example.net\"]\n"),
        8,
        "peer \"b\": allowed-endpoints",
        &["198.18.0.7/32"],
    );
}

#[test]
fn effective_fwmark_follows_table_and_default_routes() {
    let text = format!(
        "{}\n[[peer]]\nname = \"hq\"\npublic-key = \"{}\"\nallowed-ips = [\"0.0.0.0/0\"]\n",
        interface(),
        new_public()
    );
    let mut config = Config::parse(&text, Path::new("/etc/sitelink/sl0.toml")).unwrap();
    assert_eq!(
        config.interface.effective_fwmark(&config.peers),
        Some(crate::DEFAULT_TABLE)
    );
    config.interface.fwmark = Some(7);
    assert_eq!(config.interface.effective_fwmark(&config.peers), Some(7));
    config.interface.fwmark = None;
    config.interface.table = crate::RouteTable::Off;
    assert_eq!(config.interface.effective_fwmark(&config.peers), None);
    config.interface.table = crate::RouteTable::Auto;
    config.peer_mut(0).allowed_ips = vec![cidr("198.19.0.0/16")];
    assert_eq!(config.interface.effective_fwmark(&config.peers), None);
}

#[test]
fn bad_cidr_in_allowed_ips() {
    let cases = [
        ("198.19.2/24", "`198.19.2` is not an IPv4 or IPv6 address"),
        ("198.19.2.0/", "missing prefix length"),
        (
            "198.19.2.0/33",
            "prefix length /33 is longer than the 32 bits",
        ),
        (
            "fd19::/129",
            "prefix length /129 is longer than the 128 bits",
        ),
    ];
    for (cidr, needle) in cases {
        let text = format!(
            "{}\n[[peer]]\nname = \"b\"\npublic-key = \"{}\"\nallowed-ips = [\"{cidr}\"]\n",
            interface(),
            new_public()
        );
        expect_error(&text, 7, "peer \"b\": allowed-ips", &[needle]);
    }
}

#[test]
fn host_bits_in_allowed_ips() {
    let text = format!(
        "{}\n[[peer]]\nname = \"site-b\"\npublic-key = \"{}\"\nallowed-ips = [\"198.19.2.1/24\"]\n",
        interface(),
        new_public()
    );
    expect_error(
        &text,
        7,
        "peer \"site-b\": allowed-ips",
        &["198.19.2.1/24 has host bits set; did you mean 198.19.2.0/24?"],
    );

    let text = format!(
        "{}\n[[peer]]\nname = \"b\"\npublic-key = \"{}\"\nallowed-ips = [\"fd19:2::1/64\"]\n",
        interface(),
        new_public()
    );
    expect_error(
        &text,
        7,
        "peer \"b\": allowed-ips",
        &["did you mean fd19:2::/64?"],
    );
}

#[test]
fn duplicate_allowed_ip_within_a_peer() {
    let text = format!(
        "{}\n[[peer]]\nname = \"b\"\npublic-key = \"{}\"\nallowed-ips = [\"198.19.2.0/24\", \"198.19.2.0/24\"]\n",
        interface(),
        new_public()
    );
    let error = expect_error(
        &text,
        7,
        "peer \"b\": allowed-ips",
        &["198.19.2.0/24 is listed twice"],
    );
    assert_eq!(error.column(), Some(33));
}

#[test]
fn bad_endpoint() {
    let cases = [
        ("fd00::1:51820", "IPv6 address must be in brackets"),
        ("gw-b.example.net", "missing `:port`"),
        ("198.18.0.2:0", "port 0 is not allowed"),
        (
            "198.18.0.2:70000",
            "port `70000` is not a number in 1-65535",
        ),
        ("gw_b:51820", "host `gw_b` is not"),
    ];
    for (endpoint, needle) in cases {
        let text = format!(
            "{}\n[[peer]]\nname = \"b\"\npublic-key = \"{}\"\nendpoint = \"{endpoint}\"\nallowed-ips = []\n",
            interface(),
            new_public()
        );
        expect_error(&text, 7, "peer \"b\": endpoint", &[needle]);
    }
}

#[test]
fn keepalive_out_of_range() {
    for (value, needle) in [
        ("0", "0 is not allowed; omit the key to disable"),
        ("65536", "65536 is out of range; use 1-65535 seconds"),
        ("-5", "-5 is out of range"),
    ] {
        let text = format!(
            "{}\n[[peer]]\nname = \"b\"\npublic-key = \"{}\"\nallowed-ips = []\npersistent-keepalive = {value}\n",
            interface(),
            new_public()
        );
        expect_error(&text, 8, "peer \"b\": persistent-keepalive", &[needle]);
    }
}

// ---------------------------------------------------------------------------------------------
// Interface values.

#[test]
fn listen_port_out_of_range() {
    for value in ["0", "65536", "-1", "99999999999999999999"] {
        let text = format!("{}listen-port = {value}\n", interface());
        expect_error(
            &text,
            3,
            "interface: listen-port",
            &[&format!(
                "{value} is out of range; use a UDP port in 1-65535"
            )],
        );
    }
}

#[test]
fn mtu_out_of_range() {
    for value in ["575", "65536", "0"] {
        let text = format!("{}mtu = {value}\n", interface());
        expect_error(
            &text,
            3,
            "interface: mtu",
            &[&format!("{value} is out of range; use 576-65535")],
        );
    }
    // 576 is fine for IPv4 only.
    let text = format!(
        "{}address = [\"198.18.100.1/24\"]\nmtu = 576\n",
        interface()
    );
    assert_eq!(parse(&text).unwrap().interface.mtu, 576);
}

#[test]
fn mtu_below_ipv6_minimum() {
    let text = format!(
        "{}address = [\"198.18.100.1/24\", \"fd18:100::1/64\"]\nmtu = 1279\n",
        interface()
    );
    expect_error(
        &text,
        4,
        "interface: mtu",
        &["1279 is below 1280", "fd18:100::1/64 is IPv6"],
    );
}

#[test]
fn bad_interface_address() {
    let text = format!(
        "{}address = [\"198.18.100.1/24\", \"fd18:100::1/200\"]\n",
        interface()
    );
    expect_error(
        &text,
        3,
        "interface: address",
        &["prefix length /200", "e.g. \"198.18.100.1/24\""],
    );
    let text = format!(
        "{}address = [\"10.0.0.1/8\", \"10.0.0.1/8\"]\n",
        interface()
    );
    expect_error(&text, 3, "interface: address", &["listed twice"]);
}

#[test]
fn bad_interface_name() {
    let text = format!("{}name = \"this-name-is-too-long\"\n", interface());
    expect_error(
        &text,
        3,
        "interface: name",
        &["is 21 characters long; Linux allows at most 15"],
    );
    let text = format!("{}name = \"sl/0\"\n", interface());
    expect_error(&text, 3, "interface: name", &["contains '/'"]);
}

#[test]
fn bad_file_stem_asks_for_name() {
    let path = "/etc/sitelink/my site config.toml";
    let error = Config::parse(&format!("\n{}", interface()), Path::new(path)).unwrap_err();
    check_error(
        &error,
        path,
        2,
        "interface: name",
        &[
            "\"my site config\" is not a valid interface name",
            "set name = \"sl0\"",
        ],
    );
    // An explicit name makes the stem irrelevant.
    let text = format!("{}name = \"sl1\"\n", interface());
    let config = Config::parse(&text, Path::new(path)).unwrap();
    assert_eq!(config.interface.name.as_str(), "sl1");
}

// ---------------------------------------------------------------------------------------------
// Key files and permissions.

#[test]
fn missing_private_key_file_names_file_and_key() {
    let dir = Dir::new();
    let text = "[interface]\nprivate-key-file = \"missing.key\"\n";
    let path = dir.write("sl0.toml", text, 0o600);
    let error = Config::load(&path).unwrap_err();
    let key_path = dir.0.path().join("missing.key");
    check_error(
        &error,
        &path.display().to_string(),
        2,
        "interface: private-key-file",
        &[
            &format!("cannot read private key file {}", key_path.display()),
            "sitelinkctl genkey >",
        ],
    );
    let source = std::error::Error::source(&error).unwrap().to_string();
    assert!(source.contains("No such file"), "{source}");
}

#[test]
fn missing_preshared_key_file_names_file_and_key() {
    let text = format!(
        "{}\n[[peer]]\nname = \"b\"\npublic-key = \"{}\"\npreshared-key-file = \"/nonexistent/b.psk\"\nallowed-ips = []\n",
        interface(),
        new_public()
    );
    expect_error(
        &text,
        7,
        "peer \"b\": preshared-key-file",
        &["cannot read preshared key file /nonexistent/b.psk"],
    );
}

#[test]
fn key_file_that_is_a_directory() {
    let dir = Dir::new();
    fs::create_dir(dir.0.path().join("keys")).unwrap();
    let path = dir.write(
        "sl0.toml",
        "[interface]\nprivate-key-file = \"keys\"\n",
        0o600,
    );
    let error = Config::load(&path).unwrap_err();
    assert!(
        error.to_string().contains("is not a regular file"),
        "{error}"
    );
}

#[test]
fn bad_key_file_contents() {
    let dir = Dir::new();
    dir.write("sl0.key", "garbage\n", 0o600);
    let path = dir.write(
        "sl0.toml",
        "[interface]\nprivate-key-file = \"sl0.key\"\n",
        0o600,
    );
    let error = Config::load(&path).unwrap_err();
    check_error(
        &error,
        &path.display().to_string(),
        2,
        "interface: private-key-file",
        &[
            &format!(
                "{}: not valid base64",
                dir.0.path().join("sl0.key").display()
            ),
            "must hold only the key",
        ],
    );
}

#[test]
fn group_readable_private_key_file_is_refused() {
    let dir = Dir::new();
    let key_path = dir.write("sl0.key", &alice_b64(), 0o644);
    let path = dir.write(
        "sl0.toml",
        "[interface]\nprivate-key-file = \"sl0.key\"\n",
        0o600,
    );
    let error = Config::load(&path).unwrap_err();
    let shown = key_path.display();
    check_error(
        &error,
        &path.display().to_string(),
        2,
        "interface: private-key-file",
        &[&format!(
            "{shown}: private key file is readable by group or others (mode 0644); \
             run: chmod 600 {shown}"
        )],
    );

    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o640)).unwrap();
    assert!(Config::load(&path)
        .unwrap_err()
        .to_string()
        .contains("mode 0640"));

    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        Config::load(&path)
            .unwrap()
            .interface
            .private_key
            .unwrap()
            .as_bytes(),
        alice().as_bytes()
    );
}

#[test]
fn world_readable_preshared_key_file_is_refused() {
    let dir = Dir::new();
    let psk_path = dir.write("b.psk", &PresharedKey::generate().expose_base64(), 0o604);
    let text = format!(
        "{}\n[[peer]]\nname = \"b\"\npublic-key = \"{}\"\npreshared-key-file = \"b.psk\"\nallowed-ips = []\n",
        interface(),
        new_public()
    );
    let config_path = dir.0.path().join("sl0.toml");
    let error = Config::parse(&text, &config_path).unwrap_err();
    check_error(
        &error,
        &config_path.display().to_string(),
        7,
        "peer \"b\": preshared-key-file",
        &[&format!(
            "preshared key file is readable by group or others (mode 0604); run: chmod 600 {}",
            psk_path.display()
        )],
    );
    fs::set_permissions(&psk_path, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(Config::parse(&text, &config_path).unwrap().peers[0]
        .preshared_key
        .is_some());
}

#[test]
fn readable_config_with_inline_private_key_is_refused() {
    let dir = Dir::new();
    let path = dir.write("sl0.toml", &interface(), 0o644);
    let error = Config::load(&path).unwrap_err();
    let shown = path.display().to_string();
    check_error(
        &error,
        &shown,
        2,
        "interface: private-key",
        &[
            "inline private key",
            "readable by group or others (mode 0644)",
            &format!("run: chmod 600 {shown}"),
        ],
    );

    // parse() does not look at the config file's permissions.
    assert!(Config::parse(&interface(), &path).is_ok());

    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(Config::load(&path).is_ok());
}

#[test]
fn readable_config_with_inline_preshared_key_is_refused() {
    let dir = Dir::new();
    dir.write("sl0.key", &alice_b64(), 0o600);
    let text = format!(
        "[interface]\nprivate-key-file = \"sl0.key\"\n\n[[peer]]\nname = \"b\"\npublic-key = \"{}\"\n\
         preshared-key = \"{}\"\nallowed-ips = []\n",
        new_public(),
        PresharedKey::generate().expose_base64()
    );
    let path = dir.write("sl0.toml", &text, 0o640);
    let error = Config::load(&path).unwrap_err();
    check_error(
        &error,
        &path.display().to_string(),
        7,
        "peer \"b\": preshared-key",
        &["inline preshared key", "mode 0640"],
    );
}

#[test]
fn readable_config_without_inline_secrets_is_fine() {
    let dir = Dir::new();
    dir.write("sl0.key", &alice_b64(), 0o600);
    let path = dir.write(
        "sl0.toml",
        "[interface]\nprivate-key-file = \"sl0.key\"\n",
        0o644,
    );
    assert!(Config::load(&path).is_ok());
}

#[test]
fn missing_config_file_names_the_path() {
    let dir = Dir::new();
    let path = dir.0.path().join("nope.toml");
    let error = Config::load(&path).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("{}: cannot read config file", path.display())
    );
    assert!(std::error::Error::source(&error).is_some());
}

// ---------------------------------------------------------------------------------------------
// control-group.

#[test]
fn control_group_is_parsed() {
    let config = parse(&interface()).unwrap();
    assert_eq!(config.interface.control_group, None, "default: root only");
    for group in [
        "sitelink",
        "_sitelink",
        "net-admin_2",
        "machine$",
        "a",
        &"g".repeat(32),
        &format!("{}$", "g".repeat(31)),
    ] {
        let text = format!("{}control-group = \"{group}\"\n", interface());
        let config = parse(&text).unwrap_or_else(|e| panic!("{group:?}: {e}"));
        assert_eq!(config.interface.control_group.as_deref(), Some(group));
    }
}

#[test]
fn bad_control_group() {
    let cases: &[(&str, &str)] = &[
        ("", "group name is empty"),
        ("$", "group name is empty"),
        ("Sitelink", "starts with 'S'"),
        ("1sitelink", "starts with '1'"),
        ("-sitelink", "starts with '-'"),
        ("site link", "contains ' '"),
        ("site.link", "contains '.'"),
        ("siteLink", "contains 'L'"),
        ("a$b", "contains '$'"),
        ("grüppe", "contains 'ü'"),
    ];
    for (group, needle) in cases {
        let text = format!("{}mtu = 1420\ncontrol-group = \"{group}\"\n", interface());
        expect_error(
            &text,
            4,
            "interface: control-group",
            &[needle, "a group name is 1-32 characters", "\"sitelink\""],
        );
    }
    let text = format!("{}control-group = \"{}\"\n", interface(), "g".repeat(33));
    expect_error(
        &text,
        3,
        "interface: control-group",
        &["group name is 33 characters long"],
    );
    let text = format!("{}control-group = 1000\n", interface());
    expect_error(
        &text,
        3,
        "interface: control-group",
        &["wrong type: expected a string, found an integer"],
    );
}

#[test]
fn unknown_key_in_interface_lists_control_group() {
    let text = format!("{}control_group = \"sitelink\"\n", interface());
    expect_error(
        &text,
        3,
        "interface: control_group",
        &["unknown key", "`control-group`"],
    );
}

// ---------------------------------------------------------------------------------------------
// Config::validate: the same rules on a config changed in memory, reported without a line.

/// A valid config loaded from a key file, as a live change starts from: peers "site-b"
/// (198.19.2.0/24, fd19:2::/64, keepalive 25) and "site-c" (198.19.3.0/24).
fn live_config() -> (Dir, Config) {
    let dir = Dir::new();
    dir.write("sl0.key", &alice_b64(), 0o600);
    let text = format!(
        "[interface]\nprivate-key-file = \"sl0.key\"\nlisten-port = 51820\n\
         address = [\"198.18.100.1/24\", \"fd18:100::1/64\"]\ncontrol-group = \"sitelink\"\n\n\
         [[peer]]\nname = \"site-b\"\npublic-key = \"{}\"\n\
         allowed-ips = [\"198.19.2.0/24\", \"fd19:2::/64\"]\npersistent-keepalive = 25\n\n\
         [[peer]]\nname = \"site-c\"\npublic-key = \"{}\"\nallowed-ips = [\"198.19.3.0/24\"]\n",
        new_public(),
        new_public()
    );
    let path = dir.write("sl0.toml", &text, 0o600);
    let config = Config::load(&path).unwrap();
    config.validate().unwrap();
    (dir, config)
}

/// Asserts that `config` fails validation with a message that starts with `scope_key` and
/// contains every needle, and has no file or line.
#[track_caller]
fn expect_live_error(config: &Config, scope_key: &str, needles: &[&str]) -> ConfigError {
    let error = match config.validate() {
        Ok(()) => panic!("validate() passed but should fail with {scope_key:?}"),
        Err(e) => e,
    };
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("{scope_key}: ")),
        "expected {scope_key:?} first in: {message}"
    );
    for needle in needles {
        assert!(
            message.contains(needle),
            "expected {needle:?} in: {message}"
        );
    }
    assert_eq!(error.line(), None, "{message}");
    assert_eq!(error.path(), Path::new(""), "{message}");
    assert!(!message.contains("sl0.toml"), "{message}");
    assert!(
        !message.contains(&alice_b64()),
        "key material in: {message}"
    );
    error
}

fn cidr(text: &str) -> Cidr {
    text.parse().unwrap()
}

#[test]
fn validate_accepts_a_loaded_config_and_valid_changes() {
    let (_dir, mut config) = live_config();
    config.validate().unwrap();
    config.peers.push(Arc::new(Peer {
        name: "site-d".into(),
        public_key: new_public().parse().unwrap(),
        preshared_key: None,
        preshared_key_file: None,
        endpoint: Some("198.51.100.4:51820".parse().unwrap()),
        allowed_ips: vec![cidr("198.19.4.0/24"), cidr("fd19:4::/64")],
        persistent_keepalive: Some(65535),
        allowed_endpoints: Vec::new(),
        more_endpoints: Vec::new(),
    }));
    config.interface.listen_port = None;
    config.interface.control_group = None;
    config.validate().unwrap();
    config.peers.clear();
    config.validate().unwrap();
}

#[test]
fn validate_mtu() {
    let (_dir, mut config) = live_config();
    config.interface.mtu = 575;
    expect_live_error(
        &config,
        "interface: mtu",
        &["575 is out of range; use 576-65535 (default 1420)"],
    );
    config.interface.mtu = 1279;
    expect_live_error(
        &config,
        "interface: mtu",
        &["1279 is below 1280, the IPv6 minimum, and address fd18:100::1/64 is IPv6"],
    );
    config.interface.addresses.retain(Cidr::is_ipv4);
    config.validate().unwrap();
}

#[test]
fn validate_duplicate_interface_address() {
    let (_dir, mut config) = live_config();
    config.interface.addresses.push(cidr("198.18.100.1/24"));
    expect_live_error(
        &config,
        "interface: address",
        &["198.18.100.1/24 is listed twice; remove one"],
    );
}

#[test]
fn validate_listen_port() {
    let (_dir, mut config) = live_config();
    config.interface.listen_port = Some(0);
    expect_live_error(
        &config,
        "interface: listen-port",
        &["0 is out of range; use a UDP port in 1-65535"],
    );
}

#[test]
fn validate_control_group() {
    let (_dir, mut config) = live_config();
    config.interface.control_group = Some("Wheel".into());
    expect_live_error(
        &config,
        "interface: control-group",
        &["group name \"Wheel\" starts with 'W'"],
    );
}

#[test]
fn validate_peer_name_syntax() {
    let (_dir, mut config) = live_config();
    config.peer_mut(1).name = "site c".into();
    let error = expect_live_error(
        &config,
        "peer #2: name",
        &["peer name \"site c\" contains ' '", "use 1-63 letters"],
    );
    assert_eq!(error.key(), Some("name"));
    config.peer_mut(1).name = String::new();
    expect_live_error(&config, "peer #2: name", &["peer name is empty"]);
    config.peer_mut(1).name = "c".repeat(64);
    expect_live_error(&config, "peer #2: name", &["64 characters long"]);
}

#[test]
fn validate_unique_peer_names() {
    let (_dir, mut config) = live_config();
    config.peer_mut(1).name = "site-b".into();
    let error = expect_live_error(
        &config,
        "peer \"site-b\": name",
        &["duplicate peer name; another peer already uses it and peer names must be unique"],
    );
    assert_eq!(error.peer(), Some("site-b"));
}

#[test]
fn validate_unique_public_keys() {
    let (_dir, mut config) = live_config();
    config.peer_mut(1).public_key = config.peers[0].public_key;
    expect_live_error(
        &config,
        "peer \"site-c\": public-key",
        &["peer \"site-b\" already has this public key; each peer needs its own"],
    );
}

#[test]
fn validate_own_public_key() {
    let (_dir, mut config) = live_config();
    config.peer_mut(0).public_key = config.interface.public_key().unwrap();
    let error = expect_live_error(
        &config,
        "peer \"site-b\": public-key",
        &["this is the interface's own public key; set the remote site's public key"],
    );
    assert_eq!(error.key(), Some("public-key"));
}

#[test]
fn validate_host_bits() {
    let (_dir, mut config) = live_config();
    config.peer_mut(1).allowed_ips.push(cidr("198.19.5.1/24"));
    expect_live_error(
        &config,
        "peer \"site-c\": allowed-ips",
        &["198.19.5.1/24 has host bits set; did you mean 198.19.5.0/24?"],
    );
}

#[test]
fn validate_duplicate_allowed_ip_within_a_peer() {
    let (_dir, mut config) = live_config();
    config.peer_mut(0).allowed_ips.push(cidr("fd19:2::/64"));
    expect_live_error(
        &config,
        "peer \"site-b\": allowed-ips",
        &["fd19:2::/64 is listed twice; remove one"],
    );
}

#[test]
fn validate_same_prefix_on_two_peers() {
    let (_dir, mut config) = live_config();
    config.peer_mut(1).allowed_ips.push(cidr("198.19.2.0/24"));
    let error = config.validate().unwrap_err();
    assert_eq!(
        error.to_string(),
        "peer \"site-c\": allowed-ips: 198.19.2.0/24 is also in the allowed-ips of peer \
         \"site-b\"; a prefix can belong to one peer only, so remove it from one of them \
         (prefixes may nest, e.g. 198.19.0.0/16 on a hub and 198.19.2.0/24 on a branch: the \
         longest match wins)"
    );
    assert_eq!(error.peer(), Some("site-c"));
    assert_eq!(error.key(), Some("allowed-ips"));

    // Nesting is fine.
    config.peer_mut(1).allowed_ips = vec![cidr("fd19::/16"), cidr("198.19.0.0/16")];
    config.validate().unwrap();
}

#[test]
fn validate_allows_no_private_key_and_checks_fwmark_and_table() {
    let (_dir, mut config) = live_config();
    config.interface.private_key = None;
    config.validate().unwrap();
    config.interface.fwmark = Some(0);
    expect_live_error(&config, "interface: fwmark", &["0 means no mark"]);
    config.interface.fwmark = Some(1);
    config.interface.table = crate::RouteTable::Id(255);
    expect_live_error(&config, "interface: table", &["local table"]);
}

#[test]
fn validate_keepalive() {
    let (_dir, mut config) = live_config();
    config.peer_mut(0).persistent_keepalive = Some(0);
    expect_live_error(
        &config,
        "peer \"site-b\": persistent-keepalive",
        &["0 is not allowed; omit the key to disable keepalives"],
    );
    config.peer_mut(0).persistent_keepalive = Some(1);
    config.validate().unwrap();
}

#[test]
fn live_errors_built_by_the_daemon_have_the_same_shape() {
    let error = ConfigError::live_peer("site-b", "endpoint", "cannot resolve gw-b.example.net");
    assert_eq!(
        error.to_string(),
        "peer \"site-b\": endpoint: cannot resolve gw-b.example.net"
    );
    assert_eq!(error.peer(), Some("site-b"));
    assert_eq!(error.key(), Some("endpoint"));
    assert_eq!((error.line(), error.column()), (None, None));
    assert_eq!(error.path(), Path::new(""));
    let error = ConfigError::live_interface(
        "listen-port",
        "cannot change while running; restart sitelinkd",
    );
    assert_eq!(
        error.to_string(),
        "interface: listen-port: cannot change while running; restart sitelinkd"
    );
    assert_eq!(error.peer(), None);
    let error = ConfigError::live_interface("", "no key\nhere");
    assert_eq!(error.to_string(), "interface: no key\\nhere");
    assert_eq!(error.key(), None);
}

// ---------------------------------------------------------------------------------------------
// user, and the private key from systemd credentials.

#[test]
fn user_key_is_parsed_and_checked() {
    let text = format!("{}user = \"sitelink\"\n", interface());
    assert_eq!(
        parse(&text).unwrap().interface.user.as_deref(),
        Some("sitelink")
    );
    let text = format!("{}mtu = 1420\nuser = \"Root\"\n", interface());
    expect_error(
        &text,
        4,
        "interface: user",
        &["user name \"Root\" starts with 'R'", "a user name is 1-32"],
    );
}

#[test]
fn a_credential_replaces_the_private_key_file_which_is_not_read() {
    let dir = Dir::new();
    // A key file that load() would refuse (mode 0644) and that holds a different key.
    let key = dir.write("sl0.key", &PrivateKey::generate().expose_base64(), 0o644);
    let text = format!(
        "[interface]\nprivate-key-file = {:?}\n",
        key.display().to_string()
    );
    let path = dir.write("sl0.toml", &text, 0o640);
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
    let config = Config::load_with_private_key(&path, Some(alice())).unwrap();
    assert_eq!(
        config.interface.private_key.as_ref().unwrap().as_bytes(),
        alice().as_bytes()
    );
    // The file may even be missing.
    fs::remove_file(&key).unwrap();
    assert!(Config::load_with_private_key(&path, Some(alice())).is_ok());
    assert!(Config::load(&path).is_err());
}

#[test]
fn routing_daemon_settings_have_defaults_and_checked_values() {
    let text = |extra: &str| format!("{}{extra}", interface());
    let c = parse(&text("")).unwrap().interface;
    assert_eq!(c.route_protocol, crate::DEFAULT_ROUTE_PROTOCOL);
    assert!(!c.withdraw_when_down);
    assert_eq!((c.down_after, c.up_after), (None, crate::DEFAULT_UP_AFTER));
    assert_eq!((c.on_peer_up, c.on_peer_down), (None, None));

    let c = parse(&text(
        "route-protocol = \"sitelink\"\ndown-after = 4\nup-after = 0\n\
         on-peer-up = \"logger up $1\"\non-peer-down = \"logger down $1\"\n",
    ))
    .unwrap()
    .interface;
    assert_eq!(
        (c.route_protocol, c.down_after, c.up_after),
        (52, Some(4), 0)
    );
    assert_eq!(c.on_peer_up.as_deref(), Some("logger up $1"));
    assert_eq!(
        parse(&text("route-protocol = 200\n"))
            .unwrap()
            .interface
            .route_protocol,
        200
    );

    expect_error(
        &text("route-protocol = 2\n"),
        3,
        "interface: route-protocol",
        &["\"kernel\" protocol", "3-255"],
    );
    expect_error(
        &text("route-protocol = \"no-such-daemon\"\n"),
        3,
        "interface: route-protocol",
        &["not a route protocol name", "/etc/iproute2/rt_protos"],
    );
    expect_error(
        &text("route-protocol = [1]\n"),
        3,
        "interface: route-protocol",
        &["route protocol number (0-255) or name"],
    );
    expect_error(
        &text("down-after = 0\n"),
        3,
        "interface: down-after",
        &["0 is out of range", "1-3600"],
    );
    expect_error(
        &text("up-after = 99999\n"),
        3,
        "interface: up-after",
        &["out of range", "0-3600"],
    );
    expect_error(
        &text("on-peer-down = \"  \"\n"),
        3,
        "interface: on-peer-down",
        &["the command is empty", "$1"],
    );
}

#[test]
fn withdraw_when_down_needs_a_keepalive_on_every_peer() {
    let peer = |name: &str, keepalive: &str| {
        format!(
            "[[peer]]\nname = \"{name}\"\npublic-key = \"{}\"\nallowed-ips = []\n{keepalive}",
            new_public()
        )
    };
    let ok = format!(
        "{}withdraw-when-down = true\n\n{}",
        interface(),
        peer("a", "persistent-keepalive = 1\n")
    );
    assert!(parse(&ok).unwrap().interface.withdraw_when_down);
    // The second peer's table starts on line 11, its name (where the error points) on 12.
    let text = format!("{ok}\n{}", peer("site-c", ""));
    expect_error(
        &text,
        12,
        "peer \"site-c\": persistent-keepalive",
        &["withdraw-when-down is on", "set persistent-keepalive"],
    );
    // The same rule for a live change (sitelinkctl, UAPI).
    let mut config = parse(&ok).unwrap();
    let mut p = (*config.peers[0]).clone();
    p.persistent_keepalive = None;
    config.peers[0] = std::sync::Arc::new(p);
    let e = config.validate().unwrap_err().to_string();
    assert!(
        e.contains("peer \"a\": persistent-keepalive") && e.contains("withdraw-when-down"),
        "{e}"
    );
}

#[test]
fn ha_needs_a_virtual_address() {
    let text = |extra: &str| format!("{}{extra}", interface());
    assert_eq!(parse(&text("")).unwrap().interface.ha_address, None);
    assert_eq!(
        parse(&text("ha = \"off\"\n")).unwrap().interface.ha_address,
        None
    );
    assert_eq!(
        parse(&text("ha = \"vrrp\"\nha-address = \"198.51.100.10\"\n"))
            .unwrap()
            .interface
            .ha_address,
        Some("198.51.100.10".parse().unwrap())
    );
    expect_error(
        &text("ha = \"vrrp\"\n"),
        3,
        "interface: ha-address",
        &["required with ha = \"vrrp\"", "endpoint"],
    );
    expect_error(
        &text("ha-address = \"198.51.100.10\"\n"),
        3,
        "interface: ha-address",
        &["without ha = \"vrrp\""],
    );
    expect_error(
        &text("ha = \"carp\"\nha-address = \"198.51.100.10\"\n"),
        3,
        "interface: ha",
        &["\"carp\" is not an HA mode", "\"vrrp\""],
    );
    expect_error(
        &text("ha = \"vrrp\"\nha-address = \"198.51.100.10/24\"\n"),
        4,
        "interface: ha-address",
        &["not an IP address", "without a prefix"],
    );
}

#[test]
fn threads_default_to_the_cores_and_are_checked() {
    let text = |extra: &str| format!("{}{extra}", interface());
    assert_eq!(parse(&text("")).unwrap().interface.threads, None);
    assert_eq!(
        parse(&text("threads = 4\n")).unwrap().interface.threads,
        Some(4)
    );
    for bad in ["threads = 0\n", "threads = 65\n", "threads = -1\n"] {
        expect_error(
            &text(bad),
            3,
            "interface: threads",
            &[
                "out of range",
                "1-64 packet threads",
                "one per core, at most 8",
            ],
        );
    }
}
