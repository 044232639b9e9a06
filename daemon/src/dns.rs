//! Host-name endpoints: resolved at start, then again every `resolve-interval` seconds and at
//! once when handshakes to the address in use keep failing.
//!
//! Owns: one task per peer with a host-name endpoint, what it last resolved (shown by
//! `show`), and the choice of address (keep the one in use while it works, prefer its family,
//! move on to another address when handshakes to it fail). Doesn't own: the endpoint itself
//! (the engine's; a working link and a roamed endpoint are never overridden by DNS) or
//! retries of handshakes (the engine's timers).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sitelink_config::Endpoint;
use sitelink_engine::health::{EndpointSource, LinkState};
use sitelink_engine::{Engine, PeerId};
use tokio::task::JoinHandle;

use crate::dataplane;

/// Unanswered initiations to one address after which the name is resolved again at once and
/// another address tried.
pub const FAILED_ATTEMPTS: u32 = 3;
/// How often a waiting resolver looks at the peer's handshake attempts.
const WATCH: Duration = Duration::from_secs(1);

/// What a resolver found last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    pub addr: SocketAddr,
    pub at: SystemTime,
}

/// A running resolver; aborted when dropped.
pub struct Resolver {
    task: JoinHandle<()>,
    pub name: String,
    last: Arc<Mutex<Option<Resolution>>>,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Resolver {
    /// Starts resolving `endpoint` for peer `id`; `interval` (seconds) is read before every
    /// wait, so a reload changes it for running resolvers too.
    pub fn start(
        engine: Arc<std::sync::Mutex<Engine>>,
        id: PeerId,
        peer: String,
        endpoint: Endpoint,
        interval: Arc<AtomicU64>,
    ) -> Self {
        let last = Arc::new(Mutex::new(None));
        let name = endpoint.to_string();
        let task = tokio::spawn(run(engine, id, peer, endpoint, interval, Arc::clone(&last)));
        Self { task, name, last }
    }

    /// The address and time of the last successful resolution (`None`: not resolved yet).
    pub fn last(&self) -> Option<Resolution> {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the resolver needs to know of the peer.
struct Link {
    endpoint: Option<SocketAddr>,
    source: Option<EndpointSource>,
    up: bool,
    attempts: u32,
}

fn link(engine: &std::sync::Mutex<Engine>, id: PeerId) -> Option<Link> {
    let engine = dataplane::lock(engine);
    let p = engine.peer_view(id)?;
    Some(Link {
        endpoint: p.endpoint,
        source: p.health.endpoint_source,
        up: p.health.state == LinkState::Up,
        attempts: p.health.attempts,
    })
}

/// The address to use from `addrs` (non-empty): the one in use while handshakes to it are
/// not failing, else one of its family; when failing, the next address after it (the other
/// family comes in turn), so a dead address or a broken family is left.
pub fn pick(addrs: &[SocketAddr], current: Option<SocketAddr>, failing: bool) -> SocketAddr {
    let Some(current) = current else {
        return addrs[0];
    };
    let at = addrs.iter().position(|a| *a == current);
    match (failing, at) {
        (false, Some(_)) => current,
        (false, None) => addrs
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == current.is_ipv4())
            .unwrap_or(addrs[0]),
        (true, Some(i)) => addrs[(i + 1) % addrs.len()],
        (true, None) => addrs[0],
    }
}

async fn run(
    engine: Arc<std::sync::Mutex<Engine>>,
    id: PeerId,
    peer: String,
    endpoint: Endpoint,
    interval: Arc<AtomicU64>,
    last: Arc<Mutex<Option<Resolution>>>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let ep = endpoint.clone();
        let resolved = tokio::task::spawn_blocking(move || ep.resolve()).await;
        let ever = last.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        let mut attempts_seen = 0;
        let wait = match resolved {
            Ok(Ok(addrs)) if !addrs.is_empty() => {
                backoff = Duration::from_secs(1);
                let Some(now) = link(&engine, id) else {
                    return; // the peer is gone
                };
                attempts_seen = now.attempts;
                let failing = now.attempts >= FAILED_ATTEMPTS;
                let choice = pick(&addrs, now.endpoint, failing);
                // A link that works keeps its address, DNS or roamed; a new address is used
                // when nothing is in use yet, or for the next handshake of a link that is not up.
                let apply = now.endpoint.is_none()
                    || (now.endpoint != Some(choice)
                        && (!now.up || now.attempts > 0)
                        && (now.source != Some(EndpointSource::Learned) || failing));
                if apply {
                    match now.endpoint {
                        None => {
                            tracing::info!(peer, %endpoint, addr = %choice, "resolved endpoint")
                        }
                        Some(old) => tracing::info!(peer, %endpoint, addr = %choice, %old,
                            attempts = now.attempts, "endpoint now resolves to another address; using it for the next handshake"),
                    }
                    dataplane::lock(&engine).set_endpoint(id, choice, EndpointSource::Dns);
                }
                *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Resolution {
                    addr: if apply {
                        choice
                    } else {
                        now.endpoint.unwrap_or(choice)
                    },
                    at: SystemTime::now(),
                });
                Duration::from_secs(interval.load(Ordering::Relaxed).max(1))
            }
            failed => {
                let error = match failed {
                    Ok(Ok(_)) => format!("dns: {endpoint} has no addresses"),
                    Ok(Err(e)) => format!("dns: {e}"),
                    Err(e) => format!("dns: resolver task failed: {e}"),
                };
                // The last good address stays in use.
                tracing::warn!(peer, %endpoint, error, retry_in = ?backoff, "cannot resolve endpoint");
                dataplane::lock(&engine).note_error(id, error);
                let wait = if ever {
                    backoff.min(Duration::from_secs(interval.load(Ordering::Relaxed).max(1)))
                } else {
                    backoff
                };
                backoff = (backoff * 2).min(Duration::from_secs(60));
                wait
            }
        };
        // Wait for the next round, or less if handshakes to the address start failing.
        let until = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(WATCH.min(until - tokio::time::Instant::now())).await;
            match link(&engine, id) {
                None => return,
                Some(l) if l.attempts >= attempts_seen + FAILED_ATTEMPTS => break,
                Some(l) if l.attempts < attempts_seen => attempts_seen = l.attempts,
                Some(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn keeps_a_working_address_and_its_family() {
        let addrs = [a("[2001:db8::2]:51820"), a("198.18.0.2:51820")];
        assert_eq!(pick(&addrs, None, false), addrs[0]);
        assert_eq!(pick(&addrs, Some(addrs[1]), false), addrs[1]);
        // The name moved: same family preferred.
        assert_eq!(pick(&addrs, Some(a("198.18.0.9:51820")), false), addrs[1]);
        assert_eq!(
            pick(&addrs, Some(a("[2001:db8::9]:51820")), false),
            addrs[0]
        );
    }

    #[test]
    fn moves_on_when_the_address_in_use_fails() {
        let addrs = [
            a("198.18.0.2:51820"),
            a("[2001:db8::2]:51820"),
            a("198.18.0.3:51820"),
        ];
        assert_eq!(pick(&addrs, Some(addrs[0]), true), addrs[1]);
        assert_eq!(pick(&addrs, Some(addrs[2]), true), addrs[0]);
        assert_eq!(pick(&addrs, Some(a("198.18.0.9:51820")), true), addrs[0]);
        assert_eq!(pick(&addrs[..1], Some(addrs[0]), true), addrs[0]);
    }
}
