//! What the kernel's routing should look like for a configuration: the routes for peers'
//! allowed-ips and, for a default route through a peer, wg-quick's policy rules.
//!
//! Owns: the translation of `[interface] table` and `fwmark` plus the allowed-ips into sets of
//! routes and rules, and the difference between two such sets. Doesn't own: talking to the
//! kernel (`netlink.rs`) or deciding when (`state.rs`). Pure, so every case is a unit test.
//!
//! `table = "auto"` (the default) is wg-quick's `Table = auto`: every prefix gets a route in
//! the main table, except default routes (`0.0.0.0/0`, `::/0`), which go into their own table
//! `T` (the fwmark, default 51820), selected by two rules per family:
//! `not fwmark T lookup T` (everything but the tunnel's own, marked, UDP packets) and
//! `lookup main suppress_prefixlength 0` (first, so that more specific routes in main, such as
//! the LAN and the underlay's networks, still win over the tunnel's default). The tunnel's UDP
//! socket carries mark `T`, so its packets skip the tunnel's table and leave by the underlay:
//! no routing loop. `table = N` puts every route, default routes included, into table N and
//! adds no rules; `table = "off"` adds nothing.
//!
//! Nested prefixes (`198.19.0.0/16` and `198.19.2.0/24`) each get a route into the interface:
//! the kernel only has to send them to the tunnel, and the engine picks the peer by longest
//! match.

use std::collections::BTreeSet;
use std::sync::Arc;

use sitelink_config::{Cidr, Config, Delta, Interface, Peer, RouteTable};

/// The kernel's main routing table.
pub const MAIN_TABLE: u32 = 254;

/// A route for `cidr` (a network) into the interface, in `table`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub table: u32,
    pub cidr: Cidr,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.table == MAIN_TABLE {
            write!(f, "{}", self.cidr)
        } else {
            write!(f, "{} (table {})", self.cidr, self.table)
        }
    }
}

/// One of wg-quick's policy rules for a default route through the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// `not fwmark MARK lookup TABLE`: unmarked packets use the tunnel's table.
    NotFwmark { v6: bool, mark: u32, table: u32 },
    /// `lookup main suppress_prefixlength 0`: the main table, but not its default route.
    SuppressMainDefault { v6: bool },
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let family = |v6: bool| if v6 { "-6" } else { "-4" };
        match self {
            Rule::NotFwmark { v6, mark, table } => {
                write!(f, "{} not fwmark {mark:#x} lookup {table}", family(*v6))
            }
            Rule::SuppressMainDefault { v6 } => {
                write!(f, "{} lookup main suppress_prefixlength 0", family(*v6))
            }
        }
    }
}

/// The routes and rules a configuration asks for. Routes are kept sorted and without
/// duplicates (a vector: cheaper than a tree for the 100,000 of a large network).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    pub routes: Vec<Route>,
    pub rules: BTreeSet<Rule>,
}

impl Routing {
    /// What `iface` and `peers` ask the kernel for.
    pub fn of(iface: &Interface, peers: &[Arc<Peer>]) -> Self {
        let mut out = Routing::default();
        out.routes
            .reserve(peers.iter().map(|p| p.allowed_ips.len()).sum());
        let prefixes = peers
            .iter()
            .flat_map(|p| p.allowed_ips.iter().map(Cidr::network));
        match iface.table {
            RouteTable::Off => {}
            RouteTable::Id(table) => {
                out.routes
                    .extend(prefixes.map(|cidr| Route { table, cidr }));
            }
            RouteTable::Auto => {
                let own_table = iface.effective_fwmark(peers);
                for cidr in prefixes {
                    let table = match own_table {
                        Some(t) if cidr.prefix_len() == 0 => {
                            let v6 = !cidr.is_ipv4();
                            out.rules.insert(Rule::NotFwmark {
                                v6,
                                mark: t,
                                table: t,
                            });
                            out.rules.insert(Rule::SuppressMainDefault { v6 });
                            t
                        }
                        _ => MAIN_TABLE,
                    };
                    out.routes.push(Route { table, cidr });
                }
            }
        }
        out.routes.sort_unstable();
        out.routes.dedup();
        out
    }
}

impl Routing {
    /// What the config asks for after a change, from what it asked for before (`self`, for
    /// `old` with the socket mark `old_mark`): if the change moves no default route and leaves
    /// `table` and the mark alone, only the changed peers' prefixes come and go, in time
    /// proportional to the change; otherwise everything is worked out again.
    pub fn after(
        &self,
        old: &Interface,
        old_mark: Option<u32>,
        new: &Config,
        delta: &Delta<'_>,
    ) -> Self {
        let new_mark = new.interface.effective_fwmark(&new.peers);
        let moves_default = delta
            .fresh
            .iter()
            .map(|(_, p)| p)
            .chain(&delta.gone)
            .any(|p| p.allowed_ips.iter().any(|c| c.prefix_len() == 0));
        let table = match new.interface.table {
            RouteTable::Off => None,
            RouteTable::Id(t) => Some(t),
            RouteTable::Auto => Some(MAIN_TABLE),
        };
        if moves_default || old.table != new.interface.table || old_mark != new_mark {
            return Routing::of(&new.interface, &new.peers);
        }
        let Some(table) = table else {
            return self.clone();
        };
        let routes_of = |peers: &mut dyn Iterator<Item = &Arc<Peer>>| {
            let mut v: Vec<Route> = peers
                .flat_map(|p| p.allowed_ips.iter())
                .map(|c| Route {
                    table,
                    cidr: c.network(),
                })
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let added = routes_of(&mut delta.fresh.iter().map(|(_, p)| *p));
        let removed = routes_of(&mut delta.gone.iter().copied());
        // A prefix in both moved between peers (or stayed with a changed one): no change.
        let (added, removed) = sorted_difference(&removed, &added);
        let kept = sorted_difference(&removed, &self.routes).0;
        let mut routes = Vec::with_capacity(kept.len() + added.len());
        let (mut i, mut j) = (0, 0);
        while i < kept.len() || j < added.len() {
            if j == added.len() || (i < kept.len() && kept[i] < added[j]) {
                routes.push(kept[i]);
                i += 1;
            } else {
                routes.push(added[j]);
                j += 1;
            }
        }
        routes.dedup();
        Routing {
            routes,
            rules: self.rules.clone(),
        }
    }
}

/// What changes from `old` to `new`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingDiff {
    pub add_routes: Vec<Route>,
    pub remove_routes: Vec<Route>,
    pub add_rules: Vec<Rule>,
    pub remove_rules: Vec<Rule>,
}

impl RoutingDiff {
    pub fn between(old: &Routing, new: &Routing) -> Self {
        let (add_routes, remove_routes) = sorted_difference(&old.routes, &new.routes);
        Self {
            add_routes,
            remove_routes,
            add_rules: new.rules.difference(&old.rules).copied().collect(),
            remove_rules: old.rules.difference(&new.rules).copied().collect(),
        }
    }
}

/// What is only in `new` and what is only in `old`, both sorted and without duplicates.
fn sorted_difference<T: Ord + Copy>(old: &[T], new: &[T]) -> (Vec<T>, Vec<T>) {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                removed.push(*a);
                i += 1;
            }
            (Some(a), None) => {
                removed.push(*a);
                i += 1;
            }
            (_, Some(b)) => {
                added.push(*b);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (added, removed)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use sitelink_config::Config;

    use super::*;

    fn config(interface_extra: &str, peers: &[&[&str]]) -> Config {
        let key = sitelink_config::PrivateKey::generate();
        let mut text = format!(
            "[interface]\nprivate-key = \"{}\"\n{interface_extra}\n",
            key.expose_base64()
        );
        for (i, ips) in peers.iter().enumerate() {
            let peer_key = sitelink_config::PrivateKey::generate().public_key();
            let list: Vec<String> = ips.iter().map(|s| format!("{s:?}")).collect();
            text += &format!(
                "[[peer]]\nname = \"p{i}\"\npublic-key = \"{peer_key}\"\nallowed-ips = [{}]\n",
                list.join(", ")
            );
        }
        Config::parse(&text, Path::new("sl0.toml")).unwrap()
    }

    fn routing(c: &Config) -> Routing {
        Routing::of(&c.interface, &c.peers)
    }

    fn names(r: &Routing) -> Vec<String> {
        r.routes.iter().map(Route::to_string).collect()
    }

    #[test]
    fn auto_routes_nested_prefixes_in_main() {
        let c = config("", &[&["198.19.0.0/16"], &["198.19.2.0/24", "fd19:2::/64"]]);
        let r = routing(&c);
        assert_eq!(names(&r), ["198.19.0.0/16", "198.19.2.0/24", "fd19:2::/64"]);
        assert!(r.rules.is_empty());
        assert_eq!(c.interface.effective_fwmark(&c.peers), None);
    }

    #[test]
    fn auto_puts_default_routes_in_their_own_table_with_rules() {
        let c = config("", &[&["0.0.0.0/0", "::/0", "198.19.0.0/16"]]);
        let r = routing(&c);
        assert_eq!(
            names(&r),
            [
                "198.19.0.0/16",
                "0.0.0.0/0 (table 51820)",
                "::/0 (table 51820)"
            ]
        );
        let rules: Vec<String> = r.rules.iter().map(Rule::to_string).collect();
        assert_eq!(
            rules,
            [
                "-4 not fwmark 0xca6c lookup 51820",
                "-6 not fwmark 0xca6c lookup 51820",
                "-4 lookup main suppress_prefixlength 0",
                "-6 lookup main suppress_prefixlength 0",
            ]
        );
        // Only the family with a default route gets rules.
        let c = config("fwmark = 7", &[&["0.0.0.0/0"]]);
        let rules: Vec<String> = routing(&c).rules.iter().map(Rule::to_string).collect();
        assert_eq!(
            rules,
            [
                "-4 not fwmark 0x7 lookup 7",
                "-4 lookup main suppress_prefixlength 0"
            ]
        );
    }

    #[test]
    fn a_table_number_takes_everything_and_off_takes_nothing() {
        let c = config("table = 100", &[&["0.0.0.0/0", "198.19.2.0/24"]]);
        let r = routing(&c);
        assert_eq!(
            names(&r),
            ["0.0.0.0/0 (table 100)", "198.19.2.0/24 (table 100)"]
        );
        assert!(r.rules.is_empty());
        let c = config("table = \"off\"", &[&["0.0.0.0/0", "198.19.2.0/24"]]);
        assert_eq!(routing(&c), Routing::default());
    }

    #[test]
    fn after_a_change_equals_working_it_out_again() {
        let base = config(
            "",
            &[
                &["198.19.1.0/24"],
                &["198.19.2.0/24", "fd19:2::/64"],
                &["198.19.3.0/24"],
            ],
        );
        let before = routing(&base);
        let check = |new: &Config| {
            let delta = Delta::between(&base, new);
            let mark = base.interface.effective_fwmark(&base.peers);
            assert_eq!(
                before.after(&base.interface, mark, new, &delta),
                routing(new)
            );
        };
        // A peer added, one removed, one changed, a prefix moved, a default route added, the
        // table changed.
        let extra = config("", &[&["198.19.9.0/24", "198.19.1.128/25"]]);
        let mut new = base.clone();
        new.peers.push(Arc::clone(&extra.peers[0]));
        check(&new);
        let mut new = base.clone();
        new.peers.remove(1);
        check(&new);
        let mut new = base.clone();
        new.peer_mut(0).allowed_ips = vec!["198.19.2.0/24".parse().unwrap()];
        new.peer_mut(1).allowed_ips = vec!["fd19:2::/64".parse().unwrap()];
        check(&new);
        let mut new = base.clone();
        new.peer_mut(2)
            .allowed_ips
            .push("0.0.0.0/0".parse().unwrap());
        check(&new);
        let mut new = base.clone();
        new.interface.table = RouteTable::Id(7);
        check(&new);
        let mut new = base.clone();
        new.interface.table = RouteTable::Off;
        new.peers.push(Arc::clone(&extra.peers[0]));
        check(&new);
    }

    #[test]
    fn diff_lists_what_to_add_and_remove() {
        let old = routing(&config("", &[&["198.19.2.0/24", "198.19.3.0/24"]]));
        let new = routing(&config("", &[&["198.19.3.0/24"], &["0.0.0.0/0"]]));
        let d = RoutingDiff::between(&old, &new);
        assert_eq!(
            d.add_routes
                .iter()
                .map(Route::to_string)
                .collect::<Vec<_>>(),
            ["0.0.0.0/0 (table 51820)"]
        );
        assert_eq!(
            d.remove_routes
                .iter()
                .map(Route::to_string)
                .collect::<Vec<_>>(),
            ["198.19.2.0/24"]
        );
        assert_eq!(d.add_rules.len(), 2);
        assert!(d.remove_rules.is_empty());
        assert_eq!(RoutingDiff::between(&new, &new), RoutingDiff::default());
    }
}
