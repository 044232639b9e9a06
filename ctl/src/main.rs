//! `sitelinkctl`: key generation (byte-compatible with `wg genkey/pubkey/genpsk`) and
//! management of a running `sitelinkd` over its control socket.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use sitelink_config::control::{ChangeReply, PeerArgs, PeerChanges, PeerStatus, Request, Status};
use sitelink_config::{Cidr, InterfaceName, PresharedKey, PrivateKey};
use sitelinkctl::cli::{Args, Command, PeerCommand};

mod doctor;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sitelinkctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Genkey => {
            warn_if_stdout_is_readable_by_others();
            emit(&format!("{}\n", PrivateKey::generate().expose_base64()))?;
        }
        Command::Genpsk => {
            warn_if_stdout_is_readable_by_others();
            emit(&format!("{}\n", PresharedKey::generate().expose_base64()))?;
        }
        Command::Pubkey => {
            let mut text = String::new();
            io::stdin()
                .take(4096)
                .read_to_string(&mut text)
                .context("cannot read stdin")?;
            let key: PrivateKey = text
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("stdin does not hold a private key: {e}"))?;
            emit(&format!("{}\n", key.public_key()))?;
        }
        Command::Peer(cmd) => change(args.interface.as_ref(), peer_request(cmd)?)?,
        Command::Import {
            file,
            name,
            key_dir,
        } => import(&file, name, key_dir.as_deref())?,
        Command::Doctor { peer, json } => doctor(args.interface.as_ref(), peer.as_deref(), json)?,
        Command::Reload => change(args.interface.as_ref(), Request::Reload)?,
        Command::Events { json } => events(args.interface.as_ref(), json)?,
        Command::Save => change(args.interface.as_ref(), Request::Save)?,
        Command::Show { json } => {
            let socket = socket_path(args.interface.as_ref())?;
            // Typed, not through serde_json::Value: a status of 10,000 peers is megabytes.
            let status: Status = request(&socket, &Request::Show)?;
            if json {
                emit(&(serde_json::to_string_pretty(&status)? + "\n"))?;
            } else {
                emit(&render(&status, SystemTime::now()))?;
            }
        }
    }
    Ok(())
}

/// Prints the daemon's events as they happen, until it stops (or stdout goes away).
fn events(interface: Option<&InterfaceName>, json: bool) -> Result<()> {
    let socket = socket_path(interface)?;
    let (mut reader, reply) = send(&socket, &Request::Events)?;
    let what: String = envelope(&socket, &reply)?;
    if what != "events" {
        bail!(
            "unexpected reply {what:?} from {} (does this sitelinkctl match the daemon's version?)",
            socket.display()
        );
    }
    // Events come when they happen: no read timeout from here on.
    reader.get_ref().set_read_timeout(None)?;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("sitelinkd closed the event stream (stopped or restarted)");
        }
        let text = if json {
            line.clone()
        } else {
            match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(v) => render_event(&v) + "\n",
                Err(_) => line.clone(),
            }
        };
        let mut out = io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            other => other.context("cannot write to stdout")?,
        }
    }
}

/// One event as a line: `2026-12-02 16:40:01.250 UTC  peer-down  site-b  (silent 3.1 s)`.
fn render_event(v: &serde_json::Value) -> String {
    let time = v["time"].as_f64().unwrap_or(0.0);
    let event = v["event"].as_str().unwrap_or("?");
    let mut out = format!("{}  {event}", utc(time));
    if let Some(peer) = v["peer"].as_str() {
        out += &format!("  {peer}");
    }
    if let Some(endpoint) = v["endpoint"].as_str() {
        out += &format!("  now at {endpoint}");
    }
    if let Some(silent) = v["silent_s"].as_f64() {
        out += &format!("  (nothing received for {silent:.1} s)");
    }
    let list = |key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    if event == "routes" {
        let (added, removed) = (list("added"), list("removed"));
        if !added.is_empty() {
            out += &format!("  added: {}", added.join(", "));
        }
        if !removed.is_empty() {
            out += &format!("  withdrawn: {}", removed.join(", "));
        }
    }
    if let Some(n) = v["count"].as_u64() {
        out += &format!("  ({n} events missed: this client read too slowly)");
    }
    out
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS.mmm UTC`.
fn utc(unix: f64) -> String {
    let millis = (unix * 1000.0).round() as i64;
    let (secs, ms) = (millis.div_euclid(1000), millis.rem_euclid(1000));
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = sitelinkctl::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{ms:03} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Writes `text` to stdout. A reader that went away (`sitelinkctl show | head`) is not an
/// error: there is nobody left to tell.
fn emit(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
}

/// Sends a change and prints the daemon's summary.
fn change(interface: Option<&InterfaceName>, request: Request) -> Result<()> {
    let socket = socket_path(interface)?;
    let reply: ChangeReply = self::request(&socket, &request)?;
    emit(&format!("{}\n", reply.summary))?;
    if let Some(path) = reply.saved {
        emit(&format!("saved to {path}\n"))?;
    }
    Ok(())
}

fn peer_request(cmd: PeerCommand) -> Result<Request> {
    let text = |v: &[Cidr]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    let path = |p: PathBuf| -> Result<String> {
        // The daemon reads the file, maybe from another working directory.
        let abs = std::path::absolute(&p).with_context(|| format!("bad path {}", p.display()))?;
        Ok(abs.display().to_string())
    };
    Ok(match cmd {
        PeerCommand::Add {
            name,
            public_key,
            allowed_ips,
            endpoint,
            persistent_keepalive,
            preshared_key_file,
            save,
        } => Request::PeerAdd {
            peer: PeerArgs {
                name,
                public_key: public_key.to_string(),
                allowed_ips: text(&allowed_ips),
                endpoint: endpoint.map(|e| e.to_string()),
                persistent_keepalive,
                preshared_key_file: preshared_key_file.map(path).transpose()?,
            },
            save,
        },
        PeerCommand::Set {
            name,
            rename,
            public_key,
            allowed_ips,
            endpoint,
            no_endpoint,
            persistent_keepalive,
            no_persistent_keepalive,
            preshared_key_file,
            no_preshared_key,
            save,
        } => Request::PeerSet {
            name,
            changes: PeerChanges {
                rename,
                public_key: public_key.map(|k| k.to_string()),
                allowed_ips: allowed_ips.map(|v| text(&v)),
                endpoint: endpoint.map(|e| e.to_string()),
                clear_endpoint: no_endpoint,
                persistent_keepalive,
                clear_persistent_keepalive: no_persistent_keepalive,
                preshared_key_file: preshared_key_file.map(path).transpose()?,
                clear_preshared_key: no_preshared_key,
            },
            save,
        },
        PeerCommand::Remove { name_or_key, save } => Request::PeerRemove {
            peer: name_or_key,
            save,
        },
    })
}

/// Like `wg genkey`: a secret written to a file others can read gets a warning on stderr.
/// `sitelinkctl doctor`: the checks, printed; an error (exit 1) if any found a problem.
fn doctor(interface: Option<&InterfaceName>, peer: Option<&str>, json: bool) -> Result<()> {
    let status: Result<Status> =
        socket_path(interface).and_then(|socket| request(&socket, &Request::Show));
    let checks = match status {
        Ok(status) => {
            if let Some(p) = peer {
                if !status
                    .peers
                    .iter()
                    .any(|s| s.name == p || s.public_key == p)
                {
                    let names: Vec<&str> = status.peers.iter().map(|s| s.name.as_str()).collect();
                    bail!(
                        "no peer {p:?} on {}; its peers: {}",
                        status.interface.name,
                        names.join(", ")
                    );
                }
            }
            doctor::run(&status, peer)
        }
        Err(e) => {
            let unit = interface.map_or("NAME".to_string(), |n| n.to_string());
            vec![doctor::Check {
                check: "daemon".into(),
                result: "problem",
                message: format!("{e:#}"),
                fix: Some(format!(
                    "systemctl start sitelinkd@{unit} (and `journalctl -u sitelinkd@{unit}` says why it stopped)"
                )),
            }]
        }
    };
    if json {
        emit(&(serde_json::to_string_pretty(&checks)? + "\n"))?;
    } else {
        let text: String = checks.iter().map(|c| c.line() + "\n").collect();
        emit(&text)?;
    }
    let problems = checks.iter().filter(|c| c.is_problem()).count();
    if problems > 0 {
        bail!(
            "doctor found {problems} problem{}",
            if problems == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// Largest wg-quick file read (100,000 peers are about 20 MiB).
const MAX_IMPORT: u64 = 64 << 20;

/// `sitelinkctl import`: the TOML on stdout, notes on stderr, keys inline or in `key_dir`.
/// Nothing is written before the whole file has been read and the result validated.
fn import(file: &Path, name: Option<InterfaceName>, key_dir: Option<&Path>) -> Result<()> {
    use sitelink_config::wgquick::{self, Keys};
    let shown = file.display();
    let mut text = String::new();
    fs::File::open(file)
        .and_then(|f| f.take(MAX_IMPORT + 1).read_to_string(&mut text))
        .with_context(|| format!("cannot read {shown}"))?;
    if text.len() as u64 > MAX_IMPORT {
        bail!(
            "{shown}: larger than {} MiB; is this a wg-quick file?",
            MAX_IMPORT >> 20
        );
    }
    let import = wgquick::parse(&text).map_err(|e| anyhow!("{shown}:{}: {}", e.line, e.message))?;
    let name = match name {
        Some(n) => n,
        None => {
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            stem.parse().map_err(|e| {
                anyhow!(
                    "the file name {stem:?} is not an interface name ({e}); give one with --name"
                )
            })?
        }
    };
    let source = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let source = source.display().to_string();
    // Validate with every sitelink rule (overlapping allowed-ips, names, ranges) first.
    let inline = import.to_toml(name.as_str(), &source, Keys::Inline);
    let check_path = PathBuf::from(format!("{}.toml", name.as_str()));
    if let Err(e) = sitelink_config::Config::parse(&inline, &check_path) {
        // The message names peers and lines of the TOML, which the operator has not seen:
        // say where those peers are in their file.
        let message = e.to_string();
        let wheres: Vec<String> = import
            .peers
            .iter()
            .filter(|p| message.contains(&format!("peer \"{}\"", p.name)))
            .map(|p| format!("peer \"{}\" is the [Peer] at {shown}:{}", p.name, p.line))
            .collect();
        let wheres = if wheres.is_empty() {
            String::new()
        } else {
            format!(" ({})", wheres.join(", "))
        };
        bail!("{shown} imports to a config sitelink refuses: {message}{wheres}");
    }
    for note in &import.notes {
        eprintln!("{shown}:{}: {}: {}", note.line, note.key, note.message);
    }
    let toml = match key_dir {
        None => {
            warn_if_stdout_is_readable_by_others();
            eprintln!(
                "sitelinkctl: the output holds the private key inline: keep it mode 0600 (umask 077), or use --key-dir DIR for key files"
            );
            inline
        }
        Some(dir) => {
            let dir =
                std::path::absolute(dir).with_context(|| format!("bad path {}", dir.display()))?;
            let mut files: Vec<(PathBuf, String)> = Vec::new();
            if let Some(k) = &import.interface.private_key {
                files.push((
                    wgquick::private_key_file(&dir, name.as_str()),
                    k.expose_base64(),
                ));
            }
            for p in &import.peers {
                if let Some(k) = &p.preshared_key {
                    files.push((
                        wgquick::preshared_key_file(&dir, name.as_str(), &p.name),
                        k.expose_base64(),
                    ));
                }
            }
            for (path, _) in &files {
                if path.exists() {
                    bail!(
                        "{} exists; move it away or choose another --key-dir (nothing was written)",
                        path.display()
                    );
                }
            }
            for (path, key) in files {
                write_secret(&path, &key)?;
                eprintln!("sitelinkctl: wrote {} (mode 0600)", path.display());
            }
            import.to_toml(name.as_str(), &source, Keys::Files(&dir))
        }
    };
    emit(&toml)
}

/// Creates `path` (which must not exist) with mode 0600 from the start and `key` in it.
fn write_secret(path: &Path, key: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(format!("{key}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn warn_if_stdout_is_readable_by_others() {
    let Ok(fd) = io::stdout().as_fd().try_clone_to_owned() else {
        return;
    };
    let Ok(meta) = fs::File::from(fd).metadata() else {
        return;
    };
    if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
        eprintln!(
            "Warning: writing a secret key to a file that group or others can read (mode {:04o}); \
             set umask 077 first or chmod 600 the file",
            meta.permissions().mode() & 0o7777
        );
    }
}

/// The control socket for `--interface`, or the only one running.
fn socket_path(interface: Option<&InterfaceName>) -> Result<PathBuf> {
    if let Some(name) = interface {
        return Ok(sitelink_config::control_socket_path(name));
    }
    let dir = sitelink_config::run_dir();
    let mut sockets: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    sockets.sort();
    match sockets.len() {
        0 => bail!(
            "sitelinkd is not running: no control socket in {}",
            dir.display()
        ),
        1 => Ok(sockets.remove(0)),
        _ => {
            let names: Vec<_> = sockets
                .iter()
                .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect();
            bail!(
                "several interfaces are running ({}): pick one with --interface NAME",
                names.join(", ")
            )
        }
    }
}

/// Sends `request` and parses the daemon's `ok` result (or reports its `error`).
fn request<T: serde::de::DeserializeOwned>(socket: &Path, request: &Request) -> Result<T> {
    let (_, reply) = send(socket, request)?;
    envelope(socket, &reply)
}

/// Connects, sends `request`, and reads the first line of the reply.
fn send(socket: &Path, request: &Request) -> Result<(BufReader<UnixStream>, String)> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        let why = match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                "sitelinkd is not running".to_string()
            }
            io::ErrorKind::PermissionDenied => {
                "permission denied (run as root or a member of the control group)".to_string()
            }
            _ => e.to_string(),
        };
        anyhow::anyhow!("{why} (tried {})", socket.display())
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    // The daemon may answer before it has read the request (a refusal) and close: then the
    // send fails with EPIPE, but the answer is waiting to be read.
    let sent = stream.write_all(&line);
    let mut reply = String::new();
    let mut reader = BufReader::new(stream);
    let read = reader.read_line(&mut reply);
    if reply.is_empty() {
        sent.with_context(|| format!("cannot send to {}", socket.display()))?;
        read.with_context(|| format!("no reply from {}", socket.display()))?;
    }
    Ok((reader, reply))
}

/// The `ok` result of a reply line, or its `error`.
fn envelope<T: serde::de::DeserializeOwned>(socket: &Path, reply: &str) -> Result<T> {
    #[derive(serde::Deserialize)]
    struct Envelope<T> {
        ok: Option<T>,
        error: Option<String>,
    }
    let envelope: Envelope<T> = serde_json::from_str(reply).with_context(|| {
        format!(
            "malformed reply from {} (does this sitelinkctl match the daemon's version?)",
            socket.display()
        )
    })?;
    match (envelope.ok, envelope.error) {
        (_, Some(error)) => bail!("sitelinkd: {error}"),
        (Some(ok), None) => Ok(ok),
        (None, None) => bail!(
            "malformed reply from {}: neither ok nor error",
            socket.display()
        ),
    }
}

/// Human status in the shape of `wg show`, with peer names, most recent handshake first.
fn render(status: &Status, now: SystemTime) -> String {
    let mut out = String::new();
    let i = &status.interface;
    out += &format!("interface: {}\n", i.name);
    match &i.public_key {
        Some(key) => {
            out += &format!("  public key: {key}\n");
            out += "  private key: (hidden)\n";
        }
        None => out += "  private key: (none: no handshakes until one is set)\n",
    }
    out += &format!("  listening port: {}\n", i.listen_port);
    if let Some(mark) = i.fwmark {
        out += &format!("  fwmark: {mark:#x}\n");
    }
    if !i.table.is_empty() && i.table != "auto" {
        out += &format!("  table: {}\n", i.table);
    }
    if let Some(ha) = &i.ha {
        out += &format!("  ha: {} (virtual address {})\n", ha.state, ha.address);
        if let Some(error) = &ha.error {
            out += &format!("    error: {error}\n");
        }
    }
    if !i.addresses.is_empty() {
        out += &format!("  addresses: {}\n", i.addresses.join(", "));
    }
    out += &format!("  mtu: {}\n", i.mtu);
    let dropped: Vec<String> = i
        .dropped
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if !dropped.is_empty() {
        out += &format!("  dropped: {}\n", dropped.join(", "));
    }
    let h = &i.handshakes;
    if h.queue_full + h.rate_limited + h.cookie_replies + h.cookie_budget_spent + h.unknown_key > 0
    {
        out += &format!(
            "  handshakes: {} queued, {} queue full, {} rate-limited, {} cookie replies, {} over the cookie budget, {} from unknown keys\n",
            h.queued, h.queue_full, h.rate_limited, h.cookie_replies, h.cookie_budget_spent, h.unknown_key
        );
    }
    let mut peers: Vec<&PeerStatus> = status.peers.iter().collect();
    peers.sort_by(|a, b| {
        b.latest_handshake
            .cmp(&a.latest_handshake)
            .then(a.name.cmp(&b.name))
    });
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for p in peers {
        out += &format!("\npeer: {} ({})\n", p.name, p.public_key);
        if !p.state.is_empty() {
            let mut state = p.state.clone();
            if p.state == "connecting" && p.handshake_attempts > 0 {
                let since = p
                    .trying_since
                    .map(|t| {
                        format!(
                            " for {}",
                            ago(now.saturating_sub(t)).trim_end_matches(" ago")
                        )
                    })
                    .unwrap_or_default();
                state += &format!(
                    " ({} sent{since}, none answered)",
                    plural(u64::from(p.handshake_attempts), "handshake initiation")
                );
            }
            out += &format!("  state: {state}\n");
        }
        if let Some(e) = &p.endpoint {
            let source = match (p.endpoint_source.as_deref(), &p.endpoint_name) {
                (Some(s), Some(name)) => {
                    let when = p.resolved_at.map_or(String::new(), |t| {
                        format!(", resolved {} ago", ago(now.saturating_sub(t)))
                    });
                    format!(" ({s}; {name}{when})")
                }
                (Some(s), None) => format!(" ({s})"),
                (None, _) => String::new(),
            };
            out += &format!("  endpoint: {e}{source}\n");
        } else if let Some(name) = &p.endpoint_name {
            out += &format!("  endpoint: {name} (resolving)\n");
        }
        let ips = if p.allowed_ips.is_empty() {
            "(none)".to_string()
        } else {
            p.allowed_ips.join(", ")
        };
        out += &format!("  allowed ips: {ips}\n");
        match p.latest_handshake {
            Some(t) => out += &format!("  latest handshake: {}\n", ago(now.saturating_sub(t))),
            None => out += "  latest handshake: (none)\n",
        }
        if p.rx_bytes > 0 || p.tx_bytes > 0 {
            out += &format!(
                "  transfer: {} received, {} sent\n",
                bytes(p.rx_bytes),
                bytes(p.tx_bytes)
            );
        }
        if let Some(k) = p.persistent_keepalive {
            out += &format!(
                "  persistent keepalive: every {}\n",
                plural(u64::from(k), "second")
            );
        }
        if let Some(e) = &p.last_error {
            let times = if e.count > 1 {
                format!(
                    ", {} times since {}",
                    e.count,
                    ago(now.saturating_sub(e.since))
                )
            } else {
                String::new()
            };
            out += &format!(
                "  last error: {} ({}{times})\n",
                e.reason,
                ago(now.saturating_sub(e.at))
            );
            if !e.hint.is_empty() && p.state != "up" {
                out += &format!("    hint: {}\n", e.hint);
            }
        }
    }
    out
}

/// "1 minute, 5 seconds ago", as `wg show` prints it.
fn ago(secs: u64) -> String {
    if secs == 0 {
        return "Now".to_string();
    }
    let units = [
        ("day", 86400),
        ("hour", 3600),
        ("minute", 60),
        ("second", 1),
    ];
    let mut left = secs;
    let mut parts = Vec::new();
    for (name, size) in units {
        let n = left / size;
        left %= size;
        if n > 0 {
            parts.push(plural(n, name));
        }
    }
    format!("{} ago", parts.join(", "))
}

fn plural(n: u64, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// Bytes in binary units, like `wg show`: "1.50 KiB".
fn bytes(n: u64) -> String {
    let units = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = units[0];
    for u in &units[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.2} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_read_as_text() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(utc(951_782_400.0), "2000-02-29 00:00:00.000 UTC");
        assert_eq!(utc(1_764_693_600.125), "2025-12-02 16:40:00.125 UTC");
        let down = serde_json::json!({"time": 1764693600.125, "interface": "sl0",
            "event": "peer-down", "peer": "site-b", "public_key": "x", "silent_s": 3.08});
        assert_eq!(
            render_event(&down),
            "2025-12-02 16:40:00.125 UTC  peer-down  site-b  (nothing received for 3.1 s)"
        );
        let routes = serde_json::json!({"time": 1764693600, "interface": "sl0",
            "event": "routes", "added": [], "removed": ["198.19.2.0/24"]});
        assert_eq!(
            render_event(&routes),
            "2025-12-02 16:40:00.000 UTC  routes  withdrawn: 198.19.2.0/24"
        );
    }
    use sitelink_config::control::{HandshakeCounters, InterfaceStatus, LastError};
    use std::collections::BTreeMap;

    #[test]
    fn durations_and_sizes_read_like_wg_show() {
        assert_eq!(ago(65), "1 minute, 5 seconds ago");
        assert_eq!(ago(3600 * 2 + 1), "2 hours, 1 second ago");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.00 MiB");
    }

    #[test]
    fn render_sorts_by_handshake_and_hides_secrets() {
        let peer = |name: &str, hs: Option<u64>| PeerStatus {
            name: name.into(),
            public_key: format!("{name}-key"),
            endpoint: None,
            allowed_ips: vec!["198.19.2.0/24".into()],
            latest_handshake: hs,
            rx_bytes: 2048,
            tx_bytes: 1,
            persistent_keepalive: Some(25),
            state: if hs.is_some() { "up" } else { "connecting" }.into(),
            handshake_attempts: if hs.is_some() { 0 } else { 3 },
            trying_since: hs.xor(Some(1990)),
            last_error: hs.xor(Some(1995)).map(|at| LastError {
                reason: "no-response".into(),
                hint: "is its port open?".into(),
                since: 1985,
                at,
                count: 2,
            }),
            endpoint_source: None,
            endpoint_name: None,
            resolved_at: None,
            liveness: None,
        };
        let status = Status {
            interface: InterfaceStatus {
                name: "sl0".into(),
                public_key: Some("ourkey".into()),
                listen_port: 51820,
                addresses: vec!["198.18.100.1/24".into()],
                mtu: 1420,
                fwmark: Some(51820),
                table: "auto".into(),
                dropped: BTreeMap::new(),
                handshakes: HandshakeCounters {
                    queued: 7,
                    rate_limited: 100,
                    unknown_key: 3,
                    ..Default::default()
                },
                config_path: Some("/etc/sitelink/sl0.toml".into()),
                ha: None,
            },
            peers: vec![
                peer("never", None),
                peer("old", Some(1000)),
                peer("new", Some(1900)),
            ],
        };
        let text = render(&status, UNIX_EPOCH + Duration::from_secs(2000));
        let order: Vec<_> = text.lines().filter(|l| l.starts_with("peer: ")).collect();
        assert_eq!(
            order,
            [
                "peer: new (new-key)",
                "peer: old (old-key)",
                "peer: never (never-key)"
            ]
        );
        assert!(text.contains("latest handshake: 1 minute, 40 seconds ago"));
        assert!(text.contains("transfer: 2.00 KiB received, 1 B sent"));
        assert!(text.contains("private key: (hidden)"));
        assert!(text.contains("fwmark: 0xca6c"));
        assert!(
            text.contains(
                "state: connecting (3 handshake initiations sent for 10 seconds, none answered)"
            ),
            "{text}"
        );
        assert!(
            text.contains("last error: no-response (5 seconds ago, 2 times since 15 seconds ago)"),
            "{text}"
        );
        assert!(text.contains("hint: is its port open?"), "{text}");
        assert!(
            text.contains("handshakes: 7 queued, 0 queue full, 100 rate-limited, 0 cookie replies, 0 over the cookie budget, 3 from unknown keys"),
            "{text}"
        );
        assert_eq!(text.matches("state: up").count(), 2, "{text}");

        let mut keyless = status.clone();
        keyless.interface.public_key = None;
        let text = render(&keyless, UNIX_EPOCH + Duration::from_secs(2000));
        assert!(text.contains("private key: (none: no handshakes until one is set)"));
        assert!(!text.contains("public key"));
    }
}
