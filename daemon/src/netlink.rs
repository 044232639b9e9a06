//! Interface configuration over netlink: MTU, link up, addresses, the routes for peers'
//! allowed-ips and wg-quick's policy rules for a default route.
//!
//! Owns: applying a [`Change`] all or nothing (every step done is undone if a later one
//! fails, and the error names what the kernel refused and why), remembering what it added so
//! that `teardown` removes exactly that, and noticing that the interface has been moved to
//! another network namespace (then link changes are reported, not failed). Doesn't own:
//! creating the TUN device (an ioctl, in main) or deciding what the routes should be
//! (`routes.rs`).
//!
//! Routes and rules go in batches over a raw netlink socket: up to [`BATCH`] requests in one
//! `sendmsg`, then their acknowledgements, so 10,000 routes cost a few dozen system calls
//! rather than 10,000 round trips. MTU and addresses, a handful at most, use rtnetlink.

use std::collections::HashSet;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use rtnetlink::packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use sitelink_config::Cidr;

use crate::routes::{Route, RoutingDiff, Rule, MAIN_TABLE};
use crate::sockopt;

/// Requests per `sendmsg`. Each is acknowledged; the acknowledgements of a batch must fit in
/// the socket's receive buffer, which [`Batch::open`] raises to hold many more than this.
const BATCH: usize = 256;
/// How long to wait for the kernel's acknowledgements before giving up on a batch.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// One change to the interface's kernel state, applied whole or not at all.
#[derive(Debug, Default)]
pub struct Change {
    /// `(old, new)`.
    pub mtu: Option<(u16, u16)>,
    pub add_addresses: Vec<Cidr>,
    pub remove_addresses: Vec<Cidr>,
    pub routing: RoutingDiff,
}

pub struct Netlink {
    handle: Handle,
    batch: Batch,
    index: u32,
    name: String,
    /// The protocol number on our routes (`route-protocol`); deletes carry it too, so we
    /// never remove a route someone else installed into our interface.
    protocol: u8,
    /// Routes this daemon installed (and removes at exit).
    routes: HashSet<Route>,
    /// Rules this daemon installed (or found in place from an earlier run) and removes at exit.
    rules: HashSet<Rule>,
}

/// A step done, and how to undo it.
enum Undo {
    Mtu(u16),
    RemoveAddress(Cidr),
    AddAddress(Cidr),
    RemoveRoutes(Vec<Route>),
    AddRoutes(Vec<Route>),
    RemoveRules(Vec<Rule>),
    AddRules(Vec<Rule>),
}

impl Netlink {
    /// Opens netlink sockets (rtnetlink's driven on the current tokio runtime) for interface
    /// `index` named `name`, whose routes get protocol number `protocol`.
    pub fn open(index: u32, name: &str, protocol: u8) -> Result<Self> {
        let (conn, handle, _) =
            rtnetlink::new_connection().context("cannot open a netlink socket")?;
        tokio::spawn(conn);
        Ok(Self {
            handle,
            batch: Batch::open().context("cannot open a netlink socket for routes")?,
            index,
            name: name.to_owned(),
            protocol,
            routes: HashSet::new(),
            rules: HashSet::new(),
        })
    }

    /// Brings the link up.
    pub async fn bring_up(&self) -> Result<()> {
        let up = LinkUnspec::new_with_index(self.index).up().build();
        self.handle
            .link()
            .set(up)
            .execute()
            .await
            .map_err(to_io)
            .context("cannot bring the interface up")
    }

    /// Whether the interface is still in this network namespace. `ip link set IF netns X`
    /// moves it away: the TUN device keeps working, but its routes and addresses can only be
    /// changed where it is now.
    pub async fn link_present(&self) -> bool {
        let mut links = self.handle.link().get().match_index(self.index).execute();
        matches!(links.try_next().await, Ok(Some(_)))
    }

    /// Applies `change`: MTU, new addresses, new routes, new rules, then the removals. If any
    /// step fails, the steps done are undone in reverse and the error says what the kernel
    /// refused. Returns warnings: what could not be done because the interface is in another
    /// namespace (those steps are skipped, not failed).
    pub async fn apply(&mut self, change: &Change) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        let present = self.link_present().await;
        if !present {
            warnings.extend(self.moved_warnings(change));
            // The kernel dropped our routes when the interface left.
            for route in &change.routing.remove_routes {
                self.routes.remove(route);
            }
        }
        let mut done = Vec::new();
        match self.apply_steps(change, present, &mut done).await {
            Ok(()) => Ok(warnings),
            Err(e) => {
                self.undo(done).await;
                Err(e)
            }
        }
    }

    async fn apply_steps(
        &mut self,
        change: &Change,
        present: bool,
        done: &mut Vec<Undo>,
    ) -> Result<()> {
        if present {
            if let Some((old, new)) = change.mtu {
                self.set_mtu(new).await?;
                done.push(Undo::Mtu(old));
            }
            for cidr in &change.add_addresses {
                if self.add_address(*cidr).await? {
                    done.push(Undo::RemoveAddress(*cidr));
                }
            }
            let (added, failed) = self.add_routes(&change.routing.add_routes).await;
            done.push(Undo::RemoveRoutes(added));
            if !failed.is_empty() {
                anyhow::bail!("cannot install {}", summarize(&failed));
            }
        }
        self.add_rules(&change.routing.add_rules, done).await?;
        self.remove_rules(&change.routing.remove_rules, done)
            .await?;
        if present {
            self.remove_routes(&change.routing.remove_routes, done)
                .await?;
            for cidr in &change.remove_addresses {
                self.remove_address(*cidr).await?;
                done.push(Undo::AddAddress(*cidr));
            }
        }
        Ok(())
    }

    /// What a change would have done to an interface that is not in our namespace any more.
    fn moved_warnings(&self, change: &Change) -> Vec<String> {
        let hint = format!(
            "interface {} is not in sitelinkd's network namespace any more (moved with `ip \
             link set {} netns ...`?); configure it where it is now, or set table = \"off\"",
            self.name, self.name
        );
        let mut out = Vec::new();
        if let Some((_, mtu)) = change.mtu {
            out.push(format!("MTU {mtu} not set: {hint}"));
        }
        for cidr in &change.add_addresses {
            out.push(format!("address {cidr} not added: {hint}"));
        }
        for cidr in &change.remove_addresses {
            out.push(format!("address {cidr} not removed: {hint}"));
        }
        const SHOWN: usize = 20;
        for route in change.routing.add_routes.iter().take(SHOWN) {
            out.push(format!("route {route} not installed: {hint}"));
        }
        if change.routing.add_routes.len() > SHOWN {
            out.push(format!(
                "{} more routes not installed: {hint}",
                change.routing.add_routes.len() - SHOWN
            ));
        }
        out
    }

    /// Undoes steps in reverse order, as far as the kernel lets us (each failure is logged).
    async fn undo(&mut self, done: Vec<Undo>) {
        for step in done.into_iter().rev() {
            let result = match step {
                Undo::Mtu(old) => self.set_mtu(old).await.map(drop),
                Undo::RemoveAddress(c) => self.remove_address(c).await,
                Undo::AddAddress(c) => self.add_address(c).await.map(drop),
                Undo::RemoveRoutes(routes) => {
                    let failed = self.delete_routes(&routes);
                    failed.map(drop)
                }
                Undo::AddRoutes(routes) => match self.add_routes(&routes).await {
                    (_, failed) if failed.is_empty() => Ok(()),
                    (_, failed) => Err(anyhow::anyhow!("cannot restore {}", summarize(&failed))),
                },
                Undo::RemoveRules(rules) => self.delete_rules(&rules).map(drop),
                Undo::AddRules(rules) => {
                    let mut ignored = Vec::new();
                    self.add_rules(&rules, &mut ignored).await
                }
            };
            if let Err(e) = result {
                tracing::error!("undoing a failed change: {e:#}");
            }
        }
    }

    pub async fn set_mtu(&self, mtu: u16) -> Result<()> {
        let msg = LinkUnspec::new_with_index(self.index)
            .mtu(u32::from(mtu))
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(to_io)
            .with_context(|| format!("cannot set MTU {mtu}"))
    }

    /// Adds an address. Returns whether it was added (`false`: it was there already).
    pub async fn add_address(&self, cidr: Cidr) -> Result<bool> {
        let added = self
            .handle
            .address()
            .add(self.index, cidr.addr(), cidr.prefix_len())
            .execute()
            .await
            .map_err(to_io);
        match added {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot add address {cidr}")),
        }
    }

    /// Removes an address (already gone is fine).
    pub async fn remove_address(&self, cidr: Cidr) -> Result<()> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .set_address_filter(cidr.addr())
            .set_prefix_length_filter(cidr.prefix_len())
            .execute();
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(to_io)
            .context("cannot list addresses")?
        {
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(to_io)
                .with_context(|| format!("cannot remove address {cidr}"))?;
        }
        Ok(())
    }

    /// Installs `routes` in batches. Returns the ones this call installed, and one message per
    /// route the kernel refused (with its reason).
    async fn add_routes(&mut self, routes: &[Route]) -> (Vec<Route>, Vec<String>) {
        if routes.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let (index, protocol) = (self.index, self.protocol);
        let to_message =
            |r: &Route| RouteNetlinkMessage::NewRoute(route_message(index, protocol, r));
        let (added, refused) = match self.run(routes, to_message, NLM_F_CREATE | NLM_F_EXCL, &[]) {
            Ok(sorted) => sorted,
            Err(e) => return (Vec::new(), vec![format!("routes: netlink: {e}")]),
        };
        let mut failed = Vec::new();
        for (route, e) in refused {
            let existing = match e.errno {
                libc::EEXIST => self.existing_route(&route).await,
                _ => None,
            };
            // A route we did not make, into our interface: it serves; not ours to remove.
            if existing == Some(self.index) {
                continue;
            }
            failed.push(self.route_refused(&route, &e, existing).await);
        }
        self.routes.extend(added.iter().copied());
        (added, failed)
    }

    async fn route_refused(&self, route: &Route, e: &KernelError, existing: Option<u32>) -> String {
        let mut text = format!("route {route}: the kernel refused it: {e}");
        if e.errno == libc::EEXIST {
            let via = match existing {
                Some(index) => format!(" (via {})", self.link_name(index).await),
                None => String::new(),
            };
            let table = match route.table {
                MAIN_TABLE => "main".to_string(),
                t => t.to_string(),
            };
            text += &format!(
                "; a route for {} already exists in table {table}{via}: remove it, or set table = \
                 \"off\" and route it yourself",
                route.cidr
            );
        }
        text
    }

    /// Removes routes we installed (others are left alone; already gone is fine).
    async fn remove_routes(&mut self, routes: &[Route], done: &mut Vec<Undo>) -> Result<()> {
        let ours: Vec<Route> = routes
            .iter()
            .filter(|r| self.routes.contains(r))
            .copied()
            .collect();
        let removed = self.delete_routes(&ours)?;
        done.push(Undo::AddRoutes(removed));
        Ok(())
    }

    /// Deletes routes; returns those deleted (or already gone). Fails on any other refusal,
    /// after deleting what it could.
    fn delete_routes(&mut self, routes: &[Route]) -> Result<Vec<Route>> {
        let (index, protocol) = (self.index, self.protocol);
        let to_message =
            |r: &Route| RouteNetlinkMessage::DelRoute(route_message(index, protocol, r));
        let (removed, refused) = self
            .run(routes, to_message, 0, &[libc::ESRCH, libc::ENODEV])
            .context("cannot remove routes")?;
        for route in &removed {
            self.routes.remove(route);
        }
        refusals("cannot remove", "route", &refused)?;
        Ok(removed)
    }

    /// Adds rules. One already in place (left by an earlier run that did not exit cleanly) is
    /// adopted: removed at exit like ours.
    async fn add_rules(&mut self, rules: &[Rule], done: &mut Vec<Undo>) -> Result<()> {
        let to_message = |r: &Rule| RouteNetlinkMessage::NewRule(rule_message(r));
        let (added, refused) = self
            .run(
                rules,
                to_message,
                NLM_F_CREATE | NLM_F_EXCL,
                &[libc::EEXIST],
            )
            .context("cannot add routing rules")?;
        self.rules.extend(added.iter().copied());
        done.push(Undo::RemoveRules(added));
        refusals("cannot add", "rule", &refused)
    }

    async fn remove_rules(&mut self, rules: &[Rule], done: &mut Vec<Undo>) -> Result<()> {
        let ours: Vec<Rule> = rules
            .iter()
            .filter(|r| self.rules.contains(r))
            .copied()
            .collect();
        let removed = self.delete_rules(&ours)?;
        done.push(Undo::AddRules(removed));
        Ok(())
    }

    fn delete_rules(&mut self, rules: &[Rule]) -> Result<Vec<Rule>> {
        let to_message = |r: &Rule| RouteNetlinkMessage::DelRule(rule_message(r));
        let (removed, refused) = self
            .run(rules, to_message, 0, &[libc::ENOENT, libc::ESRCH])
            .context("cannot remove routing rules")?;
        for rule in &removed {
            self.rules.remove(rule);
        }
        refusals("cannot remove", "rule", &refused)?;
        Ok(removed)
    }

    /// One request per item, in batches. Returns the items done (the kernel's errnos in
    /// `fine` count as done: already there, already gone) and the others with their refusal.
    fn run<T: Copy>(
        &mut self,
        items: &[T],
        to_message: impl Fn(&T) -> RouteNetlinkMessage,
        flags: u16,
        fine: &[i32],
    ) -> io::Result<Sorted<T>> {
        if items.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let results = self
            .batch
            .execute(items.iter().map(to_message).collect(), flags)?;
        let mut done = Vec::new();
        let mut refused = Vec::new();
        for (item, result) in items.iter().zip(results) {
            match result {
                Ok(()) => done.push(*item),
                Err(e) if fine.contains(&e.errno) => done.push(*item),
                Err(e) => refused.push((*item, e)),
            }
        }
        Ok((done, refused))
    }

    /// Removes every route and rule we added. Addresses go with the interface when its TUN
    /// file descriptor closes.
    pub async fn teardown(&mut self) {
        let routes: Vec<Route> = self.routes.iter().copied().collect();
        if let Err(e) = self.delete_routes(&routes) {
            tracing::debug!("routes at exit: {e:#}");
        }
        let rules: Vec<Rule> = self.rules.iter().copied().collect();
        if let Err(e) = self.delete_rules(&rules) {
            tracing::warn!("routing rules at exit: {e:#}");
        }
    }

    /// The output interface of the route that is in the way of `route`, if we can find it.
    async fn existing_route(&self, route: &Route) -> Option<u32> {
        let family = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(route.cidr.addr(), 0)
            .ok()?;
        let mut query = family.build();
        set_table(&mut query, route.table);
        let mut dump = self.handle.route().get(query).execute();
        while let Ok(Some(msg)) = dump.try_next().await {
            let table = msg
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(msg.header.table));
            if table != route.table
                || msg.header.destination_prefix_length != route.cidr.prefix_len()
            {
                continue;
            }
            let dst = msg.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                _ => None,
            });
            let matches = match dst {
                Some(d) => d == route.cidr.network().addr(),
                None => route.cidr.prefix_len() == 0,
            };
            if !matches {
                continue;
            }
            return msg.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
        }
        None
    }

    async fn link_name(&self, index: u32) -> String {
        let mut links = self.handle.link().get().match_index(index).execute();
        if let Ok(Some(link)) = links.try_next().await {
            for attr in link.attributes {
                if let rtnetlink::packet_route::link::LinkAttribute::IfName(name) = attr {
                    return name;
                }
            }
        }
        format!("interface #{index}")
    }
}

/// Items a batch did, and those the kernel refused with its reason.
type Sorted<T> = (Vec<T>, Vec<(T, KernelError)>);

/// A route into interface `index`, marked with `protocol`.
fn route_message(index: u32, protocol: u8, route: &Route) -> RouteMessage {
    let net = route.cidr.network();
    let mut msg = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(net.addr(), net.prefix_len())
        // A network and its prefix length from a valid Cidr always build.
        .unwrap_or_else(|_| RouteMessageBuilder::<IpAddr>::new())
        .output_interface(index)
        .protocol(RouteProtocol::from(protocol))
        .build();
    set_table(&mut msg, route.table);
    msg
}

/// `Err` naming every refusal (up to five), or `Ok` if there is none.
fn refusals<T: std::fmt::Display>(
    what: &str,
    kind: &str,
    refused: &[(T, KernelError)],
) -> Result<()> {
    if refused.is_empty() {
        return Ok(());
    }
    let messages: Vec<String> = refused
        .iter()
        .map(|(item, e)| format!("{kind} `{item}`: the kernel refused it: {e}"))
        .collect();
    anyhow::bail!("{what} {}", summarize(&messages))
}

/// Up to five messages and a count of the rest.
fn summarize(errors: &[String]) -> String {
    let mut text = errors
        .iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if errors.len() > 5 {
        text += &format!("; and {} more", errors.len() - 5);
    }
    text
}

fn set_table(msg: &mut RouteMessage, table: u32) {
    msg.attributes
        .retain(|a| !matches!(a, RouteAttribute::Table(_)));
    if table > 255 {
        msg.header.table = 0;
        msg.attributes.push(RouteAttribute::Table(table));
    } else {
        // Fits: checked above.
        msg.header.table = table as u8;
    }
}

fn rule_message(rule: &Rule) -> RuleMessage {
    let mut msg = RuleMessage::default();
    let (v6, table) = match *rule {
        Rule::NotFwmark { v6, mark, table } => {
            msg.header.flags = RuleFlags::Invert;
            msg.attributes.push(RuleAttribute::FwMark(mark));
            (v6, table)
        }
        Rule::SuppressMainDefault { v6 } => {
            msg.attributes.push(RuleAttribute::SuppressPrefixLen(0));
            (v6, MAIN_TABLE)
        }
    };
    msg.header.family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    msg.header.action = RuleAction::ToTable;
    // Fits when <= 255; larger tables go in the attribute only, as iproute2 does.
    msg.header.table = if table > 255 { 0 } else { table as u8 };
    msg.attributes.push(RuleAttribute::Table(table));
    msg
}

/// rtnetlink's error as the errno it carries, so callers can match EEXIST and messages
/// read like the OS's ("File exists") rather than a debug dump of the netlink message.
fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// The kernel's refusal of one request: the errno and, where the kernel gives one, its
/// explanation (netlink extended ack), e.g. "Nexthop device is not up".
#[derive(Debug, Clone)]
pub struct KernelError {
    pub errno: i32,
    pub message: Option<String>,
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.errno))?;
        if let Some(m) = &self.message {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

/// A raw rtnetlink socket for batches of requests.
struct Batch {
    socket: Socket,
    seq: u32,
}

impl Batch {
    fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, 0))?;
        // Refusals carry the kernel's reason; acknowledgements carry only the header.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        sockopt::force_buffer(
            socket.as_raw_fd(),
            libc::SO_RCVBUFFORCE,
            libc::SO_RCVBUF,
            4 << 20,
        );
        sockopt::set_receive_timeout(socket.as_raw_fd(), ACK_TIMEOUT)?;
        Ok(Self { socket, seq: 1 })
    }

    /// Sends `messages` with `flags` (plus REQUEST and ACK), [`BATCH`] per `sendmsg`, and
    /// returns each one's result in order.
    fn execute(
        &mut self,
        messages: Vec<RouteNetlinkMessage>,
        flags: u16,
    ) -> io::Result<Vec<Result<(), KernelError>>> {
        let mut results = Vec::with_capacity(messages.len());
        let mut chunk = Vec::with_capacity(BATCH);
        for message in messages {
            chunk.push(message);
            if chunk.len() == BATCH {
                self.execute_chunk(std::mem::take(&mut chunk), flags, &mut results)?;
            }
        }
        if !chunk.is_empty() {
            self.execute_chunk(chunk, flags, &mut results)?;
        }
        Ok(results)
    }

    fn execute_chunk(
        &mut self,
        chunk: Vec<RouteNetlinkMessage>,
        flags: u16,
        results: &mut Vec<Result<(), KernelError>>,
    ) -> io::Result<()> {
        let first = self.seq;
        let count = chunk.len();
        let mut out = Vec::new();
        for (i, payload) in chunk.into_iter().enumerate() {
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
            // Sequence numbers wrap; they only have to be unique among one chunk's.
            header.sequence_number = first.wrapping_add(i as u32);
            let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(payload));
            msg.finalize();
            let at = out.len();
            out.resize(at + msg.buffer_len(), 0);
            msg.serialize(&mut out[at..]);
        }
        self.seq = first.wrapping_add(count as u32);
        self.socket.send(&out, 0)?;

        let mut answers: Vec<Option<Result<(), KernelError>>> = vec![None; count];
        let mut pending = count;
        let mut buf = Vec::with_capacity(1 << 16);
        while pending > 0 {
            buf.clear();
            let n = self.socket.recv(&mut buf, 0).map_err(|e| {
                if e.kind() == io::ErrorKind::WouldBlock {
                    io::Error::new(io::ErrorKind::TimedOut, "the kernel did not acknowledge")
                } else {
                    e
                }
            })?;
            let mut offset = 0;
            while offset < n.min(buf.len()) {
                let msg = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..]) {
                    Ok(m) => m,
                    Err(e) => return Err(io::Error::other(format!("bad netlink reply: {e}"))),
                };
                let len = msg.header.length as usize;
                let index = msg.header.sequence_number.wrapping_sub(first) as usize;
                if let NetlinkPayload::Error(err) = &msg.payload {
                    if index < count && answers[index].is_none() {
                        answers[index] = Some(match err.code {
                            None => Ok(()),
                            Some(code) => Err(KernelError {
                                errno: code.get().abs(),
                                message: ext_ack_message(&err.header),
                            }),
                        });
                        pending -= 1;
                    }
                }
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
            }
        }
        results.extend(answers.into_iter().map(|a| a.unwrap_or(Ok(()))));
        Ok(())
    }
}

/// The `NLMSGERR_ATTR_MSG` text of an extended acknowledgement: `payload` is the echoed
/// request header (16 bytes, with NETLINK_CAP_ACK) followed by attributes.
fn ext_ack_message(payload: &[u8]) -> Option<String> {
    const NLMSGERR_ATTR_MSG: u16 = 1;
    let mut rest = payload.get(16..)?;
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]);
        if len < 4 || len > rest.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &rest[4..len];
            let text = text.split(|b| *b == 0).next().unwrap_or(text);
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        rest = rest.get((len + 3) & !3..)?;
    }
    None
}
