//! Library part of `sitelinkd`: only its command-line definition (used by packaging to
//! generate the man page and completions). The daemon itself is the binary.

pub mod cli;
