//! TCP MSS clamping (`[interface] mss-clamp`, default on): the MSS option of TCP SYN and
//! SYN-ACK packets crossing the tunnel, both ways, is lowered to fit the tunnel MTU, so that
//! LAN hosts with MTU 1500 never send segments the tunnel cannot carry, even where the ICMP
//! "fragmentation needed" / "packet too big" that path MTU discovery relies on is filtered.
//! What `iptables ... -j TCPMSS --clamp-mss-to-pmtu` does for wg-quick users, without rules.
//!
//! Pure and allocation-free: a few byte checks per packet; only SYNs are touched, with the
//! TCP checksum updated incrementally (RFC 1624).

/// Lowers the MSS option of a TCP SYN in `packet` (an IPv4 or IPv6 packet) to what fits
/// `mtu` (MTU − 40 for IPv4, − 60 for IPv6). Returns whether the packet was changed. Anything
/// that is not a well-formed first-fragment TCP SYN with an MSS option is left alone.
pub fn clamp(packet: &mut [u8], mtu: u16) -> bool {
    let (tcp, max) = match packet.first().map(|b| b >> 4) {
        Some(4) => {
            if packet.len() < 20 || packet[9] != 6 {
                return false;
            }
            // A later fragment has no TCP header; the first one (offset 0) does.
            if u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff != 0 {
                return false;
            }
            (usize::from(packet[0] & 0x0f) * 4, mtu.saturating_sub(40))
        }
        // Extension headers before TCP are rare on SYNs and are left alone.
        Some(6) if packet.len() >= 40 && packet[6] == 6 => (40, mtu.saturating_sub(60)),
        _ => return false,
    };
    let Some(header) = packet.get(tcp..tcp + 20) else {
        return false;
    };
    if header[13] & 0x02 == 0 {
        return false; // not a SYN
    }
    let options_end = tcp + usize::from(header[12] >> 4) * 4;
    if options_end > packet.len() || options_end < tcp + 20 {
        return false;
    }
    let mut at = tcp + 20;
    while at < options_end {
        match packet[at] {
            0 => return false,
            1 => at += 1,
            kind => {
                let Some(&len) = packet.get(at + 1) else {
                    return false;
                };
                let len = usize::from(len);
                if len < 2 || at + len > options_end {
                    return false;
                }
                if kind == 2 && len == 4 {
                    let old = u16::from_be_bytes([packet[at + 2], packet[at + 3]]);
                    if old <= max {
                        return false;
                    }
                    packet[at + 2..at + 4].copy_from_slice(&max.to_be_bytes());
                    let sum = tcp + 16;
                    let check = u16::from_be_bytes([packet[sum], packet[sum + 1]]);
                    let check = adjust_checksum(check, old, max);
                    packet[sum..sum + 2].copy_from_slice(&check.to_be_bytes());
                    return true;
                }
                at += len;
            }
        }
    }
    false
}

/// RFC 1624 eqn. 3: the checksum after a 16-bit word changes from `old` to `new`.
fn adjust_checksum(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ones'-complement sum of `data` (odd length padded), folded.
    fn sum(data: &[u8], mut acc: u32) -> u32 {
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            acc += u32::from(word);
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc
    }

    /// The TCP checksum of `packet` computed from scratch (with the pseudo-header).
    fn tcp_checksum_ok(packet: &[u8]) -> bool {
        let (tcp, pseudo) = if packet[0] >> 4 == 4 {
            let ihl = usize::from(packet[0] & 0xf) * 4;
            let len = (packet.len() - ihl) as u32;
            let mut p = packet[12..20].to_vec();
            p.extend_from_slice(&[0, 6]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
            (ihl, p)
        } else {
            let len = (packet.len() - 40) as u32;
            let mut p = packet[8..40].to_vec();
            p.extend_from_slice(&len.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 6]);
            (40, p)
        };
        sum(&packet[tcp..], sum(&pseudo, 0)) == 0xffff
    }

    /// A SYN (or other `flags`) with options NOP, NOP, MSS `mss`, SACK-permitted, checksum set.
    fn segment(v6: bool, flags: u8, mss: u16) -> Vec<u8> {
        let mut tcp = vec![0u8; 28];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
        tcp[12] = 7 << 4; // 28 bytes
        tcp[13] = flags;
        tcp[20..28].copy_from_slice(&[1, 1, 2, 4, (mss >> 8) as u8, mss as u8, 4, 2]);
        let mut p = if v6 {
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(tcp.len() as u16).to_be_bytes());
            h[6] = 6;
            h[7] = 64;
            h[8..24].copy_from_slice(&[0xfd, 0x19, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
            h[24..40].copy_from_slice(&[0xfd, 0x19, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
            h
        } else {
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
            h[8] = 64;
            h[9] = 6;
            h[12..16].copy_from_slice(&[198, 19, 1, 10]);
            h[16..20].copy_from_slice(&[198, 19, 2, 10]);
            h
        };
        let at = p.len();
        p.extend_from_slice(&tcp);
        let check = !(sum(&p[at..], sum(&pseudo_of(&p, at), 0)) as u16);
        p[at + 16..at + 18].copy_from_slice(&check.to_be_bytes());
        assert!(tcp_checksum_ok(&p));
        p
    }

    fn pseudo_of(p: &[u8], tcp: usize) -> Vec<u8> {
        let len = p.len() - tcp;
        if p[0] >> 4 == 4 {
            let mut x = p[12..20].to_vec();
            x.extend_from_slice(&[0, 6]);
            x.extend_from_slice(&(len as u16).to_be_bytes());
            x
        } else {
            let mut x = p[8..40].to_vec();
            x.extend_from_slice(&(len as u32).to_be_bytes());
            x.extend_from_slice(&[0, 0, 0, 6]);
            x
        }
    }

    fn mss_of(p: &[u8]) -> u16 {
        let tcp = if p[0] >> 4 == 4 { 20 } else { 40 };
        u16::from_be_bytes([p[tcp + 24], p[tcp + 25]])
    }

    #[test]
    fn syn_and_syn_ack_are_clamped_with_a_valid_checksum() {
        for (v6, want) in [(false, 1380), (true, 1360)] {
            for flags in [0x02, 0x12] {
                let mut p = segment(v6, flags, 1460);
                assert!(clamp(&mut p, 1420), "v6={v6} flags={flags:#x}");
                assert_eq!(mss_of(&p), want);
                assert!(tcp_checksum_ok(&p), "checksum after clamping (v6={v6})");
            }
        }
    }

    #[test]
    fn what_fits_or_is_not_a_syn_is_left_alone() {
        let mut small = segment(false, 0x02, 1200);
        let before = small.clone();
        assert!(!clamp(&mut small, 1420));
        assert_eq!(small, before);
        let mut ack = segment(false, 0x10, 1460);
        assert!(!clamp(&mut ack, 1420));
        let mut v6_ack = segment(true, 0x10, 1460);
        assert!(!clamp(&mut v6_ack, 1420));
        // UDP, a later fragment, truncated and garbage packets: untouched, no panic.
        let mut udp = segment(false, 0x02, 1460);
        udp[9] = 17;
        assert!(!clamp(&mut udp, 1420));
        let mut frag = segment(false, 0x02, 1460);
        frag[7] = 1;
        assert!(!clamp(&mut frag, 1420));
        let full = segment(false, 0x02, 1460);
        for cut in 0..full.len() {
            let mut p = full[..cut].to_vec();
            let _ = clamp(&mut p, 1420);
        }
        let mut bad_options = segment(false, 0x02, 1460);
        bad_options[20 + 22] = 0; // MSS option length 0
        assert!(!clamp(&mut bad_options, 1420));
        assert!(!clamp(&mut [], 1420));
        assert!(!clamp(&mut [0x45; 19], 1420));
    }
}
