//! Saving: comments and untouched peers survive byte for byte, the result re-parses into the
//! same peers, preshared keys never land in a readable file, and an interrupted write leaves
//! the original intact.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::PrivateKey;

/// A temporary `/etc/sitelink` with our private key in `sl0.key`.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        let dir = Dir(tempfile::tempdir().unwrap());
        dir.write("sl0.key", &PrivateKey::generate().expose_base64(), 0o600);
        dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn write(&self, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// A fresh preshared key in `name` (mode 0600).
    fn psk_file(&self, name: &str) -> PresharedKey {
        let psk = PresharedKey::generate();
        self.write(name, &psk.expose_base64(), 0o600);
        psk
    }

    /// The directory's file names, sorted.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.0.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn public() -> PublicKey {
    PrivateKey::generate().public_key()
}

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter().map(|c| c.parse().unwrap()).collect()
}

/// Asserts that two peer lists are the same, field by field (keys by value).
#[track_caller]
fn assert_same_peers(a: &[Arc<Peer>], b: &[Arc<Peer>]) {
    let show = |peers: &[Arc<Peer>]| {
        peers
            .iter()
            .map(|p| {
                format!(
                    "{} {} psk={:?} file={:?} endpoint={:?} {:?} allowed={:?} keepalive={:?}",
                    p.name,
                    p.public_key,
                    p.preshared_key.as_ref().map(|k| k.expose_base64()),
                    p.preshared_key_file,
                    p.endpoint,
                    p.more_endpoints,
                    p.allowed_ips,
                    p.persistent_keepalive
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(show(a), show(b));
}

/// Re-reads the saved file and checks it holds exactly `config`'s peers.
#[track_caller]
fn assert_round_trip(config: &Config) -> String {
    let text = fs::read_to_string(&config.path).unwrap();
    let reparsed = Config::parse(&text, &config.path).unwrap();
    assert_same_peers(&reparsed.peers, &config.peers);
    text
}

/// The config of `keeps_comments_and_untouched_peers`: comments at the top, above a peer,
/// above and after values, blank lines, an indented table and an unusual key order.
fn commented_config(dir: &Dir, b: &PublicKey, c: &PublicKey, d: &PublicKey) -> String {
    dir.psk_file("site-d.psk");
    format!(
        r#"# sitelink config for site A
# edit by hand, or save with `sitelinkctl save`

[interface]
private-key-file = "sl0.key"   # never leaves this host
address = ["198.18.100.1/24"]

# Branch office B, behind NAT
[[peer]]
name = "site-b"
endpoint = "gw-b.example.net:51820"   # dyndns name
public-key = "{b}"
allowed-ips = [
    "198.19.2.0/24",   # office LAN
    "fd19:2::/64",
]
# NAT mappings expire after 30 s
persistent-keepalive = 25 # seconds

# Site C is being decommissioned
[[peer]]
name = "site-c"
public-key = "{c}"
allowed-ips = ["198.19.3.0/24"]

  # Site D: the datacenter
  [[peer]]
  allowed-ips = ["198.19.4.0/24"]     # DC range
  name   = "site-d"
  public-key = '{d}'
  preshared-key-file = "site-d.psk"


# end of peers
"#
    )
}

/// Replaces the one occurrence of `from` in `text`.
#[track_caller]
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} in:\n{text}");
    text.replacen(from, to, 1)
}

#[test]
fn keeps_comments_and_untouched_peers() {
    let dir = Dir::new();
    let (b, c, d, e) = (public(), public(), public(), public());
    let original = commented_config(&dir, &b, &c, &d);
    let path = dir.write("sl0.toml", &original, 0o640);
    let psk_e = dir.psk_file("site-e.psk");
    let mut config = Config::load(&path).unwrap();
    assert_eq!(config.peers.len(), 3);

    config.peer_mut(0).endpoint = Some("198.51.100.7:51821".parse().unwrap());
    config.peer_mut(0).persistent_keepalive = Some(30);
    config.peers.remove(1);
    config.peers.push(Arc::new(Peer {
        name: "site-e".into(),
        public_key: e,
        preshared_key: Some(psk_e),
        preshared_key_file: Some("site-e.psk".into()),
        endpoint: Some("[2001:db8::5]:51820".parse().unwrap()),
        allowed_ips: cidrs(&["198.19.5.0/24", "fd19:5::/64"]),
        persistent_keepalive: Some(25),
        allowed_endpoints: Vec::new(),
        more_endpoints: Vec::new(),
    }));
    config.save().unwrap();

    let saved = assert_round_trip(&config);
    let expected = replace_once(
        &original,
        "endpoint = \"gw-b.example.net:51820\"   # dyndns name",
        "endpoint = \"198.51.100.7:51821\"   # dyndns name",
    );
    let expected = replace_once(
        &expected,
        "persistent-keepalive = 25 # seconds",
        "persistent-keepalive = 30 # seconds",
    );
    let expected = replace_once(
        &expected,
        &format!(
            "# Site C is being decommissioned\n[[peer]]\nname = \"site-c\"\npublic-key = \
             \"{c}\"\nallowed-ips = [\"198.19.3.0/24\"]\n\n"
        ),
        "",
    );
    let expected = replace_once(
        &expected,
        "\n\n\n# end of peers\n",
        &format!(
            "\n\n[[peer]]\nname = \"site-e\"\npublic-key = \"{e}\"\npreshared-key-file = \
             \"site-e.psk\"\nendpoint = \"[2001:db8::5]:51820\"\nallowed-ips = \
             [\"198.19.5.0/24\", \"fd19:5::/64\"]\npersistent-keepalive = 25\n\n\n# end of \
             peers\n"
        ),
    );
    assert_eq!(saved, expected);
    // The untouched peer, spelled out: byte for byte as it was.
    assert!(saved.contains(&format!(
        "\n  # Site D: the datacenter\n  [[peer]]\n  allowed-ips = [\"198.19.4.0/24\"]     # DC \
         range\n  name   = \"site-d\"\n  public-key = '{d}'\n  preshared-key-file = \
         \"site-d.psk\"\n"
    )));
    assert_eq!(mode(&path), 0o640, "mode preserved");
    assert_eq!(
        dir.names(),
        ["site-d.psk", "site-e.psk", "sl0.key", "sl0.toml"]
    );

    // Saving again changes nothing.
    config.save().unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), expected);
}

#[test]
fn unchanged_config_is_not_rewritten() {
    let dir = Dir::new();
    let original = commented_config(&dir, &public(), &public(), &public());
    let path = dir.write("sl0.toml", &original, 0o600);
    let config = Config::load(&path).unwrap();
    let inode = fs::metadata(&path).unwrap().ino();
    config.save().unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), original);
    assert_eq!(fs::metadata(&path).unwrap().ino(), inode, "not replaced");
}

#[test]
fn changed_values_keep_their_place_and_comments() {
    let dir = Dir::new();
    let (b, c, d) = (public(), public(), public());
    let original = commented_config(&dir, &b, &c, &d);
    let path = dir.write("sl0.toml", &original, 0o600);
    let mut config = Config::load(&path).unwrap();
    let new_b = public();
    let b_peer = config.peer_mut(0);
    b_peer.public_key = new_b;
    // Drop one entry of the multi-line array (keeping the other's line and comment), add two.
    b_peer.allowed_ips = cidrs(&["198.19.2.0/24", "198.19.12.0/24", "fd19:12::/64"]);
    b_peer.persistent_keepalive = None;
    // Site D: gains an endpoint and a keepalive, loses its preshared key.
    let d_peer = config.peer_mut(2);
    d_peer.endpoint = Some("dc.example.net:4500".parse().unwrap());
    d_peer.persistent_keepalive = Some(10);
    d_peer.preshared_key = None;
    d_peer.preshared_key_file = None;
    config.save().unwrap();

    let saved = assert_round_trip(&config);
    let expected = replace_once(&original, &b.to_string(), &new_b.to_string());
    let expected = replace_once(
        &expected,
        "    \"198.19.2.0/24\",   # office LAN\n    \"fd19:2::/64\",\n]\n\
         # NAT mappings expire after 30 s\npersistent-keepalive = 25 # seconds\n",
        "    \"198.19.2.0/24\",   # office LAN\n    \"198.19.12.0/24\",\n    \"fd19:12::/64\",\n]\n",
    );
    // New keys go after the last key that precedes them in the usual order.
    let expected = replace_once(
        &expected,
        "  preshared-key-file = \"site-d.psk\"\n",
        "  endpoint = \"dc.example.net:4500\"\n  persistent-keepalive = 10\n",
    );
    assert_eq!(saved, expected);
}

#[test]
fn multi_line_allowed_ips_keep_each_entrys_comments() {
    let dir = Dir::new();
    let key = public();
    let with = |ips: &str| {
        format!(
            "[interface]\nprivate-key-file = \"sl0.key\"\n\n[[peer]]\nname = \"b\"\n\
             public-key = \"{key}\"\nallowed-ips = [ # routed to B\n{ips}]  # end\n"
        )
    };
    let original = with(
        "    # office\n    \"198.19.2.0/24\", # LAN\n    \"198.19.9.0/24\",  # lab, going away\n    \
         # v6\n    \"fd19:2::/64\"\n",
    );
    let path = dir.write("sl0.toml", &original, 0o600);
    let mut config = Config::load(&path).unwrap();
    config.peer_mut(0).allowed_ips = cidrs(&["fd19:2::/64", "198.19.2.0/24", "198.19.10.0/24"]);
    config.save().unwrap();
    assert_eq!(
        assert_round_trip(&config),
        with(
            "    # v6\n    \"fd19:2::/64\",\n    # office\n    \"198.19.2.0/24\", # LAN\n    \
             \"198.19.10.0/24\"\n"
        )
    );

    // Emptied and refilled: the comments on the `[` line and after `]` stay.
    config.peer_mut(0).allowed_ips.clear();
    config.save().unwrap();
    assert_eq!(assert_round_trip(&config), with(""));
    config.peer_mut(0).allowed_ips = cidrs(&["198.19.2.0/24", "198.19.3.0/24"]);
    config.save().unwrap();
    assert_eq!(
        assert_round_trip(&config),
        with("    \"198.19.2.0/24\",\n    \"198.19.3.0/24\"\n")
    );
}

#[test]
fn one_line_allowed_ips_are_rewritten_on_one_line() {
    let dir = Dir::new();
    let key = public();
    let original = one_peer(&key, "").replace(
        "allowed-ips = [\"198.19.2.0/24\"]\n",
        "allowed-ips = [ \"198.19.2.0/24\" ]   # B's LAN\n",
    );
    let path = dir.write("sl0.toml", &original, 0o600);
    let mut config = Config::load(&path).unwrap();
    config.peer_mut(0).allowed_ips = cidrs(&["198.19.2.0/24", "fd19:2::/64"]);
    config.save().unwrap();
    assert_eq!(
        assert_round_trip(&config),
        one_peer(&key, "").replace(
            "allowed-ips = [\"198.19.2.0/24\"]\n",
            "allowed-ips = [\"198.19.2.0/24\", \"fd19:2::/64\"]   # B's LAN\n",
        )
    );
}

#[test]
fn renamed_peer_keeps_its_table() {
    let dir = Dir::new();
    let original = commented_config(&dir, &public(), &public(), &public());
    let path = dir.write("sl0.toml", &original, 0o600);
    let mut config = Config::load(&path).unwrap();
    config.peer_mut(0).name = "site-b2".into();
    config.save().unwrap();
    let saved = assert_round_trip(&config);
    assert_eq!(
        saved,
        replace_once(&original, "name = \"site-b\"", "name = \"site-b2\"")
    );
}

#[test]
fn peers_are_added_to_a_file_without_any() {
    let dir = Dir::new();
    for original in [
        "# no peers yet\n[interface]\nprivate-key-file = \"sl0.key\"\n",
        "peer = []\n[interface]\nprivate-key-file = \"sl0.key\"\n",
    ] {
        let path = dir.write("sl0.toml", original, 0o600);
        let mut config = Config::load(&path).unwrap();
        let (b, c) = (public(), public());
        for (name, key, ips) in [("b", b, "198.19.2.0/24"), ("c", c, "198.19.3.0/24")] {
            config.peers.push(Arc::new(Peer {
                name: name.into(),
                public_key: key,
                preshared_key: None,
                preshared_key_file: None,
                endpoint: None,
                allowed_ips: cidrs(&[ips]),
                persistent_keepalive: None,
                allowed_endpoints: Vec::new(),
                more_endpoints: Vec::new(),
            }));
        }
        config.save().unwrap();
        let saved = assert_round_trip(&config);
        let head = original.replace("peer = []\n", "");
        assert_eq!(
            saved,
            format!(
                "{head}\n[[peer]]\nname = \"b\"\npublic-key = \"{b}\"\nallowed-ips = \
                 [\"198.19.2.0/24\"]\n\n[[peer]]\nname = \"c\"\npublic-key = \"{c}\"\n\
                 allowed-ips = [\"198.19.3.0/24\"]\n"
            )
        );

        // And removed again: the file is back to its interface.
        config.peers.clear();
        config.save().unwrap();
        assert_round_trip(&config);
        assert_eq!(fs::read_to_string(&path).unwrap(), head);
    }
}

#[test]
fn inline_array_of_peers_is_refused() {
    let dir = Dir::new();
    let original = format!(
        "peer = [{{ name = \"b\", public-key = \
         \"{}\", allowed-ips = [] }}]\n[interface]\nprivate-key-file = \"sl0.key\"\n",
        public()
    );
    let path = dir.write("sl0.toml", &original, 0o600);
    let mut config = Config::load(&path).unwrap();
    config.peer_mut(0).persistent_keepalive = Some(25);
    let error = config.save().unwrap_err().to_string();
    assert!(error.contains("inline array"), "{error}");
    assert!(error.contains("[[peer]]"), "{error}");
    assert_eq!(fs::read_to_string(&path).unwrap(), original);
}

// ---------------------------------------------------------------------------------------------
// Preshared keys and the private key.

/// `[interface]` plus one peer "b" with `psk_line` (may be empty).
fn one_peer(key: &PublicKey, psk_line: &str) -> String {
    format!(
        "[interface]\nprivate-key-file = \"sl0.key\"\n\n[[peer]]\nname = \"b\"\npublic-key = \
         \"{key}\"\n{psk_line}allowed-ips = [\"198.19.2.0/24\"]\n"
    )
}

#[test]
fn preshared_key_file_replaces_an_inline_key() {
    let dir = Dir::new();
    let key = public();
    let inline = PresharedKey::generate();
    let original = one_peer(
        &key,
        &format!(
            "preshared-key = \"{}\"   # rotate yearly\n",
            inline.expose_base64()
        ),
    );
    let path = dir.write("sl0.toml", &original, 0o600);
    let mut config = Config::load(&path).unwrap();
    let psk = dir.psk_file("b.psk");
    config.peer_mut(0).preshared_key = Some(psk);
    config.peer_mut(0).preshared_key_file = Some("b.psk".into());
    config.save().unwrap();
    let saved = assert_round_trip(&config);
    assert_eq!(
        saved,
        one_peer(&key, "preshared-key-file = \"b.psk\"   # rotate yearly\n")
    );
    assert!(!saved.contains(&inline.expose_base64()));
}

#[test]
fn same_inline_preshared_key_is_kept() {
    let dir = Dir::new();
    let key = public();
    let psk = PresharedKey::generate();
    let original = one_peer(
        &key,
        &format!("preshared-key = '{}'\n", psk.expose_base64()),
    );
    // parse() does not check the mode; the key is already in this file, so keeping it there
    // reveals nothing new.
    let path = dir.write("sl0.toml", &original, 0o644);
    let mut config = Config::parse(&original, &path).unwrap();
    config.peer_mut(0).persistent_keepalive = Some(25);
    config.save().unwrap();
    let saved = assert_round_trip(&config);
    assert_eq!(
        saved,
        original.replace(
            "allowed-ips = [\"198.19.2.0/24\"]\n",
            "allowed-ips = [\"198.19.2.0/24\"]\npersistent-keepalive = 25\n"
        )
    );
}

#[test]
fn new_inline_preshared_key_only_into_a_private_file() {
    let dir = Dir::new();
    let key = public();
    let original = one_peer(&key, "");
    let psk = PresharedKey::generate();

    // Readable by group: refused, file untouched.
    let path = dir.write("sl0.toml", &original, 0o640);
    let mut config = Config::load(&path).unwrap();
    config.peer_mut(0).preshared_key = Some(psk.clone());
    let error = config.save().unwrap_err();
    let message = error.to_string();
    assert_eq!(error.peer(), Some("b"));
    assert_eq!(error.key(), Some("preshared-key"));
    for needle in [
        &format!("{}: peer \"b\": preshared-key: ", path.display()),
        "cannot be saved into the config file, which group or others can read (mode 0640)",
        "preshared-key-file",
        &format!("chmod 600 {}", path.display()),
    ] {
        assert!(message.contains(needle), "{needle:?} in: {message}");
    }
    assert!(!message.contains(&psk.expose_base64()));
    assert_eq!(fs::read_to_string(&path).unwrap(), original);
    assert_eq!(
        dir.names(),
        ["sl0.key", "sl0.toml"],
        "no temporary file left"
    );

    // Private file: written inline, in its place after public-key.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    config.save().unwrap();
    let saved = assert_round_trip(&config);
    assert_eq!(
        saved,
        one_peer(
            &key,
            &format!("preshared-key = \"{}\"\n", psk.expose_base64())
        )
    );
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn inline_key_replaces_a_key_file_reference_only_into_a_private_file() {
    // A WireGuard UAPI `set` with a new preshared key drops the file reference.
    let dir = Dir::new();
    let key = public();
    dir.psk_file("b.psk");
    let original = one_peer(&key, "preshared-key-file = \"b.psk\" # from vault\n");
    let path = dir.write("sl0.toml", &original, 0o600);
    let mut config = Config::load(&path).unwrap();
    let psk = PresharedKey::generate();
    config.peer_mut(0).preshared_key = Some(psk.clone());
    config.peer_mut(0).preshared_key_file = None;
    config.save().unwrap();
    let saved = assert_round_trip(&config);
    assert_eq!(
        saved,
        one_peer(
            &key,
            &format!("preshared-key = \"{}\" # from vault\n", psk.expose_base64())
        )
    );
}

#[test]
fn removed_preshared_key_removes_both_keys() {
    let dir = Dir::new();
    let key = public();
    dir.psk_file("b.psk");
    let original = one_peer(&key, "preshared-key-file = \"b.psk\"\n");
    let path = dir.write("sl0.toml", &original, 0o600);
    let mut config = Config::load(&path).unwrap();
    config.peer_mut(0).preshared_key = None;
    config.peer_mut(0).preshared_key_file = None;
    config.save().unwrap();
    assert_eq!(assert_round_trip(&config), one_peer(&key, ""));
}

#[test]
fn private_key_is_never_written() {
    let dir = Dir::new();
    let original = one_peer(&public(), "");
    let path = dir.write("sl0.toml", &original, 0o600);
    let mut config = Config::load(&path).unwrap();
    // As after a UAPI `set private_key=...`: only the peers are saved.
    let new_key = PrivateKey::generate();
    config.interface.private_key = Some(new_key.clone());
    config.interface.listen_port = Some(51821);
    config.peer_mut(0).endpoint = Some("198.51.100.2:51820".parse().unwrap());
    config.save().unwrap();
    let saved = fs::read_to_string(&path).unwrap();
    assert!(!saved.contains(&new_key.expose_base64()));
    assert!(saved.starts_with("[interface]\nprivate-key-file = \"sl0.key\"\n\n[[peer]]\n"));
    assert!(!saved.contains("listen-port"));
    assert!(saved.contains("endpoint = \"198.51.100.2:51820\"\n"));
}

// ---------------------------------------------------------------------------------------------
// Refusals: nothing is written.

#[test]
fn invalid_config_is_not_saved() {
    let dir = Dir::new();
    let original = commented_config(&dir, &public(), &public(), &public());
    let path = dir.write("sl0.toml", &original, 0o600);
    let mut config = Config::load(&path).unwrap();
    config.peer_mut(1).allowed_ips = cidrs(&["198.19.2.0/24"]);
    let error = config.save().unwrap_err();
    assert!(
        error.to_string().starts_with(
            "peer \"site-c\": allowed-ips: 198.19.2.0/24 is also in the allowed-ips of peer"
        ),
        "{error}"
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), original);
}

#[test]
fn file_that_no_longer_parses_is_not_saved() {
    let dir = Dir::new();
    let original = one_peer(&public(), "");
    let path = dir.write("sl0.toml", &original, 0o600);
    let config = Config::load(&path).unwrap();
    let edited = original.replace("[interface]\n", "[interface]\nlisten_port = 1\n");
    fs::write(&path, &edited).unwrap();
    let error = config.save().unwrap_err();
    assert_eq!(error.line(), Some(2), "{error}");
    assert!(error.to_string().contains("unknown key"), "{error}");
    assert_eq!(fs::read_to_string(&path).unwrap(), edited);
}

#[test]
fn missing_file_is_an_error() {
    let dir = Dir::new();
    let path = dir.write("sl0.toml", &one_peer(&public(), ""), 0o600);
    let config = Config::load(&path).unwrap();
    fs::remove_file(&path).unwrap();
    let error = config.save().unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("{}: cannot read config file", path.display())
    );
    assert_eq!(dir.names(), ["sl0.key"]);
}

// ---------------------------------------------------------------------------------------------
// write_atomic.

/// A writer that writes the first `n` bytes and then fails, as a full disk would.
fn fail_after(n: usize) -> impl FnOnce(&mut File, &[u8]) -> io::Result<()> {
    move |file, contents| {
        file.write_all(&contents[..n])?;
        Err(io::Error::new(
            io::ErrorKind::StorageFull,
            "injected: disk full",
        ))
    }
}

#[test]
fn interrupted_write_leaves_the_original_intact() {
    let dir = Dir::new();
    let original = "[interface]\nprivate-key-file = \"sl0.key\"\n# the original\n";
    let path = dir.write("sl0.toml", original, 0o640);
    let new = "[interface]\nprivate-key-file = \"sl0.key\"\nmtu = 1280\n".repeat(100);
    for n in [0, 1, 10, new.len() - 1] {
        let error = write_atomic_with(&path, new.as_bytes(), fail_after(n)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::StorageFull);
        let shown = format!("{error}");
        assert!(
            shown.starts_with(&format!(
                "cannot write {}",
                dir.path(".sl0.toml.tmp.").display()
            )),
            "{shown}"
        );
        let source = std::error::Error::source(&error).unwrap().to_string();
        assert_eq!(source, "injected: disk full");
        assert_eq!(
            fs::read(&path).unwrap(),
            original.as_bytes(),
            "after {n} bytes"
        );
        assert_eq!(mode(&path), 0o640);
        assert_eq!(
            dir.names(),
            ["sl0.key", "sl0.toml"],
            "no temporary file left"
        );
    }

    // A crash (here: a panic) mid-write leaves the original too.
    let result = std::panic::catch_unwind(|| {
        write_atomic_with(&path, new.as_bytes(), |file, contents| {
            file.write_all(&contents[..100]).unwrap();
            panic!("simulated crash");
        })
    });
    assert!(result.is_err());
    assert_eq!(fs::read(&path).unwrap(), original.as_bytes());
    assert_eq!(dir.names(), ["sl0.key", "sl0.toml"]);

    // And the real thing replaces it.
    write_atomic(&path, new.as_bytes()).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), new);
}

#[test]
fn write_atomic_keeps_mode_and_owner() {
    let dir = Dir::new();
    for file_mode in [0o640, 0o600, 0o644, 0o400] {
        let path = dir.write("sl0.toml", "old\n", file_mode);
        let before = fs::metadata(&path).unwrap();
        write_atomic(&path, b"new\n").unwrap();
        let after = fs::metadata(&path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new\n");
        assert_eq!(mode(&path), file_mode);
        assert_ne!(
            after.ino(),
            before.ino(),
            "replaced, not rewritten in place"
        );
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        assert_eq!(dir.names(), ["sl0.key", "sl0.toml"]);
    }
}

#[test]
fn write_atomic_creates_a_missing_file_private() {
    let dir = Dir::new();
    let path = dir.path("new.toml");
    write_atomic(&path, b"x = 1\n").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"x = 1\n");
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn write_atomic_replaces_a_symlinks_target() {
    let dir = Dir::new();
    let target = dir.write("real.toml", "old\n", 0o640);
    let link = dir.path("sl0.toml");
    std::os::unix::fs::symlink("real.toml", &link).unwrap();
    write_atomic(&link, b"new\n").unwrap();
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(&target).unwrap(), b"new\n");
    assert_eq!(mode(&target), 0o640);
    assert_eq!(dir.names(), ["real.toml", "sl0.key", "sl0.toml"]);
}

#[test]
fn stale_temporary_file_is_left_alone() {
    let dir = Dir::new();
    let path = dir.write("sl0.toml", "old\n", 0o600);
    let stale = format!(".sl0.toml.tmp.{}", std::process::id());
    dir.write(&stale, "left by a crash\n", 0o600);
    write_atomic(&path, b"new\n").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"new\n");
    assert_eq!(
        fs::read_to_string(dir.path(&stale)).unwrap(),
        "left by a crash\n"
    );
    let mut expected = vec![stale, "sl0.key".to_owned(), "sl0.toml".to_owned()];
    expected.sort();
    assert_eq!(dir.names(), expected);
}

#[test]
fn unwritable_directory_is_reported_with_the_path() {
    let dir = Dir::new();
    let path = dir.path("missing-dir/sl0.toml");
    let error = write_atomic(&path, b"x").unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::NotFound);
    assert!(
        error
            .to_string()
            .contains(&dir.path("missing-dir").display().to_string()),
        "{error}"
    );
}

#[test]
fn an_endpoint_list_is_saved_as_a_list() {
    let dir = Dir::new();
    let (b, c, d) = (public(), public(), public());
    let path = dir.write("sl0.toml", &commented_config(&dir, &b, &c, &d), 0o640);
    let mut config = Config::load(&path).unwrap();
    config.peer_mut(0).more_endpoints = vec!["198.51.100.9:51820".parse().unwrap()];
    config.save().unwrap();
    let saved = assert_round_trip(&config);
    assert!(
        saved.contains("endpoint = [\"gw-b.example.net:51820\", \"198.51.100.9:51820\"]"),
        "{saved}"
    );
    // Back to one endpoint: a plain string again.
    config.peer_mut(0).more_endpoints.clear();
    config.save().unwrap();
    let saved = assert_round_trip(&config);
    assert!(
        saved.contains("endpoint = \"gw-b.example.net:51820\""),
        "{saved}"
    );
}
