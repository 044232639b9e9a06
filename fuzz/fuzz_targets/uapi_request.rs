//! The WireGuard UAPI request parser: arbitrary bytes as what a client sends on one
//! connection. Requests are read with `read_request` (size-bounded) until EOF or an error;
//! each `set` is applied to a fixed valid config with `apply_set` and the result validated
//! (errors are fine, panics are not). The same bytes are also fed line by line to a
//! `RequestParser` (as the daemon streams a `set`), which must reach the same outcome.
#![no_main]

use std::io::BufRead;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sitelink_config::uapi::{self, apply_set, read_request, Request, RequestParser, UapiError};
use sitelink_config::Config;

/// The bound given to `read_request` in the main loop: above any fuzz input, so that it and
/// the line parser must agree. (The limit itself is fuzzed separately with a smaller bound.)
const MAX_BYTES: usize = 1 << 20;
/// Requests read from one input at most.
const MAX_REQUESTS: usize = 16;

fn base() -> &'static Config {
    static BASE: OnceLock<Config> = OnceLock::new();
    BASE.get_or_init(sitelink_fuzz::base_config)
}

/// What a request came to, comparable across the two parsers.
fn outcome(r: &Result<Option<Request>, UapiError>) -> String {
    match r {
        Ok(None) => "eof".into(),
        Ok(Some(Request::Get)) => "get".into(),
        Ok(Some(Request::Set(set))) => format!(
            "set key={} port={:?} fwmark={:?} replace={} peers={}",
            set.private_key.is_some(),
            set.listen_port,
            set.fwmark,
            set.replace_peers,
            set.peers
                .iter()
                .map(|p| format!(
                    "{} remove={} update_only={} psk={:?} endpoint={:?} keepalive={:?} replace_ips={} ips={:?} version={:?}",
                    p.public_key,
                    p.remove,
                    p.update_only,
                    p.preshared_key.as_ref().map(|k| k.is_some()),
                    p.endpoint,
                    p.persistent_keepalive,
                    p.replace_allowed_ips,
                    p.allowed_ips,
                    p.protocol_version
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Err(e) => format!("error errno={}", e.errno),
    }
}

/// One request from `rest` through a `RequestParser`, line by line; returns the outcome and
/// the bytes after it.
fn parse_lines(mut rest: &[u8]) -> (Result<Option<Request>, UapiError>, &[u8]) {
    if rest.is_empty() {
        return (Ok(None), rest);
    }
    let mut parser = RequestParser::new();
    loop {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return (
                Err(UapiError::new(uapi::errno::EPROTO, "cut short")),
                &rest[rest.len()..],
            );
        };
        let line = &rest[..end];
        rest = &rest[end + 1..];
        match parser.line(line) {
            Ok(Some(request)) => return (Ok(Some(request)), rest),
            Ok(None) => {}
            Err(e) => return (Err(e), rest),
        }
    }
}

fn apply(set: &uapi::DeviceSet) {
    match apply_set(base(), set) {
        Ok(config) => {
            // Errors are fine (apply_set leaves cross-peer rules to validate), panics are not.
            if config.validate().is_ok() {
                // What the daemon would do next with a valid result: report it over `get`.
                let peers = config
                    .peers
                    .iter()
                    .map(|p| uapi::PeerState {
                        public_key: p.public_key,
                        preshared_key: p.preshared_key.as_ref().map(|k| *k.as_bytes()),
                        endpoint: p.endpoint.as_ref().and_then(|e| e.ip()),
                        persistent_keepalive: p.persistent_keepalive,
                        last_handshake: None,
                        rx_bytes: 0,
                        tx_bytes: 0,
                        allowed_ips: p.allowed_ips.clone(),
                    })
                    .collect();
                let state = uapi::DeviceState {
                    private_key: config.interface.private_key.as_ref(),
                    listen_port: config.interface.listen_port.unwrap_or(0),
                    fwmark: config.interface.fwmark,
                    peers,
                };
                let reply = uapi::format_get(&state);
                assert!(reply.ends_with(uapi::OK_REPLY), "get reply without errno=0");
            }
        }
        Err(e) => {
            let _ = uapi::format_errno(&e);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The size limit: a bound of two thirds of the input. A request read within it used at
    // most that many bytes.
    let bound = data.len() * 2 / 3;
    let mut limited: &[u8] = data;
    match read_request(&mut limited, bound) {
        Ok(Some(_)) => assert!(
            data.len() - limited.len() <= bound,
            "read_request used {} bytes with a bound of {bound}",
            data.len() - limited.len()
        ),
        Ok(None) => assert!(data.is_empty(), "read_request saw EOF in a non-empty input"),
        Err(_) => {}
    }

    let mut reader: &[u8] = data;
    let mut lines: &[u8] = data;
    for _ in 0..MAX_REQUESTS {
        let before = reader.len();
        let result = read_request(&mut reader, MAX_BYTES);
        let (by_line, rest) = parse_lines(lines);
        lines = rest;
        let a = outcome(&result);
        let b = outcome(&by_line);
        assert_eq!(
            a,
            b,
            "read_request and RequestParser disagree on request at byte {}",
            data.len() - before
        );
        match result {
            Ok(Some(Request::Set(set))) => apply(&set),
            Ok(Some(Request::Get)) => {}
            Ok(None) | Err(_) => break,
        }
        // read_request never reads past the end of a request.
        assert_eq!(
            reader.len(),
            lines.len(),
            "read_request read past its request"
        );
        let _ = reader.fill_buf();
    }
});
