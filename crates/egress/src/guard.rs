//! The SSRF guard: addresses a forward proxy must not reach unless told to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `ip` is loopback, private (RFC 1918), link-local (which holds the cloud metadata
/// address 169.254.169.254), shared/CGNAT (RFC 6598), unspecified, broadcast, multicast or
/// reserved, or an IPv6 loopback, unique-local (RFC 4193, which holds AWS's fd00:ec2::254),
/// link-local, site-local or multicast address; IPv4-mapped and IPv4-compatible IPv6 addresses
/// are judged as the IPv4 address they carry.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => internal_v4(v4),
            None => internal_v6(v6),
        },
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_unspecified()
        || a == 0 // "this network" (RFC 791); 0.x.y.z reaches the local host on Linux
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || (a == 100 && (64..128).contains(&b)) // 100.64.0.0/10, RFC 6598
        || ip.is_broadcast()
        || ip.is_multicast()
        || a >= 240 // 240.0.0.0/4, reserved (RFC 1112)
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    // ::a.b.c.d (deprecated IPv4-compatible) carries an IPv4 address too.
    let compatible = ip.segments()[..6].iter().all(|&s| s == 0) && !ip.is_loopback();
    ip.is_unspecified()
        || ip.is_loopback()
        || (compatible && internal_v4(Ipv4Addr::from(ip.to_bits() as u32)))
        || (first & 0xfe00) == 0xfc00 // fc00::/7 unique-local
        || (first & 0xffc0) == 0xfe80 // fe80::/10 link-local
        || (first & 0xffc0) == 0xfec0 // fec0::/10 site-local (deprecated)
        || ip.is_multicast()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn internal_ranges_are_refused_and_public_ones_pass() {
        let internal = [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "::",
            "::1",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
        ];
        for ip in internal {
            assert!(is_internal(ip.parse().unwrap()), "{ip} passed");
        }
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.0.2.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ];
        for ip in public {
            assert!(!is_internal(ip.parse().unwrap()), "{ip} refused");
        }
    }
}
