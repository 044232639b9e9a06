//! Shared helpers for the benchmarks: the allowed-ips table sitelink used before the trie
//! (a scan of prefixes sorted longest first), kept as the baseline the trie is measured
//! against.

use std::net::IpAddr;

use sitelink_config::Cidr;

/// The former routing table: per family, prefixes sorted by length, longest first; a lookup
/// scans until the first match.
pub struct LinearTable<T> {
    v4: Vec<(Cidr, T)>,
    v6: Vec<(Cidr, T)>,
}

impl<T: Copy> LinearTable<T> {
    /// Builds the table in one go (its own insert was O(n) per prefix, too slow to build
    /// 100,000 entries one at a time).
    pub fn from_entries(entries: impl IntoIterator<Item = (Cidr, T)>) -> Self {
        let (mut v4, mut v6): (Vec<_>, Vec<_>) =
            entries.into_iter().partition(|(c, _)| c.is_ipv4());
        v4.sort_by_key(|(c, _)| std::cmp::Reverse(c.prefix_len()));
        v6.sort_by_key(|(c, _)| std::cmp::Reverse(c.prefix_len()));
        Self { v4, v6 }
    }

    /// The value of the longest prefix containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<T> {
        let table = if ip.is_ipv4() { &self.v4 } else { &self.v6 };
        table.iter().find(|(c, _)| c.contains(ip)).map(|(_, v)| *v)
    }
}
