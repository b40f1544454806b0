//! Which IP addresses a module's request may reach. Public addresses always; loopback
//! and private ranges only when the operator allows them; link-local (the cloud metadata
//! service lives at 169.254.169.254), unspecified, multicast and broadcast never unless
//! private addresses are allowed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The class of an address, as far as egress policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Routable on the internet.
    Public,
    /// 127.0.0.0/8 and ::1.
    Loopback,
    /// RFC 1918, RFC 6598 (carrier-grade NAT), RFC 4193 (unique local), link-local,
    /// unspecified, multicast, broadcast: nothing a module should reach by default.
    Private,
}

/// Classify an address.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return classify_v4(v4);
            }
            if v6.is_loopback() {
                AddressClass::Loopback
            } else if v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // fe80::/10 link-local
                || is_v4_compatible_or_nat64(v6)
            {
                AddressClass::Private
            } else {
                AddressClass::Public
            }
        }
    }
}

fn classify_v4(v4: Ipv4Addr) -> AddressClass {
    let o = v4.octets();
    if v4.is_loopback() {
        AddressClass::Loopback
    } else if v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24 IETF protocol assignments
        || o[0] >= 240
    {
        AddressClass::Private
    } else {
        AddressClass::Public
    }
}

/// `::a.b.c.d` and `64:ff9b::/96` embed IPv4 addresses that could be private; refuse them.
fn is_v4_compatible_or_nat64(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    (s[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_unspecified() && !v6.is_loopback())
        || (s[0] == 0x64 && s[1] == 0xff9b)
}

/// Whether the operator's policy lets a module reach this address.
pub fn allowed(ip: IpAddr, allow_loopback: bool, allow_private: bool) -> bool {
    match classify(ip) {
        AddressClass::Public => true,
        AddressClass::Loopback => allow_loopback || allow_private,
        AddressClass::Private => allow_private,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> AddressClass {
        classify(s.parse().unwrap())
    }

    #[test]
    fn classifies_the_ranges_that_matter() {
        assert_eq!(c("8.8.8.8"), AddressClass::Public);
        assert_eq!(c("2606:4700::1111"), AddressClass::Public);
        assert_eq!(c("127.0.0.1"), AddressClass::Loopback);
        assert_eq!(c("127.9.9.9"), AddressClass::Loopback);
        assert_eq!(c("::1"), AddressClass::Loopback);
        assert_eq!(c("::ffff:127.0.0.1"), AddressClass::Loopback);
        for private in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "fd00::1",
            "fe80::1",
            "::",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert_eq!(c(private), AddressClass::Private, "{private}");
        }
    }

    #[test]
    fn loopback_allowance_does_not_open_the_metadata_service() {
        let meta = "169.254.169.254".parse().unwrap();
        let lo = "127.0.0.1".parse().unwrap();
        assert!(!allowed(lo, false, false));
        assert!(allowed(lo, true, false));
        assert!(!allowed(meta, true, false));
        assert!(allowed(meta, true, true));
    }
}
