//! Wrong input through the real binaries: each gives a clear one-line-chain error naming
//! what and where, a non-zero exit, and never a panic or backtrace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output, Stdio};

use sitelink_tests::{bin, keypair, pipe, require_root, unique, Netns, TempDir};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a clean failure: exit 1, an error line, no panic, no backtrace.
fn assert_clean_failure(out: &Output, what: &str) -> String {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: exit status {:?}, stderr:\n{err}",
        out.status
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{what}: panic:\n{err}"
    );
    assert!(err.contains("error:"), "{what}: no error line:\n{err}");
    err
}

fn sitelinkd(config: &std::path::Path, dir: &TempDir) -> Output {
    Command::new(bin("sitelinkd"))
        .arg("--config")
        .arg(config)
        .env("SITELINK_RUN_DIR", dir.0.join("run"))
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn valid_config(dir: &TempDir, iface: &str) -> (String, String) {
    let (private, _) = keypair();
    let (_, peer) = keypair();
    let key = dir.write("gw.key", &format!("{private}\n"), 0o600);
    let toml = format!(
        "[interface]\nname = {iface:?}\nprivate-key-file = {:?}\naddress = [\"198.18.100.1/24\"]\n\n[[peer]]\nname = \"site-b\"\npublic-key = {peer:?}\nallowed-ips = [\"198.19.2.0/24\"]\n",
        key.display().to_string()
    );
    (toml, private)
}

#[test]
fn malformed_config_names_file_line_and_key() {
    let dir = TempDir::new();
    let (toml, _) = valid_config(&dir, "slbad0");
    // Line 9: a typo'd key.
    let bad = toml.replace("allowed-ips", "allowed-ip");
    let path = dir.write("gw.toml", &bad, 0o600);
    let out = sitelinkd(&path, &dir);
    let err = assert_clean_failure(&out, "unknown key");
    assert!(
        err.contains(&format!("{}:9", path.display())),
        "no file:line in:\n{err}"
    );
    assert!(err.contains("allowed-ip"), "key not named:\n{err}");

    // A 31-byte public key on line 8.
    let short = "A".repeat(42) + "=";
    let bad = regex_free_replace_key(&toml, &short);
    let path = dir.write("gw2.toml", &bad, 0o600);
    let err = assert_clean_failure(&sitelinkd(&path, &dir), "short key");
    assert!(
        err.contains(&format!("{}:8", path.display())),
        "no file:line in:\n{err}"
    );
    assert!(
        err.contains("public-key") && err.contains("site-b"),
        "key/peer not named:\n{err}"
    );

    // Not TOML at all.
    let path = dir.write("gw3.toml", "[interface\nname = ", 0o600);
    let err = assert_clean_failure(&sitelinkd(&path, &dir), "syntax");
    assert!(err.contains(&format!("{}:1:", path.display())), "{err}");

    // Missing file.
    let err = assert_clean_failure(&sitelinkd(&dir.0.join("nope.toml"), &dir), "missing file");
    assert!(err.contains("nope.toml"), "{err}");
}

fn regex_free_replace_key(toml: &str, new_key: &str) -> String {
    toml.lines()
        .map(|l| {
            if l.starts_with("public-key") {
                format!("public-key = {new_key:?}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn loose_key_permissions_are_refused_with_the_fix() {
    let dir = TempDir::new();
    let (toml, private) = valid_config(&dir, "slbad1");
    let key = dir.0.join("gw.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let path = dir.write("gw.toml", &toml, 0o600);
    let err = assert_clean_failure(&sitelinkd(&path, &dir), "0644 key file");
    assert!(
        err.contains(&key.display().to_string()),
        "path not named:\n{err}"
    );
    assert!(err.contains("chmod 600"), "fix not given:\n{err}");
    assert!(!err.contains(&private), "error printed the private key");

    // An inline private key in a world-readable config.
    let inline = format!("[interface]\nprivate-key = {private:?}\n");
    let path = dir.write("slbad2.toml", &inline, 0o644);
    let err = assert_clean_failure(&sitelinkd(&path, &dir), "0644 config with inline key");
    assert!(
        err.contains(&path.display().to_string()) && err.contains("chmod 600"),
        "{err}"
    );
    assert!(!err.contains(&private), "error printed the private key");
}

#[test]
fn missing_cap_net_admin_is_a_clear_error() {
    require_root();
    let ns = Netns::new("sbd");
    let dir = TempDir::new();
    let iface = unique("slc");
    let (toml, _) = valid_config(&dir, &iface);
    let path = dir.write("gw.toml", &toml, 0o600);
    // Root, but with CAP_NET_ADMIN removed from the bounding set before exec.
    let out = ns
        .cmd("setpriv")
        .args(["--bounding-set=-net_admin", "--inh-caps=-net_admin", "--"])
        .arg(bin("sitelinkd"))
        .arg("--config")
        .arg(&path)
        .env("SITELINK_RUN_DIR", dir.0.join("run"))
        .output()
        .unwrap();
    let err = assert_clean_failure(&out, "no CAP_NET_ADMIN");
    assert!(
        err.contains("CAP_NET_ADMIN") && err.contains(&iface),
        "{err}"
    );
    // Nothing was left behind.
    let links = String::from_utf8(ns.ip(&["link", "show"]).stdout).unwrap();
    assert!(!links.contains(&iface));
}

#[test]
fn sitelinkctl_errors_are_one_line_and_name_the_socket() {
    let dir = TempDir::new();
    let out = Command::new(bin("sitelinkctl"))
        .args(["--interface", "slnone0", "show"])
        .env("SITELINK_RUN_DIR", &dir.0)
        .output()
        .unwrap();
    let err = assert_clean_failure(&out, "show without daemon");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("not running")
            && err.contains(&dir.0.join("slnone0.sock").display().to_string()),
        "{err}"
    );

    let out = pipe(
        Command::new(bin("sitelinkctl")).arg("pubkey"),
        "not a key\n",
    );
    let err = assert_clean_failure(&out, "pubkey garbage");
    assert!(err.contains("private key"), "{err}");
    assert!(out.stdout.is_empty());

    let out = Command::new(bin("sitelinkctl"))
        .args(["--interface", "bad/name", "show"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("bad/name"));
}

#[test]
fn genkey_warns_when_writing_to_a_file_others_can_read() {
    let dir = TempDir::new();
    let path = dir.write("loose.key", "", 0o644);
    let out = Command::new(bin("sitelinkctl"))
        .arg("genkey")
        .stdout(std::fs::File::options().write(true).open(&path).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("Warning"),
        "no warning: {}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim().len(), 44);

    let tight = dir.write("tight.key", "", 0o600);
    let out = Command::new(bin("sitelinkctl"))
        .arg("genkey")
        .stdout(std::fs::File::options().write(true).open(&tight).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        stderr(&out).is_empty(),
        "unexpected warning: {}",
        stderr(&out)
    );
}

#[test]
fn port_in_use_is_a_clear_error_and_leaves_nothing_behind() {
    require_root();
    let ns = Netns::new("sbp");
    let dir = TempDir::new();
    let iface = unique("slp");
    let (toml, _) = valid_config(&dir, &iface);
    let toml = toml.replace("[interface]\n", "[interface]\nlisten-port = 51999\n");
    let path = dir.write("gw.toml", &toml, 0o600);
    // Hold the port from inside the namespace while sitelinkd starts there.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let holder = ns.within(move || {
        let _s = std::net::UdpSocket::bind("[::]:51999").expect("hold port");
        bound_tx.send(()).unwrap();
        let _ = rx.recv();
    });
    bound_rx.recv().unwrap();
    let out = ns
        .cmd(bin("sitelinkd"))
        .arg("--config")
        .arg(&path)
        .env("SITELINK_RUN_DIR", dir.0.join("run"))
        .output()
        .unwrap();
    drop(tx);
    holder.join().unwrap();
    let err = assert_clean_failure(&out, "port in use");
    assert!(
        err.contains("51999") && err.contains("listen-port"),
        "{err}"
    );
    let links = String::from_utf8(ns.ip(&["link", "show"]).stdout).unwrap();
    assert!(
        !links.contains(&iface),
        "interface left behind after a failed start: {links}"
    );
}
