//! Host-name endpoints and endpoint lists: resolved at start, then again every
//! `resolve-interval` seconds and at once when handshakes to the address in use keep failing,
//! when the next address (of the name, or of the list) is tried.
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub addr: SocketAddr,
    pub at: SystemTime,
    /// The configured endpoint (`host:port`) the address in use came from.
    pub entry: String,
}

/// A running resolver; aborted when dropped.
pub struct Resolver {
    task: JoinHandle<()>,
    /// The first configured endpoint (what `show` names before anything resolved).
    pub first: String,
    last: Arc<Mutex<Option<Resolution>>>,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Resolver {
    /// Starts keeping peer `id`'s endpoint among `endpoints` (the configured list, in order;
    /// host names are resolved); `interval` (seconds) is read before every wait, so a reload
    /// changes it for running resolvers too.
    pub fn start(
        engine: Arc<std::sync::Mutex<Engine>>,
        id: PeerId,
        peer: String,
        endpoints: Vec<Endpoint>,
        interval: Arc<AtomicU64>,
    ) -> Self {
        let last = Arc::new(Mutex::new(None));
        let first = endpoints
            .first()
            .map(Endpoint::to_string)
            .unwrap_or_default();
        let task = tokio::spawn(run(
            engine,
            id,
            peer,
            endpoints,
            interval,
            Arc::clone(&last),
        ));
        Self { task, first, last }
    }

    /// The last successful resolution (`None`: nothing resolved yet).
    pub fn last(&self) -> Option<Resolution> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
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

/// Every address of `endpoints`, in list order, with the index of the entry it came from;
/// and the first lookup error, if any entry failed.
async fn resolve_all(endpoints: &[Endpoint]) -> (Vec<(SocketAddr, usize)>, Option<String>) {
    let mut out = Vec::new();
    let mut error = None;
    for (i, e) in endpoints.iter().enumerate() {
        if let Some(addr) = e.ip() {
            out.push((addr, i));
            continue;
        }
        let ep = e.clone();
        match tokio::task::spawn_blocking(move || ep.resolve()).await {
            Ok(Ok(addrs)) if !addrs.is_empty() => out.extend(addrs.into_iter().map(|a| (a, i))),
            Ok(Ok(_)) => {
                error.get_or_insert(format!("dns: {e} has no addresses"));
            }
            Ok(Err(err)) => {
                error.get_or_insert(format!("dns: {e}: {err}"));
            }
            Err(err) => {
                error.get_or_insert(format!("dns: resolver task failed: {err}"));
            }
        }
    }
    (out, error)
}

async fn run(
    engine: Arc<std::sync::Mutex<Engine>>,
    id: PeerId,
    peer: String,
    endpoints: Vec<Endpoint>,
    interval: Arc<AtomicU64>,
    last: Arc<Mutex<Option<Resolution>>>,
) {
    let mut backoff = Duration::from_secs(1);
    let endpoint = endpoints
        .iter()
        .map(Endpoint::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let every = || Duration::from_secs(interval.load(Ordering::Relaxed).max(1));
    loop {
        let (found, error) = resolve_all(&endpoints).await;
        if let Some(error) = &error {
            // An entry did not resolve: said, even if others did (the link uses those).
            tracing::warn!(peer, %endpoint, error, retry_in = ?backoff, "cannot resolve endpoint");
            dataplane::lock(&engine).note_error(id, error.clone());
        }
        let mut attempts_seen = 0;
        let wait = if found.is_empty() {
            // Nothing resolved: the last good address stays in use.
            let ever = last.lock().unwrap_or_else(|e| e.into_inner()).is_some();
            let wait = if ever { backoff.min(every()) } else { backoff };
            backoff = (backoff * 2).min(Duration::from_secs(60));
            wait
        } else {
            backoff = Duration::from_secs(1);
            let Some(now) = link(&engine, id) else {
                return; // the peer is gone
            };
            attempts_seen = now.attempts;
            let failing = now.attempts >= FAILED_ATTEMPTS;
            let addrs: Vec<SocketAddr> = found.iter().map(|(a, _)| *a).collect();
            let choice = pick(&addrs, now.endpoint, failing);
            // A link that works keeps its address, DNS or roamed; a new address is used when
            // nothing is in use yet, or for the next handshake of a link that is not up.
            let apply = now.endpoint.is_none()
                || (now.endpoint != Some(choice)
                    && (!now.up || now.attempts > 0)
                    && (now.source != Some(EndpointSource::Learned) || failing));
            let entry_of =
                |addr: SocketAddr| found.iter().find(|(a, _)| *a == addr).map(|(_, i)| *i);
            if apply {
                match now.endpoint {
                    None => tracing::info!(peer, %endpoint, addr = %choice, "resolved endpoint"),
                    Some(old) => tracing::info!(peer, %endpoint, addr = %choice, %old,
                        attempts = now.attempts, "endpoint now resolves to another address; using it for the next handshake"),
                }
                let from_name = entry_of(choice).is_some_and(|i| endpoints[i].ip().is_none());
                let source = if from_name {
                    EndpointSource::Dns
                } else {
                    EndpointSource::Config
                };
                dataplane::lock(&engine).set_endpoint(id, choice, source);
            }
            let in_use = if apply {
                choice
            } else {
                now.endpoint.unwrap_or(choice)
            };
            let entry = entry_of(in_use).map_or_else(String::new, |i| endpoints[i].to_string());
            *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Resolution {
                addr: in_use,
                at: SystemTime::now(),
                entry,
            });
            every()
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
