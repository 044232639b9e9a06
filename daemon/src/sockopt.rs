//! Socket options set with a plain `setsockopt` (what std and socket2 do not cover, or what
//! needs CAP_NET_ADMIN): one checked wrapper, so that every call site states only what it
//! sets.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Sets an integer option.
pub fn set_int(
    fd: RawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    set(fd, level, option, &value)
}

/// Sets the receive (or, with `SO_SNDBUF*`, send) buffer past the `net.core.*mem_max` sysctl
/// with `force` (needs CAP_NET_ADMIN), else as far as `plain` allows. Returns whether either
/// took.
pub fn force_buffer(fd: RawFd, force: libc::c_int, plain: libc::c_int, size: usize) -> bool {
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    [force, plain]
        .into_iter()
        .any(|opt| set_int(fd, libc::SOL_SOCKET, opt, size).is_ok())
}

/// Sets `SO_RCVTIMEO`: a blocking receive gives up after `timeout`.
pub fn set_receive_timeout(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    set(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
}

/// Attaches a classic BPF program to a socket (`SO_ATTACH_FILTER`): the kernel runs it on
/// every datagram before it is queued, and drops those it returns 0 for.
pub fn attach_filter(fd: RawFd, program: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?,
        // The kernel only reads through this pointer (it copies the program).
        filter: program.as_ptr().cast_mut(),
    };
    set(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)
}

fn set<T>(fd: RawFd, level: libc::c_int, option: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: setsockopt on a descriptor the caller owns, with a pointer to a live `T` and its
    // exact size; the kernel copies the value and keeps no reference to it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
