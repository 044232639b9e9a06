//! Test harness for real topologies in network namespaces.
//!
//! Owns: unique names, namespaces and veth links, sitelinkd / wireguard-go processes, and
//! their cleanup in `Drop` (so a failing test leaves nothing behind), plus checked TCP
//! transfers run from threads that `setns` into a namespace.
//!
//! Addresses are only ever inside namespaces the test created: 198.18.0.0/15 and fd00::/8.
//! Needs root (CI runs as root); binaries come from the same target directory as the test
//! (`cargo build --workspace` first; the README's test command does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `{prefix}{pid}{n}`, at most 15 bytes so it
/// also serves as an interface name.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}x{n}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "name {name} too long");
    name
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "namespace tests need root (CI runs them as root)");
}

/// Path of a workspace binary built next to this test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip netns exec <ns> <args...>` as a Command to adjust and run.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    pub fn ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Loads an nftables script (`nft -f -`) in this namespace; panics with nft's error.
    pub fn nft(&self, script: &str) {
        let out = pipe(self.cmd("nft").args(["-f", "-"]), script);
        assert!(
            out.status.success(),
            "nft in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        run(self.cmd("sysctl").args(["-qw", &format!("{key}={value}")]));
    }

    /// Pings `dst` until one answer arrives or `within` passes. Returns whether it did.
    pub fn ping_until(&self, dst: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let ok = self
                .cmd("ping")
                .args(["-c", "1", "-W", "1", dst])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return true;
            }
            thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// Runs `f` on a thread inside this namespace (sockets it opens live there).
    pub fn within<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a valid namespace fd, affecting only this thread, which is
            // ours and runs nothing else.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Connects `a` and `b` with a veth pair named `a_if`/`b_if` (names live only in the
/// namespaces, so they need not be globally unique).
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    run(Command::new("ip").args([
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]));
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// A child process killed (SIGTERM, then SIGKILL) on drop. Its stderr goes to a log file
/// that failures print.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Process {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Self {
        let file = fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            child,
            log,
            name: name.to_string(),
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// SIGKILL (a crash: no clean-up of its own) and waits for the exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early ({status}):\n{}",
                self.name,
                self.log_text()
            );
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(unique("slt"));
        fs::create_dir_all(&path).expect("temp dir");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).expect("chmod temp dir");
        Self(path)
    }

    pub fn write(&self, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, contents).expect("write file");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` with `input` on stdin; returns its output (whatever the exit status).
pub fn pipe(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

/// `cmd`'s trimmed stdout for `input`, asserting success.
pub fn pipe_ok(cmd: &mut Command, input: &str) -> String {
    let out = pipe(cmd, input);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// A key pair from `sitelinkctl genkey | sitelinkctl pubkey`.
pub fn keypair() -> (String, String) {
    let private =
        String::from_utf8(run(Command::new(bin("sitelinkctl")).arg("genkey")).stdout).unwrap();
    let private = private.trim().to_string();
    let public = pipe_ok(Command::new(bin("sitelinkctl")).arg("pubkey"), &private);
    (private, public)
}

/// Deterministic test bytes (xorshift), so the receiver can verify every byte.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Sends `len` pattern bytes from a client in `client_ns` to a server in `server_ns` at
/// `server_addr`; the server echoes back the number of bytes that matched the pattern.
/// Returns (bytes sent, bytes the server verified).
pub fn tcp_transfer(
    client_ns: &Netns,
    server_ns: &Netns,
    server_addr: SocketAddr,
    len: usize,
) -> (usize, usize) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = server_ns.within(move || {
        let listener = TcpListener::bind(server_addr).expect("bind test server");
        ready_tx.send(()).unwrap();
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let expect = pattern(len, 7);
        let mut got = Vec::with_capacity(len);
        conn.read_to_end(&mut got).expect("server read");
        let matched = if got == expect { got.len() } else { 0 };
        conn.write_all(&(matched as u64).to_be_bytes())
            .expect("server reply");
        (got.len(), matched)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server ready");
    let client = client_ns.within(move || {
        let data = pattern(len, 7);
        let mut conn = TcpStream::connect_timeout(&server_addr, Duration::from_secs(10))
            .expect("connect through tunnel");
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        conn.write_all(&data).expect("client write");
        conn.shutdown(Shutdown::Write).unwrap();
        let mut reply = [0u8; 8];
        conn.read_exact(&mut reply).expect("server verdict");
        u64::from_be_bytes(reply) as usize
    });
    let verified_by_client = client.join().expect("client thread");
    let (received, verified) = server.join().expect("server thread");
    assert_eq!(verified, verified_by_client);
    (received, verified)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Two sites: `host_a — gw_a ═ gw_b — host_b`.
/// LAN A 198.19.1.0/24 + fd19:1::/64, LAN B 198.19.2.0/24 + fd19:2::/64, WAN between the
/// gateways 198.18.0.0/30 + fd18::/64. Hosts route everything via their gateway. The
/// tunnel (configured by the test) uses 198.18.100.0/24 and fd18:100::/64.
pub struct Sites {
    pub host_a: Netns,
    pub gw_a: Netns,
    pub gw_b: Netns,
    pub host_b: Netns,
    pub dir: TempDir,
    pub run_dir: PathBuf,
}

impl Sites {
    pub fn new() -> Self {
        require_root();
        let s = Self {
            host_a: Netns::new("sha"),
            gw_a: Netns::new("sga"),
            gw_b: Netns::new("sgb"),
            host_b: Netns::new("shb"),
            dir: TempDir::new(),
            run_dir: PathBuf::new(),
        };
        let run_dir = s.dir.0.join("run");
        let s = Self { run_dir, ..s };
        veth(&s.host_a, "lan0", &s.gw_a, "lan0");
        veth(&s.gw_a, "wan0", &s.gw_b, "wan0");
        veth(&s.gw_b, "lan0", &s.host_b, "lan0");
        for (ns, v4, v6) in [
            (&s.host_a, "198.19.1.10/24", "fd19:1::10/64"),
            (&s.gw_a, "198.19.1.1/24", "fd19:1::1/64"),
            (&s.gw_b, "198.19.2.1/24", "fd19:2::1/64"),
            (&s.host_b, "198.19.2.10/24", "fd19:2::10/64"),
        ] {
            ns.ip(&["addr", "add", v4, "dev", "lan0"]);
            ns.ip(&["-6", "addr", "add", v6, "dev", "lan0", "nodad"]);
        }
        s.gw_a.ip(&["addr", "add", "198.18.0.1/30", "dev", "wan0"]);
        s.gw_b.ip(&["addr", "add", "198.18.0.2/30", "dev", "wan0"]);
        s.gw_a
            .ip(&["-6", "addr", "add", "fd18::1/64", "dev", "wan0", "nodad"]);
        s.gw_b
            .ip(&["-6", "addr", "add", "fd18::2/64", "dev", "wan0", "nodad"]);
        s.host_a
            .ip(&["route", "add", "default", "via", "198.19.1.1"]);
        s.host_a
            .ip(&["-6", "route", "add", "default", "via", "fd19:1::1"]);
        s.host_b
            .ip(&["route", "add", "default", "via", "198.19.2.1"]);
        s.host_b
            .ip(&["-6", "route", "add", "default", "via", "fd19:2::1"]);
        for gw in [&s.gw_a, &s.gw_b] {
            gw.sysctl("net.ipv4.ip_forward", "1");
            gw.sysctl("net.ipv6.conf.all.forwarding", "1");
        }
        s
    }

    /// Starts sitelinkd in `gw` with `config` (a TOML file path).
    pub fn sitelinkd(&self, gw: &Netns, config: &Path) -> Process {
        self.sitelinkd_env(gw, config, &[])
    }

    /// [`Sites::sitelinkd`] with more environment. Each gateway has its own state directory
    /// (`STATE_DIRECTORY`, as systemd gives the unit), kept across restarts, and each start
    /// its own log file (`NAME.log`, `NAME-2.log`, ...).
    pub fn sitelinkd_env(&self, gw: &Netns, config: &Path, env: &[(&str, &str)]) -> Process {
        let log = (1..)
            .map(|n| match n {
                1 => self.dir.0.join(format!("{}.log", gw.name)),
                n => self.dir.0.join(format!("{}-{n}.log", gw.name)),
            })
            .find(|p| !p.exists())
            .expect("a free log name");
        let state = self.state_dir(gw);
        fs::create_dir_all(&state).expect("state directory");
        let state = state.display().to_string();
        let mut all = vec![("STATE_DIRECTORY", state.as_str())];
        all.extend_from_slice(env);
        spawn_sitelinkd(gw, config, &self.run_dir, log, &all)
    }

    /// The state directory of the sitelinkd in `gw`.
    pub fn state_dir(&self, gw: &Netns) -> PathBuf {
        self.dir.0.join(format!("state-{}", gw.name))
    }

    /// Waits until sitelinkd's control socket for `iface` answers `show`.
    pub fn wait_ready(&self, daemon: &mut Process, iface: &str) {
        wait_ready(&self.run_dir, daemon, iface);
    }

    /// Once the tunnel is up: IPv6 ping A→B, IPv4 ping B→A, gw_a pings gw_b's tunnel
    /// address, and byte-checked TCP transfers (8 MiB IPv4 A→B on `port`, 4 MiB IPv6 B→A on
    /// `port + 1`).
    pub fn assert_lans_connected(&self, port: u16) {
        let pings = [
            (&self.host_a, "fd19:2::10", "IPv6 ping host_a → host_b"),
            (&self.host_b, "198.19.1.10", "IPv4 ping host_b → host_a"),
            (&self.gw_a, "198.18.100.2", "gw_a → gw_b's tunnel address"),
        ];
        for (from, to, what) in pings {
            assert!(
                from.ping_until(to, Duration::from_secs(10)),
                "{what} failed"
            );
        }
        const MIB: usize = 1 << 20;
        let v4 = SocketAddr::from(([198, 19, 2, 10], port));
        let (sent, ok) = tcp_transfer(&self.host_a, &self.host_b, v4, 8 * MIB);
        assert_eq!(
            (sent, ok),
            (8 * MIB, 8 * MIB),
            "IPv4 TCP transfer A→B corrupted or short"
        );
        let v6 = SocketAddr::new("fd19:1::10".parse().expect("v6"), port + 1);
        let (sent, ok) = tcp_transfer(&self.host_b, &self.host_a, v6, 4 * MIB);
        assert_eq!(
            (sent, ok),
            (4 * MIB, 4 * MIB),
            "IPv6 TCP transfer B→A corrupted or short"
        );
    }

    pub fn ctl(&self, iface: &str, args: &[&str]) -> Output {
        ctl(&self.run_dir, iface, args)
    }

    pub fn show_json(&self, iface: &str) -> serde_json::Value {
        show_json(&self.run_dir, iface)
    }
}

/// Starts `sitelinkd --config CONFIG -v` in `ns` with its sockets under `run_dir` and its
/// output in `log`.
pub fn spawn_sitelinkd(
    ns: &Netns,
    config: &Path,
    run_dir: &Path,
    log: PathBuf,
    env: &[(&str, &str)],
) -> Process {
    let mut cmd = ns.cmd(bin("sitelinkd"));
    cmd.arg("--config")
        .arg(config)
        .arg("-v")
        .env("SITELINK_RUN_DIR", run_dir)
        .envs(env.iter().copied());
    Process::spawn("sitelinkd", cmd, log)
}

/// Waits until the sitelinkd serving `iface` under `run_dir` answers `show`.
pub fn wait_ready(run_dir: &Path, daemon: &mut Process, iface: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        daemon.assert_running();
        if ctl(run_dir, iface, &["show", "--json"]).status.success() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "sitelinkd for {iface} not ready in 20 s:\n{}",
        daemon.log_text()
    );
}

/// `sitelinkctl --interface IFACE ARGS` against the daemons under `run_dir`.
pub fn ctl(run_dir: &Path, iface: &str, args: &[&str]) -> Output {
    Command::new(bin("sitelinkctl"))
        .args(["--interface", iface])
        .args(args)
        .env("SITELINK_RUN_DIR", run_dir)
        .output()
        .expect("run sitelinkctl")
}

/// `sitelinkctl show --json`, which must succeed.
pub fn show_json(run_dir: &Path, iface: &str) -> serde_json::Value {
    let out = ctl(run_dir, iface, &["show", "--json"]);
    assert!(
        out.status.success(),
        "show failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("show --json is JSON")
}

/// The peer named `name` in a `show --json` status.
pub fn peer<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["peers"]
        .as_array()
        .and_then(|peers| peers.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no peer {name:?} in {status}"))
}

/// `wg ARGS` (wireguard-tools) in `ns`.
pub fn wg(ns: &Netns, args: &[&str]) -> Output {
    ns.cmd("wg").args(args).output().expect("run wg")
}

/// `wg ARGS` in `ns`, which must succeed; its stdout.
pub fn wg_ok(ns: &Netns, args: &[&str]) -> String {
    let out = wg(ns, args);
    assert!(
        out.status.success(),
        "wg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

impl Default for Sites {
    fn default() -> Self {
        Self::new()
    }
}

/// A sitelink config for a gateway with one peer.
pub struct GatewayConfig<'a> {
    pub iface: &'a str,
    pub key_file: &'a Path,
    pub port: u16,
    pub addresses: &'a [&'a str],
    pub peer_name: &'a str,
    pub peer_key: &'a str,
    pub endpoint: Option<&'a str>,
    pub allowed_ips: &'a [&'a str],
    pub keepalive: Option<u16>,
}

impl GatewayConfig<'_> {
    pub fn toml(&self) -> String {
        let list = |v: &[&str]| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut t = format!(
            "# test gateway\n[interface]\nname = {:?}\nprivate-key-file = {:?}\nlisten-port = {}\naddress = [{}]\n\n[[peer]]\nname = {:?}\npublic-key = {:?}\nallowed-ips = [{}]\n",
            self.iface,
            self.key_file.display().to_string(),
            self.port,
            list(self.addresses),
            self.peer_name,
            self.peer_key,
            list(self.allowed_ips)
        );
        if let Some(e) = self.endpoint {
            t += &format!("endpoint = {e:?}\n");
        }
        if let Some(k) = self.keepalive {
            t += &format!("persistent-keepalive = {k}\n");
        }
        t
    }
}

/// Gateway A's config on [`Sites`] facing another implementation on gateway B (B's tunnel
/// address and LAN as its allowed-ips); with `initiates`, A has B's endpoint and a 25 s
/// keepalive, otherwise it waits for B.
pub fn site_a_config(
    iface: &str,
    key_file: &Path,
    peer_name: &str,
    peer_key: &str,
    initiates: bool,
) -> String {
    GatewayConfig {
        iface,
        key_file,
        port: 51820,
        addresses: &["198.18.100.1/24", "fd18:100::1/64"],
        peer_name,
        peer_key,
        endpoint: initiates.then_some("198.18.0.2:51820"),
        allowed_ips: &[
            "198.18.100.2/32",
            "198.19.2.0/24",
            "fd18:100::2/128",
            "fd19:2::/64",
        ],
        keepalive: initiates.then_some(25),
    }
    .toml()
}

/// Gateway B's config on [`Sites`]: peer "site-a" (A's tunnel address and LAN), no endpoint
/// (B waits for A).
pub fn site_b_config(iface: &str, key_file: &Path, a_pub: &str) -> String {
    GatewayConfig {
        iface,
        key_file,
        port: 51820,
        addresses: &["198.18.100.2/24", "fd18:100::2/64"],
        peer_name: "site-a",
        peer_key: a_pub,
        endpoint: None,
        allowed_ips: &[
            "198.18.100.1/32",
            "198.19.1.0/24",
            "fd18:100::1/128",
            "fd19:1::/64",
        ],
        keepalive: None,
    }
    .toml()
}

/// A running pair of sitelink gateways on [`Sites`], A initiating to B.
pub struct Pair {
    pub gw_a: Process,
    pub gw_b: Process,
    pub a_if: String,
    pub b_if: String,
    pub a_conf: PathBuf,
    pub b_conf: PathBuf,
    pub a_pub: String,
    pub b_pub: String,
}

/// The TOML for gateway A's peer "site-b" (with `endpoint` and a 25 s keepalive).
pub fn site_b_peer(b_pub: &str) -> String {
    format!(
        "\n[[peer]]\nname = \"site-b\"\npublic-key = {b_pub:?}\nendpoint = \"198.18.0.2:51820\"\nallowed-ips = [\"198.18.100.2/32\", \"198.19.2.0/24\", \"fd18:100::2/128\", \"fd19:2::/64\"]\npersistent-keepalive = 25\n"
    )
}

impl Sites {
    /// Starts sitelinkd on both gateways. `a_extra` is appended to A's config (comments,
    /// more peers); A has peer "site-b" unless `a_has_peer` is false (then B waits for a
    /// peer that an operator adds to A at run time).
    pub fn start_pair(&self, a_has_peer: bool, a_extra: &str) -> Pair {
        self.start_pair_with(a_has_peer, "", a_extra, &[])
    }

    /// [`Sites::start_pair`] with extra `[interface]` lines and environment for gateway A.
    pub fn start_pair_with(
        &self,
        a_has_peer: bool,
        a_interface: &str,
        a_extra: &str,
        a_env: &[(&str, &str)],
    ) -> Pair {
        let (a_priv, a_pub) = keypair();
        let (b_priv, b_pub) = keypair();
        let a_key = self.dir.write("a.key", &format!("{a_priv}\n"), 0o600);
        let b_key = self.dir.write("b.key", &format!("{b_priv}\n"), 0o600);
        let (a_if, b_if) = (unique("sla"), unique("slb"));
        let mut a_toml = format!(
            "# Gateway A: site A's LAN is 198.19.1.0/24.\n[interface]\nname = {a_if:?}\nprivate-key-file = {:?}   # 0600\nlisten-port = 51820\naddress = [\"198.18.100.1/24\", \"fd18:100::1/64\"]\n",
            a_key.display().to_string()
        );
        a_toml += a_interface;
        if a_has_peer {
            a_toml += &site_b_peer(&b_pub);
        }
        a_toml += a_extra;
        let b_toml = site_b_config(&b_if, &b_key, &a_pub);
        let a_conf = self.dir.write(&format!("{a_if}.toml"), &a_toml, 0o600);
        let b_conf = self.dir.write(&format!("{b_if}.toml"), &b_toml, 0o600);
        let mut gw_a = self.sitelinkd_env(&self.gw_a, &a_conf, a_env);
        let mut gw_b = self.sitelinkd(&self.gw_b, &b_conf);
        self.wait_ready(&mut gw_a, &a_if);
        self.wait_ready(&mut gw_b, &b_if);
        Pair {
            gw_a,
            gw_b,
            a_if,
            b_if,
            a_conf,
            b_conf,
            a_pub,
            b_pub,
        }
    }

    /// `sitelinkctl` that must succeed; returns its stdout.
    pub fn ctl_ok(&self, iface: &str, args: &[&str]) -> String {
        let out = self.ctl(iface, args);
        assert!(
            out.status.success(),
            "sitelinkctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Routes on gw_a through `iface`.
    pub fn routes(&self, ns: &Netns, iface: &str) -> String {
        String::from_utf8(ns.ip(&["route", "show", "dev", iface]).stdout).expect("utf-8")
            + &String::from_utf8(ns.ip(&["-6", "route", "show", "dev", iface]).stdout)
                .expect("utf-8")
    }
}

/// Polls `cond` every 20 ms for up to `within`; returns how long it took to hold.
pub fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if cond() {
            return Some(start.elapsed());
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

/// What a timed TCP stream saw.
#[derive(Debug)]
pub struct StreamReport {
    pub sent: usize,
    pub verified: usize,
    /// The longest time the server waited between two reads.
    pub max_gap: Duration,
}

/// Streams pattern bytes from `client_ns` to `server_addr` in `server_ns` for `duration`,
/// while `during` runs on the calling thread. Any reset or error panics the stream.
pub fn tcp_stream_during(
    client_ns: &Netns,
    server_ns: &Netns,
    server_addr: SocketAddr,
    duration: Duration,
    during: impl FnOnce(),
) -> StreamReport {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = server_ns.within(move || {
        let listener = TcpListener::bind(server_addr).expect("bind stream server");
        ready_tx.send(()).unwrap();
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let (mut total, mut ok, mut max_gap) = (0usize, true, Duration::ZERO);
        let mut last = Instant::now();
        let expected = pattern(4 << 20, 11);
        loop {
            let n = conn.read(&mut buf).expect("stream read (reset?)");
            let now = Instant::now();
            max_gap = max_gap.max(now - last);
            last = now;
            if n == 0 {
                break;
            }
            for (i, b) in buf[..n].iter().enumerate() {
                let at = (total + i) % expected.len();
                ok &= expected[at] == *b;
            }
            total += n;
        }
        conn.write_all(&(total as u64).to_be_bytes())
            .expect("stream verdict");
        (total, ok, max_gap)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("stream server ready");
    let client = client_ns.within(move || {
        let data = pattern(4 << 20, 11);
        let mut conn =
            TcpStream::connect_timeout(&server_addr, Duration::from_secs(10)).expect("connect");
        let start = Instant::now();
        let mut sent = 0usize;
        // Paced at about 40 Mbit/s: a stall shows as a gap, not as a full buffer.
        while start.elapsed() < duration {
            let at = sent % data.len();
            let end = (at + 16384).min(data.len());
            conn.write_all(&data[at..end])
                .expect("stream write (reset?)");
            sent += end - at;
            thread::sleep(Duration::from_millis(3));
        }
        conn.shutdown(Shutdown::Write).unwrap();
        let mut reply = [0u8; 8];
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        conn.read_exact(&mut reply).expect("stream verdict");
        (sent, u64::from_be_bytes(reply) as usize)
    });
    during();
    let (sent, acked) = client.join().expect("stream client");
    let (received, intact, max_gap) = server.join().expect("stream server");
    assert_eq!(acked, received);
    StreamReport {
        sent,
        verified: if intact { received } else { 0 },
        max_gap,
    }
}

/// Sends raw bytes to a Unix socket and returns what comes back before it closes (or the
/// timeout passes).
pub fn unix_exchange(path: &Path, request: &[u8], timeout: Duration) -> String {
    use std::os::unix::net::UnixStream;
    let mut s =
        UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    s.set_read_timeout(Some(timeout)).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Gateways across an internet: each site's gateway reaches the others only through a router
/// (its default route), as real sites do. Site `n` has WAN `198.18.n.2/24` (router at
/// `198.18.n.1`), LAN `198.19.n.0/24` with the gateway at `.1` and one host at `.10`, and a
/// key pair and interface name for its sitelinkd.
pub struct Internet {
    pub router: Netns,
    pub sites: Vec<Site>,
    pub dir: TempDir,
    pub run_dir: PathBuf,
}

pub struct Site {
    pub n: u8,
    pub gw: Netns,
    pub host: Netns,
    pub iface: String,
    pub public: String,
    pub key_file: PathBuf,
}

impl Site {
    /// The gateway's WAN address (its endpoint is this and port 51820).
    pub fn wan(&self) -> String {
        format!("198.18.{}.2", self.n)
    }

    /// The LAN behind the gateway.
    pub fn lan(&self) -> String {
        format!("198.19.{}.0/24", self.n)
    }

    /// The host on the LAN.
    pub fn host_ip(&self) -> String {
        format!("198.19.{}.10", self.n)
    }

    /// A `[[peer]]` table for this site, as another site configures it.
    pub fn as_peer(&self, name: &str, allowed_ips: &[&str], endpoint: bool) -> String {
        let list: Vec<String> = allowed_ips.iter().map(|s| format!("{s:?}")).collect();
        let mut t = format!(
            "\n[[peer]]\nname = {name:?}\npublic-key = {:?}\nallowed-ips = [{}]\n",
            self.public,
            list.join(", ")
        );
        if endpoint {
            t += &format!(
                "endpoint = \"{}:51820\"\npersistent-keepalive = 25\n",
                self.wan()
            );
        }
        t
    }
}

impl Internet {
    /// The router and one site per number in `sites` (1-99).
    pub fn new(sites: &[u8]) -> Self {
        require_root();
        let router = Netns::new("sir");
        router.sysctl("net.ipv4.ip_forward", "1");
        let dir = TempDir::new();
        let run_dir = dir.0.join("run");
        let mut built = Vec::new();
        for &n in sites {
            let gw = Netns::new("sig");
            let host = Netns::new("sih");
            veth(&router, &format!("wan{n}"), &gw, "wan0");
            veth(&gw, "lan0", &host, "lan0");
            router.ip(&[
                "addr",
                "add",
                &format!("198.18.{n}.1/24"),
                "dev",
                &format!("wan{n}"),
            ]);
            gw.ip(&["addr", "add", &format!("198.18.{n}.2/24"), "dev", "wan0"]);
            gw.ip(&["route", "add", "default", "via", &format!("198.18.{n}.1")]);
            gw.ip(&["addr", "add", &format!("198.19.{n}.1/24"), "dev", "lan0"]);
            host.ip(&["addr", "add", &format!("198.19.{n}.10/24"), "dev", "lan0"]);
            host.ip(&["route", "add", "default", "via", &format!("198.19.{n}.1")]);
            gw.sysctl("net.ipv4.ip_forward", "1");
            let (private, public) = keypair();
            let key_file = dir.write(&format!("site{n}.key"), &format!("{private}\n"), 0o600);
            built.push(Site {
                n,
                gw,
                host,
                iface: unique("sli"),
                public,
                key_file,
            });
        }
        Self {
            router,
            sites: built,
            dir,
            run_dir,
        }
    }

    pub fn site(&self, n: u8) -> &Site {
        self.sites
            .iter()
            .find(|s| s.n == n)
            .unwrap_or_else(|| panic!("no site {n}"))
    }

    /// Starts sitelinkd on site `n` with `interface` lines added to `[interface]` and `peers`
    /// (`[[peer]]` tables), and waits until it answers.
    pub fn start(&self, n: u8, interface: &str, peers: &str) -> Process {
        let site = self.site(n);
        let toml = format!(
            "[interface]\nname = {:?}\nprivate-key-file = {:?}\nlisten-port = 51820\n{interface}\n{peers}",
            site.iface,
            site.key_file.display().to_string()
        );
        let conf = self
            .dir
            .write(&format!("{}.toml", site.iface), &toml, 0o600);
        let log = self.dir.0.join(format!("{}.log", site.iface));
        let mut daemon = spawn_sitelinkd(&site.gw, &conf, &self.run_dir, log, &[]);
        wait_ready(&self.run_dir, &mut daemon, &site.iface);
        daemon
    }

    pub fn show_json(&self, n: u8) -> serde_json::Value {
        show_json(&self.run_dir, &self.site(n).iface)
    }
}

/// wireguard-go in `ns` as interface `iface` on Sites' tunnel addresses (198.18.100.2,
/// fd18:100::2, routes to LAN A), configured through `wg set` with one peer. The guard stops
/// it and removes its UAPI socket (shared across namespaces) on drop.
pub struct WgGo {
    pub process: Process,
    pub socket: PathBuf,
}

impl Drop for WgGo {
    fn drop(&mut self) {
        self.process.terminate();
        let _ = fs::remove_file(&self.socket);
    }
}

#[allow(clippy::too_many_arguments)]
pub fn wireguard_go(
    sites: &Sites,
    ns: &Netns,
    iface: &str,
    key_file: &Path,
    peer_pub: &str,
    psk_file: Option<&Path>,
    endpoint: Option<&str>,
    allowed: &str,
) -> WgGo {
    let mut cmd = ns.cmd("wireguard-go");
    cmd.args(["-f", iface])
        .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
    let log = sites.dir.0.join(format!("{iface}.log"));
    let mut process = Process::spawn("wireguard-go", cmd, log);
    let socket = PathBuf::from(format!("/var/run/wireguard/{iface}.sock"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        process.assert_running();
        assert!(
            Instant::now() < deadline,
            "wireguard-go did not create {}",
            socket.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let mut wg = ns.cmd("wg");
    wg.args(["set", iface, "private-key"]).arg(key_file).args([
        "listen-port",
        "51820",
        "peer",
        peer_pub,
    ]);
    wg.args(["allowed-ips", allowed]);
    if let Some(psk) = psk_file {
        wg.arg("preshared-key").arg(psk);
    }
    if let Some(e) = endpoint {
        wg.args(["endpoint", e, "persistent-keepalive", "25"]);
    }
    run(&mut wg);
    ns.ip(&["addr", "add", "198.18.100.2/24", "dev", iface]);
    ns.ip(&["-6", "addr", "add", "fd18:100::2/64", "dev", iface, "nodad"]);
    ns.ip(&["link", "set", iface, "mtu", "1420", "up"]);
    ns.ip(&["route", "add", "198.19.1.0/24", "dev", iface]);
    ns.ip(&["-6", "route", "add", "fd19:1::/64", "dev", iface]);
    WgGo { process, socket }
}

/// `GET path` over HTTP/1.1 from inside `ns` to `addr` (the server closes after one
/// response): the status code and the body. `None` if nothing answers.
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    ns.within(move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        stream.write_all(request.as_bytes()).ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    })
    .join()
    .expect("http thread")
}

/// `text` percent-encoded for a URL query value.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
