//! Network interface names (`sl0`), checked against what the Linux kernel accepts.
//!
//! The kernel limits names to 15 bytes (IFNAMSIZ minus the NUL) and refuses `/`, whitespace,
//! `.` and `..`; we allow the same conservative set `wg-quick` does, so a name that parses here
//! also works as a file stem (`/etc/sitelink/sl0.toml`) and a socket name (`sl0.sock`).

use std::fmt;
use std::str::FromStr;

/// Why a string is not a usable interface name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterfaceNameError {
    /// The name is empty.
    #[error("interface name is empty; use 1-15 characters such as `sl0`")]
    Empty,
    /// The name is longer than the kernel allows.
    #[error("interface name `{0}` is {len} characters long; Linux allows at most 15", len = .0.chars().count())]
    TooLong(String),
    /// The name contains a character outside `[a-zA-Z0-9_=+.-]`.
    #[error("interface name `{name}` contains {ch:?}; use only letters, digits and `_=+.-`")]
    InvalidChar {
        /// The name as given.
        name: String,
        /// The first offending character.
        ch: char,
    },
    /// The name is `.` or `..`.
    #[error("interface name `{0}` is not allowed; `.` and `..` are reserved")]
    Reserved(String),
}

/// A Linux network interface name: 1-15 characters of `[a-zA-Z0-9_=+.-]`, not `.` or `..`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct InterfaceName(String);

impl InterfaceName {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for InterfaceName {
    type Err = InterfaceNameError;

    fn from_str(text: &str) -> Result<Self, InterfaceNameError> {
        if text.is_empty() {
            return Err(InterfaceNameError::Empty);
        }
        if let Some(ch) = text
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || "_=+.-".contains(c)))
        {
            return Err(InterfaceNameError::InvalidChar {
                name: text.to_owned(),
                ch,
            });
        }
        // Only ASCII remains, so bytes and characters agree.
        if text.len() > 15 {
            return Err(InterfaceNameError::TooLong(text.to_owned()));
        }
        if text == "." || text == ".." {
            return Err(InterfaceNameError::Reserved(text.to_owned()));
        }
        Ok(Self(text.to_owned()))
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for InterfaceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for InterfaceName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for InterfaceName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kernel_names() {
        for name in ["sl0", "wg-site_b", "a", "x=y+z.1", "123456789012345"] {
            let parsed: InterfaceName = name.parse().unwrap();
            assert_eq!(parsed.as_str(), name);
            assert_eq!(parsed.to_string(), name);
        }
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!("".parse::<InterfaceName>(), Err(InterfaceNameError::Empty));
        assert!(matches!(
            "1234567890123456".parse::<InterfaceName>(),
            Err(InterfaceNameError::TooLong(_))
        ));
        assert!(matches!(
            "sl/0".parse::<InterfaceName>(),
            Err(InterfaceNameError::InvalidChar { ch: '/', .. })
        ));
        assert!(matches!(
            "sl 0".parse::<InterfaceName>(),
            Err(InterfaceNameError::InvalidChar { ch: ' ', .. })
        ));
        assert!(matches!(
            "slé".parse::<InterfaceName>(),
            Err(InterfaceNameError::InvalidChar { ch: 'é', .. })
        ));
        assert!(matches!(
            ".".parse::<InterfaceName>(),
            Err(InterfaceNameError::Reserved(_))
        ));
        assert!(matches!(
            "..".parse::<InterfaceName>(),
            Err(InterfaceNameError::Reserved(_))
        ));
        assert_eq!(
            "1234567890123456"
                .parse::<InterfaceName>()
                .unwrap_err()
                .to_string(),
            "interface name `1234567890123456` is 16 characters long; Linux allows at most 15"
        );
    }
}
