//! Route protocol numbers and names (`[interface] route-protocol`), as iproute2 knows them.
//!
//! A route's protocol field says who installed it; routing daemons select by it (BIRD's
//! `krt_source`, FRR's `redistribute kernel` with a route map on it). Names come from
//! iproute2's tables, `/etc/iproute2/rt_protos` and `/etc/iproute2/rt_protos.d/*.conf` (and
//! `/usr/share/iproute2/` on newer iproute2), read when the configuration is loaded; the
//! name "sitelink" is always known (the package also registers it there, so that `ip route`
//! shows it).

use std::path::Path;

use crate::config::WordOrNumber;
use crate::DEFAULT_ROUTE_PROTOCOL;

/// Where iproute2 keeps protocol names, in the order it reads them.
const TABLES: &[&str] = &["/etc/iproute2/rt_protos", "/usr/share/iproute2/rt_protos"];
const TABLE_DIRS: &[&str] = &[
    "/etc/iproute2/rt_protos.d",
    "/usr/share/iproute2/rt_protos.d",
];

/// Numbers the kernel and iproute2 reserve: not something to tag routes with.
fn reserved(n: u8) -> Option<&'static str> {
    match n {
        0 => Some("unspec"),
        1 => Some("redirect"),
        2 => Some("kernel"),
        _ => None,
    }
}

/// The protocol number of `raw` (0-255 or a name).
pub(crate) fn parse(raw: &WordOrNumber) -> Result<u8, String> {
    let n = match raw {
        WordOrNumber::Number(n) => u8::try_from(*n)
            .map_err(|_| format!("{n} is out of range; use a route protocol number 3-255 or a name from /etc/iproute2/rt_protos (default {DEFAULT_ROUTE_PROTOCOL}, \"sitelink\")"))?,
        WordOrNumber::Word(name) => lookup(name, &system_table()).ok_or_else(|| {
            format!(
                "{name:?} is not a route protocol name in /etc/iproute2/rt_protos or \
                 rt_protos.d/*.conf; use a number 3-255, a name listed there, or \"sitelink\" \
                 (the default, {DEFAULT_ROUTE_PROTOCOL})"
            )
        })?,
    };
    if let Some(what) = reserved(n) {
        return Err(format!(
            "{n} is the kernel's \"{what}\" protocol, not one to mark routes with; use 3-255 \
             (default {DEFAULT_ROUTE_PROTOCOL}, \"sitelink\")"
        ));
    }
    Ok(n)
}

/// The number of `name` in `table` (its text: `number name` lines, `#` comments), or the
/// built-in "sitelink"; a decimal or hex number given as a name is taken as the number.
pub fn lookup(name: &str, table: &str) -> Option<u8> {
    if name == "sitelink" {
        return Some(DEFAULT_ROUTE_PROTOCOL);
    }
    if let Ok(n) = name.parse::<u8>() {
        return Some(n);
    }
    table.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let (number, word) = (words.next()?, words.next()?);
        if word != name {
            return None;
        }
        match number.strip_prefix("0x") {
            Some(hex) => u8::from_str_radix(hex, 16).ok(),
            None => number.parse().ok(),
        }
    })
}

/// The name of protocol `n` in `table`, if it has one ("sitelink" for the default).
pub fn name_of(n: u8, table: &str) -> Option<String> {
    table
        .lines()
        .find_map(|line| {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let (number, word) = (words.next()?, words.next()?);
            (number.parse::<u8>().ok()? == n).then(|| word.to_string())
        })
        .or_else(|| (n == DEFAULT_ROUTE_PROTOCOL).then(|| "sitelink".to_string()))
}

/// The host's protocol tables, concatenated (files that are missing are skipped).
pub fn system_table() -> String {
    let mut text = String::new();
    let mut add = |path: &Path| {
        if let Ok(t) = std::fs::read_to_string(path) {
            text.push_str(&t);
            text.push('\n');
        }
    };
    for file in TABLES {
        add(Path::new(file));
    }
    for dir in TABLE_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "conf"))
            .collect();
        files.sort();
        for f in files {
            add(&f);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str =
        "# Reserved protocols.\n0\tunspec\n4\tstatic\n12\tbird\n186 bgp # FRR\n0x99 hexproto\n";

    #[test]
    fn names_numbers_and_the_builtin() {
        assert_eq!(lookup("bird", TABLE), Some(12));
        assert_eq!(lookup("bgp", TABLE), Some(186));
        assert_eq!(lookup("hexproto", TABLE), Some(0x99));
        assert_eq!(lookup("sitelink", ""), Some(52));
        assert_eq!(lookup("77", ""), Some(77));
        assert_eq!(lookup("Reserved", TABLE), None);
        assert_eq!(lookup("nosuch", TABLE), None);
        assert_eq!(name_of(12, TABLE).as_deref(), Some("bird"));
        assert_eq!(name_of(52, TABLE).as_deref(), Some("sitelink"));
        assert_eq!(name_of(53, TABLE), None);
    }

    #[test]
    fn reserved_and_out_of_range_numbers_are_refused() {
        for n in [0, 1, 2] {
            let e = parse(&WordOrNumber::Number(n)).unwrap_err();
            assert!(e.contains("kernel's"), "{e}");
        }
        let e = parse(&WordOrNumber::Number(256)).unwrap_err();
        assert!(e.contains("256 is out of range"), "{e}");
        let e = parse(&WordOrNumber::Word("nosuch".into())).unwrap_err();
        assert!(e.contains("\"nosuch\" is not a route protocol name"), "{e}");
        assert_eq!(parse(&WordOrNumber::Number(200)), Ok(200));
        assert_eq!(parse(&WordOrNumber::Word("sitelink".into())), Ok(52));
    }
}
