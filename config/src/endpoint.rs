//! A peer's UDP endpoint as written in the config: `198.18.0.2:51820`, `[fd00::2]:51820` or
//! `gw-b.example.net:51820`.
//!
//! Parsing checks only the syntax; host names are resolved when the daemon calls
//! [`Endpoint::resolve`], never while loading the config (a DNS outage must not stop a restart
//! from reading its file, and the daemon decides when to re-resolve).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;

/// Why a string is not an endpoint. Every message includes an example of the right form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// No `:port` at the end.
    #[error("missing `:port` (e.g. gw-b.example.net:51820)")]
    MissingPort,
    /// An IPv6 literal without brackets, which is ambiguous with the port.
    #[error("IPv6 address must be in brackets (e.g. [fd00::2]:51820)")]
    UnbracketedIpv6,
    /// `[...]` that does not hold an IPv6 address, or is not followed by `:port`.
    #[error("`{0}` is not a bracketed IPv6 address and port (e.g. [fd00::2]:51820)")]
    BadBracketed(String),
    /// The port is not a number in 1-65535.
    #[error("port `{0}` is not a number in 1-65535")]
    BadPort(String),
    /// Port zero cannot be sent to.
    #[error("port 0 is not allowed; use the peer's listen-port (1-65535)")]
    PortZero,
    /// The host is neither an IP address nor a DNS name.
    #[error(
        "host `{0}` is not an IPv4 address or a DNS name (letters, digits, `-` and `.`, \
         labels of 1-63 characters)"
    )]
    BadHost(String),
}

/// A UDP endpoint: a host (IP literal or DNS name) and a port in 1-65535.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Endpoint {
    /// IP literal (IPv6 without brackets) or DNS name, as written.
    host: String,
    port: u16,
}

impl Endpoint {
    /// The host as written; an IPv6 literal is returned without its brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The UDP port (never 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket address if the host is an IP literal, `None` for a DNS name.
    pub fn ip(&self) -> Option<SocketAddr> {
        let ip: IpAddr = self.host.parse().ok()?;
        Some(SocketAddr::new(ip, self.port))
    }

    /// The addresses to send to: the literal itself without any lookup, or the result of a
    /// blocking system resolver query for a DNS name.
    pub fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        if let Some(addr) = self.ip() {
            return Ok(vec![addr]);
        }
        Ok((self.host.as_str(), self.port).to_socket_addrs()?.collect())
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(text: &str) -> Result<Self, EndpointError> {
        if let Some(rest) = text.strip_prefix('[') {
            let bad = || EndpointError::BadBracketed(text.to_owned());
            let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
            let v6: Ipv6Addr = inside.parse().map_err(|_| bad())?;
            let port = match after.strip_prefix(':') {
                Some(port) => parse_port(port)?,
                None if after.is_empty() => return Err(EndpointError::MissingPort),
                None => return Err(bad()),
            };
            return Ok(Self {
                host: v6.to_string(),
                port,
            });
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(EndpointError::MissingPort);
        };
        if host.contains(':') {
            return Err(EndpointError::UnbracketedIpv6);
        }
        let port = parse_port(port)?;
        if host.parse::<Ipv4Addr>().is_err() && !is_dns_name(host) {
            return Err(EndpointError::BadHost(host.to_owned()));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

fn parse_port(text: &str) -> Result<u16, EndpointError> {
    if text.is_empty() {
        return Err(EndpointError::MissingPort);
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EndpointError::BadPort(text.to_owned()));
    }
    match text.parse::<u16>() {
        Ok(0) => Err(EndpointError::PortZero),
        Ok(port) => Ok(port),
        Err(_) => Err(EndpointError::BadPort(text.to_owned())),
    }
}

/// A DNS host name: dot-separated labels of letters, digits and `-` (not at either end of a
/// label), an optional trailing dot, at most 253 characters, and a last label that is not all
/// digits (so a mistyped IPv4 address such as `198.18.0` is not sent to the resolver).
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    let last_is_numeric = host
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !last_is_numeric
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(text: &str) -> Endpoint {
        text.parse().unwrap()
    }

    #[test]
    fn parses_ipv4_literal() {
        let ep = e("198.18.0.2:51820");
        assert_eq!(ep.host(), "198.18.0.2");
        assert_eq!(ep.port(), 51820);
        assert_eq!(ep.ip(), Some("198.18.0.2:51820".parse().unwrap()));
        assert_eq!(ep.to_string(), "198.18.0.2:51820");
        assert_eq!(ep.resolve().unwrap(), vec![ep.ip().unwrap()]);
    }

    #[test]
    fn parses_bracketed_ipv6_literal() {
        let ep = e("[fd00::2]:51820");
        assert_eq!(ep.host(), "fd00::2");
        assert_eq!(ep.port(), 51820);
        assert_eq!(ep.ip(), Some("[fd00::2]:51820".parse().unwrap()));
        assert_eq!(ep.to_string(), "[fd00::2]:51820");
        assert_eq!(e(&ep.to_string()), ep);
        assert_eq!(ep.resolve().unwrap(), vec![ep.ip().unwrap()]);
    }

    #[test]
    fn parses_dns_name() {
        let ep = e("gw-b.example.net:51820");
        assert_eq!(ep.host(), "gw-b.example.net");
        assert_eq!(ep.port(), 51820);
        assert_eq!(ep.ip(), None);
        assert_eq!(ep.to_string(), "gw-b.example.net:51820");
        assert_eq!(e("localhost:1").host(), "localhost");
        assert_eq!(e("gw.example.net.:65535").port(), 65535);
    }

    #[test]
    fn resolves_localhost_through_the_system_resolver() {
        let addrs = e("localhost:51820").resolve().unwrap();
        assert!(!addrs.is_empty());
        assert!(addrs
            .iter()
            .all(|a| a.port() == 51820 && a.ip().is_loopback()));
    }

    #[test]
    fn rejects_bad_endpoints() {
        let err = |text: &str| text.parse::<Endpoint>().unwrap_err();
        assert_eq!(err("fd00::1:51820"), EndpointError::UnbracketedIpv6);
        assert_eq!(err("gw-b.example.net"), EndpointError::MissingPort);
        assert_eq!(err("198.18.0.2"), EndpointError::MissingPort);
        assert_eq!(err("198.18.0.2:"), EndpointError::MissingPort);
        assert_eq!(err("[fd00::2]"), EndpointError::MissingPort);
        assert_eq!(err("198.18.0.2:0"), EndpointError::PortZero);
        assert_eq!(err("[fd00::2]:0"), EndpointError::PortZero);
        assert_eq!(
            err("198.18.0.2:65536"),
            EndpointError::BadPort("65536".into())
        );
        assert_eq!(err("198.18.0.2:+1"), EndpointError::BadPort("+1".into()));
        assert_eq!(
            err("198.18.0:51820"),
            EndpointError::BadHost("198.18.0".into())
        );
        assert_eq!(
            err("gw_b.example:51820"),
            EndpointError::BadHost("gw_b.example".into())
        );
        assert_eq!(err(":51820"), EndpointError::BadHost("".into()));
        assert_eq!(
            err("-gw.example:51820"),
            EndpointError::BadHost("-gw.example".into())
        );
        assert!(matches!(
            err("[198.18.0.2]:1"),
            EndpointError::BadBracketed(_)
        ));
        assert!(matches!(
            err("[fd00::2]x:1"),
            EndpointError::BadBracketed(_)
        ));
        assert!(matches!(err("[fd00::2:1"), EndpointError::BadBracketed(_)));
        assert!(err("fd00::1:51820").to_string().contains("[fd00::2]:51820"));
    }
}
