//! Shared helpers for the benchmarks (none yet beyond the bench targets).
