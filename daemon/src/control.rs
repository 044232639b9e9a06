//! The control socket server (`/run/sitelink/<name>.sock`, protocol in
//! `sitelink_config::control`). Owns: the socket's directory and mode, stale-socket
//! detection, per-connection limits (size, time). Every client is served on its own task,
//! so a slow or hostile client never blocks the packet loop or other clients.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use sitelink_config::control::{
    InterfaceStatus, PeerStatus, Request, Response, Status, MAX_REQUEST,
};
use sitelink_engine::Engine;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// What `show` reports about the interface besides the engine's peers.
pub struct Shared {
    pub engine: Arc<Mutex<Engine>>,
    pub name: String,
    pub listen_port: u16,
    pub addresses: Vec<String>,
    pub mtu: u16,
}

/// Binds the control socket: directory 0750, socket 0660. Refuses to start when another
/// daemon answers on the path; removes a stale socket left by a crash.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .with_context(|| format!("cannot create control socket directory {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another sitelinkd is already serving {} (stop it first, or give this interface another name)",
                path.display()
            );
        }
        fs::remove_file(path)
            .with_context(|| format!("cannot remove stale control socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind control socket {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set mode 0660 on {}", path.display()))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &shared).await {
                        tracing::debug!(error = %e, "control client");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(stream: UnixStream, shared: &Shared) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64 + 1);
    let mut line = Vec::new();
    let response =
        match tokio::time::timeout(CLIENT_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
            Err(_) => Response::Err {
                error: format!("request not completed within {CLIENT_TIMEOUT:?}"),
            },
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) if line.len() > MAX_REQUEST => Response::Err {
                error: format!("request larger than {MAX_REQUEST} bytes"),
            },
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
                Ok(request) => respond(request, shared),
                Err(e) => Response::Err {
                    error: format!("malformed request: {e}"),
                },
            },
        };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    tokio::time::timeout(CLIENT_TIMEOUT, write.write_all(&out))
        .await
        .map_err(|_| std::io::Error::other("client did not read its response"))?
}

fn respond(request: Request, shared: &Shared) -> Response {
    match request {
        Request::Show => match serde_json::to_value(status(shared)) {
            Ok(v) => Response::Ok { ok: v },
            Err(e) => Response::Err {
                error: format!("cannot encode status: {e}"),
            },
        },
    }
}

pub fn status(shared: &Shared) -> Status {
    let engine = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
    let c = engine.counters();
    let dropped = [
        ("no_route", c.no_route),
        ("no_endpoint", c.no_endpoint),
        ("bad_source", c.bad_source),
        ("unknown_key", c.unknown_key),
        ("unknown_index", c.unknown_index),
        ("invalid", c.invalid),
        ("cookie_replies", c.cookie_replies),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let peers = engine
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
        })
        .collect();
    Status {
        interface: InterfaceStatus {
            name: shared.name.clone(),
            public_key: engine.public_key().to_string(),
            listen_port: shared.listen_port,
            addresses: shared.addresses.clone(),
            mtu: shared.mtu,
            dropped,
        },
        peers,
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Removes the socket file at exit.
pub fn remove(path: &PathBuf) {
    if let Err(e) = fs::remove_file(path) {
        tracing::debug!(path = %path.display(), error = %e, "control socket already gone");
    }
}
