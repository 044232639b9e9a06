//! IPv4/IPv6 prefixes such as `198.19.2.0/24`, used for interface addresses and allowed-ips.
//!
//! A [`Cidr`] keeps the address exactly as written, host bits included, because an interface
//! address (`198.18.100.1/24`) needs them; [`Cidr::network`] clears them for routing. Whether
//! host bits are acceptable is the caller's decision (the config loader refuses them in
//! allowed-ips).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Why a string or address/prefix pair is not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The part before `/` is not an IP address.
    #[error("`{0}` is not an IPv4 or IPv6 address")]
    InvalidAddress(String),
    /// Nothing follows the `/`.
    #[error("missing prefix length after `/` (e.g. /24)")]
    MissingPrefix,
    /// The part after `/` is not a decimal number.
    #[error("prefix length `{0}` is not a number")]
    InvalidPrefix(String),
    /// The prefix is longer than the address.
    #[error("prefix length /{prefix} is longer than the {max} bits of an IPv{family} address")]
    PrefixTooLong {
        /// The prefix as written.
        prefix: u32,
        /// 32 or 128.
        max: u8,
        /// 4 or 6.
        family: u8,
    },
}

/// An IP address with a prefix length, e.g. `198.19.2.0/24` or `fd19:2::1/64`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Pairs an address with a prefix length; fails if the prefix exceeds 32 (IPv4) or 128.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let max = max_prefix(addr);
        if prefix > max {
            return Err(CidrError::PrefixTooLong {
                prefix: prefix.into(),
                max,
                family: family(addr),
            });
        }
        Ok(Self { addr, prefix })
    }

    /// The address as written, host bits kept.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// The same prefix with the host bits cleared: `198.19.2.1/24` becomes `198.19.2.0/24`.
    pub fn network(&self) -> Cidr {
        Cidr {
            addr: mask(self.addr, self.prefix),
            prefix: self.prefix,
        }
    }

    /// Whether any bit after the prefix is set (`198.19.2.1/24`, but not `198.19.2.0/24`).
    pub fn has_host_bits(&self) -> bool {
        mask(self.addr, self.prefix) != self.addr
    }

    /// Whether `ip` lies inside this prefix. An address of the other family never does.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == mask(self.addr, self.prefix)
    }

    /// Whether the two prefixes share any address (same family, and one contains the other).
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.network().addr) || other.contains(self.network().addr)
    }

    /// Whether this is an IPv4 prefix.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn family(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        4
    } else {
        6
    }
}

/// Clears every bit of `addr` after the first `prefix` bits.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    // `checked_shl` is None for a shift by the full width, i.e. prefix 0: nothing is kept.
    match addr {
        IpAddr::V4(v4) => {
            let keep = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & keep))
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & keep))
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `addr/prefix`, or a bare address meaning a single host (/32 or /128).
    fn from_str(text: &str) -> Result<Self, CidrError> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| CidrError::InvalidAddress(addr_text.to_owned()))?;
        let prefix = match prefix_text {
            None => max_prefix(addr),
            Some("") => return Err(CidrError::MissingPrefix),
            Some(p) if !p.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(CidrError::InvalidPrefix(p.to_owned()))
            }
            Some(p) => {
                // All ASCII digits, so the only possible failure is overflow: too long anyway.
                let prefix: u32 = p.parse().unwrap_or(u32::MAX);
                u8::try_from(prefix)
                    .ok()
                    .filter(|&p| p <= max_prefix(addr))
                    .ok_or(CidrError::PrefixTooLong {
                        prefix,
                        max: max_prefix(addr),
                        family: family(addr),
                    })?
            }
        };
        Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn parses_v4_v6_and_bare_addresses() {
        let v4 = c("198.19.2.0/24");
        assert_eq!(v4.addr(), ip("198.19.2.0"));
        assert_eq!(v4.prefix_len(), 24);
        assert!(v4.is_ipv4());
        assert_eq!(v4.to_string(), "198.19.2.0/24");

        let v6 = c("fd19:2::/64");
        assert_eq!(v6.addr(), ip("fd19:2::"));
        assert_eq!(v6.prefix_len(), 64);
        assert!(!v6.is_ipv4());
        assert_eq!(v6.to_string(), "fd19:2::/64");

        assert_eq!(c("198.18.100.2"), c("198.18.100.2/32"));
        assert_eq!(c("fd00::2"), c("fd00::2/128"));
        assert_eq!(c("0.0.0.0/0").prefix_len(), 0);
        assert_eq!(c("::/0").prefix_len(), 0);
    }

    #[test]
    fn rejects_bad_text() {
        assert_eq!(
            "198.19.2/24".parse::<Cidr>(),
            Err(CidrError::InvalidAddress("198.19.2".into()))
        );
        assert_eq!("198.19.2.0/".parse::<Cidr>(), Err(CidrError::MissingPrefix));
        assert_eq!(
            "198.19.2.0/x".parse::<Cidr>(),
            Err(CidrError::InvalidPrefix("x".into()))
        );
        assert_eq!(
            "198.19.2.0/+8".parse::<Cidr>(),
            Err(CidrError::InvalidPrefix("+8".into()))
        );
        let err = "198.19.2.0/33".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "prefix length /33 is longer than the 32 bits of an IPv4 address"
        );
        assert!(matches!(
            "fd00::/129".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong { max: 128, .. })
        ));
        assert!(matches!(
            "fd00::/99999999999".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong { max: 128, .. })
        ));
        assert!(Cidr::new(ip("10.0.0.0"), 33).is_err());
        assert!(Cidr::new(ip("fd00::"), 128).is_ok());
    }

    #[test]
    fn network_and_host_bits_v4() {
        let a = c("198.19.2.1/24");
        assert!(a.has_host_bits());
        assert_eq!(a.network(), c("198.19.2.0/24"));
        assert_eq!(a.addr(), ip("198.19.2.1"), "address kept as written");
        assert!(!c("198.19.2.0/24").has_host_bits());
        assert!(!c("198.19.2.1/32").has_host_bits());
        assert!(c("10.0.0.1/0").has_host_bits());
        assert_eq!(c("10.0.0.1/0").network(), c("0.0.0.0/0"));
        assert_eq!(c("10.255.255.255/9").network(), c("10.128.0.0/9"));
    }

    #[test]
    fn network_and_host_bits_v6() {
        let a = c("fd19:2::1/64");
        assert!(a.has_host_bits());
        assert_eq!(a.network(), c("fd19:2::/64"));
        assert!(!c("fd19:2::/64").has_host_bits());
        assert!(!c("fd19:2::1/128").has_host_bits());
        assert_eq!(c("fd19:2::1/0").network(), c("::/0"));
        assert_eq!(c("fd19:2:ffff::/33").network(), c("fd19:2:8000::/33"));
    }

    #[test]
    fn contains_v4_and_v6() {
        let v4 = c("198.19.2.0/24");
        assert!(v4.contains(ip("198.19.2.0")));
        assert!(v4.contains(ip("198.19.2.255")));
        assert!(!v4.contains(ip("198.19.3.0")));
        assert!(!v4.contains(ip("::ffff:198.19.2.1")), "family must match");
        assert!(c("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!c("0.0.0.0/0").contains(ip("fd00::1")));
        assert!(
            c("198.19.2.1/24").contains(ip("198.19.2.77")),
            "host bits ignored"
        );

        let v6 = c("fd19:2::/64");
        assert!(v6.contains(ip("fd19:2::1")));
        assert!(v6.contains(ip("fd19:2::ffff:ffff:ffff:ffff")));
        assert!(!v6.contains(ip("fd19:2:0:1::")));
        assert!(!v6.contains(ip("198.19.2.1")));
        assert!(c("::/0").contains(ip("2001:db8::1")));
    }

    #[test]
    fn overlaps_v4_and_v6() {
        assert!(c("198.19.2.0/24").overlaps(&c("198.19.2.128/25")));
        assert!(c("198.19.2.128/25").overlaps(&c("198.19.2.0/24")));
        assert!(c("198.19.2.0/24").overlaps(&c("198.19.2.0/24")));
        assert!(c("0.0.0.0/0").overlaps(&c("10.0.0.1/32")));
        assert!(!c("198.19.2.0/25").overlaps(&c("198.19.2.128/25")));
        assert!(!c("198.19.2.0/24").overlaps(&c("198.19.3.0/24")));

        assert!(c("fd19::/16").overlaps(&c("fd19:2::/64")));
        assert!(c("fd19:2::/64").overlaps(&c("fd19::/16")));
        assert!(
            !c("fd19::/32").overlaps(&c("fd19:2::/64")),
            "fd19:0000 vs fd19:0002"
        );
        assert!(!c("fd19:2::/64").overlaps(&c("fd19:3::/64")));
        assert!(
            !c("0.0.0.0/0").overlaps(&c("::/0")),
            "families never overlap"
        );
    }
}
