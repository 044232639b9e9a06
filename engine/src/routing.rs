//! The cryptokey routing table: longest-prefix match from an address to a peer, as WireGuard
//! does it across all peers' allowed-ips.
//!
//! Owns: insertion (an identical prefix changes owner), removal, and lookup. Doesn't own: which
//! prefixes a peer has (the engine's peer store keeps that list, so removing a peer removes
//! exactly its prefixes) or the rule that a config file may not give one prefix to two peers
//! (the config crate's).
//!
//! One path-compressed binary trie per address family, its nodes in one `Vec` and linked by
//! index. A lookup walks at most one node per address bit (32 or 128) whatever the number of
//! prefixes, and in practice about log2(prefixes) nodes, since only branching nodes exist.
//!
//! Concurrency: the table is a plain value (`Clone`). The engine keeps it behind an `Arc` and
//! changes it with `Arc::make_mut`, so a packet thread holding a snapshot keeps reading the old
//! table while the control plane builds the next one, and nobody waits on a lock to look up a
//! route.

use std::net::IpAddr;

use sitelink_config::Cidr;

/// Longest-prefix-match table from prefixes to values (peer ids), IPv4 and IPv6.
#[derive(Debug, Clone)]
pub struct RoutingTable<T> {
    v4: Trie<u32, T>,
    v6: Trie<u128, T>,
}

impl<T> Default for RoutingTable<T> {
    fn default() -> Self {
        Self {
            v4: Trie::default(),
            v6: Trie::default(),
        }
    }
}

impl<T: Copy + PartialEq> RoutingTable<T> {
    /// Routes `cidr` (its network part) to `value`. Returns the value that had this exact
    /// prefix before, if any: the prefix moves, as `wg set ... allowed-ips` moves it.
    pub fn insert(&mut self, cidr: Cidr, value: T) -> Option<T> {
        let (len, addr) = (cidr.prefix_len(), cidr.addr());
        match addr {
            IpAddr::V4(a) => self.v4.insert(u32::from(a), len, value),
            IpAddr::V6(a) => self.v6.insert(u128::from(a), len, value),
        }
    }

    /// Removes the exact prefix `cidr`; a covering prefix then matches its addresses again.
    /// Returns the value it had.
    pub fn remove(&mut self, cidr: Cidr) -> Option<T> {
        let (len, addr) = (cidr.prefix_len(), cidr.addr());
        match addr {
            IpAddr::V4(a) => self.v4.remove(u32::from(a), len),
            IpAddr::V6(a) => self.v6.remove(u128::from(a), len),
        }
    }

    /// Removes `cidr` only if it belongs to `value` (a peer losing a prefix that has already
    /// moved to another peer must not take it away from that one).
    pub fn remove_if(&mut self, cidr: Cidr, value: T) -> bool {
        if self.get(cidr) != Some(value) {
            return false;
        }
        self.remove(cidr);
        true
    }

    /// The value of exactly `cidr`, if that prefix is in the table.
    pub fn get(&self, cidr: Cidr) -> Option<T> {
        let (len, addr) = (cidr.prefix_len(), cidr.addr());
        match addr {
            IpAddr::V4(a) => self.v4.get(u32::from(a), len),
            IpAddr::V6(a) => self.v6.get(u128::from(a), len),
        }
    }

    /// The value of the longest prefix containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<T> {
        match ip {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        }
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.v4.len + self.v6.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An address as a string of bits, most significant first.
trait Bits: Copy + Eq + std::fmt::Debug {
    const BITS: u8;
    /// Bit `pos` (0 = most significant) as 0 or 1.
    fn bit(self, pos: u8) -> usize;
    /// The first `len` bits, the rest zero.
    fn masked(self, len: u8) -> Self;
    /// How many leading bits `self` and `other` share.
    fn common(self, other: Self) -> u8;
}

macro_rules! bits {
    ($t:ty) => {
        impl Bits for $t {
            const BITS: u8 = <$t>::BITS as u8;
            fn bit(self, pos: u8) -> usize {
                ((self >> (<Self as Bits>::BITS - 1 - pos)) & 1) as usize
            }
            fn masked(self, len: u8) -> Self {
                match len {
                    0 => 0,
                    l => self & (<$t>::MAX << (<Self as Bits>::BITS - l)),
                }
            }
            fn common(self, other: Self) -> u8 {
                // At most BITS (both equal): fits in u8.
                (self ^ other).leading_zeros() as u8
            }
        }
    };
}
bits!(u32);
bits!(u128);

/// No node (an empty link).
const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Node<K, T> {
    /// The prefix this node stands for; bits past `len` are zero.
    key: K,
    len: u8,
    /// `Some` if `key/len` is in the table; `None` for a node that only branches.
    value: Option<T>,
    /// The subtrees whose next bit after `len` is 0 and 1.
    children: [u32; 2],
}

/// A path-compressed binary trie. Every node either holds a value or has two children, so the
/// node count stays below twice the prefix count.
#[derive(Debug, Clone)]
struct Trie<K, T> {
    nodes: Vec<Node<K, T>>,
    /// Slots in `nodes` free for reuse.
    free: Vec<u32>,
    root: u32,
    len: usize,
}

impl<K, T> Default for Trie<K, T> {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            free: Vec::new(),
            root: NIL,
            len: 0,
        }
    }
}

/// Where a link lives: the root, or a child slot of a node.
#[derive(Clone, Copy)]
enum Link {
    Root,
    Child(u32, usize),
}

impl<K: Bits, T: Copy> Trie<K, T> {
    fn lookup(&self, addr: K) -> Option<T> {
        let mut best = None;
        let mut at = self.root;
        while at != NIL {
            let node = &self.nodes[at as usize];
            if addr.masked(node.len) != node.key {
                break;
            }
            if node.value.is_some() {
                best = node.value;
            }
            if node.len == K::BITS {
                break;
            }
            at = node.children[addr.bit(node.len)];
        }
        best
    }

    fn get(&self, addr: K, len: u8) -> Option<T> {
        let key = addr.masked(len);
        let at = self.find(key, len)?;
        self.nodes[at as usize].value
    }

    /// The node standing for exactly `key/len`, and the link that points at it.
    fn find_with_link(&self, key: K, len: u8) -> Option<(u32, Link)> {
        let mut link = Link::Root;
        let mut at = self.root;
        while at != NIL {
            let node = &self.nodes[at as usize];
            if node.len > len || key.masked(node.len) != node.key {
                return None;
            }
            if node.len == len {
                return Some((at, link));
            }
            let side = key.bit(node.len);
            link = Link::Child(at, side);
            at = node.children[side];
        }
        None
    }

    fn find(&self, key: K, len: u8) -> Option<u32> {
        self.find_with_link(key, len).map(|(at, _)| at)
    }

    fn insert(&mut self, addr: K, len: u8, value: T) -> Option<T> {
        let key = addr.masked(len);
        let mut link = Link::Root;
        loop {
            let at = self.target(link);
            if at == NIL {
                let leaf = self.alloc(key, len, Some(value));
                self.set(link, leaf);
                self.len += 1;
                return None;
            }
            let node = &self.nodes[at as usize];
            let common = key.common(node.key).min(len).min(node.len);
            if common == node.len {
                if node.len == len {
                    let old = self.nodes[at as usize].value.replace(value);
                    if old.is_none() {
                        self.len += 1;
                    }
                    return old;
                }
                link = Link::Child(at, key.bit(node.len));
                continue;
            }
            // `key/len` and the node part ways (or `key/len` covers the node) at bit `common`.
            let node_key = node.key;
            let fresh = if common == len {
                // The new prefix is an ancestor of the node: it takes the node's place.
                let fresh = self.alloc(key, len, Some(value));
                self.nodes[fresh as usize].children[node_key.bit(len)] = at;
                fresh
            } else {
                let leaf = self.alloc(key, len, Some(value));
                let branch = self.alloc(key.masked(common), common, None);
                let children = &mut self.nodes[branch as usize].children;
                children[node_key.bit(common)] = at;
                children[key.bit(common)] = leaf;
                branch
            };
            self.set(link, fresh);
            self.len += 1;
            return None;
        }
    }

    fn remove(&mut self, addr: K, len: u8) -> Option<T> {
        let key = addr.masked(len);
        let (at, link) = self.find_with_link(key, len)?;
        let old = self.nodes[at as usize].value.take()?;
        self.len -= 1;
        self.compact(at, link);
        if let Link::Child(parent, _) = link {
            // The parent may now be a valueless node with one child.
            if self.nodes[parent as usize].value.is_none() {
                if let Some(parent_link) = self.link_of(parent) {
                    self.compact(parent, parent_link);
                }
            }
        }
        Some(old)
    }

    /// Removes node `at` (reached through `link`) if it holds no value and has fewer than
    /// two children, splicing its one child (if any) into its place.
    fn compact(&mut self, at: u32, link: Link) {
        let node = &self.nodes[at as usize];
        if node.value.is_some() {
            return;
        }
        let [left, right] = node.children;
        let replacement = match (left, right) {
            (NIL, NIL) => NIL,
            (only, NIL) | (NIL, only) => only,
            _ => return,
        };
        self.set(link, replacement);
        self.release(at);
    }

    /// The link pointing at node `at` (a walk from the root by its key).
    fn link_of(&self, at: u32) -> Option<Link> {
        let node = &self.nodes[at as usize];
        self.find_with_link(node.key, node.len)
            .map(|(_, link)| link)
    }

    fn target(&self, link: Link) -> u32 {
        match link {
            Link::Root => self.root,
            Link::Child(parent, side) => self.nodes[parent as usize].children[side],
        }
    }

    fn set(&mut self, link: Link, to: u32) {
        match link {
            Link::Root => self.root = to,
            Link::Child(parent, side) => self.nodes[parent as usize].children[side] = to,
        }
    }

    fn alloc(&mut self, key: K, len: u8, value: Option<T>) -> u32 {
        let node = Node {
            key,
            len,
            value,
            children: [NIL, NIL],
        };
        if let Some(slot) = self.free.pop() {
            self.nodes[slot as usize] = node;
            return slot;
        }
        // A table holds at most 2 × u32::MAX / 2 nodes long before memory runs out; indices
        // fit in u32 (NIL excluded) for any table that fits in memory.
        let slot = self.nodes.len() as u32;
        self.nodes.push(node);
        slot
    }

    fn release(&mut self, at: u32) {
        let node = &mut self.nodes[at as usize];
        node.value = None;
        node.children = [NIL, NIL];
        self.free.push(at);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("test cidr")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test ip")
    }

    #[test]
    fn longest_prefix_wins_regardless_of_insertion_order() {
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]] {
            let entries = [
                ("198.19.0.0/16", 1),
                ("198.19.2.0/24", 2),
                ("198.19.2.7/32", 3),
                ("0.0.0.0/0", 4),
            ];
            let mut t = RoutingTable::default();
            for i in order {
                assert_eq!(t.insert(cidr(entries[i].0), entries[i].1), None);
            }
            assert_eq!(t.lookup(ip("198.19.2.7")), Some(3));
            assert_eq!(t.lookup(ip("198.19.2.8")), Some(2));
            assert_eq!(t.lookup(ip("198.19.3.1")), Some(1));
            assert_eq!(t.lookup(ip("203.0.113.1")), Some(4));
            assert_eq!(t.lookup(ip("fd00::1")), None);
            assert_eq!(t.len(), 4);
        }
    }

    #[test]
    fn removing_a_nested_prefix_falls_back_to_the_covering_one() {
        let mut t = RoutingTable::default();
        t.insert(cidr("198.19.0.0/16"), 1);
        t.insert(cidr("198.19.2.0/24"), 2);
        assert_eq!(t.lookup(ip("198.19.2.9")), Some(2));
        assert_eq!(t.remove(cidr("198.19.2.0/24")), Some(2));
        assert_eq!(t.lookup(ip("198.19.2.9")), Some(1));
        assert_eq!(t.remove(cidr("198.19.2.0/24")), None);
        assert_eq!(t.remove(cidr("198.19.0.0/16")), Some(1));
        assert_eq!(t.lookup(ip("198.19.2.9")), None);
        assert!(t.is_empty());
    }

    #[test]
    fn removing_a_covering_prefix_keeps_the_nested_ones() {
        let mut t = RoutingTable::default();
        t.insert(cidr("198.19.0.0/16"), 1);
        t.insert(cidr("198.19.2.0/24"), 2);
        t.insert(cidr("198.19.3.0/24"), 3);
        assert_eq!(t.remove(cidr("198.19.0.0/16")), Some(1));
        assert_eq!(t.lookup(ip("198.19.2.1")), Some(2));
        assert_eq!(t.lookup(ip("198.19.3.1")), Some(3));
        assert_eq!(t.lookup(ip("198.19.4.1")), None);
    }

    #[test]
    fn an_identical_prefix_moves_and_remove_if_respects_the_owner() {
        let mut t = RoutingTable::default();
        t.insert(cidr("198.19.2.0/24"), 1);
        assert_eq!(t.insert(cidr("198.19.2.0/24"), 2), Some(1));
        assert_eq!(t.lookup(ip("198.19.2.1")), Some(2));
        assert!(!t.remove_if(cidr("198.19.2.0/24"), 1));
        assert_eq!(t.lookup(ip("198.19.2.1")), Some(2));
        assert!(t.remove_if(cidr("198.19.2.0/24"), 2));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn host_bits_are_ignored_and_families_are_separate() {
        let mut t = RoutingTable::default();
        t.insert(cidr("198.19.2.77/24"), 1);
        t.insert(cidr("fd19:2::/64"), 2);
        t.insert(cidr("::/0"), 3);
        assert_eq!(t.get(cidr("198.19.2.0/24")), Some(1));
        assert_eq!(t.lookup(ip("198.19.2.1")), Some(1));
        assert_eq!(t.lookup(ip("fd19:2::9")), Some(2));
        assert_eq!(t.lookup(ip("2001:db8::1")), Some(3));
        assert_eq!(t.lookup(ip("198.19.3.1")), None, "::/0 must not match IPv4");
    }

    #[test]
    fn full_length_prefixes_and_the_default_route() {
        let mut t = RoutingTable::default();
        t.insert(cidr("255.255.255.255/32"), 1);
        t.insert(cidr("0.0.0.0/32"), 2);
        t.insert(cidr("0.0.0.0/0"), 3);
        t.insert(cidr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"), 4);
        assert_eq!(t.lookup(ip("255.255.255.255")), Some(1));
        assert_eq!(t.lookup(ip("0.0.0.0")), Some(2));
        assert_eq!(t.lookup(ip("0.0.0.1")), Some(3));
        assert_eq!(
            t.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            Some(4)
        );
        assert_eq!(
            t.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")),
            None
        );
    }

    /// An address from random bits: IPv4 or IPv6 by the lowest bit, with few distinct high
    /// bits so that prefixes nest and collide often.
    fn random_addr(r: u64) -> IpAddr {
        if r & 1 == 0 {
            IpAddr::V4(Ipv4Addr::from(
                ((r >> 8) as u32) & 0xc0a8_ffff | 0xc000_0000,
            ))
        } else {
            IpAddr::V6(Ipv6Addr::from(u128::from(r >> 8) << 64 | 0xfd00 << 112))
        }
    }

    /// Random prefixes inserted and removed, checked after every step against a brute-force
    /// longest match over the same set.
    #[test]
    fn agrees_with_a_brute_force_longest_match() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut t = RoutingTable::default();
        let mut reference: Vec<(Cidr, u32)> = Vec::new();
        for step in 0..4000u32 {
            let r = next();
            let v4 = r & 1 == 0;
            let addr = random_addr(r);
            let max = if v4 { 32 } else { 128 };
            let len = ((r >> 40) % (max + 1)) as u8;
            let c = Cidr::new(addr, len).unwrap().network();
            if (r >> 50) % 3 == 0 && !reference.is_empty() {
                let victim = reference.remove((r >> 20) as usize % reference.len()).0;
                assert!(t.remove(victim).is_some(), "step {step}: {victim} missing");
            } else {
                let old = reference.iter().position(|(x, _)| *x == c);
                let expected_old = old.map(|i| reference.remove(i).1);
                assert_eq!(t.insert(c, step), expected_old, "step {step}: insert {c}");
                reference.push((c, step));
            }
            assert_eq!(t.len(), reference.len());
            for _ in 0..8 {
                let probe = next();
                let probe = random_addr(probe);
                let want = reference
                    .iter()
                    .filter(|(c, _)| c.contains(probe))
                    .max_by_key(|(c, _)| c.prefix_len())
                    .map(|(_, v)| *v);
                assert_eq!(t.lookup(probe), want, "step {step}: lookup {probe}");
            }
        }
        // Nodes are reused: the arena stays below twice the live prefixes plus the free list.
        assert!(t.v4.nodes.len() - t.v4.free.len() < 2 * t.v4.len.max(1));
        assert!(t.v6.nodes.len() - t.v6.free.len() < 2 * t.v6.len.max(1));
    }
}
