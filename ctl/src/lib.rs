//! Library part of `sitelinkctl`: only its command-line definition (used by packaging to
//! generate the man page and completions). The tool itself is the binary.

pub mod cli;
