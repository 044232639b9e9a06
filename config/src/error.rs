//! [`ConfigError`]: one problem with a config file, located by file, line, column, section
//! (`interface` or `peer "site-b"`) and key, worded as what is wrong and how to fix it; or one
//! problem with a live change (no file, no line: `peer "site-c": allowed-ips: ...`).
//!
//! Also owns the translation of toml/serde messages (`missing field`, `unknown field`,
//! `invalid type`) into that form, and the byte-offset to line:column arithmetic. It never sees
//! key material: callers build messages from key *errors*, not key text, and serde's
//! `invalid type: string "..."` is rewritten without the string.

use std::fmt::{self, Write as _};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

/// Why a config file could not be loaded or saved, or why a live change was refused.
///
/// `Display` gives `path[:line:col]: [section: ][key: ]message`, e.g.
/// `/etc/sitelink/sl0.toml:12:14: peer "site-b": public-key: decodes to 31 bytes, expected 32 (…)`.
/// A live-change error ([`ConfigError::live_peer`], [`ConfigError::live_interface`],
/// [`Config::validate`](crate::Config::validate)) has no path and gives
/// `[section: ][key: ]message`.
/// An I/O failure keeps the OS error as [`std::error::Error::source`]; print the chain (`{:#}`
/// with anyhow) to see it.
#[derive(Debug)]
pub struct ConfigError(Box<Details>);

/// Boxed so that `Result<_, ConfigError>` stays one pointer wide on the happy path.
#[derive(Debug)]
struct Details {
    /// `None` for a live change, which has no file.
    path: Option<PathBuf>,
    position: Option<(usize, usize)>,
    scope: Option<Scope>,
    key: Option<String>,
    message: String,
    source: Option<io::Error>,
}

/// The section of the config an error belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    Interface,
    /// A `[[peer]]` table: its 0-based position, and its name once known.
    Peer {
        index: usize,
        name: Option<String>,
    },
}

impl ConfigError {
    /// The config file the error is about (as passed to `load`/`parse`); empty for a live-change
    /// error, which is about no file.
    pub fn path(&self) -> &Path {
        self.0.path.as_deref().unwrap_or(Path::new(""))
    }

    /// The 1-based line of the offending key or value, if the error has a place in the file.
    pub fn line(&self) -> Option<usize> {
        self.0.position.map(|(line, _)| line)
    }

    /// The 1-based column (in characters) of the offending key or value.
    pub fn column(&self) -> Option<usize> {
        self.0.position.map(|(_, column)| column)
    }

    /// The config key involved (`public-key`, `allowed-ips`, ...), if any.
    pub fn key(&self) -> Option<&str> {
        self.0.key.as_deref()
    }

    /// The name of the peer involved, if the error is inside a named `[[peer]]`.
    pub fn peer(&self) -> Option<&str> {
        match &self.0.scope {
            Some(Scope::Peer {
                name: Some(name), ..
            }) => Some(name),
            _ => None,
        }
    }

    /// An error about a live change to the `[interface]` settings (no file, no line), in the
    /// same shape as [`Config::validate`](crate::Config::validate)'s: `interface: key: message`.
    /// An empty `key` is left out.
    pub fn live_interface(key: &str, message: impl Into<String>) -> Self {
        Self::live(Scope::Interface, key, message)
    }

    /// An error about a live change to the peer named `peer` (no file, no line), in the same
    /// shape as [`Config::validate`](crate::Config::validate)'s:
    /// `peer "site-c": key: message`. An empty `key` is left out.
    pub fn live_peer(peer: &str, key: &str, message: impl Into<String>) -> Self {
        let scope = Scope::Peer {
            index: 0,
            name: Some(peer.to_owned()),
        };
        Self::live(scope, key, message)
    }

    /// A live-change error in any scope.
    pub(crate) fn live(scope: Scope, key: &str, message: impl Into<String>) -> Self {
        Self(Box::new(Details {
            path: None,
            position: None,
            scope: Some(scope),
            key: (!key.is_empty()).then(|| key.to_owned()),
            message: message.into(),
            source: None,
        }))
    }

    /// An error about a section and key of the file at `path` without a place in its text
    /// (saving the running config into it).
    pub(crate) fn in_file(
        path: &Path,
        scope: Scope,
        key: &str,
        message: impl Into<String>,
    ) -> Self {
        Self(Box::new(Details {
            path: Some(path.to_owned()),
            position: None,
            scope: Some(scope),
            key: Some(key.to_owned()),
            message: message.into(),
            source: None,
        }))
    }

    /// An error about the file as a whole (reading it, its permissions).
    pub(crate) fn file(path: &Path, message: impl Into<String>) -> Self {
        Self(Box::new(Details {
            path: Some(path.to_owned()),
            position: None,
            scope: None,
            key: None,
            message: message.into(),
            source: None,
        }))
    }

    pub(crate) fn with_source(mut self, source: io::Error) -> Self {
        self.0.source = Some(source);
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.0.path {
            write!(f, "{}", path.display())?;
            if let Some((line, column)) = self.0.position {
                write!(f, ":{line}:{column}")?;
            }
            f.write_str(": ")?;
        }
        match &self.0.scope {
            None => {}
            Some(Scope::Interface) => f.write_str("interface: ")?,
            Some(Scope::Peer {
                name: Some(name), ..
            }) => write!(f, "peer {name:?}: ")?,
            Some(Scope::Peer { index, name: None }) => write!(f, "peer #{}: ", index + 1)?,
        }
        if let Some(key) = &self.0.key {
            write_escaped(f, key)?;
            f.write_str(": ")?;
        }
        write_escaped(f, &self.0.message)
    }
}

/// Writes `text` with control characters escaped, so that text from the config file (a key
/// name, a CIDR) cannot break an error into several log lines.
fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    for c in text.chars() {
        if c.is_control() {
            write!(f, "{}", c.escape_debug())?;
        } else {
            f.write_char(c)?;
        }
    }
    Ok(())
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The config text being parsed and where it came from: turns byte spans into located errors.
#[derive(Clone, Copy)]
pub(crate) struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl<'a> Source<'a> {
    /// An error at `span` of the text.
    pub fn error(
        &self,
        span: Range<usize>,
        scope: Scope,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError(Box::new(Details {
            path: Some(self.path.to_owned()),
            position: Some(line_col(self.text, span.start)),
            scope: Some(scope),
            key: Some(key.to_owned()),
            message: message.into(),
            source: None,
        }))
    }

    /// A TOML syntax error, with toml's own message but without its source excerpt (which
    /// could echo a key).
    pub fn syntax_error(&self, error: &toml::de::Error) -> ConfigError {
        ConfigError(Box::new(Details {
            path: Some(self.path.to_owned()),
            position: Some(line_col(
                self.text,
                error.span().map_or(0, |span| span.start),
            )),
            scope: None,
            key: None,
            message: format!("TOML syntax error: {}", error.message()),
            source: None,
        }))
    }

    /// A structural error from deserializing the raw config (unknown or missing key, wrong
    /// type), reworded and placed in its section.
    pub fn serde_error(&self, error: &toml::de::Error) -> ConfigError {
        let offset = error.span().map_or(0, |span| span.start);
        let message = error.message();
        let place = if message == "missing field `interface`" {
            // Reported at the root table's span, which may overlap the first `[[peer]]`.
            Place::default()
        } else {
            locate(self.text, offset)
        };
        let (key, message) = if let Some(rest) = message.strip_prefix("missing field `") {
            let (key, _) = rest.split_once('`').unwrap_or((rest, ""));
            let hint = missing_key_hint(key);
            (
                Some(key.to_owned()),
                format!("required key is missing; {hint}"),
            )
        } else if let Some(rest) = message.strip_prefix("unknown field `") {
            let (key, allowed) = rest.split_once('`').unwrap_or((rest, ""));
            let allowed = allowed.trim_start_matches(", ");
            (Some(key.to_owned()), format!("unknown key; {allowed}"))
        } else if let Some(rest) = message.strip_prefix("invalid type: ") {
            (place.key, wrong_type(rest, place.found))
        } else {
            (place.key, message.to_owned())
        };
        ConfigError(Box::new(Details {
            path: Some(self.path.to_owned()),
            position: Some(line_col(self.text, offset)),
            scope: place.scope,
            key,
            message,
            source: None,
        }))
    }

    /// An error about the document's shape that serde would report confusingly (a struct can
    /// be deserialized from an array, so `[[interface]]` would complain about `name`).
    pub fn shape_error(&self, span: Range<usize>, key: &str, message: String) -> ConfigError {
        ConfigError(Box::new(Details {
            path: Some(self.path.to_owned()),
            position: Some(line_col(self.text, span.start)),
            scope: None,
            key: Some(key.to_owned()),
            message,
            source: None,
        }))
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn missing_key_hint(key: &str) -> &'static str {
    match key {
        "interface" => {
            "add an [interface] table with at least private-key-file = \"/etc/sitelink/sl0.key\""
        }
        "name" => "give every [[peer]] a unique name such as name = \"site-b\"",
        "public-key" => {
            "set it to the remote site's public key (44 base64 characters, from \
             `sitelinkctl pubkey` on that site)"
        }
        "allowed-ips" => {
            "list the destinations routed to this peer, e.g. allowed-ips = [\"198.19.2.0/24\"] \
             (an empty list is allowed)"
        }
        _ => "add it",
    }
}

/// Rewords serde's `<found>, expected <expected>` in TOML terms. `found` is the TOML type
/// of the offending value when known; serde's description is used otherwise, minus the
/// contents of strings.
fn wrong_type(rest: &str, found: Option<&'static str>) -> String {
    let (serde_found, expected) = rest
        .rsplit_once(", expected ")
        .unwrap_or((rest, "another type"));
    let found = match found {
        Some(found) => found,
        None if serde_found.starts_with("string") => "a string",
        None if serde_found == "map" => "a table",
        None if serde_found == "sequence" => "an array",
        None => serde_found,
    };
    let expected = match expected {
        "a sequence" => "an array",
        e => e,
    };
    format!("wrong type: expected {expected}, found {found}")
}

/// A TOML value's type with its article, as in "found an integer".
pub(crate) fn describe(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Where in the document an offset lies.
#[derive(Default)]
struct Place {
    scope: Option<Scope>,
    /// The key whose key or value text covers the offset.
    key: Option<String>,
    /// The type of the value (or array element) starting at the offset.
    found: Option<&'static str>,
}

/// Finds the section and key whose text covers `offset`, for errors that toml reports with a
/// span only. Finds nothing for offsets outside any key (e.g. a missing `[interface]`).
fn locate(text: &str, offset: usize) -> Place {
    let Ok(root) = DeTable::parse(text) else {
        return Place::default();
    };
    for (key, value) in root.get_ref() {
        let name: &str = key.get_ref();
        match (name, value.get_ref()) {
            ("interface", DeValue::Table(table)) => {
                if let Some((key, found)) = locate_in_table(table, value.span(), offset) {
                    return Place {
                        scope: Some(Scope::Interface),
                        key,
                        found,
                    };
                }
            }
            ("peer", DeValue::Array(peers)) => {
                for (index, peer) in peers.iter().enumerate() {
                    let DeValue::Table(table) = peer.get_ref() else {
                        continue;
                    };
                    if let Some((key, found)) = locate_in_table(table, peer.span(), offset) {
                        let name = table.iter().find_map(|(k, v)| {
                            (k.get_ref() == "name").then(|| v.get_ref().as_str())?
                        });
                        let scope = Scope::Peer {
                            index,
                            name: name.map(str::to_owned),
                        };
                        return Place {
                            scope: Some(scope),
                            key,
                            found,
                        };
                    }
                }
            }
            _ => {}
        }
        if covers(&key.span(), offset) || covers(&value.span(), offset) {
            return Place {
                scope: None,
                key: Some(name.to_owned()),
                found: found_at(value, offset),
            };
        }
    }
    Place::default()
}

/// `Some((Some(key), found))` if `offset` is in a key or value of `table`, `Some((None, None))`
/// if it is in the table's own span (its `[header]`), `None` otherwise.
fn locate_in_table(
    table: &DeTable<'_>,
    span: Range<usize>,
    offset: usize,
) -> Option<(Option<String>, Option<&'static str>)> {
    for (key, value) in table {
        if covers(&key.span(), offset) || covers(&value.span(), offset) {
            let name: &str = key.get_ref();
            return Some((Some(name.to_owned()), found_at(value, offset)));
        }
    }
    covers(&span, offset).then_some((None, None))
}

/// The type of `value`, or of its array element, that starts at `offset`.
fn found_at(value: &toml::Spanned<DeValue<'_>>, offset: usize) -> Option<&'static str> {
    if value.span().start == offset {
        return Some(describe(value.get_ref()));
    }
    let array = value.get_ref().as_array()?;
    array
        .iter()
        .find(|element| element.span().start == offset)
        .map(|element| describe(element.get_ref()))
}

fn covers(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_lines_and_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 4), (1, 5));
        assert_eq!(line_col(text, 6), (2, 1));
        // `é` is two bytes but one column, so `=` at byte 10 is column 4.
        assert_eq!(line_col(text, 10), (2, 4));
        assert_eq!(line_col(text, 8), (2, 2), "inside a character rounds down");
        assert_eq!(line_col(text, 999), (3, 1));
    }

    #[test]
    fn display_has_every_part() {
        let source = Source {
            path: Path::new("/etc/sitelink/sl0.toml"),
            text: "x\ny\n",
        };
        let error = source.error(
            2..3,
            Scope::Peer {
                index: 0,
                name: Some("site-b".into()),
            },
            "endpoint",
            "bad",
        );
        assert_eq!(
            error.to_string(),
            "/etc/sitelink/sl0.toml:2:1: peer \"site-b\": endpoint: bad"
        );
        assert_eq!(error.line(), Some(2));
        assert_eq!(error.column(), Some(1));
        assert_eq!(error.key(), Some("endpoint"));
        assert_eq!(error.peer(), Some("site-b"));
        let error = source.error(
            0..1,
            Scope::Peer {
                index: 2,
                name: None,
            },
            "name",
            "bad",
        );
        assert_eq!(
            error.to_string(),
            "/etc/sitelink/sl0.toml:1:1: peer #3: name: bad"
        );
        let error = source.error(0..0, Scope::Interface, "a\nb", "c\td");
        assert_eq!(
            error.to_string(),
            "/etc/sitelink/sl0.toml:1:1: interface: a\\nb: c\\td"
        );
        let error = ConfigError::file(Path::new("/x.toml"), "cannot read config file");
        assert_eq!(error.to_string(), "/x.toml: cannot read config file");
        assert_eq!(error.line(), None);
    }

    #[test]
    fn wrong_type_hides_strings() {
        assert_eq!(
            wrong_type("string \"secret\", expected an integer", None),
            "wrong type: expected an integer, found a string"
        );
        assert_eq!(
            wrong_type("integer `5`, expected a sequence", None),
            "wrong type: expected an array, found integer `5`"
        );
        assert_eq!(
            wrong_type("map, expected an integer", Some("a date-time")),
            "wrong type: expected an integer, found a date-time"
        );
    }
}
