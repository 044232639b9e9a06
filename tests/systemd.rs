//! systemd integration without systemd: the notify protocol against a datagram socket the
//! test binds, and the privilege drop when started as root with `user = ...`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sitelink_tests::{keypair, Sites};

/// Every datagram the daemon sends, with when it arrived; on the first READY=1 the collector
/// pings the gateway's own tunnel address and records whether it answered.
#[derive(Default)]
struct Notifications {
    messages: Vec<(Instant, String)>,
    ping_at_ready: Option<bool>,
}

#[test]
fn notify_ready_watchdog_reload_and_stop() {
    let sites = Sites::new();
    let path = sites.dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let seen = Arc::new(Mutex::new(Notifications::default()));
    let stop = Arc::new(Mutex::new(false));
    let gw_a_ns = sites.gw_a.name.clone();
    let collector = {
        let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !*stop.lock().unwrap() {
                let Ok(n) = socket.recv(&mut buf) else {
                    continue;
                };
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let first_ready = text.lines().any(|l| l == "READY=1")
                    && seen.lock().unwrap().ping_at_ready.is_none();
                if first_ready {
                    let ok = Command::new("ip")
                        .args([
                            "netns",
                            "exec",
                            &gw_a_ns,
                            "ping",
                            "-c",
                            "1",
                            "-W",
                            "1",
                            "198.18.100.1",
                        ])
                        .stdout(Stdio::null())
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false);
                    seen.lock().unwrap().ping_at_ready = Some(ok);
                }
                seen.lock().unwrap().messages.push((Instant::now(), text));
            }
        })
    };
    let notify = path.to_str().unwrap();
    let mut pair = sites.start_pair_with(
        true,
        "",
        "",
        &[("NOTIFY_SOCKET", notify), ("WATCHDOG_USEC", "400000")],
    );
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(15)));

    // Watchdog pings at half of WATCHDOG_USEC (200 ms), from the packet loop.
    thread::sleep(Duration::from_secs(2));
    let count_pings = |since: Instant| {
        seen.lock()
            .unwrap()
            .messages
            .iter()
            .filter(|(at, m)| *at >= since && m.contains("WATCHDOG=1"))
            .count()
    };
    let window = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let pings = count_pings(window);
    assert!(
        (5..=30).contains(&pings),
        "{pings} watchdog pings in 2 s at a 200 ms interval"
    );

    // A reload is bracketed by RELOADING=1 (with MONOTONIC_USEC) and READY=1.
    let before_reload = seen.lock().unwrap().messages.len();
    sites.ctl_ok(&pair.a_if, &["reload"]);
    thread::sleep(Duration::from_millis(300));
    let after: Vec<String> = seen.lock().unwrap().messages[before_reload..]
        .iter()
        .map(|(_, m)| m.clone())
        .filter(|m| !m.contains("WATCHDOG=1"))
        .collect();
    let reloading = after
        .iter()
        .position(|m| m.contains("RELOADING=1"))
        .expect("no RELOADING=1");
    assert!(after[reloading].contains("MONOTONIC_USEC="), "{after:?}");
    let ready = after
        .iter()
        .position(|m| m.contains("READY=1"))
        .expect("no READY=1 after reload");
    assert!(ready > reloading, "{after:?}");
    assert!(after[ready].contains("STATUS=1/1 peers up"), "{after:?}");

    assert_eq!(pair.gw_a.terminate(), Some(0));
    thread::sleep(Duration::from_millis(300));
    *stop.lock().unwrap() = true;
    collector.join().unwrap();

    let seen = seen.lock().unwrap();
    let all: Vec<&str> = seen.messages.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(
        seen.ping_at_ready,
        Some(true),
        "READY=1 came before the interface answered"
    );
    let first_ready = all.iter().position(|m| m.contains("READY=1")).unwrap();
    assert!(
        all[first_ready].contains("STATUS="),
        "{:?}",
        all[first_ready]
    );
    assert!(
        all.iter().any(|m| m.contains("STOPPING=1")),
        "no STOPPING=1: {all:?}"
    );
}

fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in /proc status"))
}

#[test]
fn root_start_drops_to_the_configured_user_with_only_cap_net_admin() {
    let sites = Sites::new();
    let pair = sites.start_pair_with(true, "user = \"nobody\"\n", "", &[]);
    assert!(
        sites
            .host_a
            .ping_until("198.19.2.10", Duration::from_secs(15)),
        "{}",
        pair.gw_a.log_text()
    );
    assert!(
        pair.gw_a.log_text().contains("dropped privileges"),
        "{}",
        pair.gw_a.log_text()
    );

    // Every thread: uid/gid nobody, no supplementary groups; capabilities at most
    // CAP_NET_ADMIN (bit 12), and the bounding set is just that.
    let pid = pair.gw_a.child.id();
    let mut main_caps = None;
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        assert_eq!(
            status_field(&status, "Uid:")
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["65534"; 4]
        );
        assert_eq!(
            status_field(&status, "Gid:")
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["65534"; 4]
        );
        assert!(
            matches!(status_field(&status, "Groups:"), "" | "65534"),
            "{status}"
        );
        assert_eq!(status_field(&status, "CapBnd:"), "0000000000001000");
        assert_eq!(status_field(&status, "CapInh:"), "0000000000000000");
        let eff = status_field(&status, "CapEff:");
        assert!(
            matches!(eff, "0000000000001000" | "0000000000000000"),
            "{status}"
        );
        if status_field(&status, "Tgid:") == status_field(&status, "Pid:") {
            main_caps = Some((
                eff.to_string(),
                status_field(&status, "CapPrm:").to_string(),
            ));
        }
    }
    assert_eq!(
        main_caps,
        Some(("0000000000001000".into(), "0000000000001000".into()))
    );

    // It keeps forwarding, and a new peer's subnet still gets its route.
    let (_, z) = keypair();
    sites.ctl_ok(
        &pair.a_if,
        &[
            "peer",
            "add",
            "site-z",
            "--public-key",
            &z,
            "--allowed-ips",
            "198.19.20.0/24",
        ],
    );
    assert!(sites
        .routes(&sites.gw_a, &pair.a_if)
        .contains("198.19.20.0/24"));
    sites.ctl_ok(&pair.a_if, &["peer", "remove", "site-z"]);
    assert!(!sites
        .routes(&sites.gw_a, &pair.a_if)
        .contains("198.19.20.0/24"));
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(5)));
    // Reload works with the root-only key file (0600 root) no longer readable: the key in use
    // is kept. The config itself must be readable by the user, as the package installs it.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&sites.dir.0, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&pair.a_conf, fs::Permissions::from_mode(0o644)).unwrap();
    let out = sites.ctl_ok(&pair.a_if, &["reload"]);
    assert!(out.contains("unchanged: 1"), "{out}");
}
