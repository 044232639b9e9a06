//! What operators see: Prometheus metrics scraped by a real Prometheus server (Debian's
//! `prometheus` package, started by the test in gateway A's namespace).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use sitelink_tests::{http_get, keypair, url_encode, Netns, Process, Sites};

const METRICS: &str = "127.0.0.1:9586";
const PROMETHEUS: &str = "127.0.0.1:9090";

/// The value of the single series `query` returns from Prometheus in `ns`, once it has one.
fn prometheus_value(ns: &Netns, query: &str) -> Option<f64> {
    let path = format!("/api/v1/query?query={}", url_encode(query));
    let (status, body) = http_get(ns, PROMETHEUS.parse().unwrap(), &path)?;
    if status != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    let result = json["data"]["result"].as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0]["value"][1].as_str()?.parse().ok()
}

/// Polls `query` until `accept` takes its value, or 60 s pass.
fn wait_for(ns: &Netns, query: &str, accept: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        last = prometheus_value(ns, query);
        if let Some(v) = last.filter(|v| accept(*v)) {
            return v;
        }
        thread::sleep(Duration::from_millis(500));
    }
    panic!("Prometheus never gave an acceptable value for {query} (last: {last:?})");
}

#[test]
fn prometheus_scrapes_peer_bytes_and_up_state() {
    let sites = Sites::new();
    // A second peer on A that is configured but never connects: it must still have series.
    let (_, c_pub) = keypair();
    let c_peer = format!(
        "\n[[peer]]\nname = \"site-c\"\npublic-key = {c_pub:?}\nallowed-ips = [\"198.19.3.0/24\"]\n"
    );
    let pair = sites.start_pair_with(
        true,
        &format!("metrics-listen = {METRICS:?}\n"),
        &c_peer,
        &[],
    );
    assert!(
        sites
            .host_a
            .ping_until("198.19.2.10", Duration::from_secs(10)),
        "the tunnel did not come up"
    );

    // The endpoint itself: the text format, 404 elsewhere, and no key material.
    let metrics: SocketAddr = METRICS.parse().unwrap();
    let (status, text) = http_get(&sites.gw_a, metrics, "/metrics").expect("metrics answer");
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains(&format!(
            "sitelink_peer_up{{interface=\"{}\",peer=\"site-b\",public_key=\"{}\"}} 1",
            pair.a_if, pair.b_pub
        )),
        "{text}"
    );
    let a_key = std::fs::read_to_string(sites.dir.0.join("a.key")).unwrap();
    assert!(
        !text.contains(a_key.trim()),
        "the private key is in the metrics"
    );
    let (status, _) = http_get(&sites.gw_a, metrics, "/").expect("answer on /");
    assert_eq!(status, 404);

    // A real Prometheus scraping it every second.
    let config = sites.dir.write(
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sitelink\n    static_configs:\n      - targets: [{METRICS:?}]\n"
        ),
        0o644,
    );
    let mut cmd = sites.gw_a.cmd("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            sites.dir.0.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={PROMETHEUS}"));
    let mut prometheus = Process::spawn("prometheus", cmd, sites.dir.0.join("prometheus.log"));

    let scraped = wait_for(&sites.gw_a, "up{job=\"sitelink\"}", |v| v == 1.0);
    assert_eq!(scraped, 1.0);
    let rx = wait_for(
        &sites.gw_a,
        "sitelink_peer_rx_bytes_total{peer=\"site-b\"}",
        |v| v > 0.0,
    );
    let status = sites.show_json(&pair.a_if);
    let show_rx = sitelink_tests::peer(&status, "site-b")["rx_bytes"]
        .as_u64()
        .unwrap();
    assert!(
        rx <= show_rx as f64,
        "Prometheus has {rx} bytes, more than show's {show_rx}"
    );
    assert_eq!(
        wait_for(&sites.gw_a, "sitelink_peer_up{peer=\"site-b\"}", |_| true),
        1.0
    );
    assert_eq!(
        wait_for(&sites.gw_a, "sitelink_peer_up{peer=\"site-c\"}", |_| true),
        0.0,
        "a configured peer that is down reports up = 0"
    );
    assert_eq!(wait_for(&sites.gw_a, "sitelink_peers", |_| true), 2.0);
    prometheus.assert_running();
}

/// `sitelinkctl import ARGS...`.
fn import(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(sitelink_tests::bin("sitelinkctl"))
        .arg("import")
        .args(args)
        .output()
        .unwrap()
}

/// A wg-quick file as people have them, imported with `sitelinkctl import --key-dir`, runs as
/// gateway A against a sitelink gateway B: the LANs reach each other.
#[test]
fn an_imported_wg_quick_file_runs_as_a_gateway() {
    use std::os::unix::fs::PermissionsExt;
    let sites = Sites::new();
    let (a_priv, a_pub) = keypair();
    let (b_priv, b_pub) = keypair();
    let a_if = sitelink_tests::unique("slq");
    let wg_conf = sites.dir.write(
        &format!("{a_if}.conf"),
        &format!(
            "# Site A's gateway\n[Interface]\nPrivateKey = {a_priv}\nAddress = 198.18.100.1/24\naddress = fd18:100::1/64\nListenPort = 51820\nDNS = 198.18.100.53\nPostUp = iptables -A FORWARD -i %i -j ACCEPT\nSaveConfig = true\n\n# Name = site-b\n[Peer]\npublickey = {b_pub}\nAllowedIPs = 198.18.100.2/32, 198.19.2.0/24\nAllowedIPs = fd18:100::2/128, fd19:2::/64 # B's LAN\nEndpoint = 198.18.0.2:51820\nPersistentKeepalive = 25\n"
        ),
        0o600,
    );
    let key_dir = sites.dir.0.join("keys");
    std::fs::create_dir(&key_dir).unwrap();
    let out = import(&[
        wg_conf.as_os_str(),
        "--key-dir".as_ref(),
        key_dir.as_os_str(),
    ]);
    let (toml, said) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "import failed: {said}");
    for needle in [
        format!("{a_if}.conf:7: DNS: not imported"),
        format!("{a_if}.conf:8: PostUp: not imported"),
        format!("{a_if}.conf:9: SaveConfig: not imported"),
    ] {
        assert!(said.contains(&needle), "missing {needle:?} in: {said}");
    }
    assert!(
        !toml.contains(&a_priv) && !said.contains(&a_priv),
        "a key was printed"
    );
    assert!(toml.contains("# Site A's gateway"), "{toml}");
    assert!(toml.contains("name = \"site-b\""), "{toml}");
    let key_file = key_dir.join(format!("{a_if}.key"));
    assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim(), a_priv);
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A second import into the same directory refuses to overwrite the key.
    let again = import(&[
        wg_conf.as_os_str(),
        "--key-dir".as_ref(),
        key_dir.as_os_str(),
    ]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists; move it away"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let a_conf = sites.dir.write(&format!("{a_if}.toml"), &toml, 0o600);
    let b_key = sites.dir.write("b.key", &format!("{b_priv}\n"), 0o600);
    let b_if = sitelink_tests::unique("slb");
    let b_toml = sitelink_tests::site_b_config(&b_if, &b_key, &a_pub);
    let b_conf = sites.dir.write(&format!("{b_if}.toml"), &b_toml, 0o600);
    let mut gw_a = sites.sitelinkd(&sites.gw_a, &a_conf);
    let mut gw_b = sites.sitelinkd(&sites.gw_b, &b_conf);
    sites.wait_ready(&mut gw_a, &a_if);
    sites.wait_ready(&mut gw_b, &b_if);
    sites.assert_lans_connected(5201);
}

#[test]
fn import_refuses_a_bad_file_naming_the_line() {
    let dir = sitelink_tests::TempDir::new();
    let (_, b_pub) = keypair();
    let conf = dir.write(
        "wg7.conf",
        &format!("[Interface]\nPrivateKey = not-a-key\n[Peer]\nPublicKey = {b_pub}\n"),
        0o600,
    );
    let out = import(&[conf.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("wg7.conf:2: PrivateKey: not a valid key"),
        "{said}"
    );
    // Valid wg-quick, but two peers share a prefix: sitelink's own rules refuse it.
    let (k, _) = keypair();
    let (_, c_pub) = keypair();
    let conf = dir.write(
        "wg8.conf",
        &format!("[Interface]\nPrivateKey = {k}\n[Peer]\nPublicKey = {b_pub}\nAllowedIPs = 10.1.0.0/16\n[Peer]\nPublicKey = {c_pub}\nAllowedIPs = 10.1.0.0/16\n"),
        0o600,
    );
    let out = import(&[conf.as_os_str()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("imports to a config sitelink refuses"),
        "{said}"
    );
    assert!(said.contains("10.1.0.0/16"), "{said}");
    assert!(said.contains("is the [Peer] at "), "{said}");
    assert!(
        said.contains("wg8.conf:6"),
        "the second [Peer] named: {said}"
    );
    assert!(!said.contains(&k), "the key is in the error");
}

/// `sitelinkctl doctor` in gateway A's namespace: exit status, stdout and stderr.
fn doctor(sites: &Sites, iface: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = sites
        .gw_a
        .cmd(sitelink_tests::bin("sitelinkctl"))
        .env("SITELINK_RUN_DIR", &sites.run_dir)
        .args(["--interface", iface, "doctor"])
        .args(args)
        .output()
        .unwrap();
    // Shown with --nocapture, and in a failing test's output.
    println!(
        "$ sitelinkctl doctor {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn has_line(text: &str, start: &str, needles: &[&str]) {
    let found = text
        .lines()
        .zip(text.lines().skip(1).chain([""]))
        .any(|(line, next)| {
            line.starts_with(start) && needles.iter().all(|n| line.contains(n) || next.contains(n))
        });
    assert!(found, "no line {start:?} with {needles:?} in:\n{text}");
}

/// Each thing doctor checks, working and then broken the way operators break it: forwarding
/// off, a LAN route shadowing a peer's prefix, the file edited without a reload, a peer that
/// does not answer, and an MTU black hole on the path.
#[test]
fn doctor_names_what_is_wrong_and_the_fix() {
    let sites = Sites::new();
    let (_, c_pub) = keypair();
    // site-c: an always-on link to a port where nothing answers.
    let c_peer = format!(
        "\n[[peer]]\nname = \"site-c\"\npublic-key = {c_pub:?}\nendpoint = \"198.18.0.2:51999\"\nallowed-ips = [\"198.19.3.0/24\"]\npersistent-keepalive = 5\n"
    );
    let pair = sites.start_pair(true, &c_peer);
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(10)));

    // All is well with site-b.
    let (code, out, err) = doctor(&sites, &pair.a_if, &["site-b"]);
    assert_eq!(code, Some(0), "{out}{err}");
    has_line(&out, "✓ daemon", &[&pair.a_if]);
    has_line(&out, "✓ config", &["the running config is"]);
    has_line(&out, "✓ forwarding", &["IPv4 forwarding is on"]);
    has_line(&out, "✓ forwarding", &["IPv6 forwarding is on"]);
    has_line(&out, "✓ routes site-b", &["all 4 allowed-ips"]);
    has_line(&out, "✓ peer site-b", &["up: latest handshake"]);
    has_line(&out, "✓ mtu site-b", &["interface MTU (1420 bytes)"]);

    // site-c does not answer: what the other side must have (once a retry went unanswered
    // too; before that doctor says the handshake is in progress).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sitelink_tests::peer(&sites.show_json(&pair.a_if), "site-c")["handshake_attempts"]
        .as_u64()
        .unwrap_or(0)
        < 2
    {
        assert!(std::time::Instant::now() < deadline, "site-c never retried");
        thread::sleep(Duration::from_millis(200));
    }
    let (code, out, _) = doctor(&sites, &pair.a_if, &[]);
    assert_eq!(code, Some(1), "{out}");
    has_line(
        &out,
        "✗ peer site-c",
        &["no answer from 198.18.0.2:51999", &pair.a_pub, "UDP 51820"],
    );

    // Forwarding off, a shadowing route, the file edited without a reload.
    sites.gw_a.sysctl("net.ipv4.ip_forward", "0");
    sites
        .gw_a
        .ip(&["route", "add", "198.19.2.0/25", "dev", "lan0"]);
    let mut text = std::fs::read_to_string(&pair.a_conf).unwrap();
    let (_, d_pub) = keypair();
    text += &format!(
        "\n[[peer]]\nname = \"site-d\"\npublic-key = {d_pub:?}\nallowed-ips = [\"198.19.4.0/24\"]\n"
    );
    std::fs::write(&pair.a_conf, text).unwrap();
    let (code, out, _) = doctor(&sites, &pair.a_if, &["site-b"]);
    assert_eq!(code, Some(1), "{out}");
    has_line(
        &out,
        "✗ forwarding",
        &["IPv4 forwarding is off", "sysctl -w net.ipv4.ip_forward=1"],
    );
    has_line(&out, "✓ forwarding", &["IPv6 forwarding is on"]);
    has_line(&out, "✗ routes site-b", &["198.19.2.0/24", "dev lan0"]);
    has_line(
        &out,
        "✗ config",
        &[
            "peer \"site-d\" is in the file but not running",
            "sitelinkctl reload",
        ],
    );
    let (_, json, _) = doctor(&sites, &pair.a_if, &["site-b", "--json"]);
    let checks: serde_json::Value = serde_json::from_str(&json).unwrap();
    let result = |name: &str| {
        checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .map(|c| c["result"].as_str().unwrap().to_string())
    };
    assert_eq!(result("forwarding").as_deref(), Some("problem"), "{json}");
    assert_eq!(result("peer site-b").as_deref(), Some("ok"), "{json}");
    sites.gw_a.sysctl("net.ipv4.ip_forward", "1");
    sites
        .gw_a
        .ip(&["route", "del", "198.19.2.0/25", "dev", "lan0"]);
    sites.ctl_ok(&pair.a_if, &["reload"]);

    // An MTU black hole: B's WAN link takes 1400 bytes, the tunnel's packets are 1480.
    sites.gw_b.ip(&["link", "set", "wan0", "mtu", "1400"]);
    let (code, out, _) = doctor(&sites, &pair.a_if, &["site-b"]);
    assert_eq!(code, Some(1), "{out}");
    has_line(
        &out,
        "✗ mtu site-b",
        &["is 1340 bytes, below the interface MTU 1420", "mtu = 1340"],
    );
    let _ = pair;
}

#[test]
fn doctor_without_a_daemon_says_how_to_start_it() {
    let dir = sitelink_tests::TempDir::new();
    let out = Command::new(sitelink_tests::bin("sitelinkctl"))
        .env("SITELINK_RUN_DIR", &dir.0)
        .args(["--interface", "sl9", "doctor"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    has_line(
        &said,
        "✗ daemon",
        &["sitelinkd is not running", "systemctl start sitelinkd@sl9"],
    );
}

/// `allowed-endpoints` on B: A's packets from outside it are refused even with the right key
/// (and shown as the peer's last error); allowing A's address brings the link back.
#[test]
fn allowed_endpoints_refuse_a_peer_from_elsewhere() {
    let sites = Sites::new();
    let pair = sites.start_pair(true, "");
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(10)));
    let original = std::fs::read_to_string(&pair.b_conf).unwrap();
    // The peer table is the file's last: the key lands in it.
    std::fs::write(
        &pair.b_conf,
        format!("{original}allowed-endpoints = [\"203.0.113.0/24\"]\n"),
    )
    .unwrap();
    sites.ctl_ok(&pair.b_if, &["reload"]);
    assert!(
        !sites
            .host_a
            .ping_until("198.19.2.10", Duration::from_secs(3)),
        "traffic from an address outside allowed-endpoints got through"
    );
    let status = sites.show_json(&pair.b_if);
    let a = sitelink_tests::peer(&status, "site-a");
    assert_eq!(
        a["last_error"]["reason"], "refused-by-us: source address not allowed",
        "{a}"
    );
    assert!(status["interface"]["dropped"]["endpoint_not_allowed"].as_u64() > Some(0));
    let said = sites.ctl_ok(&pair.b_if, &["show"]);
    assert!(said.contains("source address not allowed"), "{said}");

    std::fs::write(
        &pair.b_conf,
        format!("{original}allowed-endpoints = [\"198.18.0.1/32\", \"fd18::/64\"]\n"),
    )
    .unwrap();
    sites.ctl_ok(&pair.b_if, &["reload"]);
    assert!(
        sites
            .host_a
            .ping_until("198.19.2.10", Duration::from_secs(10)),
        "A's allowed address was refused"
    );
}
