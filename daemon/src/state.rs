//! The running configuration and the one path that changes it.
//!
//! Every change — `sitelinkctl peer add/set/remove`, `reload` and SIGHUP, and the WireGuard
//! UAPI `set` — is expressed as a whole new desired [`Config`] and goes through
//! [`State::apply`]: validated with the same rules as a config file, then the difference is
//! applied. Unchanged peers are not touched, so their sessions survive; a changed peer keeps
//! its session unless its keys changed. Owns: the mapping from public keys to engine peer
//! ids, DNS resolution tasks for host-name endpoints, and the routes/addresses/MTU in line
//! with the config. Doesn't own: packets (the data plane) or sockets.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use sitelink_config::{Cidr, Config, Endpoint, Peer, PrivateKey, PublicKey};
use sitelink_engine::{Engine, PeerId, PeerSpec};
use tokio::task::JoinHandle;

use crate::dataplane;
use crate::netlink::Netlink;
use crate::systemd;

pub struct State {
    pub config: Config,
    pub engine: Arc<Mutex<Engine>>,
    pub listen_port: u16,
    netlink: Netlink,
    ids: HashMap<PublicKey, PeerId>,
    resolvers: HashMap<PublicKey, JoinHandle<()>>,
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
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
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
                self.routes_added.join(", "),
                self.routes_removed.join(", ")
            )?;
        }
        if let Some((old, new)) = self.mtu {
            write!(f, "; mtu {old} -> {new}")?;
        }
        if self.private_key_changed {
            write!(f, "; private key changed (all peers re-handshake)")?;
        }
        Ok(())
    }
}

impl State {
    /// Sets the interface up for `config` (MTU, addresses, link, routes) and loads its
    /// peers into `engine`.
    pub async fn start(
        config: Config,
        engine: Arc<Mutex<Engine>>,
        netlink: Netlink,
        listen_port: u16,
    ) -> Result<Self> {
        let iface = &config.interface;
        netlink
            .configure_link(iface.mtu, &iface.addresses)
            .await
            .with_context(|| format!("cannot configure interface {}", iface.name))?;
        let mut state = Self {
            config: Config {
                peers: Vec::new(),
                ..config.clone()
            },
            engine,
            listen_port,
            netlink,
            ids: HashMap::new(),
            resolvers: HashMap::new(),
            key_fallback: None,
        };
        if let Err(e) = state
            .apply_peers(&config.peers, &mut Summary::default())
            .await
        {
            state.teardown().await;
            return Err(e);
        }
        state.config = config;
        Ok(state)
    }

    /// Validates `new` and brings the interface and peers in line with it. Nothing changes
    /// if validation fails.
    pub async fn apply(&mut self, new: Config) -> Result<Summary> {
        new.validate()?;
        let (old_if, new_if) = (&self.config.interface, &new.interface);
        if new_if.name != old_if.name {
            bail!(
                "interface name cannot change while running ({} -> {}); restart sitelinkd",
                old_if.name,
                new_if.name
            );
        }
        if let Some(port) = new_if.listen_port.filter(|p| *p != self.listen_port) {
            bail!(
                "listen-port cannot change while running ({} -> {port}); restart sitelinkd to apply it",
                self.listen_port
            );
        }
        let mut summary = Summary::default();
        if new_if.mtu != old_if.mtu {
            self.netlink.set_mtu(new_if.mtu).await?;
            summary.mtu = Some((old_if.mtu, new_if.mtu));
        }
        let old_addrs: BTreeSet<String> = old_if.addresses.iter().map(Cidr::to_string).collect();
        let new_addrs: BTreeSet<String> = new_if.addresses.iter().map(Cidr::to_string).collect();
        for cidr in new_if
            .addresses
            .iter()
            .filter(|c| !old_addrs.contains(&c.to_string()))
        {
            self.netlink.add_address(*cidr).await?;
            summary.addresses_added.push(cidr.to_string());
        }
        for cidr in old_if
            .addresses
            .iter()
            .filter(|c| !new_addrs.contains(&c.to_string()))
        {
            self.netlink.remove_address(*cidr).await?;
            summary.addresses_removed.push(cidr.to_string());
        }
        if new_if.private_key.as_bytes() != old_if.private_key.as_bytes() {
            self.lock_engine().set_private_key(&new_if.private_key);
            summary.private_key_changed = true;
        }
        self.apply_peers(&new.peers, &mut summary).await?;
        self.config = new;
        Ok(summary)
    }

    /// Brings the engine's peers and the routes in line with `peers`.
    async fn apply_peers(&mut self, peers: &[Peer], summary: &mut Summary) -> Result<()> {
        let old: HashMap<PublicKey, &Peer> = self
            .config
            .peers
            .iter()
            .map(|p| (p.public_key, p))
            .collect();
        let new_keys: BTreeSet<PublicKey> = peers.iter().map(|p| p.public_key).collect();
        let old_routes = route_set(&self.config.peers);
        let new_routes = route_set(peers);

        let mut to_resolve = Vec::new();
        {
            let engine = Arc::clone(&self.engine);
            let mut engine = dataplane::lock(&engine);
            for peer in &self.config.peers {
                if new_keys.contains(&peer.public_key) {
                    continue;
                }
                if let Some(id) = self.ids.remove(&peer.public_key) {
                    engine.remove_peer(id);
                }
                if let Some(task) = self.resolvers.remove(&peer.public_key) {
                    task.abort();
                }
                summary.peers_removed.push(peer.name.clone());
            }
            for peer in peers {
                match old.get(&peer.public_key) {
                    None => {
                        let id = engine.add_peer(spec(peer))?;
                        self.ids.insert(peer.public_key, id);
                        if needs_dns(peer.endpoint.as_ref()) {
                            to_resolve.push((id, peer.clone()));
                        }
                        summary.peers_added.push(peer.name.clone());
                    }
                    Some(before) => {
                        let Some(&id) = self.ids.get(&peer.public_key) else {
                            continue;
                        };
                        if update_peer(&mut engine, id, before, peer) {
                            summary.peers_changed.push(peer.name.clone());
                            if before.endpoint != peer.endpoint {
                                // A resolver for the old endpoint must not overwrite the new one.
                                if let Some(task) = self.resolvers.remove(&peer.public_key) {
                                    task.abort();
                                }
                                if needs_dns(peer.endpoint.as_ref()) {
                                    to_resolve.push((id, peer.clone()));
                                }
                            }
                        } else {
                            summary.peers_unchanged += 1;
                        }
                    }
                }
            }
        }
        for (id, peer) in to_resolve {
            if let Some(endpoint) = peer.endpoint.clone() {
                let task = tokio::spawn(resolve_endpoint(
                    Arc::clone(&self.engine),
                    id,
                    peer.name.clone(),
                    endpoint,
                ));
                self.resolvers.insert(peer.public_key, task);
            }
        }
        // New routes after the peers that serve them exist; stale ones after.
        for cidr in new_routes.difference(&old_routes) {
            self.netlink.add_route(*cidr).await?;
            summary.routes_added.push(cidr.to_string());
        }
        for cidr in old_routes.difference(&new_routes) {
            self.netlink.remove_route(*cidr).await?;
            summary.routes_removed.push(cidr.to_string());
        }
        Ok(())
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
        format!("{up}/{total} peers up")
    }

    pub async fn teardown(&mut self) {
        for (_, task) in self.resolvers.drain() {
            task.abort();
        }
        self.netlink.teardown().await;
    }

    pub fn lock_engine(&self) -> MutexGuard<'_, Engine> {
        dataplane::lock(&self.engine)
    }
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
    let psk = |p: &Peer| p.preshared_key.as_ref().map(|k| *k.as_bytes());
    if psk(before) != psk(after) {
        engine.set_preshared_key(id, after.preshared_key.clone());
        changed = true;
    }
    if before.preshared_key_file != after.preshared_key_file {
        changed = true;
    }
    if before.endpoint != after.endpoint {
        // A configured endpoint change takes effect now; an unchanged one leaves the
        // roamed endpoint alone.
        if let Some(addr) = after.endpoint.as_ref().and_then(Endpoint::ip) {
            engine.set_endpoint(id, addr);
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

fn needs_dns(endpoint: Option<&Endpoint>) -> bool {
    endpoint.is_some_and(|e| e.ip().is_none())
}

/// Every allowed-ips prefix of every peer: the routes the interface should have.
fn route_set(peers: &[Peer]) -> BTreeSet<Cidr> {
    peers
        .iter()
        .flat_map(|p| p.allowed_ips.iter().map(Cidr::network))
        .collect()
}

/// Resolves a host-name endpoint, retrying with backoff until it succeeds. A name that
/// does not resolve at boot (DNS not ready yet) is a warning, not a failure.
async fn resolve_endpoint(
    engine: Arc<Mutex<Engine>>,
    id: PeerId,
    peer: String,
    endpoint: Endpoint,
) {
    let mut delay = Duration::from_secs(1);
    loop {
        let ep = endpoint.clone();
        match tokio::task::spawn_blocking(move || ep.resolve()).await {
            Ok(Ok(addrs)) if !addrs.is_empty() => {
                let addr = addrs[0];
                tracing::info!(peer, %endpoint, %addr, "resolved endpoint");
                dataplane::lock(&engine).set_endpoint(id, addr);
                return;
            }
            Ok(Ok(_)) => {
                tracing::warn!(peer, %endpoint, retry_in = ?delay, "endpoint resolved to no addresses")
            }
            Ok(Err(e)) => {
                tracing::warn!(peer, %endpoint, error = %e, retry_in = ?delay, "cannot resolve endpoint")
            }
            Err(e) => tracing::warn!(peer, %endpoint, error = %e, "resolver task failed"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}
