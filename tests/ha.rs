//! An HA pair of gateways with keepalived (VRRP), in network namespaces: site A has gateways
//! A1 and A2 with the same key, a WAN virtual address (the endpoint site B uses) and a LAN
//! virtual address (the hosts' gateway), both moved by keepalived from Debian's package,
//! started and stopped by the test. A paced TCP stream from host A to host B runs while A1
//! dies (sitelinkd and keepalived SIGKILLed, its links down) and A2 takes over, then while A1
//! comes back and takes the addresses back; every byte is checked and the gaps are measured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::Duration;

use sitelink_tests::{
    keypair, require_root, show_json, spawn_sitelinkd, tcp_stream_during, unique, veth, wait_for,
    wait_ready, Netns, Process, TempDir,
};

const WAN_VIP: &str = "198.18.1.100";
const LAN_VIP: &str = "198.19.1.1";

fn bridge(ns: &Netns, name: &str, ports: &[&str]) {
    ns.ip(&["link", "add", name, "type", "bridge"]);
    for port in ports {
        ns.ip(&["link", "set", port, "master", name]);
    }
    ns.ip(&["link", "set", name, "up"]);
}

/// One of the pair: its namespace, sitelinkd's interface name and state directory.
struct Member {
    gw: Netns,
    iface: String,
    n: u8,
}

struct Pair {
    /// Between site A's WAN segment (a bridge) and site B.
    router: Netns,
    lan: Netns,
    a: [Member; 2],
    b: Netns,
    host_b: Netns,
    dir: TempDir,
    run_dir: PathBuf,
    a_key: PathBuf,
    b_iface: String,
    a_pub: String,
    b_pub: String,
}

impl Pair {
    fn new() -> Self {
        require_root();
        let router = Netns::new("har");
        let lan = Netns::new("hal");
        let b = Netns::new("hab");
        let host_b = Netns::new("hah");
        router.sysctl("net.ipv4.ip_forward", "1");
        let members = [1u8, 2].map(|n| {
            let gw = Netns::new("hag");
            veth(&gw, "wan0", &router, &format!("a{n}w"));
            veth(&gw, "lan0", &lan, &format!("a{n}l"));
            gw.ip(&[
                "addr",
                "add",
                &format!("198.18.1.{}/24", n + 1),
                "dev",
                "wan0",
            ]);
            gw.ip(&["route", "add", "default", "via", "198.18.1.1"]);
            gw.ip(&[
                "addr",
                "add",
                &format!("198.19.1.{}/24", n + 1),
                "dev",
                "lan0",
            ]);
            gw.sysctl("net.ipv4.ip_forward", "1");
            Member {
                gw,
                iface: unique("sla"),
                n,
            }
        });
        bridge(&router, "brw", &["a1w", "a2w"]);
        router.ip(&["addr", "add", "198.18.1.1/24", "dev", "brw"]);
        // Host A is the LAN: a bridge with both gateways' LAN ports and the host's address.
        bridge(&lan, "br0", &["a1l", "a2l"]);
        lan.ip(&["addr", "add", "198.19.1.10/24", "dev", "br0"]);
        lan.ip(&["route", "add", "default", "via", LAN_VIP]);
        veth(&router, "wanb", &b, "wan0");
        router.ip(&["addr", "add", "198.18.2.1/24", "dev", "wanb"]);
        b.ip(&["addr", "add", "198.18.2.2/24", "dev", "wan0"]);
        b.ip(&["route", "add", "default", "via", "198.18.2.1"]);
        veth(&b, "lan0", &host_b, "lan0");
        b.ip(&["addr", "add", "198.19.2.1/24", "dev", "lan0"]);
        host_b.ip(&["addr", "add", "198.19.2.10/24", "dev", "lan0"]);
        host_b.ip(&["route", "add", "default", "via", "198.19.2.1"]);
        b.sysctl("net.ipv4.ip_forward", "1");

        let dir = TempDir::new();
        let run_dir = dir.0.join("run");
        let (a_private, a_pub) = keypair();
        let (b_private, b_pub) = keypair();
        let a_key = dir.write("a.key", &format!("{a_private}\n"), 0o600);
        dir.write("b.key", &format!("{b_private}\n"), 0o600);
        Self {
            router,
            lan,
            a: members,
            b,
            host_b,
            dir,
            run_dir,
            a_key,
            b_iface: unique("slb"),
            a_pub,
            b_pub,
        }
    }

    /// sitelinkd on member `m` (0 or 1): ha = "vrrp" on the WAN address, peer B.
    fn start_member(&self, m: usize) -> Process {
        let member = &self.a[m];
        let state = self.dir.0.join(format!("state{}", member.n));
        std::fs::create_dir_all(&state).unwrap();
        let toml = format!(
            "[interface]\nname = {:?}\nprivate-key-file = {:?}\nlisten-port = 51820\n\
             ha = \"vrrp\"\nha-address = \"{WAN_VIP}\"\n\n\
             [[peer]]\nname = \"site-b\"\npublic-key = {:?}\nendpoint = \"198.18.2.2:51820\"\n\
             allowed-ips = [\"198.19.2.0/24\"]\npersistent-keepalive = 5\n",
            member.iface,
            self.a_key.display().to_string(),
            self.b_pub
        );
        let conf = self
            .dir
            .write(&format!("{}.toml", member.iface), &toml, 0o600);
        let log = self.dir.0.join(format!("{}.log", member.iface));
        let mut d = spawn_sitelinkd(
            &member.gw,
            &conf,
            &self.run_dir,
            log,
            &[("STATE_DIRECTORY", state.to_str().unwrap())],
        );
        wait_ready(&self.run_dir, &mut d, &member.iface);
        d
    }

    fn start_b(&self) -> Process {
        let toml = format!(
            "[interface]\nname = {:?}\nprivate-key-file = {:?}\nlisten-port = 51820\n\n\
             [[peer]]\nname = \"site-a\"\npublic-key = {:?}\nendpoint = \"{WAN_VIP}:51820\"\n\
             allowed-ips = [\"198.19.1.0/24\"]\npersistent-keepalive = 5\n",
            self.b_iface,
            self.dir.0.join("b.key").display().to_string(),
            self.a_pub
        );
        let conf = self.dir.write("b.toml", &toml, 0o600);
        let mut d = spawn_sitelinkd(&self.b, &conf, &self.run_dir, self.dir.0.join("b.log"), &[]);
        wait_ready(&self.run_dir, &mut d, &self.b_iface);
        d
    }

    /// keepalived on member `m`: both virtual addresses in one sync group, A1 preferred
    /// (priority 150 against 100, and it takes them back when it returns), adverts every
    /// 200 ms (VRRPv3): a dead master is noticed in about 0.7 s.
    fn start_keepalived(&self, m: usize) -> Process {
        let member = &self.a[m];
        let priority = if m == 0 { 150 } else { 100 };
        let instance = |name: &str, dev: &str, id: u8, vip: &str| {
            format!(
                "vrrp_instance {name} {{\n  state BACKUP\n  interface {dev}\n  virtual_router_id {id}\n  \
                 priority {priority}\n  advert_int 0.2\n  virtual_ipaddress {{\n    {vip}/24 dev {dev}\n  }}\n}}\n"
            )
        };
        let conf = format!(
            "global_defs {{\n  router_id a{}\n  vrrp_version 3\n  vrrp_garp_master_refresh 1\n}}\n\
             vrrp_sync_group site_a {{\n  group {{\n    WAN\n    LAN\n  }}\n}}\n{}{}",
            member.n,
            instance("WAN", "wan0", 51, WAN_VIP),
            instance("LAN", "lan0", 52, LAN_VIP)
        );
        let path = self
            .dir
            .write(&format!("keepalived{}.conf", member.n), &conf, 0o644);
        let mut cmd = member.gw.cmd("keepalived");
        cmd.args([
            "--dont-fork",
            "--log-console",
            "--vrrp",
            "--log-detail",
            "-f",
        ])
        .arg(&path)
        .arg("-p")
        .arg(self.dir.0.join(format!("keepalived{}.pid", member.n)))
        .arg("-r")
        .arg(self.dir.0.join(format!("vrrp{}.pid", member.n)));
        Process::spawn(
            "keepalived",
            cmd,
            self.dir.0.join(format!("keepalived{}.log", member.n)),
        )
    }

    /// A paced TCP stream from host A to host B on `port` for 15 s while `during` runs.
    fn stream(&self, port: u16, during: impl FnOnce()) -> sitelink_tests::StreamReport {
        let server: SocketAddr = format!("198.19.2.10:{port}").parse().unwrap();
        tcp_stream_during(
            &self.lan,
            &self.host_b,
            server,
            Duration::from_secs(15),
            during,
        )
    }

    fn ha_state(&self, m: usize) -> String {
        let status = show_json(&self.run_dir, &self.a[m].iface);
        status["interface"]["ha"]["state"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn has_vip(&self, m: usize) -> bool {
        let out = self.a[m].gw.ip(&["-o", "addr", "show", "dev", "wan0"]);
        String::from_utf8_lossy(&out.stdout).contains(&format!("{WAN_VIP}/"))
    }
}

/// SIGKILL to every process in `ns` (a machine that dies).
fn kill_all(ns: &Netns) {
    let out = Command::new("ip")
        .args(["netns", "pids", &ns.name])
        .output()
        .expect("ip netns pids");
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
}

#[test]
fn the_standby_takes_over_when_the_active_gateway_dies_and_hands_back_when_it_returns() {
    let pair = Pair::new();
    let _b = pair.start_b();
    let mut a1 = pair.start_member(0);
    let a2_daemon = pair.start_member(1);
    // Both standby until keepalived gives one of them the address.
    assert_eq!(pair.ha_state(0), "standby");
    assert_eq!(pair.ha_state(1), "standby");
    // A1's keepalived first, and A2's once A1 holds the addresses: started together, A2's
    // could win the first election (its master-down timer is only 39 ms longer than A1's, less
    // than a busy machine's start-up jitter) and A2 would be active, and handshake, until A1
    // preempts it. VRRP allows that; this test is about a standby that stays one.
    let mut k1 = pair.start_keepalived(0);
    let a1_active = wait_for(Duration::from_secs(20), || pair.ha_state(0) == "active");
    assert!(
        a1_active.is_some(),
        "A1 never went active:\n{}",
        k1.log_text()
    );
    let k2 = pair.start_keepalived(1);
    // Longer than A2's master-down interval (3 adverts of 200 ms and the skew): had it not
    // heard A1, it would have taken the addresses by now.
    thread::sleep(Duration::from_secs(2));
    assert_eq!(pair.ha_state(1), "standby", "{}", k2.log_text());
    assert!(
        pair.lan.ping_until("198.19.2.10", Duration::from_secs(15)),
        "host A cannot reach host B through A1:\n{}",
        a1.log_text()
    );
    // The standby holds no session and routes nothing.
    let a2 = show_json(&pair.run_dir, &pair.a[1].iface);
    assert!(
        a2["peers"][0]["latest_handshake"].is_null(),
        "{a2}\n{}",
        a2_daemon.log_text()
    );
    let a2_routes = pair.a[1].gw.ip(&["route", "show", "dev", &pair.a[1].iface]);
    assert!(
        !String::from_utf8_lossy(&a2_routes.stdout).contains("198.19.2.0/24"),
        "the standby routes B's LAN"
    );

    // A1 dies: its daemons killed and its links down (the machine is gone).
    let mut takeover = None;
    let report = pair.stream(5401, || {
        thread::sleep(Duration::from_secs(3));
        // Links first, so that nothing the dying processes send gets out (keepalived's VRRP
        // child announces priority 0 when its parent dies); then every process there.
        pair.a[0].gw.ip(&["link", "set", "wan0", "down"]);
        pair.a[0].gw.ip(&["link", "set", "lan0", "down"]);
        kill_all(&pair.a[0].gw);
        a1.kill();
        k1.kill();
        takeover = wait_for(Duration::from_secs(10), || pair.ha_state(1) == "active");
    });
    eprintln!(
        "HA takeover: A2 active {takeover:?} after A1 died (VRRP adverts every 200 ms); TCP stream {} bytes sent, {} \
         verified, longest gap {:?}",
        report.sent, report.verified, report.max_gap
    );
    assert!(takeover.is_some(), "A2 did not go active");
    assert!(pair.has_vip(1));
    assert_eq!(
        report.verified, report.sent,
        "stream lost or corrupted bytes"
    );
    let first_gap = report.max_gap;

    // A1 comes back (a reboot: its virtual addresses gone, links up, daemons started) and,
    // with the higher priority, takes the addresses back.
    for (dev, vip) in [("wan0", WAN_VIP), ("lan0", LAN_VIP)] {
        let _ = Command::new("ip")
            .args([
                "-n",
                &pair.a[0].gw.name,
                "addr",
                "del",
                &format!("{vip}/24"),
                "dev",
                dev,
            ])
            .output();
        pair.a[0].gw.ip(&["link", "set", dev, "up"]);
    }
    pair.a[0]
        .gw
        .ip(&["route", "replace", "default", "via", "198.18.1.1"]);
    let _a1 = pair.start_member(0);
    let mut handback = None;
    let mut k1 = None;
    let report = pair.stream(5402, || {
        thread::sleep(Duration::from_secs(3));
        k1 = Some(pair.start_keepalived(0));
        handback = wait_for(Duration::from_secs(10), || {
            pair.ha_state(0) == "active" && pair.ha_state(1) == "standby"
        });
    });
    eprintln!(
        "HA hand-back: A1 active and A2 standby {handback:?} after A1's keepalived started; \
         TCP stream {} bytes sent, {} verified, longest gap {:?} (takeover gap {first_gap:?})",
        report.sent, report.verified, report.max_gap
    );
    assert!(handback.is_some(), "A1 did not take over again");
    assert_eq!(
        report.verified, report.sent,
        "stream lost or corrupted bytes"
    );
    let b = show_json(&pair.run_dir, &pair.b_iface);
    assert_eq!(b["peers"][0]["endpoint"], format!("{WAN_VIP}:51820"));
}

/// A gateway whose clock is behind the last initiation on record does not go active: its
/// peers would refuse its handshakes. It says why (and tries again every 5 s).
#[test]
fn a_gateway_with_its_clock_behind_the_last_handshake_stays_standby_and_says_why() {
    let pair = Pair::new();
    let member = &pair.a[0];
    let state = pair.dir.0.join(format!("state{}", member.n));
    std::fs::create_dir_all(&state).unwrap();
    let future = std::time::SystemTime::now() + Duration::from_secs(3600);
    let millis = future
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    std::fs::write(
        state.join(format!("{}.clock", member.iface)),
        format!("{millis}\n"),
    )
    .unwrap();
    let _a1 = pair.start_member(0);
    member
        .gw
        .ip(&["addr", "add", &format!("{WAN_VIP}/24"), "dev", "wan0"]);
    let said = wait_for(Duration::from_secs(5), || {
        let s = show_json(&pair.run_dir, &member.iface);
        s["interface"]["ha"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("behind") && e.contains("NTP"))
    });
    assert!(
        said.is_some(),
        "{}",
        show_json(&pair.run_dir, &member.iface)
    );
    assert_eq!(pair.ha_state(0), "standby");
    let text = sitelink_tests::ctl(&pair.run_dir, &member.iface, &["show"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("ha: standby") && text.contains("s behind the last handshake"),
        "{text}"
    );
}

/// Drops VRRP (IP protocol 112) on a bridge in `ns` (`cut`), or lets it through again.
fn block_vrrp(ns: &Netns, cut: bool) {
    let script = if cut {
        "table bridge sitelink_test_split {\n chain forward {\n  type filter hook forward priority 0;\n  \
         ether type ip ip protocol 112 drop\n }\n}\n"
            .to_string()
    } else {
        "delete table bridge sitelink_test_split\n".to_string()
    };
    ns.nft(&script);
}

/// A split: VRRP between the two gateways cut on both segments, so that both hold the virtual
/// addresses and both are active, for 5 s. After it heals, the pair settles on A1 and the link
/// to B works again, bytes intact, within WireGuard's own recovery (a rekey at most).
#[test]
fn after_a_split_with_both_gateways_active_the_pair_settles_and_the_link_recovers() {
    let pair = Pair::new();
    let _b = pair.start_b();
    let _a1 = pair.start_member(0);
    let _a2 = pair.start_member(1);
    let _k1 = pair.start_keepalived(0);
    let _k2 = pair.start_keepalived(1);
    assert!(wait_for(Duration::from_secs(20), || pair.ha_state(0) == "active").is_some());
    assert!(pair.lan.ping_until("198.19.2.10", Duration::from_secs(15)));

    block_vrrp(&pair.router, true);
    block_vrrp(&pair.lan, true);
    let both = wait_for(Duration::from_secs(10), || {
        pair.ha_state(0) == "active" && pair.ha_state(1) == "active"
    });
    assert!(both.is_some(), "the split did not make A2 active too");
    thread::sleep(Duration::from_secs(5));
    block_vrrp(&pair.router, false);
    block_vrrp(&pair.lan, false);
    let settled = wait_for(Duration::from_secs(10), || {
        pair.ha_state(0) == "active" && pair.ha_state(1) == "standby"
    });
    assert!(settled.is_some(), "the pair did not settle on A1");
    let recovered = wait_for(Duration::from_secs(150), || {
        pair.lan
            .ping_until("198.19.2.10", Duration::from_millis(500))
    });
    eprintln!(
        "HA split: both active {both:?} after VRRP was cut; settled {settled:?} after it \
         healed; host A reached host B again {recovered:?} later"
    );
    assert!(
        recovered.is_some(),
        "no traffic 150 s after the split healed"
    );
    let server: SocketAddr = "198.19.2.10:5403".parse().unwrap();
    let len = 2 << 20;
    let (sent, ok) = sitelink_tests::tcp_transfer(&pair.lan, &pair.host_b, server, len);
    assert_eq!((sent, ok), (len, len), "transfer after the split");
}
