//! Writes the man pages and shell completions of `sitelinkd` and `sitelinkctl` for the
//! Debian package, from the same clap definitions the binaries parse their arguments with
//! (`sitelinkd::cli::Args`, `sitelinkctl::cli::Args`), so they cannot drift apart.
//!
//! Owns: the generated files' layout under the output directory, the sections the clap
//! definitions cannot express (FILES, ENVIRONMENT, SEE ALSO, ...) and the man sections
//! (sitelinkd is in /usr/sbin: section 8; sitelinkctl is in /usr/bin: section 1, per Debian
//! policy 12.1). Does not own: the options themselves (daemon/src/cli.rs, ctl/src/cli.rs) or
//! where the files are installed (`[package.metadata.deb]` in daemon/Cargo.toml).
//!
//! Output (default `target/assets`, relative to the working directory):
//! ```text
//! man/sitelinkd.8  man/sitelinkctl.1
//! completions/bash/{sitelinkd,sitelinkctl}
//! completions/zsh/{_sitelinkd,_sitelinkctl}
//! completions/fish/{sitelinkd,sitelinkctl}.fish
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Arg, Command, CommandFactory, Parser};
use clap_complete::Shell;
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use clap_mangen::Man;

/// Writes man pages and shell completions for sitelinkd and sitelinkctl.
#[derive(Debug, Parser)]
#[command(name = "sitelink-packaging-assets", version, about)]
struct Args {
    /// Where to write (created if missing; existing files are replaced).
    #[arg(long, value_name = "DIR", default_value = "target/assets")]
    out_dir: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let written = write_all(&args.out_dir)?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

/// One program: its command definition, its man section and its hand-written sections.
struct Program {
    cmd: Command,
    section: &'static str,
    manual: &'static str,
    /// The DESCRIPTION section (the clap `about` is a one-line summary, used for NAME).
    description: &'static str,
    extra: fn(&mut Roff),
}

fn write_all(out: &Path) -> Result<Vec<PathBuf>> {
    let programs = [
        Program {
            cmd: sitelinkd::cli::Args::command(),
            section: "8",
            manual: "System Manager's Manual",
            description: "sitelinkd joins the LANs of two or more sites with an encrypted \
                tunnel. It speaks the WireGuard protocol (keys pinned on both sides, replay \
                protection, forward secrecy), so stock WireGuard peers interoperate with it. \
                One sitelinkd process serves one interface, configured by one TOML file; \
                sitelinkctl(1) manages keys and the running tunnel.",
            extra: sitelinkd_sections,
        },
        Program {
            cmd: sitelinkctl::cli::Args::command(),
            section: "1",
            manual: "User Commands",
            description: "sitelinkctl creates keys and shows and changes a running sitelinkd(8) \
                through its control socket: peers can be added, changed and removed without \
                disturbing the others, and the configuration file can be re-read or written \
                back. --interface may be omitted when only one interface runs.",
            extra: sitelinkctl_sections,
        },
    ];
    let mut written = Vec::new();
    for program in programs {
        written.push(write_man_page(out, &program)?);
        written.extend(write_completions(out, &program.cmd)?);
    }
    Ok(written)
}

fn write_man_page(out: &Path, program: &Program) -> Result<PathBuf> {
    // The `help` subcommand is clap's own; the page documents --help instead.
    let mut cmd = program
        .cmd
        .clone()
        .disable_help_subcommand(true)
        .long_about(program.description);
    cmd.build();
    let name = cmd.get_name().to_string();
    let man = Man::new(cmd.clone())
        .title(name.to_uppercase())
        .section(program.section)
        .manual(program.manual)
        .date(man_date()?);

    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    let mut roff = Roff::new();
    if cmd.has_subcommands() {
        roff.control("SH", ["COMMANDS"]);
        commands(&mut roff, &cmd);
    }
    (program.extra)(&mut roff);
    roff.to_writer(&mut page)?;
    man.render_version_section(&mut page)?;

    let path = out.join("man").join(man.get_filename());
    write_file(&path, &page)?;
    Ok(path)
}

/// Every (sub)command with its usage, description and options; nested commands follow
/// their parent ("sitelinkctl peer add" after "sitelinkctl peer").
fn commands(roff: &mut Roff, cmd: &Command) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let full_name = sub.get_bin_name().unwrap_or_else(|| sub.get_name());
        roff.control("SS", [full_name]);
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            roff.text([roman(about.to_string())]);
        }
        if !sub.has_subcommands() {
            let usage = sub.clone().render_usage().to_string();
            let usage = usage.strip_prefix("Usage: ").unwrap_or(&usage).to_string();
            roff.control("PP", []);
            roff.text([bold(usage)]);
        }
        // Global options (--interface) are in OPTIONS once, not under every command.
        let own_args = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !a.is_global_set() && !is_builtin(a));
        for arg in own_args {
            roff.control("TP", []);
            roff.text(arg_label(arg));
            if let Some(help) = arg.get_long_help().or_else(|| arg.get_help()) {
                roff.text([roman(help.to_string())]);
            }
        }
        commands(roff, sub);
    }
}

/// --help and --version are on every command; the OPTIONS section covers them once.
fn is_builtin(arg: &Arg) -> bool {
    matches!(arg.get_id().as_str(), "help" | "version")
}

/// `-i, --interface NAME` or `NAME` for a positional.
fn arg_label(arg: &Arg) -> Vec<Inline> {
    let value = arg
        .get_value_names()
        .map(|names| {
            names
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
    if arg.is_positional() {
        return vec![italic(value)];
    }
    let mut label = Vec::new();
    if let Some(short) = arg.get_short() {
        label.push(bold(format!("-{short}")));
    }
    if let Some(long) = arg.get_long() {
        if !label.is_empty() {
            label.push(roman(", "));
        }
        label.push(bold(format!("--{long}")));
    }
    if arg.get_action().takes_values() {
        label.push(roman(" "));
        label.push(italic(value));
    }
    label
}

fn sitelinkd_sections(roff: &mut Roff) {
    section(
        roff,
        "OPERATION",
        &[
            "sitelinkd runs one tunnel interface in the foreground and logs to stderr (the \
             journal under systemd). It creates the TUN interface, sets its MTU and addresses, \
             brings it up and routes each peer's allowed-ips into it over netlink. SIGHUP \
             re-reads the configuration and applies only the difference; SIGTERM and SIGINT \
             remove what it added and exit 0. It needs CAP_NET_ADMIN.",
            "Under systemd it runs as sitelinkd@NAME.service (user sitelink, CAP_NET_ADMIN as \
             its only capability, Type=notify with watchdog): \"systemctl enable --now \
             sitelinkd@NAME\" starts the interface configured in /etc/sitelink/NAME.toml, \
             \"systemctl reload sitelinkd@NAME\" applies configuration changes and reports \
             whether they were accepted, \"systemctl restart sitelink.target\" restarts all \
             instances.",
        ],
    );
    section(
        roff,
        "ENVIRONMENT",
        &[
            "RUST_LOG overrides the log level set by -v.",
            "SITELINK_RUN_DIR moves the control socket directory (default /run/sitelink).",
            "CREDENTIALS_DIRECTORY: if it holds a file private-key (systemd's \
             LoadCredential=private-key:PATH), that key is used instead of the configured one.",
        ],
    );
    files(roff);
    section(
        roff,
        "SEE ALSO",
        &["sitelinkctl(1), wg(8), systemd.service(5), /usr/share/doc/sitelink/"],
    );
}

fn sitelinkctl_sections(roff: &mut Roff) {
    section(
        roff,
        "NOTES",
        &[
            "Changes made with peer add, set and remove are validated like the configuration \
             file and refused whole, with the reason, if invalid. With --save (and save) the \
             daemon writes them back into its configuration file, keeping comments. A daemon \
             run by sitelinkd@.service cannot write /etc/sitelink, so there saving fails with \
             a permission error: edit the file and run \"systemctl reload sitelinkd@NAME\" \
             instead.",
            "The control socket serves root, the daemon's user and members of the \
             configuration's control-group (under sitelinkd@.service: control-group = \
             \"sitelink\", and operators in group sitelink); everyone else is refused.",
        ],
    );
    files(roff);
    section(roff, "SEE ALSO", &["sitelinkd(8), wg(8)"]);
}

fn files(roff: &mut Roff) {
    roff.control("SH", ["FILES"]);
    for (path, what) in [
        (
            "/etc/sitelink/NAME.toml",
            "Configuration of interface NAME.",
        ),
        (
            "/etc/sitelink/NAME.key",
            "Its private key (mode 0600), handed to the daemon by systemd's LoadCredential=.",
        ),
        (
            "/run/sitelink/NAME.sock",
            "Control socket used by sitelinkctl (one JSON request per connection).",
        ),
        (
            "/run/wireguard/NAME.sock",
            "WireGuard userspace API socket, for wg(8).",
        ),
    ] {
        roff.control("TP", []);
        roff.text([italic(path)]);
        roff.text([roman(what)]);
    }
}

fn section(roff: &mut Roff, title: &str, paragraphs: &[&str]) {
    roff.control("SH", [title]);
    for (i, text) in paragraphs.iter().enumerate() {
        if i > 0 {
            roff.control("PP", []);
        }
        roff.text([roman(*text)]);
    }
}

fn write_completions(out: &Path, cmd: &Command) -> Result<Vec<PathBuf>> {
    let name = cmd.get_name().to_string();
    let mut written = Vec::new();
    for (shell, dir, file) in [
        (Shell::Bash, "bash", name.clone()),
        (Shell::Zsh, "zsh", format!("_{name}")),
        (Shell::Fish, "fish", format!("{name}.fish")),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), &name, &mut script);
        let path = out.join("completions").join(dir).join(file);
        write_file(&path, &script)?;
        written.push(path);
    }
    Ok(written)
}

fn write_file(path: &Path, contents: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file =
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The man pages' date, YYYY-MM-DD: from SOURCE_DATE_EPOCH for reproducible builds
/// (build-deb.sh sets it from the Debian changelog), else today. (An empty date would shift
/// the other .TH fields: clap_mangen writes it as an empty word.)
fn man_date() -> Result<String> {
    let secs = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => epoch
            .trim()
            .parse::<i64>()
            .with_context(|| format!("SOURCE_DATE_EPOCH={epoch:?} is not a number of seconds"))?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
    };
    let (y, m, d) = sitelinkctl::civil_from_days(secs.div_euclid(86_400));
    Ok(format!("{y:04}-{m:02}-{d:02}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_page_and_completion_with_content() {
        let out = std::env::temp_dir().join(format!("sitelink-assets-{}", std::process::id()));
        let written = write_all(&out).expect("assets are written");
        let names: Vec<String> = written
            .iter()
            .map(|p| {
                p.strip_prefix(&out)
                    .expect("under out")
                    .display()
                    .to_string()
            })
            .collect();
        for want in [
            "man/sitelinkd.8",
            "man/sitelinkctl.1",
            "completions/bash/sitelinkd",
            "completions/zsh/_sitelinkctl",
            "completions/fish/sitelinkctl.fish",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        let ctl = fs::read_to_string(out.join("man/sitelinkctl.1")).expect("page");
        let th = ctl
            .lines()
            .find(|l| l.starts_with(".TH "))
            .expect(".TH line");
        assert!(th.starts_with(".TH SITELINKCTL 1 20"), "{th}");
        assert!(
            th.ends_with(" \"sitelinkctl 0.1.0\" \"User Commands\""),
            "{th}"
        );
        // Nested commands and their options are documented, not only listed.
        assert!(ctl.contains("sitelinkctl peer add"));
        assert!(ctl.contains("persistent\\-keepalive"));
        let daemon = fs::read_to_string(out.join("man/sitelinkd.8")).expect("page");
        assert!(daemon.contains(".SH FILES") && daemon.contains("/etc/sitelink/NAME.toml"));
        let bash = fs::read_to_string(out.join("completions/bash/sitelinkctl")).expect("bash");
        assert!(bash.contains("complete -F") && bash.contains("genkey"));
        fs::remove_dir_all(&out).expect("cleanup");
    }
}
