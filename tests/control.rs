//! The control plane against a running gateway: live peer changes, reload during traffic,
//! `--save`, stock wireguard-tools over the UAPI socket, and socket security.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::Duration;

use sitelink_tests::{keypair, run, tcp_stream_during, unix_exchange, Sites};

fn json(sites: &Sites, iface: &str) -> serde_json::Value {
    sites.show_json(iface)
}

fn handshake_of(status: &serde_json::Value, name: &str) -> Option<u64> {
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)?["latest_handshake"]
        .as_u64()
}

#[test]
fn live_peer_add_set_remove() {
    let sites = Sites::new();
    let pair = sites.start_pair(false, "");
    let a = &pair.a_if;
    assert!(
        !sites
            .host_a
            .ping_until("198.19.2.10", Duration::from_secs(1)),
        "reachable before the peer exists"
    );

    let out = sites.ctl_ok(
        a,
        &[
            "peer",
            "add",
            "site-b",
            "--public-key",
            &pair.b_pub,
            "--allowed-ips",
            "198.18.100.2/32,198.19.2.0/24,fd19:2::/64",
            "--endpoint",
            "198.18.0.2:51820",
        ],
    );
    assert!(out.contains("peers added: site-b"), "{out}");
    assert!(sites.routes(&sites.gw_a, a).contains("198.19.2.0/24"));
    assert!(
        sites
            .host_a
            .ping_until("198.19.2.10", Duration::from_secs(10)),
        "site did not come up after peer add:\n{}",
        pair.gw_a.log_text()
    );
    assert!(sites
        .host_a
        .ping_until("fd19:2::10", Duration::from_secs(5)));
    thread::sleep(Duration::from_millis(300));
    let first = handshake_of(&json(&sites, a), "site-b").expect("handshake after add");

    // Keepalive, endpoint and allowed-ips change: the session is kept.
    thread::sleep(Duration::from_millis(1100));
    let out = sites.ctl_ok(
        a,
        &[
            "peer",
            "set",
            "site-b",
            "--persistent-keepalive",
            "7",
            "--endpoint",
            "198.18.0.2:51820",
            "--allowed-ips",
            "198.18.100.2/32,198.19.2.0/24,fd19:2::/64,198.19.5.0/24",
        ],
    );
    assert!(out.contains("changed: site-b"), "{out}");
    assert!(
        sites.routes(&sites.gw_a, a).contains("198.19.5.0/24"),
        "new route missing"
    );
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(5)));
    thread::sleep(Duration::from_millis(300));
    let status = json(&sites, a);
    assert_eq!(
        handshake_of(&status, "site-b"),
        Some(first),
        "peer set caused a new handshake"
    );
    assert_eq!(status["peers"][0]["persistent_keepalive"], 7);

    // A preshared-key change takes effect at the next handshake, as in WireGuard (what
    // Rosenpass relies on): the current session keeps carrying traffic meanwhile, whichever
    // side changes first. (The engine's tests show the next handshake uses the new key.)
    let psk = String::from_utf8(
        run(Command::new(sitelink_tests::bin("sitelinkctl")).arg("genpsk")).stdout,
    )
    .unwrap();
    let psk_file = sites.dir.write("ab.psk", &psk, 0o600);
    let psk_arg = psk_file.to_str().unwrap();
    sites.ctl_ok(
        a,
        &["peer", "set", "site-b", "--preshared-key-file", psk_arg],
    );
    assert!(
        sites
            .host_a
            .ping_until("198.19.2.10", Duration::from_secs(3)),
        "traffic stopped when one side's preshared key changed"
    );
    sites.ctl_ok(
        &pair.b_if,
        &["peer", "set", "site-a", "--preshared-key-file", psk_arg],
    );
    assert!(
        sites
            .host_a
            .ping_until("198.19.2.10", Duration::from_secs(3)),
        "traffic stopped after both sides changed the preshared key"
    );
    let kept = handshake_of(&json(&sites, a), "site-b");
    assert_eq!(
        kept,
        Some(first),
        "a preshared-key change forced a handshake"
    );
    // Loose permissions on a preshared key file are refused like in the config file.
    fs::set_permissions(&psk_file, fs::Permissions::from_mode(0o644)).unwrap();
    let out = sites.ctl(
        a,
        &["peer", "set", "site-b", "--preshared-key-file", psk_arg],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("chmod 600") && err.contains("peer \"site-b\": preshared-key-file"),
        "{err}"
    );

    // A change that breaks the rules is refused whole and changes nothing: the same prefix
    // on two peers is ambiguous (a nested one is fine: the longest match wins).
    let (_, other) = keypair();
    let out = sites.ctl(
        a,
        &[
            "peer",
            "add",
            "site-c",
            "--public-key",
            &other,
            "--allowed-ips",
            "198.19.9.0/24,198.19.2.0/24",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("198.19.2.0/24 is also in the allowed-ips of peer \"site-b\""),
        "{err}"
    );
    assert_eq!(json(&sites, a)["peers"].as_array().unwrap().len(), 1);
    assert!(!sites.routes(&sites.gw_a, a).contains("198.19.9.0/24"));
    let out = sites.ctl(a, &["peer", "remove", "nobody"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no peer named \"nobody\" (peers: site-b)")
    );

    // Remove: routes go and traffic stops.
    let out = sites.ctl_ok(a, &["peer", "remove", "site-b"]);
    assert!(out.contains("removed: site-b"), "{out}");
    let routes = sites.routes(&sites.gw_a, a);
    assert!(
        !routes.contains("198.19.2.0/24") && !routes.contains("198.19.5.0/24"),
        "{routes}"
    );
    assert!(
        !sites
            .host_a
            .ping_until("198.19.2.10", Duration::from_secs(2)),
        "still reachable after remove"
    );
    assert_eq!(json(&sites, a)["peers"].as_array().unwrap().len(), 0);
}

#[test]
fn reload_during_a_transfer_keeps_the_connection() {
    let sites = Sites::new();
    let pair = sites.start_pair(true, "");
    assert!(
        sites
            .host_a
            .ping_until("198.19.2.10", Duration::from_secs(15)),
        "{}",
        pair.gw_a.log_text()
    );
    let original = fs::read_to_string(&pair.a_conf).unwrap();
    let (_, x_pub) = keypair();
    let (_, y_pub) = keypair();
    let with_others = format!(
        "{original}\n[[peer]]\nname = \"site-x\"\npublic-key = {x_pub:?}\nallowed-ips = [\"198.19.9.0/24\"]\n\n[[peer]]\nname = \"site-y\"\npublic-key = {y_pub:?}\nendpoint = \"198.18.0.9:51820\"\nallowed-ips = [\"198.19.10.0/24\"]\n"
    );
    let before = handshake_of(&json(&sites, &pair.a_if), "site-b");
    assert!(
        before.is_some(),
        "the first ping's handshake is not in status yet"
    );
    let mut summaries = Vec::new();
    let report = tcp_stream_during(
        &sites.host_a,
        &sites.host_b,
        "198.19.2.10:7101".parse().unwrap(),
        Duration::from_secs(6),
        || {
            thread::sleep(Duration::from_secs(1));
            fs::write(&pair.a_conf, &with_others).unwrap();
            summaries.push(sites.ctl_ok(&pair.a_if, &["reload"]));
            thread::sleep(Duration::from_secs(1));
            fs::write(&pair.a_conf, &original).unwrap();
            // SIGHUP takes the same path.
            run(Command::new("kill").args(["-HUP", &pair.gw_a.child.id().to_string()]));
            thread::sleep(Duration::from_secs(1));
            summaries.push(sites.ctl_ok(&pair.a_if, &["reload"]));
        },
    );
    assert!(
        summaries[0].contains("peers added: site-x, site-y")
            && summaries[0].contains("unchanged: 1"),
        "{}",
        summaries[0]
    );
    assert!(
        summaries[1].contains("peers added: none; removed: none; changed: none"),
        "{}",
        summaries[1]
    );
    eprintln!("reload during transfer: {report:?}");
    assert!(report.sent > 1 << 20, "{report:?}");
    assert_eq!(
        report.verified, report.sent,
        "stream corrupted or cut: {report:?}"
    );
    assert!(
        report.max_gap < Duration::from_secs(1),
        "stream stalled {:?} during reloads",
        report.max_gap
    );
    assert_eq!(
        handshake_of(&json(&sites, &pair.a_if), "site-b"),
        before,
        "reload re-handshook an unchanged peer"
    );
    assert!(
        pair.gw_a.log_text().contains("SIGHUP: reloaded"),
        "{}",
        pair.gw_a.log_text()
    );

    // An invalid file changes nothing and says why, with file:line.
    fs::write(
        &pair.a_conf,
        original.replace("persistent-keepalive = 25", "persistent-keepalive = 0"),
    )
    .unwrap();
    let out = sites.ctl(&pair.a_if, &["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{}:", pair.a_conf.display()))
            && err.contains("persistent-keepalive"),
        "{err}"
    );
    assert_eq!(
        json(&sites, &pair.a_if)["peers"][0]["persistent_keepalive"],
        25
    );
}

#[test]
fn save_writes_peers_back_keeping_comments() {
    let sites = Sites::new();
    let extra = "\n# Branch office, added by hand. Keep this comment.\n";
    let pair = sites.start_pair(true, extra);
    let original = fs::read_to_string(&pair.a_conf).unwrap();
    let (_, c_pub) = keypair();
    let out = sites.ctl_ok(
        &pair.a_if,
        &[
            "peer",
            "add",
            "site-c",
            "--public-key",
            &c_pub,
            "--allowed-ips",
            "198.19.3.0/24",
            "--persistent-keepalive",
            "30",
            "--save",
        ],
    );
    assert!(
        out.contains(&format!("saved to {}", pair.a_conf.display())),
        "{out}"
    );
    let saved = fs::read_to_string(&pair.a_conf).unwrap();
    for line in original.lines().filter(|l| l.contains('#')) {
        assert!(saved.contains(line), "lost line {line:?}:\n{saved}");
    }
    assert!(
        saved.contains("name = \"site-c\"") && saved.contains(&c_pub),
        "{saved}"
    );
    assert_eq!(
        fs::metadata(&pair.a_conf).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The saved file is what a restart would load: reload finds nothing to change.
    let out = sites.ctl_ok(&pair.a_if, &["reload"]);
    assert!(
        out.contains("added: none; removed: none; changed: none"),
        "{out}"
    );

    // Changing and removing round-trip too.
    sites.ctl_ok(
        &pair.a_if,
        &[
            "peer",
            "set",
            "site-b",
            "--persistent-keepalive",
            "15",
            "--save",
        ],
    );
    assert!(fs::read_to_string(&pair.a_conf)
        .unwrap()
        .contains("persistent-keepalive = 15"));
    sites.ctl_ok(&pair.a_if, &["peer", "remove", "site-c"]);
    sites.ctl_ok(&pair.a_if, &["save"]);
    let saved = fs::read_to_string(&pair.a_conf).unwrap();
    assert!(
        !saved.contains("site-c") && saved.contains("Keep this comment."),
        "{saved}"
    );
}

fn wg_ok(sites: &Sites, args: &[&str]) -> String {
    sitelink_tests::wg_ok(&sites.gw_a, args)
}

#[test]
fn wireguard_tools_work_against_sitelinkd() {
    let sites = Sites::new();
    let pair = sites.start_pair(true, "");
    let a = pair.a_if.as_str();
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(15)));
    thread::sleep(Duration::from_millis(300));

    let show = wg_ok(&sites, &["show", a]);
    assert!(show.contains(&format!("peer: {}", pair.b_pub)), "{show}");
    assert!(
        show.contains("endpoint: 198.18.0.2:51820") && show.contains("latest handshake:"),
        "{show}"
    );
    assert!(
        show.contains("allowed ips: ") && show.contains("198.19.2.0/24"),
        "{show}"
    );
    assert!(
        show.contains("listening port: 51820")
            && show.contains("persistent keepalive: every 25 seconds"),
        "{show}"
    );

    let dump = wg_ok(&sites, &["show", a, "dump"]);
    let lines: Vec<Vec<&str>> = dump.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 2, "{dump}");
    assert_eq!(lines[0][1], pair.a_pub);
    assert_eq!(lines[0][2], "51820");
    assert_eq!(lines[1][0], pair.b_pub);
    assert_eq!(lines[1][2], "198.18.0.2:51820");
    let hs: u64 = lines[1][4].parse().unwrap();
    assert_eq!(
        Some(hs),
        handshake_of(&json(&sites, a), "site-b"),
        "handshake time differs from show --json"
    );
    assert!(lines[1][5].parse::<u64>().unwrap() > 0 && lines[1][6].parse::<u64>().unwrap() > 0);
    assert_eq!(lines[1][7], "25");

    // wg set: add, then remove a peer; same validation and apply path as sitelinkctl.
    let (_, k) = keypair();
    wg_ok(
        &sites,
        &[
            "set",
            a,
            "peer",
            &k,
            "allowed-ips",
            "198.19.7.0/24",
            "endpoint",
            "198.18.0.7:51820",
        ],
    );
    let status = json(&sites, a);
    let added = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["public_key"] == k.as_str())
        .expect("wg set added the peer");
    assert_eq!(added["allowed_ips"][0], "198.19.7.0/24");
    assert!(added["name"].as_str().unwrap().starts_with("wg-"));
    assert!(sites.routes(&sites.gw_a, a).contains("198.19.7.0/24"));
    // A prefix nested in another peer's is fine (the longest match routes); an identical
    // one moves to this peer, as in WireGuard.
    wg_ok(
        &sites,
        &[
            "set",
            a,
            "peer",
            &k,
            "allowed-ips",
            "198.19.7.0/24,198.19.2.128/25",
        ],
    );
    assert!(sites.routes(&sites.gw_a, a).contains("198.19.2.128/25"));
    let b_ips = |s: &serde_json::Value| s["peers"][0]["allowed_ips"].clone();
    assert_eq!(b_ips(&json(&sites, a)).as_array().unwrap().len(), 4);
    wg_ok(&sites, &["set", a, "peer", &k, "remove"]);
    assert_eq!(json(&sites, a)["peers"].as_array().unwrap().len(), 1);
    assert!(!sites.routes(&sites.gw_a, a).contains("198.19.7.0/24"));

    // wg showconf → edit → wg syncconf: adds the new peer, keeps site-b's session.
    let conf = wg_ok(&sites, &["showconf", a]);
    assert!(
        conf.contains("[Peer]") && conf.contains(&pair.b_pub),
        "{conf}"
    );
    let (_, n) = keypair();
    let edited = format!("{conf}\n[Peer]\nPublicKey = {n}\nAllowedIPs = 198.19.8.0/24\n");
    let file = sites.dir.write("sync.conf", &edited, 0o600);
    let before = handshake_of(&json(&sites, a), "site-b");
    wg_ok(&sites, &["syncconf", a, file.to_str().unwrap()]);
    let status = json(&sites, a);
    assert_eq!(status["peers"].as_array().unwrap().len(), 2, "{status}");
    assert!(sites.routes(&sites.gw_a, a).contains("198.19.8.0/24"));
    // Traffic after the sync still uses site-b's old session (ping first, then look).
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(5)));
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        handshake_of(&json(&sites, a), "site-b"),
        before,
        "syncconf re-handshook an unchanged peer"
    );
}

#[test]
fn sockets_refuse_strangers_and_survive_garbage() {
    let sites = Sites::new();
    let pair = sites.start_pair(true, "");
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(15)));
    let control = sites.run_dir.join(format!("{}.sock", pair.a_if));
    let uapi = PathBuf::from(format!("/var/run/wireguard/{}.sock", pair.a_if));
    assert_eq!(
        fs::metadata(&uapi).unwrap().permissions().mode() & 0o777,
        0o660
    );

    // Make the sockets reachable by anyone (a misconfiguration): credentials still refuse.
    for p in [&sites.dir.0, &sites.run_dir] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    for p in [&control, &uapi] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o666)).unwrap();
    }
    let nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(args)
            .env("SITELINK_RUN_DIR", &sites.run_dir)
            .output()
            .unwrap()
    };
    let ctl = sitelink_tests::bin("sitelinkctl");
    let out = nobody(&[ctl.to_str().unwrap(), "--interface", &pair.a_if, "show"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("permission denied: uid 65534 is not root"),
        "{err}"
    );
    let out = nobody(&["wg", "show", &pair.a_if]);
    assert!(!out.status.success(), "wg as nobody was served");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&pair.b_pub),
        "leaked status"
    );
    // A refused client that is slow to send its request still gets the refusal, not EPIPE:
    // the daemon reads the request before it answers and closes.
    let slow = "import socket, sys, time\n\
                s = socket.socket(socket.AF_UNIX)\n\
                s.connect(sys.argv[1])\n\
                time.sleep(0.3)\n\
                s.sendall(sys.argv[2].encode())\n\
                print(s.makefile().read())";
    for (path, request) in [(&control, "{\"cmd\":\"show\"}\n"), (&uapi, "get=1\n\n")] {
        let out = nobody(&[
            "/usr/bin/python3",
            "-c",
            slow,
            path.to_str().unwrap(),
            request,
        ]);
        let reply = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "slow stranger on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            reply.contains("permission denied") || reply.contains("errno=-13"),
            "{reply}"
        );
    }

    // Garbage, oversized and stalled requests get errors; the daemon keeps serving.
    let reply = unix_exchange(&control, b"hello\n", Duration::from_secs(10));
    assert!(reply.contains("malformed request"), "{reply}");
    let reply = unix_exchange(&control, &vec![b'x'; 100 * 1024], Duration::from_secs(10));
    assert!(reply.contains("larger than"), "{reply}");
    let reply = unix_exchange(&uapi, b"get=2\n\n", Duration::from_secs(10));
    assert!(reply.starts_with("errno=-"), "{reply}");
    let reply = unix_exchange(&uapi, &vec![b'x'; 200 * 1024], Duration::from_secs(10));
    assert!(reply.starts_with("errno=-"), "{reply}");

    let stalled = thread::spawn({
        let control = control.clone();
        move || unix_exchange(&control, b"{\"cmd\":", Duration::from_secs(15))
    });
    let stalled_uapi = thread::spawn({
        let uapi = uapi.clone();
        move || unix_exchange(&uapi, b"set=1\n", Duration::from_secs(15))
    });
    thread::sleep(Duration::from_millis(500));
    // While two clients stall, others are served and packets flow.
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(2)));
    assert_eq!(json(&sites, &pair.a_if)["peers"][0]["name"], "site-b");
    assert!(wg_ok(&sites, &["show", &pair.a_if]).contains(&pair.b_pub));
    let reply = stalled.join().unwrap();
    assert!(reply.contains("not completed"), "{reply}");
    let reply = stalled_uapi.join().unwrap();
    assert!(reply.starts_with("errno=-"), "{reply}");
}

#[test]
fn control_group_members_are_served() {
    let sites = Sites::new();
    let (private, _) = keypair();
    let key = sites.dir.write("g.key", &format!("{private}\n"), 0o600);
    let iface = sitelink_tests::unique("slg");
    // nogroup (65534) exists on every Debian system.
    let toml = format!(
        "[interface]\nname = {iface:?}\nprivate-key-file = {:?}\ncontrol-group = \"nogroup\"\n",
        key.display().to_string()
    );
    let conf = sites.dir.write("g.toml", &toml, 0o600);
    let mut daemon = sites.sitelinkd(&sites.gw_a, &conf);
    sites.wait_ready(&mut daemon, &iface);
    fs::set_permissions(&sites.dir.0, fs::Permissions::from_mode(0o755)).unwrap();
    let socket = sites.run_dir.join(format!("{iface}.sock"));
    let meta = fs::metadata(&socket).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.gid(), meta.mode() & 0o777), (65534, 0o660));
    assert_eq!(fs::metadata(&sites.run_dir).unwrap().gid(), 65534);

    let as_user = |uid: &str, gid: &str, groups: &str| {
        let groups = if groups.is_empty() {
            "--clear-groups".to_string()
        } else {
            format!("--groups={groups}")
        };
        Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                &groups,
                "--",
            ])
            .arg(sitelink_tests::bin("sitelinkctl"))
            .args(["--interface", &iface, "show", "--json"])
            .env("SITELINK_RUN_DIR", &sites.run_dir)
            .output()
            .unwrap()
    };
    let member = as_user("4242", "65534", "");
    assert!(
        member.status.success(),
        "group member refused: {}",
        String::from_utf8_lossy(&member.stderr)
    );
    assert!(String::from_utf8_lossy(&member.stdout).contains(&iface));
    // A member through a supplementary group (SO_PEERGROUPS) is served too.
    let supplementary = as_user("4244", "4244", "65534");
    assert!(
        supplementary.status.success(),
        "supplementary member refused: {}",
        String::from_utf8_lossy(&supplementary.stderr)
    );
    let stranger = as_user("4243", "4243", "");
    assert_eq!(stranger.status.code(), Some(1));
}
