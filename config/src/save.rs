//! Writing the running peer set back into the config file ([`Config::save`]), and the atomic
//! file replacement it uses ([`write_atomic`]).
//!
//! Saving edits the file the user wrote rather than re-serializing the config: the current text
//! is parsed with `toml_edit`, each `[[peer]]` table is matched to a running peer by name (or,
//! for a renamed peer, by public key), only the values that differ are rewritten (keeping their
//! comments and spacing), tables of removed peers are dropped and new peers are appended. The
//! `[interface]` table is never touched, so the private key is never written, and a preshared
//! key is written inline only into a file that group and others cannot read.
//!
//! This module does not decide *whether* to save (the daemon does, on `--save` or
//! `sitelinkctl save`), and never creates or writes key files.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use foldhash::HashMap;

use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Key, Table, Value};

use crate::config::{check_structure, read_config_file};
use crate::error::Scope;
use crate::{Cidr, Config, ConfigError, Endpoint, Peer, PresharedKey, PublicKey};

impl Config {
    /// Writes [`Config::peers`] into the config file at [`Config::path`], keeping the file's
    /// comments, key order and formatting; the `[interface]` table is left as it is.
    ///
    /// The config is first checked with [`Config::validate`], and the file must still parse
    /// (TOML syntax, known keys). Then each `[[peer]]` table is matched to a peer by `name`, or
    /// failing that by `public-key` (a renamed peer keeps its table and comments). A matched
    /// table gets only the values that changed, each keeping its comments and spacing; an
    /// unmatched table is removed with its comments; peers without a table are appended in
    /// `peers` order, with keys in the order `name`, `public-key`, `preshared-key-file` (or
    /// `preshared-key`), `endpoint`, `allowed-ips`, `persistent-keepalive`.
    ///
    /// A peer with a [`Peer::preshared_key_file`] is saved with that path (and without an
    /// inline `preshared-key`). A preshared key without a file is kept inline only if the file
    /// already holds that very key inline or the file's mode gives group and others no access;
    /// otherwise saving fails, as the key must not land in a file others can read.
    ///
    /// The file is replaced with [`write_atomic`] (same mode and owner), or not at all if the
    /// text did not change. On error the file is unchanged.
    pub fn save(&self) -> Result<(), ConfigError> {
        self.validate()?;
        let path = self.path.as_path();
        let (text, mode) = read_config_file(path)?;
        check_structure(&text, path)?;
        let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
            ConfigError::file(path, format!("TOML syntax error: {}", e.message()))
        })?;
        let target = Target { path, mode };
        edit_peers(&mut doc, &self.peers, &target)?;
        let new_text = doc.to_string();
        if new_text == text {
            return Ok(());
        }
        write_atomic(path, new_text.as_bytes())
            .map_err(|e| ConfigError::file(path, "cannot save the config file").with_source(e))
    }
}

/// The file being saved into: names it in errors, and its mode decides whether a preshared key
/// may be written inline.
struct Target<'a> {
    path: &'a Path,
    mode: u32,
}

impl Target<'_> {
    fn readable_by_others(&self) -> bool {
        self.mode & 0o077 != 0
    }
}

// ---------------------------------------------------------------------------------------------
// Editing the document.

/// Every key save writes in a `[[peer]]` table, in the order a new table gets them.
const PEER_KEYS: [&str; 7] = [
    "name",
    "public-key",
    "preshared-key-file",
    "preshared-key",
    "endpoint",
    "allowed-ips",
    "persistent-keepalive",
];

/// Makes the document's `[[peer]]` tables say what `peers` says.
fn edit_peers(
    doc: &mut DocumentMut,
    peers: &[Arc<Peer>],
    target: &Target<'_>,
) -> Result<(), ConfigError> {
    let root = doc.as_table_mut();
    match root.get("peer") {
        None | Some(Item::ArrayOfTables(_)) => {}
        // `peer = []`: a valid way to write "no peers", replaced by `[[peer]]` tables.
        Some(Item::Value(Value::Array(array))) if array.is_empty() => {
            root.remove("peer");
        }
        Some(_) => {
            return Err(ConfigError::file(
                target.path,
                "peer: the peers are written as an inline array (peer = [...]), which save does \
                 not edit; rewrite them as [[peer]] tables and save again",
            ));
        }
    }
    if peers.is_empty() && !root.contains_key("peer") {
        return Ok(());
    }
    let tables = root
        .entry("peer")
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        // Checked above: `peer` is absent (just inserted) or an array of tables.
        .ok_or_else(|| ConfigError::file(target.path, "peer: expected [[peer]] tables"))?;

    let owners = match_tables(tables, peers);
    // Back to front, so that removing a table does not shift the ones still to visit.
    for index in (0..tables.len()).rev() {
        match owners[index] {
            None => {
                tables.remove(index);
            }
            Some(peer) => {
                if let Some(table) = tables.get_mut(index) {
                    update_table(table, &peers[peer], target)?;
                }
            }
        }
    }
    for (index, peer) in peers.iter().enumerate() {
        if owners.contains(&Some(index)) {
            continue;
        }
        let mut table = Table::new();
        update_table(&mut table, peer, target)?;
        tables.push(table);
    }
    Ok(())
}

/// For each table, the index of the peer it belongs to: the first table with a peer's name,
/// else (a renamed peer) the first remaining table with its public key.
fn match_tables(tables: &ArrayOfTables, peers: &[Arc<Peer>]) -> Vec<Option<usize>> {
    // Names and keys are unique among validated peers: one index each, looked up per table.
    let by_name: HashMap<&str, usize> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let by_key: HashMap<PublicKey, usize> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| (p.public_key, i))
        .collect();
    let mut owners: Vec<Option<usize>> = vec![None; tables.len()];
    let mut placed = vec![false; peers.len()];
    for (owner, table) in owners.iter_mut().zip(tables.iter()) {
        let Some(name) = table.get("name").and_then(Item::as_str) else {
            continue;
        };
        if let Some(&index) = by_name.get(name).filter(|&&i| !placed[i]) {
            *owner = Some(index);
            placed[index] = true;
        }
    }
    for (owner, table) in owners.iter_mut().zip(tables.iter()) {
        if owner.is_some() {
            continue;
        }
        let Some(key) = parsed::<PublicKey>(table.get("public-key")) else {
            continue;
        };
        if let Some(&index) = by_key.get(&key).filter(|&&i| !placed[i]) {
            *owner = Some(index);
            placed[index] = true;
        }
    }
    owners
}

/// Rewrites the values of `table` that differ from `peer`, in [`PEER_KEYS`] order (so an empty
/// table gets them in that order).
fn update_table(table: &mut Table, peer: &Peer, target: &Target<'_>) -> Result<(), ConfigError> {
    if table.get("name").and_then(Item::as_str) != Some(peer.name.as_str()) {
        put(table, "name", peer.name.as_str().into(), None);
    }
    if parsed::<PublicKey>(table.get("public-key")) != Some(peer.public_key) {
        put(
            table,
            "public-key",
            peer.public_key.to_string().into(),
            None,
        );
    }
    update_preshared_key(table, peer, target)?;
    match &peer.endpoint {
        None => {
            table.remove("endpoint");
        }
        Some(endpoint) if peer.more_endpoints.is_empty() => {
            if parsed::<Endpoint>(table.get("endpoint")).as_ref() != Some(endpoint) {
                put(table, "endpoint", endpoint.to_string().into(), None);
            }
        }
        Some(endpoint) => {
            let want: Vec<String> = std::iter::once(endpoint)
                .chain(&peer.more_endpoints)
                .map(Endpoint::to_string)
                .collect();
            let current: Option<Vec<String>> = table.get("endpoint").and_then(|item| {
                let array = item.as_array()?;
                array
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect()
            });
            if current.as_ref() != Some(&want) {
                let array: toml_edit::Array = want.iter().map(String::as_str).collect();
                put(table, "endpoint", Value::Array(array), None);
            }
        }
    }
    let current: Option<Vec<Cidr>> = table.get("allowed-ips").and_then(|item| {
        let array = item.as_array()?;
        array.iter().map(|v| v.as_str()?.parse().ok()).collect()
    });
    if current.as_deref() != Some(peer.allowed_ips.as_slice()) {
        let old = table.get("allowed-ips").and_then(Item::as_array);
        let array = allowed_ips_array(old, &peer.allowed_ips);
        put(table, "allowed-ips", Value::Array(array), None);
    }
    match peer.persistent_keepalive {
        None => {
            table.remove("persistent-keepalive");
        }
        Some(seconds) => {
            let current = table.get("persistent-keepalive").and_then(Item::as_integer);
            if current != Some(seconds.into()) {
                put(
                    table,
                    "persistent-keepalive",
                    i64::from(seconds).into(),
                    None,
                );
            }
        }
    }
    Ok(())
}

/// `preshared-key-file` if the peer has one; else the inline `preshared-key` if it is already
/// there or the file is private; else an error. Neither key if the peer has no preshared key.
fn update_preshared_key(
    table: &mut Table,
    peer: &Peer,
    target: &Target<'_>,
) -> Result<(), ConfigError> {
    let scope = || Scope::Peer {
        index: 0,
        name: Some(peer.name.clone()),
    };
    match (&peer.preshared_key_file, &peer.preshared_key) {
        (Some(file), _) => {
            let Some(file) = file.to_str() else {
                return Err(ConfigError::in_file(
                    target.path,
                    scope(),
                    "preshared-key-file",
                    format!(
                        "the path {} is not valid UTF-8, so it cannot be written to the config \
                         file; rename the key file",
                        file.display()
                    ),
                ));
            };
            if table.get("preshared-key-file").and_then(Item::as_str) != Some(file) {
                put(
                    table,
                    "preshared-key-file",
                    file.into(),
                    Some("preshared-key"),
                );
            }
            table.remove("preshared-key");
        }
        (None, Some(key)) => {
            let current = parsed::<PresharedKey>(table.get("preshared-key"));
            if current.is_some_and(|current| current.as_bytes() == key.as_bytes()) {
                table.remove("preshared-key-file");
                return Ok(());
            }
            if target.readable_by_others() {
                return Err(ConfigError::in_file(
                    target.path,
                    scope(),
                    "preshared-key",
                    format!(
                        "this peer's preshared key has no key file, and it cannot be saved into \
                         the config file, which group or others can read (mode {:04o}); put the \
                         key in a file only root can read and set the peer's preshared-key-file \
                         to it, or run: chmod 600 {}",
                        target.mode & 0o7777,
                        target.path.display()
                    ),
                ));
            }
            put(
                table,
                "preshared-key",
                key.expose_base64().into(),
                Some("preshared-key-file"),
            );
            table.remove("preshared-key-file");
        }
        (None, None) => {
            table.remove("preshared-key-file");
            table.remove("preshared-key");
        }
    }
    Ok(())
}

/// The value of `item` parsed as a `T`, if it is a string that parses.
fn parsed<T: std::str::FromStr>(item: Option<&Item>) -> Option<T> {
    item?.as_str()?.parse().ok()
}

/// Sets `key` to `value`. An existing value is replaced in place and its decor (spacing, the
/// comment after it) kept. Otherwise the value takes the place and decor of `replacing` if that
/// key is present (`preshared-key` becoming `preshared-key-file`), or goes after the last key
/// that comes before it in [`PEER_KEYS`] order, indented like its neighbour.
fn put(table: &mut Table, key: &str, mut value: Value, replacing: Option<&str>) {
    if let Some(Item::Value(old)) = table.get_mut(key) {
        *value.decor_mut() = old.decor().clone();
        *old = value;
        return;
    }
    let position = |table: &Table, key: &str| table.iter().position(|(k, _)| k == key);
    if let Some(replaced) = replacing {
        if let Some(index) = position(table, replaced) {
            let mut new_key = Key::new(key);
            if let Some((old_key, old_item)) = table.remove_entry(replaced) {
                *new_key.leaf_decor_mut() = old_key.leaf_decor().clone();
                if let Item::Value(old_value) = old_item {
                    *value.decor_mut() = old_value.decor().clone();
                }
            }
            insert_at(table, index, new_key, Item::Value(value));
            return;
        }
    }
    // A key already there but not a value (a sub-table) is replaced where it is.
    let index = position(table, key).unwrap_or_else(|| {
        let rank = |k: &str| PEER_KEYS.iter().position(|p| *p == k);
        let ours = rank(key);
        table
            .iter()
            .enumerate()
            .filter(|(_, (k, _))| rank(k) < ours)
            .map(|(i, _)| i + 1)
            .last()
            .unwrap_or(0)
    });
    table.remove(key);
    let mut new_key = Key::new(key);
    let neighbour = table
        .iter()
        .nth(index.saturating_sub(1))
        .map(|(k, _)| k.to_owned());
    if let Some(indent) = neighbour
        .and_then(|k| {
            table
                .key(&k)?
                .leaf_decor()
                .prefix()?
                .as_str()
                .map(indentation)
        })
        .filter(|indent| !indent.is_empty())
    {
        new_key.leaf_decor_mut().set_prefix(indent);
    }
    insert_at(table, index, new_key, Item::Value(value));
}

/// The spaces and tabs that end a decor prefix (the indentation of the key it belongs to).
fn indentation(prefix: &str) -> String {
    let last_line = prefix.rsplit('\n').next().unwrap_or("");
    if last_line.chars().all(|c| c == ' ' || c == '\t') {
        last_line.to_owned()
    } else {
        String::new()
    }
}

/// Inserts `key = item` as the `index`-th entry of `table`, keeping every entry's formatting.
fn insert_at(table: &mut Table, index: usize, key: Key, item: Item) {
    let after: Vec<String> = table
        .iter()
        .skip(index)
        .map(|(k, _)| k.to_owned())
        .collect();
    let moved: Vec<(Key, Item)> = after.iter().filter_map(|k| table.remove_entry(k)).collect();
    table.insert_formatted(&key, item);
    for (key, item) in moved {
        table.insert_formatted(&key, item);
    }
}

/// The new `allowed-ips` array. A one-line array is written afresh. In a multi-line one, an
/// entry that stays keeps its line: the text before it (indentation, comment lines above it)
/// and the rest of its line after the comma (a comment), which toml_edit stores in the *next*
/// entry's prefix; a new entry gets a line of its own, indented like the last one.
fn allowed_ips_array(old: Option<&Array>, cidrs: &[Cidr]) -> Array {
    let fresh = || cidrs.iter().map(ToString::to_string).collect::<Array>();
    let Some(old) = old else {
        return fresh();
    };
    let text =
        |raw: Option<&toml_edit::RawString>| raw.and_then(|r| r.as_str()).unwrap_or("").to_owned();
    let mut values: Vec<Value> = old.iter().cloned().collect();
    let mut trailing = text(Some(old.trailing()));
    // Without a trailing comma, the text between the last value and `]` is that value's
    // suffix: make it the trailing text, so the value can move without taking it along.
    if let Some(last) = values.last_mut().filter(|_| !old.trailing_comma()) {
        trailing = text(last.decor().suffix()) + &trailing;
        last.decor_mut().set_suffix("");
    }
    let prefixes: Vec<String> = values.iter().map(|v| text(v.decor().prefix())).collect();
    if !prefixes.iter().chain([&trailing]).any(|p| p.contains('\n')) {
        return fresh();
    }

    // Element i of the old array as (lead, value, tail): `lead` is its prefix after the end
    // of the previous line, `tail` the end of its own line (from the next prefix, or for the
    // last element from the trailing text). `head` ends the `[` line (in the trailing text of
    // an empty array).
    let (head, _) = split_line_end(prefixes.first().unwrap_or(&trailing));
    let mut lines: Vec<(String, &Value, String)> = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let (_, lead) = split_line_end(&prefixes[i]);
        let next = prefixes.get(i + 1).unwrap_or(&trailing);
        let (tail, _) = split_line_end(next);
        lines.push((lead.to_owned(), value, tail.to_owned()));
    }
    let (_, after_last) = split_line_end(&trailing);
    let indent = lines
        .last()
        .map_or_else(|| "    ".to_owned(), |(lead, _, _)| indentation(lead));

    let mut unused: Vec<Option<(String, &Value, String)>> = lines.into_iter().map(Some).collect();
    let mut array = Array::new();
    let mut line_end = head.to_owned();
    for cidr in cidrs {
        let kept = unused.iter_mut().find_map(|slot| {
            let (_, value, _) = slot.as_ref()?;
            let same = value.as_str().and_then(|s| s.parse::<Cidr>().ok()) == Some(*cidr);
            same.then(|| slot.take()).flatten()
        });
        let (lead, mut value, tail) = match kept {
            Some((lead, value, tail)) => (lead, value.clone(), tail),
            None => (
                indent.clone(),
                Value::from(cidr.to_string()),
                "\n".to_owned(),
            ),
        };
        value.decor_mut().set_prefix(format!("{line_end}{lead}"));
        array.push_formatted(value);
        line_end = tail;
    }
    array.set_trailing(format!("{line_end}{after_last}"));
    array.set_trailing_comma(old.trailing_comma());
    array
}

/// Splits decor text after its first newline: the end of the previous line, and the rest.
/// Text without a newline is all "rest".
fn split_line_end(text: &str) -> (&str, &str) {
    match text.find('\n') {
        Some(nl) => text.split_at(nl + 1),
        None => ("", text),
    }
}

// ---------------------------------------------------------------------------------------------
// Atomic replacement.

/// Replaces the file at `path` with `contents` so that a crash at any moment leaves either the
/// old file or the new one, never a mix.
///
/// Writes a temporary file `.<name>.tmp.<pid>` (created new) in the same directory with the
/// original's mode, owner and group (0600 and the caller's if there is no original), fsyncs it,
/// renames it over `path` and fsyncs the directory. A symlink at `path` is followed: its target
/// is replaced and the link kept. On error the temporary file is removed and `path` is
/// untouched, except when only the final directory fsync fails: then the new contents are in
/// place but may not survive a power loss, and the error says so.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_atomic_with(path, contents, |file, contents| file.write_all(contents))
}

/// [`write_atomic`] with the write itself done by `write`, so that tests can make it fail (or
/// panic) half-way.
fn write_atomic_with(
    path: &Path,
    contents: &[u8],
    write: impl FnOnce(&mut File, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let target = match fs::canonicalize(path) {
        Ok(target) => target,
        Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_owned(),
        Err(e) => return Err(step_error(e, format!("cannot resolve {}", path.display()))),
    };
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        ));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let original = match fs::metadata(&target) {
        Ok(metadata) => Some(metadata),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(step_error(e, format!("cannot stat {}", target.display()))),
    };
    // Opened before anything changes, so that after the rename only the fsync itself can fail.
    let dir_handle = File::open(dir)
        .map_err(|e| step_error(e, format!("cannot open directory {}", dir.display())))?;

    let (mut temp, mut file) = create_temp(dir, name)?;
    let shown = temp.path.display().to_string();
    if let Some(original) = &original {
        let ours = file
            .metadata()
            .map_err(|e| step_error(e, format!("cannot stat {shown}")))?;
        if (ours.uid(), ours.gid()) != (original.uid(), original.gid()) {
            std::os::unix::fs::fchown(&file, Some(original.uid()), Some(original.gid())).map_err(
                |e| {
                    step_error(
                        e,
                        format!(
                            "cannot give {shown} the owner {}:{} of {}",
                            original.uid(),
                            original.gid(),
                            target.display()
                        ),
                    )
                },
            )?;
        }
    }
    // After fchown, which clears set-id bits. Mode 0600 if there is no original.
    let mode = original
        .as_ref()
        .map_or(0o600, |m| m.permissions().mode() & 0o7777);
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(|e| step_error(e, format!("cannot set mode {mode:04o} on {shown}")))?;
    write(&mut file, contents).map_err(|e| step_error(e, format!("cannot write {shown}")))?;
    file.sync_all()
        .map_err(|e| step_error(e, format!("cannot sync {shown}")))?;
    drop(file);
    fs::rename(&temp.path, &target)
        .map_err(|e| step_error(e, format!("cannot rename {shown} to {}", target.display())))?;
    temp.renamed = true;
    dir_handle.sync_all().map_err(|e| {
        step_error(
            e,
            format!(
                "cannot sync directory {} after replacing {}; the new contents are in place but \
                 may not survive a power loss",
                dir.display(),
                target.display()
            ),
        )
    })
}

/// A temporary file that is removed when dropped unless it was renamed into place: on an
/// error and on a panic alike.
struct TempFile {
    path: PathBuf,
    renamed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.renamed {
            // Best effort: the error that got us here is the one worth reporting.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Creates `.<name>.tmp.<pid>` in `dir` (mode 0600 until the caller sets the final one), or
/// `.<name>.tmp.<pid>.<n>` if that exists (left by a crash, or another save in this process).
fn create_temp(dir: &Path, name: &std::ffi::OsStr) -> io::Result<(TempFile, File)> {
    const RETRIES: u32 = 100;
    let pid = std::process::id();
    let mut attempt = 0;
    loop {
        let mut temp_name = OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".tmp.{pid}"));
        if attempt > 0 {
            temp_name.push(format!(".{attempt}"));
        }
        let path = dir.join(temp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => {
                let temp = TempFile {
                    path,
                    renamed: false,
                };
                return Ok((temp, file));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < RETRIES => {
                attempt += 1;
            }
            Err(e) => {
                return Err(step_error(
                    e,
                    format!("cannot create temporary file {}", path.display()),
                ))
            }
        }
    }
}

/// One failed step of [`write_atomic`]: what was being done to which file, with the OS error
/// as its source (so `{:#}` prints `cannot write /etc/sitelink/.sl0.toml.tmp.42: No space left
/// on device (os error 28)`).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct StepError {
    message: String,
    #[source]
    source: io::Error,
}

fn step_error(source: io::Error, message: String) -> io::Error {
    io::Error::new(source.kind(), StepError { message, source })
}

#[cfg(test)]
mod tests;
