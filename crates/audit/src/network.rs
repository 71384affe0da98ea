//! The network a source address counts as, wherever Keypost limits what one source may do
//! (sign-in throttling, connection caps, refused-token audit budgets): an IPv4 address as it
//! is, an IPv6 address by its prefix — a /64 by default, the block one subscriber is normally
//! given, within which an attacker picks new addresses at will.

use std::net::{IpAddr, Ipv6Addr};

/// The IPv6 prefix length that counts as one source unless configured otherwise.
pub const DEFAULT_V6_PREFIX: u8 = 64;

/// The network `ip` counts as: IPv4 (and IPv4-mapped IPv6) addresses as themselves, IPv6 ones
/// with everything past `v6_prefix` bits cleared (`v6_prefix` above 128 counts as 128).
pub fn network_of(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u32::from(v6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

/// [`network_of`] for an address as recorded (text); `None` if it is not an address.
pub fn network_key(ip: &str, v6_prefix: u8) -> Option<String> {
    let ip: IpAddr = ip.parse().ok()?;
    Some(match network_of(ip, v6_prefix) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("{v6}/{}", v6_prefix.min(128)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_by_its_prefix_and_ipv4_as_itself() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(network_of(a("192.0.2.7"), 64), a("192.0.2.7"));
        assert_eq!(network_of(a("::ffff:192.0.2.7"), 64), a("192.0.2.7"));
        assert_eq!(
            network_of(a("2001:db8:1:2:aaaa::1"), 64),
            network_of(a("2001:db8:1:2:bbbb::9"), 64)
        );
        assert_ne!(
            network_of(a("2001:db8:1:2::1"), 64),
            network_of(a("2001:db8:1:3::1"), 64)
        );
        assert_eq!(network_of(a("2001:db8::1"), 128), a("2001:db8::1"));
        assert_eq!(network_of(a("2001:db8::1"), 0), a("::"));
        assert_eq!(network_of(a("2001:db8::1"), 200), a("2001:db8::1"));
        assert_eq!(
            network_key("2001:db8:1:2:aaaa::1", 64).as_deref(),
            Some("2001:db8:1:2::/64")
        );
        assert_eq!(network_key("192.0.2.7", 64).as_deref(), Some("192.0.2.7"));
        assert_eq!(network_key("not an address", 64), None);
    }
}
