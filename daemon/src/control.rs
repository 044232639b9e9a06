//! The control socket server (`/run/sitelink/<name>.sock`, protocol in
//! `sitelink_config::control`). Owns: the socket's directory and mode, stale-socket
//! detection, per-connection checks (credentials, size, time), and turning requests into
//! desired configs for [`State::apply`]. Every client is served on its own task, so a slow
//! or hostile client never blocks the packet loop or other clients.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use sitelink_config::control::{
    ChangeReply, InterfaceStatus, LastError, PeerArgs, PeerChanges, Request, Response, MAX_REQUEST,
};
use sitelink_config::{Cidr, Config, Endpoint, Peer, PublicKey};
use sitelink_engine::health::LinkState;
use sitelink_engine::{Engine, PeerView};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;

use crate::access::Access;
use crate::state::{State, Summary};

pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a refused client may take to finish sending its request before it gets the
/// refusal anyway.
pub const REFUSAL_READ: Duration = Duration::from_secs(1);

/// Binds a local socket at `path`: its directory is created with `dir_mode`, the socket
/// gets mode 0660 and the control group. Refuses to start when another daemon answers on
/// the path; removes a stale socket left by a crash.
pub fn bind(path: &Path, dir_mode: u32, access: &Access) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(dir_mode)
                .create(dir)
                .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
            access.secure(dir, dir_mode)?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another sitelinkd is already serving {} (stop it first, or give this interface another name)",
                path.display()
            );
        }
        fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind socket {}", path.display()))?;
    access.secure(path, 0o660)?;
    Ok(listener)
}

/// Serves the control socket.
pub async fn serve(listener: UnixListener, state: Arc<Mutex<State>>, access: Arc<Access>) {
    serve_clients(
        listener,
        "control",
        state,
        access,
        |stream, state, access| async move { handle(stream, &state, &access).await },
    )
    .await;
}

/// Accepts clients of a local socket forever, each served by `handle` on its own task, so
/// that no client can hold up another. Shared by the control and the UAPI socket.
pub async fn serve_clients<F, Fut>(
    listener: UnixListener,
    what: &'static str,
    state: Arc<Mutex<State>>,
    access: Arc<Access>,
    handle: F,
) where
    F: Fn(UnixStream, Arc<Mutex<State>>, Arc<Access>) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let client = handle(stream, Arc::clone(&state), Arc::clone(&access));
                tokio::spawn(async move {
                    if let Err(e) = client.await {
                        tracing::debug!(error = %e, "{what} client");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what} socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(stream: UnixStream, state: &Mutex<State>, access: &Access) -> std::io::Result<()> {
    let refused = access.check(&stream).err();
    let (read, mut write) = stream.into_split();
    let response = match refused {
        Some(error) => {
            tracing::warn!(%error, "refused control client");
            // Read the request first: closing while the client is still writing would hand it
            // EPIPE instead of our answer.
            let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
            let mut line = Vec::new();
            let _ = tokio::time::timeout(REFUSAL_READ, reader.read_until(b'\n', &mut line)).await;
            Response::Err { error }
        }
        None => {
            let mut reader = BufReader::new(read).take(MAX_REQUEST as u64 + 1);
            let mut line = Vec::new();
            match tokio::time::timeout(CLIENT_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
                Err(_) => Response::Err {
                    error: format!("request not completed within {CLIENT_TIMEOUT:?}"),
                },
                Ok(Err(e)) => return Err(e),
                Ok(Ok(_)) if line.len() > MAX_REQUEST => Response::Err {
                    error: format!("request larger than {MAX_REQUEST} bytes"),
                },
                Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
                    Ok(Request::Events) => return stream_events(reader, &mut write, state).await,
                    Ok(request) => match respond(request, state).await {
                        Ok(ok) => return send_ok(&mut write, &ok).await,
                        Err(e) => Response::Err {
                            error: format!("{e:#}"),
                        },
                    },
                    Err(e) => Response::Err {
                        error: format!("malformed request: {e}"),
                    },
                },
            }
        }
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write_reply(&mut write, &out).await
}

/// `sitelinkctl events`: `{"ok":"events"}`, then every event line as it comes, until the
/// client closes its end (or stops reading for [`CLIENT_TIMEOUT`]). A client that falls more
/// than the hub's backlog behind gets a `lost` line in place of what it missed.
async fn stream_events(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    write: &mut tokio::net::unix::OwnedWriteHalf,
    state: &Mutex<State>,
) -> std::io::Result<()> {
    use tokio::sync::broadcast::error::RecvError;
    let (mut lines, interface) = {
        let state = state.lock().await;
        (
            state.events.subscribe(),
            state.config.interface.name.to_string(),
        )
    };
    write_reply(write, b"{\"ok\":\"events\"}\n").await?;
    let mut scratch = [0u8; 256];
    loop {
        let line: std::sync::Arc<str> = tokio::select! {
            line = lines.recv() => match line {
                Ok(line) => line,
                Err(RecvError::Lagged(n)) => {
                    let lost = crate::events::Line::lost(&interface, n);
                    serde_json::to_string(&lost).map_err(std::io::Error::other)?.into()
                }
                Err(RecvError::Closed) => return Ok(()),
            },
            // Anything the client sends is ignored; its end closing ends the stream.
            n = reader.read(&mut scratch) => match n {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => continue,
            },
        };
        let mut out = Vec::with_capacity(line.len() + 1);
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        write_reply(write, &out).await?;
    }
}

/// Sends `{"ok": <result>}`: the result is serialized once, straight from its type (a status of
/// 10,000 peers is megabytes; going through `serde_json::Value` would double the work).
async fn send_ok(write: &mut tokio::net::unix::OwnedWriteHalf, ok: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(ok.len() + 8);
    out.extend_from_slice(b"{\"ok\":");
    out.extend_from_slice(ok);
    out.extend_from_slice(b"}\n");
    write_reply(write, &out).await
}

async fn write_reply(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    out: &[u8],
) -> std::io::Result<()> {
    tokio::time::timeout(CLIENT_TIMEOUT, write.write_all(out))
        .await
        .map_err(|_| std::io::Error::other("client did not read its response"))?
}

/// The JSON of a request's result.
async fn respond(request: Request, state: &Mutex<State>) -> Result<Vec<u8>> {
    let mut state = state.lock().await;
    let (summary, save) = match request {
        Request::Show => return Ok(status_json(&state)?),
        Request::Reload => {
            let summary = state.reload().await?;
            tracing::info!(%summary, "reloaded");
            (summary, false)
        }
        Request::Save => (Summary::default(), true),
        // Streamed by `handle` before it gets here.
        Request::Events => bail!("events are streamed, not answered"),
        Request::PeerAdd { peer, save } => {
            let mut new = state.config.clone();
            new.peers.push(Arc::new(new_peer(&new, peer)?));
            (change(&mut state, new).await?, save)
        }
        Request::PeerRemove { peer, save } => {
            let mut new = state.config.clone();
            let at = find_peer(&new, &peer)?;
            new.peers.remove(at);
            (change(&mut state, new).await?, save)
        }
        Request::PeerSet {
            name,
            changes,
            save,
        } => {
            let mut new = state.config.clone();
            let at = find_peer(&new, &name)?;
            set_fields(new.peer_mut(at), changes, &state.config.path)?;
            (change(&mut state, new).await?, save)
        }
    };
    let saved = if save {
        state.config.save()?;
        tracing::info!(path = %state.config.path.display(), "saved running peers to the config file");
        Some(state.config.path.display().to_string())
    } else {
        None
    };
    let reply = ChangeReply {
        summary: summary.to_string(),
        details: serde_json::to_value(&summary)?,
        saved,
    };
    Ok(serde_json::to_vec(&reply)?)
}

async fn change(state: &mut State, new: Config) -> Result<Summary> {
    let summary = state.apply(new).await?;
    tracing::info!(%summary, "peers changed");
    Ok(summary)
}

fn find_peer(config: &Config, name_or_key: &str) -> Result<usize> {
    let key: Option<PublicKey> = name_or_key.parse().ok();
    config
        .peers
        .iter()
        .position(|p| p.name == name_or_key || Some(p.public_key) == key)
        .ok_or_else(|| {
            let names: Vec<&str> = config.peers.iter().map(|p| p.name.as_str()).collect();
            anyhow!(
                "no peer named {name_or_key:?} (peers: {})",
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            )
        })
}

fn new_peer(config: &Config, args: PeerArgs) -> Result<Peer> {
    let mut peer = Peer {
        name: args.name,
        public_key: parse("public-key", &args.public_key)?,
        preshared_key: None,
        preshared_key_file: None,
        endpoint: None,
        allowed_ips: Vec::new(),
        persistent_keepalive: None,
        allowed_endpoints: Vec::new(),
        more_endpoints: Vec::new(),
    };
    let changes = PeerChanges {
        allowed_ips: Some(args.allowed_ips),
        endpoint: args.endpoint,
        persistent_keepalive: args.persistent_keepalive,
        preshared_key_file: args.preshared_key_file,
        ..PeerChanges::default()
    };
    set_fields(&mut peer, changes, &config.path)?;
    Ok(peer)
}

/// Applies the operator's changes to a copy of a peer, parsing each field with the config
/// types (the daemon never trusts the client's parsing). Cross-peer rules are checked by
/// `Config::validate` in `State::apply`.
fn set_fields(peer: &mut Peer, c: PeerChanges, config_path: &Path) -> Result<()> {
    if let Some(name) = c.rename {
        peer.name = name;
    }
    let name = peer.name.clone();
    let scope = |key: &str| format!("peer {name:?}: {key}");
    if let Some(key) = c.public_key {
        peer.public_key = parse(&scope("public-key"), &key)?;
    }
    if let Some(ips) = c.allowed_ips {
        peer.allowed_ips = ips
            .iter()
            .map(|s| parse::<Cidr>(&scope("allowed-ips"), s))
            .collect::<Result<_>>()?;
    }
    if c.clear_endpoint || c.endpoint.is_some() {
        // One endpoint given (or none): it replaces a configured list.
        peer.more_endpoints.clear();
    }
    if c.clear_endpoint {
        peer.endpoint = None;
    }
    if let Some(e) = c.endpoint {
        peer.endpoint = Some(parse::<Endpoint>(&scope("endpoint"), &e)?);
    }
    if c.clear_persistent_keepalive {
        peer.persistent_keepalive = None;
    }
    if let Some(k) = c.persistent_keepalive {
        peer.persistent_keepalive = Some(k);
    }
    if c.clear_preshared_key {
        peer.preshared_key = None;
        peer.preshared_key_file = None;
    }
    if let Some(file) = c.preshared_key_file {
        let path = PathBuf::from(&file);
        let resolved = match config_path.parent() {
            Some(dir) if path.is_relative() => dir.join(&path),
            _ => path.clone(),
        };
        peer.preshared_key = Some(sitelink_config::load_preshared_key_file(
            &resolved, &peer.name,
        )?);
        peer.preshared_key_file = Some(path);
    }
    Ok(())
}

fn parse<T: std::str::FromStr>(what: &str, text: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e| anyhow!("{what}: {text:?}: {e}"))
}

/// The `show` result (the [`Status`] schema) as JSON, written straight from the engine's peers:
/// no owned copy of every name, key and prefix first (10,000 peers would be 40,000 allocations).
fn status_json(state: &State) -> serde_json::Result<Vec<u8>> {
    let engine = state.lock_engine();
    let view = StatusView {
        interface: interface_status(state, &engine),
        peers: PeersView(&engine, &|key| state.resolution(key)),
    };
    serde_json::to_vec(&view)
}

fn interface_status(state: &State, engine: &Engine) -> InterfaceStatus {
    let dropped = engine
        .counters()
        .by_reason()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let iface = &state.config.interface;
    InterfaceStatus {
        name: iface.name.to_string(),
        public_key: engine.public_key().map(|k| k.to_string()),
        listen_port: state.listen_port,
        addresses: iface.addresses.iter().map(|c| c.to_string()).collect(),
        mtu: iface.mtu,
        fwmark: state.fwmark,
        table: iface.table.to_string(),
        dropped,
        handshakes: state.handshakes.stats.snapshot(),
        config_path: Some(state.config.path.display().to_string()),
        ha: iface
            .ha_address
            .map(|address| sitelink_config::control::HaStatus {
                address: address.to_string(),
                state: if engine.is_standby() {
                    "standby"
                } else {
                    "active"
                }
                .into(),
                error: state.ha_error.clone(),
            }),
    }
}

/// [`Status`], borrowing the peers.
#[derive(Serialize)]
struct StatusView<'a> {
    interface: InterfaceStatus,
    peers: PeersView<'a>,
}

/// The peers, and for those with a host-name endpoint, the name and its last resolution.
type Resolutions<'a> = &'a dyn Fn(&PublicKey) -> Option<(String, Option<crate::dns::Resolution>)>;
struct PeersView<'a>(&'a Engine, Resolutions<'a>);

impl Serialize for PeersView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.peer_views().map(|v| {
            let dns = (self.1)(&v.public_key);
            PeerJson(v, dns)
        }))
    }
}

/// One [`PeerStatus`], written from the engine's view of the peer (and its host-name
/// endpoint's resolution).
struct PeerJson<'a>(
    PeerView<'a>,
    Option<(String, Option<crate::dns::Resolution>)>,
);

impl Serialize for PeerJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Prefixes<'p>(&'p [Cidr]);
        impl Serialize for Prefixes<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(Shown))
            }
        }
        struct Shown<T>(T);
        impl<T: std::fmt::Display> Serialize for Shown<T> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&self.0)
            }
        }
        let (p, dns) = (&self.0, &self.1);
        let resolving = matches!(dns, Some((_, None)));
        let mut out = s.serialize_struct("PeerStatus", 16)?;
        out.serialize_field("name", p.name)?;
        out.serialize_field("public_key", &Shown(p.public_key))?;
        out.serialize_field("endpoint", &p.endpoint.map(Shown))?;
        out.serialize_field("allowed_ips", &Prefixes(p.allowed_ips))?;
        out.serialize_field("latest_handshake", &p.last_handshake.map(unix_seconds))?;
        out.serialize_field("rx_bytes", &p.rx_bytes)?;
        out.serialize_field("tx_bytes", &p.tx_bytes)?;
        out.serialize_field("persistent_keepalive", &p.persistent_keepalive)?;
        let h = &p.health;
        let state = match h.state {
            LinkState::NoEndpoint if resolving => "resolving",
            other => other.as_str(),
        };
        out.serialize_field("state", state)?;
        out.serialize_field("handshake_attempts", &h.attempts)?;
        out.serialize_field("trying_since", &h.trying_since.map(unix_seconds))?;
        let last_error = h.last_error.as_ref().map(|e| LastError {
            reason: e.reason.text(),
            hint: e.reason.hint().to_string(),
            since: unix_seconds(e.since),
            at: unix_seconds(e.at),
            count: e.count,
        });
        out.serialize_field("last_error", &last_error)?;
        out.serialize_field("endpoint_source", &h.endpoint_source.map(|s| s.as_str()))?;
        out.serialize_field("endpoint_name", &dns.as_ref().map(|(name, _)| name))?;
        let resolved_at = dns
            .as_ref()
            .and_then(|(_, r)| r.as_ref().map(|r| unix_seconds(r.at)));
        out.serialize_field("resolved_at", &resolved_at)?;
        let l = &p.liveness;
        let liveness = sitelink_config::control::PeerLiveness {
            state: l.live.as_str().to_string(),
            since: unix_seconds(l.since),
            withdrawn: l.withdrawn,
        };
        out.serialize_field("liveness", &liveness)?;
        out.end()
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Removes a socket file at exit.
pub fn remove(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        tracing::debug!(path = %path.display(), error = %e, "socket already gone");
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use sitelink_config::control::PeerStatus;
    use sitelink_config::PrivateKey;
    use sitelink_engine::{Instant, PeerSpec};

    use super::*;

    /// The borrowed writer produces exactly the documented `PeerStatus` schema.
    #[test]
    fn peers_json_is_the_status_schema() {
        let mut engine = Engine::new(
            Some(&PrivateKey::generate()),
            Instant::now(),
            SystemTime::now(),
        );
        for (i, endpoint) in [None, Some("198.18.0.2:51820"), Some("[fd18::2]:51820")]
            .into_iter()
            .enumerate()
        {
            engine
                .add_peer(PeerSpec {
                    name: format!("p{i}"),
                    public_key: PrivateKey::generate().public_key(),
                    preshared_key: None,
                    endpoint: endpoint.map(|e| e.parse().unwrap()),
                    allowed_ips: vec![
                        "198.19.2.0/24".parse().unwrap(),
                        "fd19:2::/64".parse().unwrap(),
                    ],
                    persistent_keepalive: (i == 1).then_some(25),
                })
                .unwrap();
        }
        let json = serde_json::to_vec(&PeersView(&engine, &|_| None)).unwrap();
        let parsed: Vec<PeerStatus> = serde_json::from_slice(&json).unwrap();
        let expected: Vec<PeerStatus> = engine
            .peers()
            .map(|p| PeerStatus {
                name: p.name,
                public_key: p.public_key.to_string(),
                endpoint: p.endpoint.map(|e| e.to_string()),
                allowed_ips: p.allowed_ips.iter().map(|c| c.to_string()).collect(),
                latest_handshake: p.last_handshake.map(unix_seconds),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                persistent_keepalive: p.persistent_keepalive,
                state: if p.endpoint.is_some() {
                    "down"
                } else {
                    "no-endpoint"
                }
                .into(),
                handshake_attempts: 0,
                trying_since: None,
                last_error: None,
                endpoint_source: p.endpoint.map(|_| "config".into()),
                endpoint_name: None,
                resolved_at: None,
                liveness: Some(sitelink_config::control::PeerLiveness {
                    state: "down".into(),
                    since: p
                        .liveness
                        .since
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_secs(),
                    withdrawn: false,
                }),
            })
            .collect();
        assert_eq!(parsed, expected);
        assert_eq!(parsed[2].endpoint.as_deref(), Some("[fd18::2]:51820"));
    }
}
