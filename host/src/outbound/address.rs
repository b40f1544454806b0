//! Which IP addresses a module's request may reach. Public addresses always; loopback
//! only when the operator allows it; every other special-purpose address (private,
//! link-local where the cloud metadata service lives, shared, documentation,
//! benchmarking, 6to4, Teredo, NAT64, IPv4-mapped, ...) only when the operator allows
//! private addresses.
//!
//! The list is not hand-picked: it is the IANA IPv4 and IPv6 Special-Purpose Address
//! Registries (`iana-ipv4-special-registry`, `iana-ipv6-special-registry`, RFC 6890),
//! entry by entry, plus the few ranges that are special in other IANA registries
//! (multicast, deprecated site-local, the IPv4 Class E space). An entry the registry
//! marks "globally reachable" (an anycast service, AS112) is refused all the same: no
//! module needs one, and several of the blocks embed an IPv4 address that may be
//! private.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The class of an address, as far as egress policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Routable on the internet.
    Public,
    /// 127.0.0.0/8 and ::1 (and their IPv4-mapped form).
    Loopback,
    /// Every other special-purpose address: nothing a module should reach by default.
    Private,
}

/// One block of a registry.
#[derive(Debug, Clone, Copy)]
pub struct Block<A> {
    /// The block's first address.
    pub network: A,
    /// Prefix length.
    pub len: u8,
    /// The registry's name for it.
    pub name: &'static str,
    /// Where it is defined.
    pub rfc: &'static str,
}

const fn v4(
    a: u8,
    b: u8,
    c: u8,
    d: u8,
    len: u8,
    name: &'static str,
    rfc: &'static str,
) -> Block<Ipv4Addr> {
    Block {
        network: Ipv4Addr::new(a, b, c, d),
        len,
        name,
        rfc,
    }
}

const fn v6(s: [u16; 8], len: u8, name: &'static str, rfc: &'static str) -> Block<Ipv6Addr> {
    Block {
        network: Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        len,
        name,
        rfc,
    }
}

/// The IPv4 loopback block (classified `Loopback`, not `Private`).
pub const V4_LOOPBACK: Block<Ipv4Addr> = v4(127, 0, 0, 0, 8, "Loopback", "RFC 1122");

/// IANA IPv4 Special-Purpose Address Registry, every entry, in the registry's order
/// (loopback is [`V4_LOOPBACK`]); then multicast and limited broadcast's neighbours from
/// the IANA IPv4 Address Space Registry.
pub const V4_SPECIAL: &[Block<Ipv4Addr>] = &[
    v4(0, 0, 0, 0, 8, "\"This network\"", "RFC 791"),
    v4(0, 0, 0, 0, 32, "\"This host on this network\"", "RFC 1122"),
    v4(10, 0, 0, 0, 8, "Private-Use", "RFC 1918"),
    v4(100, 64, 0, 0, 10, "Shared Address Space", "RFC 6598"),
    v4(169, 254, 0, 0, 16, "Link Local", "RFC 3927"),
    v4(172, 16, 0, 0, 12, "Private-Use", "RFC 1918"),
    v4(192, 0, 0, 0, 24, "IETF Protocol Assignments", "RFC 6890"),
    v4(
        192,
        0,
        0,
        0,
        29,
        "IPv4 Service Continuity Prefix",
        "RFC 7335",
    ),
    v4(192, 0, 0, 8, 32, "IPv4 dummy address", "RFC 7600"),
    v4(
        192,
        0,
        0,
        9,
        32,
        "Port Control Protocol Anycast",
        "RFC 7723",
    ),
    v4(
        192,
        0,
        0,
        10,
        32,
        "Traversal Using Relays around NAT Anycast",
        "RFC 8155",
    ),
    v4(192, 0, 0, 170, 32, "NAT64/DNS64 Discovery", "RFC 8880"),
    v4(192, 0, 0, 171, 32, "NAT64/DNS64 Discovery", "RFC 8880"),
    v4(192, 0, 2, 0, 24, "Documentation (TEST-NET-1)", "RFC 5737"),
    v4(192, 31, 196, 0, 24, "AS112-v4", "RFC 7535"),
    v4(192, 52, 193, 0, 24, "AMT", "RFC 7450"),
    v4(
        192,
        88,
        99,
        0,
        24,
        "Deprecated (6to4 Relay Anycast)",
        "RFC 7526",
    ),
    v4(192, 168, 0, 0, 16, "Private-Use", "RFC 1918"),
    v4(
        192,
        175,
        48,
        0,
        24,
        "Direct Delegation AS112 Service",
        "RFC 7534",
    ),
    v4(198, 18, 0, 0, 15, "Benchmarking", "RFC 2544"),
    v4(
        198,
        51,
        100,
        0,
        24,
        "Documentation (TEST-NET-2)",
        "RFC 5737",
    ),
    v4(203, 0, 113, 0, 24, "Documentation (TEST-NET-3)", "RFC 5737"),
    v4(240, 0, 0, 0, 4, "Reserved", "RFC 1112"),
    v4(255, 255, 255, 255, 32, "Limited Broadcast", "RFC 919"),
    // IANA IPv4 Address Space Registry: multicast is not in the special-purpose one.
    v4(224, 0, 0, 0, 4, "Multicast", "RFC 5771"),
];

/// The IPv6 loopback address (classified `Loopback`).
pub const V6_LOOPBACK: Block<Ipv6Addr> = v6(
    [0, 0, 0, 0, 0, 0, 0, 1],
    128,
    "Loopback Address",
    "RFC 4291",
);

/// The IPv4-mapped block: its loopback addresses are loopback, the rest private (a
/// mapped address is never a public destination of its own).
pub const V6_IPV4_MAPPED: Block<Ipv6Addr> = v6(
    [0, 0, 0, 0, 0, 0xffff, 0, 0],
    96,
    "IPv4-mapped Address",
    "RFC 4291",
);

/// IANA IPv6 Special-Purpose Address Registry, every entry, in the registry's order
/// (loopback is [`V6_LOOPBACK`], IPv4-mapped [`V6_IPV4_MAPPED`]); then the blocks the
/// IANA IPv6 Address Space and Multicast registries set apart.
pub const V6_SPECIAL: &[Block<Ipv6Addr>] = &[
    v6([0; 8], 128, "Unspecified Address", "RFC 4291"),
    v6(
        [0x64, 0xff9b, 0, 0, 0, 0, 0, 0],
        96,
        "IPv4-IPv6 Translat.",
        "RFC 6052",
    ),
    v6(
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "IPv4-IPv6 Translat.",
        "RFC 8215",
    ),
    v6(
        [0x100, 0, 0, 0, 0, 0, 0, 0],
        64,
        "Discard-Only Address Block",
        "RFC 6666",
    ),
    v6(
        [0x100, 0, 0, 1, 0, 0, 0, 0],
        64,
        "Dummy IPv6 Prefix",
        "RFC 9780",
    ),
    v6(
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        23,
        "IETF Protocol Assignments",
        "RFC 2928",
    ),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "TEREDO", "RFC 4380"),
    v6(
        [0x2001, 1, 0, 0, 0, 0, 0, 1],
        128,
        "Port Control Protocol Anycast",
        "RFC 7723",
    ),
    v6(
        [0x2001, 1, 0, 0, 0, 0, 0, 2],
        128,
        "Traversal Using Relays around NAT Anycast",
        "RFC 8155",
    ),
    v6(
        [0x2001, 1, 0, 0, 0, 0, 0, 3],
        128,
        "DNS-SD Service Registration Protocol Anycast",
        "RFC 9665",
    ),
    v6(
        [0x2001, 2, 0, 0, 0, 0, 0, 0],
        48,
        "Benchmarking",
        "RFC 5180",
    ),
    v6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32, "AMT", "RFC 7450"),
    v6(
        [0x2001, 4, 0x112, 0, 0, 0, 0, 0],
        48,
        "AS112-v6",
        "RFC 7535",
    ),
    v6(
        [0x2001, 0x10, 0, 0, 0, 0, 0, 0],
        28,
        "Deprecated (previously ORCHID)",
        "RFC 4843",
    ),
    v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28, "ORCHIDv2", "RFC 7343"),
    v6(
        [0x2001, 0x30, 0, 0, 0, 0, 0, 0],
        28,
        "Drone Remote ID Protocol Entity Tags (DETs) Prefix",
        "RFC 9374",
    ),
    v6(
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
        32,
        "Documentation",
        "RFC 3849",
    ),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4", "RFC 3056"),
    v6(
        [0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0],
        48,
        "Direct Delegation AS112 Service",
        "RFC 7534",
    ),
    v6(
        [0x3fff, 0, 0, 0, 0, 0, 0, 0],
        20,
        "Documentation",
        "RFC 9637",
    ),
    v6(
        [0x5f00, 0, 0, 0, 0, 0, 0, 0],
        16,
        "Segment Routing (SRv6) SIDs",
        "RFC 9602",
    ),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "Unique-Local", "RFC 4193"),
    v6(
        [0xfe80, 0, 0, 0, 0, 0, 0, 0],
        10,
        "Link-Local Unicast",
        "RFC 4291",
    ),
    // IANA IPv6 Address Space Registry: `::/8` is reserved by the IETF (it holds the
    // deprecated IPv4-compatible addresses `::a.b.c.d`, RFC 4291 2.5.5.1), and
    // `fec0::/10` is the deprecated site-local space (RFC 3879), still routed inside
    // some networks.
    v6([0; 8], 8, "Reserved by IETF (IPv4-compatible)", "RFC 4291"),
    v6(
        [0xfec0, 0, 0, 0, 0, 0, 0, 0],
        10,
        "Deprecated site-local",
        "RFC 3879",
    ),
    // IANA IPv6 Multicast Address Space Registry.
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "Multicast", "RFC 4291"),
];

/// Whether `ip` lies in the block.
fn in_v4(ip: Ipv4Addr, b: &Block<Ipv4Addr>) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(b.len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(b.network) & mask
}

/// Whether `ip` lies in the block.
fn in_v6(ip: Ipv6Addr, b: &Block<Ipv6Addr>) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(b.len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(b.network) & mask
}

/// Classify an address.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    if in_v4(ip, &V4_LOOPBACK) {
        AddressClass::Loopback
    } else if V4_SPECIAL.iter().any(|b| in_v4(ip, b)) {
        AddressClass::Private
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if in_v6(ip, &V6_LOOPBACK) {
        return AddressClass::Loopback;
    }
    if in_v6(ip, &V6_IPV4_MAPPED) {
        // The whole block is special; its loopback part stays loopback so allowing
        // loopback means the same in both spellings.
        let embedded = Ipv4Addr::from((u128::from(ip) & 0xffff_ffff) as u32);
        return match classify_v4(embedded) {
            AddressClass::Loopback => AddressClass::Loopback,
            _ => AddressClass::Private,
        };
    }
    if V6_SPECIAL.iter().any(|b| in_v6(ip, b)) {
        AddressClass::Private
    } else {
        AddressClass::Public
    }
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

    fn last_v4(b: &Block<Ipv4Addr>) -> Ipv4Addr {
        let host = u32::MAX.checked_shr(u32::from(b.len)).unwrap_or(0);
        Ipv4Addr::from(u32::from(b.network) | host)
    }

    fn last_v6(b: &Block<Ipv6Addr>) -> Ipv6Addr {
        let host = u128::MAX.checked_shr(u32::from(b.len)).unwrap_or(0);
        Ipv6Addr::from(u128::from(b.network) | host)
    }

    /// Every entry: well formed (no bits past its prefix), and its first and last
    /// address refused by default.
    #[test]
    fn every_registry_entry_is_refused_from_its_first_to_its_last_address() {
        for b in V4_SPECIAL {
            assert!(b.len <= 32, "{b:?}");
            assert_eq!(
                Ipv4Addr::from(
                    u32::from(b.network) & u32::MAX.checked_shl(32 - u32::from(b.len)).unwrap_or(0)
                ),
                b.network,
                "{b:?} has bits past its prefix"
            );
            for ip in [b.network, last_v4(b)] {
                assert_eq!(
                    classify_v4(ip),
                    AddressClass::Private,
                    "{ip} in {} ({})",
                    b.name,
                    b.rfc
                );
                assert!(!allowed(IpAddr::V4(ip), true, false), "{ip}");
            }
        }
        for b in V6_SPECIAL {
            assert!(b.len <= 128, "{b:?}");
            assert_eq!(
                Ipv6Addr::from(
                    u128::from(b.network)
                        & u128::MAX.checked_shl(128 - u32::from(b.len)).unwrap_or(0)
                ),
                b.network,
                "{b:?} has bits past its prefix"
            );
            for ip in [b.network, last_v6(b)] {
                // `::1` sits inside `::/8`; it is loopback, checked below.
                if ip == Ipv6Addr::LOCALHOST {
                    continue;
                }
                assert_eq!(
                    classify_v6(ip),
                    AddressClass::Private,
                    "{ip} in {} ({})",
                    b.name,
                    b.rfc
                );
                assert!(!allowed(IpAddr::V6(ip), true, false), "{ip}");
            }
        }
        for ip in [V4_LOOPBACK.network, last_v4(&V4_LOOPBACK)] {
            assert_eq!(classify_v4(ip), AddressClass::Loopback, "{ip}");
        }
        assert_eq!(classify_v6(V6_LOOPBACK.network), AddressClass::Loopback);
        for ip in [V6_IPV4_MAPPED.network, last_v6(&V6_IPV4_MAPPED)] {
            assert_eq!(classify_v6(ip), AddressClass::Private, "{ip}");
        }
    }

    /// What the red team found missing, and its neighbours on both sides.
    #[test]
    fn the_ranges_found_missing_are_refused_and_their_neighbours_are_public() {
        for private in [
            "fec0::1",
            "feff:ffff::1",
            "198.18.0.1",
            "198.19.255.254",
            "::ffff:8.8.8.8",
            "::ffff:0:0",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "2001:db8::1",
            "2001::1",
            "100.64.0.1",
            "192.0.0.170",
        ] {
            assert_eq!(c(private), AddressClass::Private, "{private}");
        }
        for public in [
            "198.17.255.255",
            "198.20.0.0",
            "2003::1",
            "2001:4860:4860::8888",
            "8.8.8.8",
            "2606:4700::1111",
            "1.1.1.1",
        ] {
            assert_eq!(c(public), AddressClass::Public, "{public}");
        }
    }

    #[test]
    fn classifies_the_ranges_that_matter() {
        assert_eq!(c("127.0.0.1"), AddressClass::Loopback);
        assert_eq!(c("127.9.9.9"), AddressClass::Loopback);
        assert_eq!(c("::1"), AddressClass::Loopback);
        assert_eq!(c("::ffff:127.0.0.1"), AddressClass::Loopback);
        for private in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "fd00::1",
            "fe80::1",
            "ff02::1",
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
