//! The running configuration and the one path that changes it.
//!
//! Every change — `sitelinkctl peer add/set/remove`, `reload` and SIGHUP, and the WireGuard
//! UAPI `set` — is expressed as a whole new desired [`Config`] and goes through
//! [`State::apply`], all or nothing:
//! 1. validate it with the same rules as a config file (nothing is touched if it is wrong);
//! 2. prepare what can fail: bind the new listen port if it changes (a port that is taken
//!    refuses the change), set the socket's fwmark, then the kernel changes (MTU, addresses,
//!    routes and rules in netlink batches), each undone if a later one fails;
//! 3. commit what cannot fail: the engine's peers and keys, the packet loop's socket, and the
//!    stored configuration.
//!
//! So a refused change leaves engine, routes, addresses, socket and the stored configuration
//! exactly as they were, and says why; the next change starts from the same state. Unchanged
//! peers are not touched, so their sessions survive; a changed peer keeps its session (a new
//! preshared key takes effect at its next handshake). Owns: the mapping from public keys to
//! engine peer ids, DNS resolution tasks for host-name endpoints. Doesn't own: packets (the
//! data plane) or the socket protocols.

use std::collections::BTreeSet;
use std::fmt;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use foldhash::HashMap;
use serde::Serialize;
use sitelink_config::{
    Cidr, Config, Delta, Endpoint, Interface, Peer, PeerIndex, PrivateKey, PublicKey,
};
use sitelink_engine::health::EndpointSource;
use sitelink_engine::{Engine, PeerId, PeerSpec};

use crate::dataplane;
use crate::dns;
use crate::netlink::{Change, Netlink};
use crate::persist;
use crate::routes::{Route, Routing, RoutingDiff};
use crate::systemd;
use crate::udp::{self, Udp};

pub struct State {
    pub config: Config,
    pub engine: Arc<Mutex<Engine>>,
    pub listen_port: u16,
    /// The mark on the UDP socket now (`fwmark`, or automatic for a default route).
    pub fwmark: Option<u32>,
    /// The packet loop's commands and wake-up.
    pub plane: dataplane::Handle,
    /// The handshake queue (for its counters).
    pub handshakes: Arc<crate::handshakes::Queue>,
    /// Where peer events go (`sitelinkctl events` subscribes here).
    pub events: Arc<crate::events::Hub>,
    /// The time of the latest initiation sent from here, on disk (with a state directory).
    pub clock: Option<persist::HandshakeClock>,
    /// Why an HA gateway that has the virtual address is not active (`None`: it is, or it
    /// does not have the address).
    pub ha_error: Option<String>,
    netlink: Netlink,
    /// The routes and rules `config` asks for (what the kernel has, as far as we made it).
    routing: Routing,
    /// `config`'s peers by name, key and prefix, for validating the next change.
    index: PeerIndex,
    /// Other handles on the packet threads' UDP sockets (one each), to change their mark.
    sockets: Vec<UdpSocket>,
    ids: HashMap<PublicKey, PeerId>,
    /// A resolver per peer with a host-name endpoint.
    resolvers: HashMap<PublicKey, dns::Resolver>,
    /// `resolve-interval`, shared with the running resolvers.
    resolve_interval: Arc<AtomicU64>,
    /// The private key reloads use when the key file is not readable any more (after
    /// dropping privileges).
    pub key_fallback: Option<PrivateKey>,
}

/// What a change did, for `reload`'s reply and the log.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub peers_added: Vec<String>,
    pub peers_removed: Vec<String>,
    pub peers_changed: Vec<String>,
    pub peers_unchanged: usize,
    pub addresses_added: Vec<String>,
    pub addresses_removed: Vec<String>,
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    pub mtu: Option<(u16, u16)>,
    pub private_key_changed: bool,
    /// `(old, new)` when the listen port moved.
    pub listen_port: Option<(u16, u16)>,
    /// `(old, new)` when the UDP socket's mark changed (0: none).
    pub fwmark: Option<(u32, u32)>,
    /// What could not be done but does not fail the change (an interface moved to another
    /// namespace, a strict reverse-path filter).
    pub warnings: Vec<String>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                shorten(v)
            }
        };
        write!(
            f,
            "peers added: {}; removed: {}; changed: {}; unchanged: {}",
            list(&self.peers_added),
            list(&self.peers_removed),
            list(&self.peers_changed),
            self.peers_unchanged
        )?;
        if !self.addresses_added.is_empty() || !self.addresses_removed.is_empty() {
            write!(
                f,
                "; addresses +[{}] -[{}]",
                self.addresses_added.join(", "),
                self.addresses_removed.join(", ")
            )?;
        }
        if !self.routes_added.is_empty() || !self.routes_removed.is_empty() {
            write!(
                f,
                "; routes +[{}] -[{}]",
                shorten(&self.routes_added),
                shorten(&self.routes_removed)
            )?;
        }
        if let Some((old, new)) = self.mtu {
            write!(f, "; mtu {old} -> {new}")?;
        }
        if let Some((old, new)) = self.listen_port {
            write!(f, "; listen-port {old} -> {new}")?;
        }
        if let Some((old, new)) = self.fwmark {
            write!(f, "; fwmark {old:#x} -> {new:#x}")?;
        }
        if self.private_key_changed {
            write!(f, "; private key changed (all peers re-handshake)")?;
        }
        if !self.warnings.is_empty() {
            write!(f, "; warnings: {}", self.warnings.join("; "))?;
        }
        Ok(())
    }
}

/// A long list as its first entries and a count.
fn shorten(items: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut text = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        text += &format!(", ... ({} in all)", items.len());
    }
    text
}

impl State {
    /// Sets the interface up for `config` (MTU, link, then addresses, routes, rules and peers
    /// through [`State::apply`]). `socket` is a control handle on the packet loop's UDP
    /// socket, bound to `listen_port`.
    pub async fn start(
        config: Config,
        engine: Arc<Mutex<Engine>>,
        netlink: Netlink,
        sockets: Vec<UdpSocket>,
        listen_port: u16,
        plane: dataplane::Handle,
        handshakes: Arc<crate::handshakes::Queue>,
    ) -> Result<Self> {
        let iface = &config.interface;
        netlink
            .set_mtu(iface.mtu)
            .await
            .and(netlink.bring_up().await)
            .with_context(|| format!("cannot configure interface {}", iface.name))?;
        // Start from an interface with nothing on it; `apply` adds the rest.
        let empty = Config {
            peers: Vec::new(),
            interface: Interface {
                addresses: Vec::new(),
                fwmark: None,
                ..iface.clone()
            },
            ..config.clone()
        };
        let mut state = Self {
            config: empty,
            engine,
            listen_port,
            fwmark: None,
            plane,
            handshakes,
            events: Arc::default(),
            clock: persist::HandshakeClock::open(iface.name.as_str()),
            ha_error: None,
            netlink,
            routing: Routing::default(),
            index: PeerIndex::default(),
            sockets,
            ids: HashMap::default(),
            resolvers: HashMap::default(),
            resolve_interval: Arc::new(AtomicU64::new(config.interface.resolve_interval.into())),
            key_fallback: None,
        };
        match state.apply(config).await {
            Ok(summary) => {
                for warning in &summary.warnings {
                    tracing::warn!("{warning}");
                }
                Ok(state)
            }
            Err(e) => {
                state.teardown().await;
                Err(e)
            }
        }
    }

    /// Validates `new` and brings the interface and peers in line with it, all or nothing
    /// (see the module docs).
    pub async fn apply(&mut self, new: Config) -> Result<Summary> {
        let delta = Delta::between(&self.config, &new);
        new.validate_change(&self.config, &delta, &self.index)?;
        let (old_if, new_if) = (&self.config.interface, &new.interface);
        if new_if.name != old_if.name {
            bail!(
                "interface name cannot change while running ({} -> {}); restart sitelinkd",
                old_if.name,
                new_if.name
            );
        }
        let mut summary = Summary::default();
        if new_if.metrics_listen != old_if.metrics_listen {
            let shown = |m: &Option<sitelink_config::MetricsListen>| {
                m.as_ref()
                    .map_or_else(|| "off".to_string(), |m| m.to_string())
            };
            summary.warnings.push(format!(
                "metrics-listen changed ({} -> {}): it takes effect when sitelinkd restarts",
                shown(&old_if.metrics_listen),
                shown(&new_if.metrics_listen)
            ));
        }
        if new_if.route_protocol != old_if.route_protocol {
            summary.warnings.push(format!(
                "route-protocol changed ({} -> {}): routes keep protocol {} until sitelinkd \
                 restarts",
                old_if.route_protocol, new_if.route_protocol, old_if.route_protocol
            ));
        }
        let new_mark = new_if.effective_fwmark(&new.peers);

        // Prepare: what can fail, in an order that can be undone.
        if new_if.threads != old_if.threads {
            summary.warnings.push(format!(
                "threads changed ({} -> {}): the packet threads change when sitelinkd restarts",
                threads_shown(old_if.threads),
                threads_shown(new_if.threads)
            ));
        }
        let new_socket = match new_if.listen_port.filter(|p| *p != self.listen_port) {
            Some(port) => {
                let group = Udp::bind_group(port, new_mark, self.plane.threads())
                    .with_context(|| format!("listen-port {port} refused, nothing changed"))?;
                let handles = group
                    .iter()
                    .map(Udp::control_handle)
                    .collect::<Result<Vec<_>>>()?;
                summary.listen_port = Some((self.listen_port, port));
                Some((group, handles, port))
            }
            None => None,
        };
        let mark_changed = new_mark != self.fwmark;
        if mark_changed && new_socket.is_none() {
            for socket in &self.sockets {
                udp::set_mark(socket, new_mark)?;
            }
        }
        let mut routing = if new_if.withdraw_when_down != old_if.withdraw_when_down {
            // Which peers' routes are in the kernel changes for all of them.
            Routing::of(&new.interface, &new.peers)
        } else {
            self.routing
                .after(&self.config.interface, self.fwmark, &new, &delta)
        };
        self.leave_out_withdrawn(&new.interface, &new.peers, &mut routing);
        let change = self.kernel_change(&new, &routing, &mut summary);
        let warnings = match self.netlink.apply(&change).await {
            Ok(warnings) => warnings,
            Err(e) => {
                if mark_changed && new_socket.is_none() {
                    for socket in &self.sockets {
                        if let Err(undo) = udp::set_mark(socket, self.fwmark) {
                            tracing::error!("restoring the fwmark: {undo:#}");
                        }
                    }
                }
                return Err(e.context("the change was refused and nothing changed"));
            }
        };
        summary.warnings.extend(warnings);
        if !change.routing.add_rules.is_empty() {
            summary.warnings.extend(strict_rp_filter_warning());
        }

        // Commit: nothing below can fail.
        let new_if = &new.interface;
        self.resolve_interval
            .store(new_if.resolve_interval.into(), Ordering::Relaxed);
        let clamp_to = if new_if.mss_clamp { new_if.mtu } else { 0 };
        self.plane.mss_clamp.store(clamp_to, Ordering::Relaxed);
        self.index.apply(&delta);
        drop(delta);
        if let Some((group, handles, port)) = new_socket {
            if self.plane.use_sockets(group).is_ok() {
                self.sockets = handles;
                self.listen_port = port;
            }
        }
        if mark_changed {
            summary.fwmark = Some((self.fwmark.unwrap_or(0), new_mark.unwrap_or(0)));
            self.fwmark = new_mark;
        }
        let key = |i: &Interface| i.private_key.as_ref().map(|k| *k.as_bytes());
        if key(&new.interface) != key(&self.config.interface) {
            self.lock_engine()
                .set_private_key(new.interface.private_key.as_ref());
            summary.private_key_changed = true;
        }
        // Before the peers: new ones start withdrawn if withdrawal is on.
        self.lock_engine().set_liveness(liveness_policy(new_if));
        self.apply_peers(&new.peers, &mut summary);
        let old = std::mem::replace(&mut self.config, new);
        self.routing = routing;
        release(old);
        Ok(summary)
    }

    /// The kernel side of going from the current config to `new`, noted in `summary`.
    fn kernel_change(&self, new: &Config, routing: &Routing, summary: &mut Summary) -> Change {
        let (old_if, new_if) = (&self.config.interface, &new.interface);
        let old_addrs: BTreeSet<Cidr> = old_if.addresses.iter().copied().collect();
        let new_addrs: BTreeSet<Cidr> = new_if.addresses.iter().copied().collect();
        let routing = RoutingDiff::between(&self.routing, routing);
        let change = Change {
            mtu: (new_if.mtu != old_if.mtu).then_some((old_if.mtu, new_if.mtu)),
            add_addresses: new_addrs.difference(&old_addrs).copied().collect(),
            remove_addresses: old_addrs.difference(&new_addrs).copied().collect(),
            routing,
        };
        summary.mtu = change.mtu;
        summary.addresses_added = change.add_addresses.iter().map(Cidr::to_string).collect();
        summary.addresses_removed = change
            .remove_addresses
            .iter()
            .map(Cidr::to_string)
            .collect();
        summary.routes_added = change
            .routing
            .add_routes
            .iter()
            .map(Route::to_string)
            .collect();
        summary.routes_removed = change
            .routing
            .remove_routes
            .iter()
            .map(Route::to_string)
            .collect();
        change
    }

    /// Brings the engine's peers in line with `peers` (already validated, so nothing here can
    /// be refused). Peers are matched by public key; the common case (a change that adds,
    /// removes or edits a few peers and keeps the others in place) is matched by position,
    /// without building an index of thousands of peers.
    fn apply_peers(&mut self, peers: &[Arc<Peer>], summary: &mut Summary) {
        let old_peers = std::mem::take(&mut self.config.peers);
        let mut matched = vec![false; old_peers.len()];
        let mut index: Option<HashMap<PublicKey, usize>> = None;
        let mut before_of = |i: usize, key: &PublicKey| -> Option<usize> {
            if old_peers.get(i).is_some_and(|p| p.public_key == *key) {
                return Some(i);
            }
            index
                .get_or_insert_with(|| {
                    old_peers
                        .iter()
                        .enumerate()
                        .map(|(at, p)| (p.public_key, at))
                        .collect()
                })
                .get(key)
                .copied()
        };
        let befores: Vec<Option<usize>> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| before_of(i, &p.public_key))
            .collect();
        for at in befores.iter().flatten() {
            matched[*at] = true;
        }

        let mut to_resolve = Vec::new();
        {
            let engine = Arc::clone(&self.engine);
            let mut engine = dataplane::lock(&engine);
            for (peer, _) in old_peers.iter().zip(&matched).filter(|(_, m)| !**m) {
                if let Some(id) = self.ids.remove(&peer.public_key) {
                    engine.remove_peer(id);
                }
                self.resolvers.remove(&peer.public_key);
                summary.peers_removed.push(peer.name.clone());
            }
            for (peer, before) in peers.iter().zip(befores) {
                match before.map(|at| &old_peers[at]) {
                    None => match engine.add_peer(spec(peer)) {
                        Ok(id) => {
                            if !peer.allowed_endpoints.is_empty() {
                                engine.set_allowed_endpoints(id, peer.allowed_endpoints.clone());
                            }
                            self.ids.insert(peer.public_key, id);
                            if needs_resolver(peer) {
                                to_resolve.push((id, Arc::clone(peer)));
                            }
                            summary.peers_added.push(peer.name.clone());
                        }
                        // Validation rules out duplicate and own keys; this would be a bug.
                        Err(e) => tracing::error!("engine refused a validated peer: {e}"),
                    },
                    // The same allocation: the change did not touch this peer.
                    Some(before) if Arc::ptr_eq(before, peer) => summary.peers_unchanged += 1,
                    Some(before) => {
                        let Some(&id) = self.ids.get(&peer.public_key) else {
                            continue;
                        };
                        if update_peer(&mut engine, id, before, peer) {
                            summary.peers_changed.push(peer.name.clone());
                            if before.endpoint != peer.endpoint
                                || before.more_endpoints != peer.more_endpoints
                            {
                                // A resolver for the old endpoint must not overwrite the new one.
                                self.resolvers.remove(&peer.public_key);
                                if needs_resolver(peer) {
                                    to_resolve.push((id, Arc::clone(peer)));
                                }
                            }
                        } else {
                            summary.peers_unchanged += 1;
                        }
                    }
                }
            }
        }
        self.config.peers = old_peers;
        for (id, peer) in to_resolve {
            if let Some(endpoint) = peer.endpoint.clone() {
                let endpoints = std::iter::once(endpoint)
                    .chain(peer.more_endpoints.iter().cloned())
                    .collect();
                let resolver = dns::Resolver::start(
                    Arc::clone(&self.engine),
                    id,
                    peer.name.clone(),
                    endpoints,
                    Arc::clone(&self.resolve_interval),
                );
                self.resolvers.insert(peer.public_key, resolver);
            }
        }
    }

    /// Re-reads the config file and applies it, telling systemd (RELOADING=1 … READY=1).
    pub async fn reload(&mut self) -> Result<Summary> {
        systemd::reloading();
        let result = match systemd::load_config(&self.config.path, self.key_fallback.as_ref()) {
            Ok(new) => self.apply(new).await,
            Err(e) => Err(e),
        };
        systemd::ready(&self.status_line());
        result
    }

    /// "2/3 peers up", for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let engine = self.lock_engine();
        let (up, total) = engine
            .peers()
            .fold((0, 0), |(u, t), p| (u + usize::from(p.up), t + 1));
        if engine.public_key().is_none() {
            return format!("0/{total} peers up (no private key)");
        }
        format!("{up}/{total} peers up")
    }

    /// Gives peers back what a previous run of the daemon learned (see [`persist`]): the
    /// endpoint of every peer whose config has none, and an initiation at once to every peer
    /// that was up. Returns (endpoints restored, initiations).
    pub fn restore(
        &self,
        remembered: &persist::Remembered,
        modified: SystemTime,
    ) -> (usize, usize) {
        let configured: HashMap<PublicKey, bool> = self
            .config
            .peers
            .iter()
            .map(|p| (p.public_key, p.endpoint.is_some()))
            .collect();
        let mut engine = self.lock_engine();
        let (mut restored, mut initiated) = (0, 0);
        for (key, endpoint, was_up) in remembered.entries(modified, SystemTime::now()) {
            let (Some(&has_endpoint), Some(&id)) = (configured.get(&key), self.ids.get(&key))
            else {
                continue;
            };
            if !has_endpoint {
                engine.set_endpoint(id, endpoint, EndpointSource::Learned);
                restored += 1;
            }
            if was_up {
                engine.initiate(id);
                initiated += 1;
            }
        }
        (restored, initiated)
    }

    /// For a peer with a host-name endpoint: the name and what it resolved to last.
    /// (`None` found yet: still resolving.)
    pub fn resolution(&self, key: &PublicKey) -> Option<(String, Option<dns::Resolution>)> {
        self.resolvers.get(key).map(|r| {
            let last = r.last();
            let name = last
                .as_ref()
                .map_or_else(|| r.first.clone(), |l| l.entry.clone());
            (name, last)
        })
    }

    pub async fn teardown(&mut self) {
        self.resolvers.clear();
        self.netlink.teardown().await;
    }

    pub fn lock_engine(&self) -> dataplane::EngineGuard<'_> {
        dataplane::lock(&self.engine)
    }

    /// Takes the routes of withdrawn peers out of `routing` (what `config` asks the kernel
    /// for): with `withdraw-when-down`, every peer that the engine does not have up. Rules
    /// stay: without the table's routes they route nothing.
    fn leave_out_withdrawn(&self, iface: &Interface, peers: &[Arc<Peer>], routing: &mut Routing) {
        let engine = self.lock_engine();
        // A standby routes nothing (its twin has the sessions).
        let standby = engine.is_standby();
        if !standby && !iface.withdraw_when_down {
            return;
        }
        let withdrawn: std::collections::HashSet<Cidr> = peers
            .iter()
            .filter(|p| {
                let up = self
                    .ids
                    .get(&p.public_key)
                    .and_then(|id| engine.peer_view(*id))
                    .is_some_and(|v| v.liveness.live == sitelink_engine::Live::Up);
                standby || !up
            })
            .flat_map(|p| p.allowed_ips.iter().map(Cidr::network))
            .collect();
        drop(engine);
        if !withdrawn.is_empty() {
            routing.routes.retain(|r| !withdrawn.contains(&r.cidr));
        }
    }

    /// Brings the kernel's routes in line with which peers are up (after peer-up and
    /// peer-down events, with `withdraw-when-down`). Returns what changed, as route texts
    /// (added, removed).
    pub async fn sync_withdrawn(&mut self) -> Result<(Vec<String>, Vec<String>)> {
        let (iface, peers) = (&self.config.interface, &self.config.peers);
        let mut routing = Routing::of(iface, peers);
        self.leave_out_withdrawn(iface, peers, &mut routing);
        let diff = RoutingDiff::between(&self.routing, &routing);
        if diff.add_routes.is_empty() && diff.remove_routes.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let change = Change {
            mtu: None,
            add_addresses: Vec::new(),
            remove_addresses: Vec::new(),
            routing: RoutingDiff {
                add_rules: Vec::new(),
                remove_rules: Vec::new(),
                ..diff
            },
        };
        for warning in self.netlink.apply(&change).await? {
            tracing::warn!("{warning}");
        }
        // Rules are left as they were (see `leave_out_withdrawn`).
        routing.rules = self.routing.rules.clone();
        self.routing = routing;
        let texts = |v: &[Route]| v.iter().map(Route::to_string).collect();
        Ok((
            texts(&change.routing.add_routes),
            texts(&change.routing.remove_routes),
        ))
    }
}

/// How far behind the last initiation it sent a gateway's clock may be and still go active:
/// peers would refuse its initiations until the clock passes that time.
const CLOCK_SLACK: std::time::Duration = std::time::Duration::from_secs(1);

impl State {
    /// HA (`ha = "vrrp"`): makes this gateway active (the virtual address is here) or the
    /// standby. Going active is refused while the clock is more than [`CLOCK_SLACK`] behind the
    /// latest initiation on record (the error says by how much; the caller retries). Returns
    /// whether anything changed.
    pub async fn set_ha(&mut self, active: bool) -> Result<bool> {
        let Some(vip) = self.config.interface.ha_address else {
            return Ok(false);
        };
        if active {
            let saved = self.clock.as_ref().and_then(persist::HandshakeClock::saved);
            if let Some(behind) = saved.and_then(|t| t.duration_since(SystemTime::now()).ok()) {
                if behind > CLOCK_SLACK {
                    let error = format!(
                        "not going active although {vip} is here: the clock is {:.1} s behind the \
                         last handshake this key sent (state directory); peers would refuse our \
                         initiations until it catches up. Sync the clock (NTP) on both gateways \
                         of the pair",
                        behind.as_secs_f64()
                    );
                    self.ha_error = Some(error.clone());
                    bail!(error);
                }
            }
        }
        self.ha_error = None;
        {
            let mut engine = self.lock_engine();
            if engine.is_standby() != active {
                return Ok(false);
            }
            engine.set_active(active, Some(vip));
        }
        let (added, removed) = self.sync_withdrawn().await?;
        tracing::info!(address = %vip, routes_added = added.len(), routes_removed = removed.len(),
            "{}", if active { "HA: active (the virtual address is here); initiating to every peer" }
                  else { "HA: standby (the virtual address is elsewhere)" });
        Ok(true)
    }
}

/// The engine's liveness settings from `[interface]`.
pub fn liveness_policy(iface: &Interface) -> sitelink_engine::liveness::Policy {
    sitelink_engine::liveness::Policy {
        down_after: iface
            .down_after
            .map(|s| std::time::Duration::from_secs(s.into())),
        up_after: std::time::Duration::from_secs(iface.up_after.into()),
        withdraw: iface.withdraw_when_down,
    }
}

/// Frees a replaced configuration. Tens of thousands of peers take milliseconds to free, which
/// a change's reply need not wait for: that happens on a blocking-pool thread then.
fn release(old: Config) {
    if old.peers.len() < 1000 {
        return;
    }
    tokio::task::spawn_blocking(move || drop(old));
}

/// With a default route through the tunnel, a strict reverse-path filter drops the peer's
/// packets arriving on the underlay (their source now routes into the tunnel) unless the
/// endpoint is on a directly connected network. wg-quick works around it with firewall marks
/// on conntrack; sitelinkd leaves the firewall alone and says what to change instead.
fn strict_rp_filter_warning() -> Option<String> {
    let all = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter").ok()?;
    (all.trim() == "1").then(|| {
        "net.ipv4.conf.all.rp_filter is 1 (strict): with a default route through the tunnel, \
         packets from a peer that is not on a directly connected network fail the reverse-path \
         check; set it to 2 (loose): sysctl -w net.ipv4.conf.all.rp_filter=2"
            .to_string()
    })
}

/// Applies the differences between `before` and `after` (same public key) to a running
/// peer. Returns whether anything changed.
fn update_peer(engine: &mut Engine, id: PeerId, before: &Peer, after: &Peer) -> bool {
    let mut changed = false;
    if before.name != after.name {
        engine.set_name(id, after.name.clone());
        changed = true;
    }
    if before.allowed_ips != after.allowed_ips {
        engine.set_allowed_ips(id, after.allowed_ips.clone());
        changed = true;
    }
    if before.persistent_keepalive != after.persistent_keepalive {
        engine.set_keepalive(id, after.persistent_keepalive);
        changed = true;
    }
    if before.allowed_endpoints != after.allowed_endpoints {
        engine.set_allowed_endpoints(id, after.allowed_endpoints.clone());
        changed = true;
    }
    let psk = |p: &Peer| p.preshared_key.as_ref().map(|k| *k.as_bytes());
    if psk(before) != psk(after) {
        engine.set_preshared_key(id, after.preshared_key.clone());
        changed = true;
    }
    if before.preshared_key_file != after.preshared_key_file {
        changed = true;
    }
    if before.more_endpoints != after.more_endpoints {
        // The resolver for the list is restarted by the caller.
        changed = true;
    }
    if before.endpoint != after.endpoint {
        // A configured endpoint change takes effect now; an unchanged one leaves the
        // roamed endpoint alone.
        if let Some(addr) = after.endpoint.as_ref().and_then(Endpoint::ip) {
            engine.set_endpoint(id, addr, EndpointSource::Config);
        }
        changed = true;
    }
    changed
}

fn spec(peer: &Peer) -> PeerSpec {
    PeerSpec {
        name: peer.name.clone(),
        public_key: peer.public_key,
        preshared_key: peer.preshared_key.clone(),
        endpoint: peer.endpoint.as_ref().and_then(Endpoint::ip),
        allowed_ips: peer.allowed_ips.clone(),
        persistent_keepalive: peer.persistent_keepalive,
    }
}

/// A host-name endpoint, or a list of endpoints: kept by a [`dns::Resolver`].
fn needs_resolver(peer: &Peer) -> bool {
    peer.endpoint.as_ref().is_some_and(|e| e.ip().is_none()) || !peer.more_endpoints.is_empty()
}

/// `threads` as the operator wrote it, for messages.
fn threads_shown(threads: Option<u16>) -> String {
    threads.map_or_else(|| "one per core".to_string(), |n| n.to_string())
}
