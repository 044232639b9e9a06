//! sitelinkd on gw_a against wireguard-go (configured with stock `wg`) on gw_b, with
//! sitelink as initiator and as responder; same reachability and status checks as e2e.
//! Also: keys are byte-compatible with `wg genkey/pubkey/genpsk`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::thread;
use std::time::Duration;

use sitelink_tests::{
    bin, keypair, pipe_ok, run, site_a_config, unique, unix_now, wireguard_go, Sites,
};

const MIB: usize = 1 << 20;

#[test]
fn keys_are_byte_compatible_with_wg() {
    let ours =
        String::from_utf8(run(Command::new(bin("sitelinkctl")).arg("genkey")).stdout).unwrap();
    let wg_pub_of_ours = pipe_ok(Command::new("wg").arg("pubkey"), &ours);
    let our_pub_of_ours = pipe_ok(Command::new(bin("sitelinkctl")).arg("pubkey"), &ours);
    assert_eq!(wg_pub_of_ours, our_pub_of_ours);

    let theirs = String::from_utf8(run(Command::new("wg").arg("genkey")).stdout).unwrap();
    assert_eq!(
        pipe_ok(Command::new("wg").arg("pubkey"), &theirs),
        pipe_ok(Command::new(bin("sitelinkctl")).arg("pubkey"), &theirs)
    );
    // genpsk: 32 bytes in the same base64 form wg uses (accepted by `wg set` in the
    // preshared-key interop test below).
    let psk =
        String::from_utf8(run(Command::new(bin("sitelinkctl")).arg("genpsk")).stdout).unwrap();
    assert_eq!(psk.trim().len(), 44);
    assert!(psk.trim().ends_with('='));
}

/// Sets up sitelink on gw_a and wireguard-go on gw_b. `sitelink_initiates` decides who
/// knows whose endpoint; the other side learns it from the handshake.
fn interop(sitelink_initiates: bool, with_psk: bool) {
    let sites = Sites::new();
    let (a_priv, a_pub) = keypair();
    let b_priv = String::from_utf8(run(Command::new("wg").arg("genkey")).stdout).unwrap();
    let b_pub = pipe_ok(Command::new("wg").arg("pubkey"), &b_priv);
    let a_key = sites.dir.write("a.key", &format!("{a_priv}\n"), 0o600);
    let b_key = sites.dir.write("b.key", &b_priv, 0o600);
    let psk_file = with_psk.then(|| {
        let psk = String::from_utf8(run(Command::new("wg").arg("genpsk")).stdout).unwrap();
        sites.dir.write("ab.psk", &psk, 0o600)
    });
    let (a_if, b_if) = (unique("sli"), unique("wgi"));

    let mut toml = site_a_config(&a_if, &a_key, "wg-go", &b_pub, sitelink_initiates);
    if let Some(psk) = &psk_file {
        toml += &format!("preshared-key-file = {:?}\n", psk.display().to_string());
    }
    let a_path = sites.dir.write(&format!("{a_if}.toml"), &toml, 0o600);
    let mut gw_a = sites.sitelinkd(&sites.gw_a, &a_path);
    sites.wait_ready(&mut gw_a, &a_if);
    let _wg = wireguard_go(
        &sites,
        &sites.gw_b,
        &b_if,
        &b_key,
        &a_pub,
        psk_file.as_deref(),
        (!sitelink_initiates).then_some("198.18.0.1:51820"),
        "198.18.100.1/32,198.19.1.0/24,fd18:100::1/128,fd19:1::/64",
    );

    // The first packet goes from the initiator's side.
    let (first, target) = if sitelink_initiates {
        (&sites.host_a, "198.19.2.10")
    } else {
        (&sites.host_b, "198.19.1.10")
    };
    assert!(
        first.ping_until(target, Duration::from_secs(20)),
        "no ping through the tunnel\n--- sitelinkd:\n{}",
        gw_a.log_text()
    );
    sites.assert_lans_connected(7003);

    thread::sleep(Duration::from_millis(300));
    let status = sites.show_json(&a_if);
    let peer = &status["peers"][0];
    let hs = peer["latest_handshake"]
        .as_u64()
        .expect("handshake time set");
    assert!(unix_now().abs_diff(hs) < 120);
    assert!(peer["tx_bytes"].as_u64().unwrap() > 8 * MIB as u64);
    assert!(peer["rx_bytes"].as_u64().unwrap() > 4 * MIB as u64);
    assert_eq!(
        peer["endpoint"], "198.18.0.2:51820",
        "sitelink's view of wireguard-go's endpoint"
    );

    // wireguard-go agrees: `wg show dump` has a handshake time and bytes for our key.
    let dump =
        String::from_utf8(run(sites.gw_b.cmd("wg").args(["show", &b_if, "dump"])).stdout).unwrap();
    let line = dump
        .lines()
        .find(|l| l.starts_with(&a_pub))
        .expect("our peer in wg show dump");
    let f: Vec<&str> = line.split('\t').collect();
    assert_eq!(
        f[2], "198.18.0.1:51820",
        "wireguard-go's view of our endpoint"
    );
    assert!(
        f[4].parse::<u64>().unwrap() > 0,
        "wireguard-go saw no handshake: {line}"
    );
    assert!(
        f[5].parse::<u64>().unwrap() > 8 * MIB as u64,
        "wireguard-go rx: {line}"
    );
    if with_psk {
        assert_ne!(f[1], "(none)");
    }
    let log = gw_a.log_text();
    assert!(
        !log.contains("ERROR") && !log.contains("panicked"),
        "sitelinkd log:\n{log}"
    );
}

#[test]
fn sitelink_initiates_to_wireguard_go() {
    interop(true, false);
}

#[test]
fn wireguard_go_initiates_to_sitelink_with_preshared_key() {
    interop(false, true);
}
