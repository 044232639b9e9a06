//! The WireGuard userspace API socket (`/var/run/wireguard/<name>.sock`), so that stock
//! `wg show`, `wg set`, `wg syncconf` and `wg showconf` work against sitelinkd.
//!
//! Owns: framing (requests end at a blank line; several per connection), limits, and the
//! credential check. The protocol itself is `sitelink_config::uapi`. A `set` becomes a new
//! desired config and goes through [`State::apply`] — the same validation and apply path as
//! `sitelinkctl` and reload.

use std::path::PathBuf;
use std::sync::Arc;

use sitelink_config::uapi::{self, DeviceState, PeerState, Request, UapiError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;

use crate::access::Access;
use crate::control::CLIENT_TIMEOUT;
use crate::state::State;

/// Largest request accepted (a `set` for a few hundred peers fits).
const MAX_REQUEST: usize = 128 * 1024;
const EACCES: i32 = 13;
const EINVAL: i32 = 22;
const ETIMEDOUT: i32 = 110;
const EMSGSIZE: i32 = 90;

pub fn socket_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{name}.sock"))
}

pub async fn serve(listener: UnixListener, state: Arc<Mutex<State>>, access: Arc<Access>) {
    crate::control::serve_clients(
        listener,
        "UAPI",
        state,
        access,
        |stream, state, access| async move { handle(stream, &state, &access).await },
    )
    .await;
}

async fn handle(stream: UnixStream, state: &Mutex<State>, access: &Access) -> std::io::Result<()> {
    if let Err(message) = access.check(&stream) {
        tracing::warn!(error = %message, "refused UAPI client");
        let (_, mut write) = stream.into_split();
        return write
            .write_all(
                uapi::format_errno(&UapiError {
                    errno: EACCES,
                    message,
                })
                .as_bytes(),
            )
            .await;
    }
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let request = match tokio::time::timeout(CLIENT_TIMEOUT, read_framed(&mut reader)).await {
            Err(_) => Err(UapiError {
                errno: ETIMEDOUT,
                message: "request not completed in time".into(),
            }),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(bytes))) => parse(&bytes),
            Ok(Err(e)) => Err(e),
        };
        let (reply, last) = match request {
            Ok(Request::Get) => (uapi::format_get(&device_state(&*state.lock().await)), false),
            Ok(Request::Set(set)) => (set_reply(state, &set).await, false),
            Err(e) => {
                tracing::debug!(error = %e, "bad UAPI request");
                (uapi::format_errno(&e), true)
            }
        };
        tokio::time::timeout(CLIENT_TIMEOUT, write.write_all(reply.as_bytes()))
            .await
            .map_err(|_| std::io::Error::other("client did not read its reply"))??;
        if last {
            return Ok(());
        }
    }
}

/// Reads one request: lines up to and including the blank line that ends it. `None` on EOF
/// before any byte.
async fn read_framed(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Option<Vec<u8>>, UapiError> {
    let mut bytes = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| UapiError {
                errno: EINVAL,
                message: format!("read: {e}"),
            })?;
        if n == 0 {
            if bytes.is_empty() {
                return Ok(None);
            }
            return Err(UapiError {
                errno: EINVAL,
                message: "request ended without a blank line".into(),
            });
        }
        bytes.extend_from_slice(&line);
        if bytes.len() > MAX_REQUEST {
            return Err(UapiError {
                errno: EMSGSIZE,
                message: format!("request larger than {MAX_REQUEST} bytes"),
            });
        }
        if line == b"\n" {
            return Ok(Some(bytes));
        }
    }
}

fn parse(bytes: &[u8]) -> Result<Request, UapiError> {
    match uapi::read_request(&mut &bytes[..], MAX_REQUEST)? {
        Some(request) => Ok(request),
        None => Err(UapiError {
            errno: EINVAL,
            message: "empty request".into(),
        }),
    }
}

async fn set_reply(state: &Mutex<State>, set: &uapi::DeviceSet) -> String {
    let mut state = state.lock().await;
    let result = match uapi::apply_set(&state.config, set) {
        Ok(new) => state.apply(new).await.map_err(|e| UapiError {
            errno: EINVAL,
            message: format!("{e:#}"),
        }),
        Err(e) => Err(e),
    };
    match result {
        Ok(summary) => {
            tracing::info!(%summary, "changed through the WireGuard UAPI");
            "errno=0\n\n".to_string()
        }
        Err(e) => {
            tracing::warn!(error = %e.message, "refused WireGuard UAPI set");
            uapi::format_errno(&e)
        }
    }
}

fn device_state(state: &State) -> DeviceState<'_> {
    let engine = state.lock_engine();
    let peers = engine
        .peers()
        .map(|p| {
            let psk = state
                .config
                .peers
                .iter()
                .find(|c| c.public_key == p.public_key)
                .and_then(|c| c.preshared_key.as_ref().map(|k| *k.as_bytes()));
            PeerState {
                public_key: p.public_key,
                preshared_key: psk,
                endpoint: p.endpoint,
                persistent_keepalive: p.persistent_keepalive,
                last_handshake: p.last_handshake,
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                allowed_ips: p.allowed_ips,
            }
        })
        .collect();
    DeviceState {
        private_key: &state.config.interface.private_key,
        listen_port: state.listen_port,
        peers,
    }
}
