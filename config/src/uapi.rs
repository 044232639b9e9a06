//! WireGuard cross-platform userspace API (UAPI) protocol: being written.
