//! The WireGuard userspace API socket (`/var/run/wireguard/<name>.sock`), so that stock
//! `wg show`, `wg set`, `wg setconf`, `wg syncconf` and `wg showconf` work against sitelinkd.
//!
//! Owns: framing (requests end at a blank line; several per connection), limits, and the
//! credential check. The protocol itself is `sitelink_config::uapi`. A `set` becomes a new
//! desired config and goes through [`State::apply`] — the same validation and apply path as
//! `sitelinkctl` and reload.
//!
//! A `set` is parsed as it streams in, line by line ([`RequestParser`]): a `wg setconf` of a
//! network with 100,000 allowed-ips (several MiB) costs the memory of what it asks for, not of
//! its text. A request over [`MAX_REQUEST`] bytes, a line over [`MAX_LINE`], or a bad line is
//! still read to its end (the blank line) before the `errno=` reply, because `wg` writes its
//! whole request before it reads: closing early would kill it with SIGPIPE instead of telling
//! it why.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sitelink_config::uapi::{
    self, errno, DeviceState, PeerState, Request, RequestParser, UapiError, LINE_CAPACITY,
};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::access::Access;
use crate::control::CLIENT_TIMEOUT;
use crate::state::State;

/// Largest request accepted: about a million allowed-ips, far above what real configs send,
/// and a bound on what one client can make the daemon hold.
pub const MAX_REQUEST: usize = 32 << 20;
/// Longest line accepted (wg's longest is a 76-byte key line).
pub const MAX_LINE: usize = 4096;
/// How long a request may take in all, however steadily it arrives (each line must come
/// within [`CLIENT_TIMEOUT`] of the previous one).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

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
        let (read, mut write) = stream.into_split();
        // Read the request to its end first (as for any refused request): wg writes all of it
        // before it reads, and would die of SIGPIPE if we closed early.
        let mut reader = BufReader::new(read);
        let skip = skip_to_blank_line(&mut reader, false);
        let _ = tokio::time::timeout(crate::control::REFUSAL_READ, skip).await;
        let refusal = UapiError::new(libc::EACCES, message);
        return write
            .write_all(uapi::format_errno(&refusal).as_bytes())
            .await;
    }
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let read = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut reader)).await;
        let request = match read {
            Err(_) => Err(UapiError::new(
                libc::ETIMEDOUT,
                format!("request not completed within {REQUEST_TIMEOUT:?}"),
            )),
            Ok(Read::Eof) => return Ok(()),
            Ok(Read::Request(request)) => Ok(request),
            Ok(Read::Refused(e)) => Err(e),
        };
        let (reply, last) = match request {
            Ok(Request::Get) => (uapi::format_get(&device_state(&*state.lock().await)), false),
            Ok(Request::Set(set)) => (set_reply(state, &set).await, false),
            Err(e) => {
                tracing::warn!(error = %e, "refused WireGuard UAPI request");
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

/// What reading one request gave.
enum Read {
    /// The client closed the connection between requests.
    Eof,
    Request(Request),
    /// The request is refused; for a `set`, it has been read to its end.
    Refused(UapiError),
}

/// Reads one request, line by line, into the protocol's parser.
async fn read_request<R: AsyncBufRead + Unpin>(reader: &mut R) -> Read {
    let mut parser = RequestParser::new();
    // May hold a private key: wiped when dropped, and sized so it never reallocates for the
    // lines wg sends.
    let mut line = Zeroizing::new(Vec::with_capacity(LINE_CAPACITY));
    let mut total = 0usize;
    loop {
        line.clear();
        let ended = match tokio::time::timeout(
            CLIENT_TIMEOUT,
            read_line(reader, &mut line, MAX_LINE),
        )
        .await
        {
            Ok(Ok(ended)) => ended,
            Ok(Err(e)) => return Read::Refused(UapiError::new(errno::EIO, format!("read: {e}"))),
            Err(_) => {
                return Read::Refused(UapiError::new(
                    libc::ETIMEDOUT,
                    format!(
                        "line {}: request not completed: nothing arrived for {CLIENT_TIMEOUT:?}",
                        parser.line_no() + 1
                    ),
                ))
            }
        };
        if line.is_empty() && !ended {
            if total == 0 {
                return Read::Eof;
            }
            return Read::Refused(UapiError::new(
                errno::EPROTO,
                format!(
                    "line {}: the request ended before the blank line that terminates it",
                    parser.line_no() + 1
                ),
            ));
        }
        total += line.len() + usize::from(ended);
        let refusal = if total > MAX_REQUEST {
            Some(uapi::too_big(parser.line_no() + 1, MAX_REQUEST))
        } else if !ended && line.len() > MAX_LINE {
            Some(UapiError::new(
                errno::EMSGSIZE,
                format!(
                    "line {}: longer than {MAX_LINE} bytes",
                    parser.line_no() + 1
                ),
            ))
        } else if !ended {
            Some(UapiError::new(
                errno::EPROTO,
                format!(
                    "line {}: the request ended before the blank line that terminates it",
                    parser.line_no() + 1
                ),
            ))
        } else {
            None
        };
        let in_set = parser.in_set();
        let error = match refusal {
            Some(e) => e,
            None => match parser.line(&line) {
                Ok(Some(request)) => return Read::Request(request),
                Ok(None) => continue,
                Err(e) => e,
            },
        };
        // The rest of a set follows until its blank line: read it, so that the client gets
        // our answer instead of a closed socket. The line just read was complete if `ended`.
        if in_set || parser.in_set() {
            let at_line_start = ended;
            let skip = skip_to_blank_line(reader, at_line_start && !line.is_empty());
            match tokio::time::timeout(REQUEST_TIMEOUT, skip).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "UAPI client went away while its request was skipped")
                }
                Err(_) => tracing::debug!("UAPI client kept sending; answering anyway"),
            }
        }
        return Read::Refused(error);
    }
}

/// Reads up to and including the next `\n` into `line` (without the `\n`), but no more than
/// `max + 1` bytes. Returns whether a `\n` ended the line (`false`: EOF or too long).
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<bool> {
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(false);
        }
        let room = (max + 1).saturating_sub(line.len());
        let take = buf.len().min(room);
        if let Some(at) = buf[..take].iter().position(|b| *b == b'\n') {
            line.extend_from_slice(&buf[..at]);
            reader.consume(at + 1);
            return Ok(true);
        }
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if line.len() > max {
            return Ok(false);
        }
    }
}

/// Discards input up to and including the blank line that ends a request. `after_newline`:
/// the last byte read was the `\n` ending a non-empty line.
async fn skip_to_blank_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    after_newline: bool,
) -> std::io::Result<()> {
    let mut at_line_start = after_newline;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(());
        }
        let mut used = 0;
        for &b in buf {
            used += 1;
            if b == b'\n' {
                if at_line_start {
                    reader.consume(used);
                    return Ok(());
                }
                at_line_start = true;
            } else {
                at_line_start = false;
            }
        }
        reader.consume(used);
    }
}

async fn set_reply(state: &Mutex<State>, set: &uapi::DeviceSet) -> String {
    let mut state = state.lock().await;
    let result = match uapi::apply_set(&state.config, set) {
        Ok(new) => state.apply(new).await.map_err(|e| UapiError {
            errno: errno_of(&e),
            message: format!("{e:#}"),
        }),
        Err(e) => Err(e),
    };
    match result {
        Ok(summary) => {
            for warning in &summary.warnings {
                tracing::warn!("{warning}");
            }
            tracing::info!(%summary, "changed through the WireGuard UAPI");
            uapi::OK_REPLY.to_string()
        }
        Err(e) => {
            tracing::warn!(error = %e.message, "refused WireGuard UAPI set");
            uapi::format_errno(&e)
        }
    }
}

/// The errno `wg` should print for a refused change: the OS error behind it when there is one
/// (a listen port in use reads "Address already in use"), else EINVAL.
fn errno_of(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|cause| cause.downcast_ref::<std::io::Error>()?.raw_os_error())
        .unwrap_or(errno::EINVAL)
}

fn device_state(state: &State) -> DeviceState<'_> {
    let engine = state.lock_engine();
    let psks: std::collections::HashMap<_, _> = state
        .config
        .peers
        .iter()
        .filter_map(|c| Some((c.public_key, *c.preshared_key.as_ref()?.as_bytes())))
        .collect();
    let peers = engine
        .peers()
        .map(|p| PeerState {
            public_key: p.public_key,
            preshared_key: psks.get(&p.public_key).copied(),
            endpoint: p.endpoint,
            persistent_keepalive: p.persistent_keepalive,
            last_handshake: p.last_handshake,
            rx_bytes: p.rx_bytes,
            tx_bytes: p.tx_bytes,
            allowed_ips: p.allowed_ips,
        })
        .collect();
    DeviceState {
        private_key: state.config.interface.private_key.as_ref(),
        listen_port: state.listen_port,
        fwmark: state.fwmark,
        peers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &[u8]) -> (String, Vec<u8>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut reader = BufReader::new(text);
            let outcome = match read_request(&mut reader).await {
                Read::Eof => "eof".to_string(),
                Read::Request(Request::Get) => "get".to_string(),
                Read::Request(Request::Set(set)) => format!("set {} peers", set.peers.len()),
                Read::Refused(e) => format!("refused {}: {}", e.errno, e.message),
            };
            let mut rest = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut rest)
                .await
                .unwrap();
            (outcome, rest)
        })
    }

    #[test]
    fn a_bad_set_is_read_to_its_blank_line_before_the_reply() {
        let text = b"set=1\nbogus=1\npublic_key=00\nallowed_ip=198.19.2.0/24\n\nget=1\n\n";
        let (outcome, rest) = read(text);
        assert!(
            outcome.starts_with("refused 22: line 2: unknown device key"),
            "{outcome}"
        );
        assert_eq!(rest, b"get=1\n\n", "the next request must be where it was");
    }

    #[test]
    fn an_oversized_set_is_skipped_whole() {
        let mut text = b"set=1\n".to_vec();
        let line = format!("public_key={}\n", "ab".repeat(32));
        while text.len() <= MAX_REQUEST {
            text.extend_from_slice(line.as_bytes());
        }
        text.extend_from_slice(b"\nget=1\n\n");
        let (outcome, rest) = read(&text);
        assert!(outcome.starts_with("refused 90:"), "{outcome}");
        assert!(outcome.contains("longer than 33554432 bytes"), "{outcome}");
        assert_eq!(rest, b"get=1\n\n");
    }

    #[test]
    fn long_lines_eof_and_clean_close() {
        let mut text = b"set=1\nallowed_ip=".to_vec();
        text.extend(std::iter::repeat_n(b'1', MAX_LINE + 10));
        text.extend_from_slice(b"\n\n");
        let (outcome, rest) = read(&text);
        assert!(
            outcome.starts_with("refused 90: line 2: longer than 4096"),
            "{outcome}"
        );
        assert!(rest.is_empty());
        assert_eq!(read(b"").0, "eof");
        assert!(read(b"set=1\npublic_key=").0.starts_with("refused 71"));
        assert_eq!(read(b"get=1\n\n").0, "get");
        let set = format!("set=1\npublic_key={}\n\n", "cd".repeat(32));
        assert_eq!(read(set.as_bytes()).0, "set 1 peers");
    }
}
