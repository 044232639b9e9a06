//! Longest-prefix-match table from allowed-ips to a value (a peer id).
//!
//! Owns: insertion, removal and lookup. Doesn't own: overlap policy (the config
//! crate rejects overlapping allowed-ips between peers before they get here).
//!
//! Entries are kept per address family, sorted by prefix length, longest first, so the
//! first match is the longest. That is O(n) per lookup, which is the right trade for a
//! site-to-site gateway with tens of prefixes (a scan of a short contiguous vector beats a
//! pointer-chasing trie); a mesh with thousands of prefixes would want a trie here.

use std::net::IpAddr;

use sitelink_config::Cidr;

#[derive(Debug, Clone)]
pub struct AllowedIps<T> {
    v4: Vec<(Cidr, T)>,
    v6: Vec<(Cidr, T)>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        Self {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

impl<T: Copy + PartialEq> AllowedIps<T> {
    /// Inserts `cidr` (its network part) for `value`, replacing an identical prefix.
    pub fn insert(&mut self, cidr: Cidr, value: T) {
        let network = cidr.network();
        let table = self.table_mut(network.is_ipv4());
        table.retain(|(c, _)| *c != network);
        let at = table.partition_point(|(c, _)| c.prefix_len() >= network.prefix_len());
        table.insert(at, (network, value));
    }

    /// Removes every prefix that maps to `value`.
    pub fn remove_value(&mut self, value: T) {
        self.v4.retain(|(_, v)| *v != value);
        self.v6.retain(|(_, v)| *v != value);
    }

    /// The value of the longest prefix containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<T> {
        let table = if ip.is_ipv4() { &self.v4 } else { &self.v6 };
        table.iter().find(|(c, _)| c.contains(ip)).map(|(_, v)| *v)
    }

    fn table_mut(&mut self, v4: bool) -> &mut Vec<(Cidr, T)> {
        if v4 {
            &mut self.v4
        } else {
            &mut self.v6
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("test cidr")
    }

    #[test]
    fn longest_prefix_wins_regardless_of_insertion_order() {
        let mut t = AllowedIps::default();
        t.insert(cidr("198.19.0.0/16"), 1);
        t.insert(cidr("198.19.2.0/24"), 2);
        t.insert(cidr("198.19.2.7/32"), 3);
        t.insert(cidr("0.0.0.0/0"), 4);
        assert_eq!(t.lookup("198.19.2.7".parse().unwrap()), Some(3));
        assert_eq!(t.lookup("198.19.2.8".parse().unwrap()), Some(2));
        assert_eq!(t.lookup("198.19.3.1".parse().unwrap()), Some(1));
        assert_eq!(t.lookup("203.0.113.1".parse().unwrap()), Some(4));
        assert_eq!(t.lookup("fd00::1".parse().unwrap()), None);
    }

    #[test]
    fn families_are_separate_and_remove_drops_all_of_a_value() {
        let mut t = AllowedIps::default();
        t.insert(cidr("fd19:2::/64"), 7);
        t.insert(cidr("198.19.2.0/24"), 7);
        t.insert(cidr("fd19::/16"), 8);
        assert_eq!(t.lookup("fd19:2::9".parse().unwrap()), Some(7));
        t.remove_value(7);
        assert_eq!(t.lookup("fd19:2::9".parse().unwrap()), Some(8));
        assert_eq!(t.lookup("198.19.2.1".parse().unwrap()), None);
    }

    #[test]
    fn reinserting_a_prefix_replaces_its_value() {
        let mut t = AllowedIps::default();
        t.insert(cidr("198.19.2.0/24"), 1);
        t.insert(cidr("198.19.2.0/24"), 2);
        assert_eq!(t.lookup("198.19.2.1".parse().unwrap()), Some(2));
    }
}
