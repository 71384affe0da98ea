//! Whose `X-Forwarded-For` is believed: the client address a request is audited and
//! throttled under when Keypost runs behind a TLS-terminating proxy.
//!
//! Behind a proxy every connection comes from the proxy's address; taken as the client's,
//! twenty failed sign-ins from anyone would throttle everyone, and every audit record would
//! name the proxy. A header anyone can send is believed only from the proxies the operator
//! names, and only as far as they vouch: walking `X-Forwarded-For` from the right, the first
//! address that is not one of theirs is the client. Hand-written (a few lines of prefix
//! matching) rather than a dependency.

use std::net::IpAddr;

use crate::Source;

/// Addresses and networks (`10.0.0.0/8`, `fd00::/8`, `127.0.0.1`) whose forwarding headers
/// are believed. Empty by default: nothing is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Parses addresses and CIDR networks; the error names the first entry that is neither.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut nets = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            let (addr, prefix) = match entry.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (entry, None),
            };
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("{entry:?} is not an IP address or network"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => max,
                Some(p) => p
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| format!("{entry:?} has no valid prefix length"))?,
            };
            // An IPv4-mapped network is the IPv4 network it maps (addresses are compared so).
            let (addr, prefix) = match canonical(addr) {
                v4 @ IpAddr::V4(_) if addr.is_ipv6() => {
                    let p = prefix
                        .checked_sub(96)
                        .ok_or_else(|| format!("{entry:?} is wider than the IPv4-mapped range"))?;
                    (v4, p)
                }
                same => (same, prefix),
            };
            nets.push((addr, prefix));
        }
        Ok(Self(nets))
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0
            .iter()
            .any(|&(net, prefix)| match (canonical(net), ip) {
                (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(
                    u128::from(u32::from(n)) << 96,
                    u128::from(u32::from(a)) << 96,
                    prefix,
                ),
                (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(u128::from(n), u128::from(a), prefix),
                _ => false,
            })
    }

    /// The client's address: `peer`, unless `peer` is a trusted proxy and `forwarded_for`
    /// (the `X-Forwarded-For` values, in order) names an address beyond it — the right-most
    /// one that is not itself a trusted proxy. A malformed entry ends the walk: what lies to
    /// its left was written by no one trusted.
    pub fn client_ip<'h>(
        &self,
        peer: IpAddr,
        forwarded_for: impl Iterator<Item = &'h str>,
    ) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded_for.flat_map(|v| v.split(',')).collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = hop_address(hop.trim()) else {
                break;
            };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

/// The address of one `X-Forwarded-For` entry: bare, or with a port (`203.0.113.7:51234`,
/// `[2001:db8::7]:443`) or brackets, as some proxies write them.
fn hop_address(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse().ok())
        })
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether the first `prefix` bits of `a` and `b` (left-aligned in 128) agree.
fn prefix_eq(a: u128, b: u128, prefix: u8) -> bool {
    let prefix = u32::from(prefix);
    if prefix == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - prefix.min(128));
    a & mask == b & mask
}

impl Source {
    /// Where an HTTP request came from: the peer, or the client behind a trusted proxy (see
    /// [`TrustedProxies::client_ip`]), and the user agent, truncated to 256 characters.
    pub fn of_http<'h>(
        peer: Option<IpAddr>,
        forwarded_for: impl Iterator<Item = &'h str>,
        user_agent: Option<&str>,
        trusted: &TrustedProxies,
    ) -> Self {
        Self {
            ip: peer.map(|p| trusted.client_ip(p, forwarded_for).to_string()),
            user_agent: user_agent.map(|s| s.chars().take(256).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_addresses_and_networks_and_names_what_it_cannot() {
        let t = TrustedProxies::parse(&["127.0.0.1", "10.0.0.0/8", "fd00::/8", " ::1 "]).unwrap();
        for yes in ["127.0.0.1", "10.1.2.3", "fd12::1", "::1", "::ffff:10.9.9.9"] {
            assert!(t.contains(ip(yes)), "{yes}");
        }
        for no in ["127.0.0.2", "11.0.0.1", "fe80::1", "192.0.2.1"] {
            assert!(!t.contains(ip(no)), "{no}");
        }
        assert!(
            TrustedProxies::parse(&["0.0.0.0/0"])
                .unwrap()
                .contains(ip("203.0.113.9"))
        );
        // An IPv4-mapped network is its IPv4 network.
        let mapped = TrustedProxies::parse(&["::ffff:10.0.0.0/104"]).unwrap();
        assert!(mapped.contains(ip("10.20.30.40")) && !mapped.contains(ip("11.0.0.1")));
        assert!(TrustedProxies::parse(&["::ffff:10.0.0.0/64"]).is_err());
        for bad in ["localhost", "10.0.0.0/33", "10.0.0.0/x", "fd00::/129", ""] {
            let err = TrustedProxies::parse(&[bad]).unwrap_err();
            assert!(err.contains(&format!("{:?}", bad.trim())), "{err}");
        }
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let t = TrustedProxies::parse(&["127.0.0.1", "10.0.0.0/8"]).unwrap();
        let client =
            |peer: &str, xff: &[&str]| t.client_ip(ip(peer), xff.iter().copied()).to_string();
        // Not from a trusted proxy: the header is anyone's to write, and ignored.
        assert_eq!(client("192.0.2.1", &["198.51.100.7"]), "192.0.2.1");
        // From the proxy: the address it saw.
        assert_eq!(client("127.0.0.1", &["198.51.100.7"]), "198.51.100.7");
        // What the client wrote itself lies left of what the proxy appended.
        assert_eq!(
            client("127.0.0.1", &["6.6.6.6, 198.51.100.7"]),
            "198.51.100.7"
        );
        // Through two proxies, in one header or two.
        assert_eq!(
            client("127.0.0.1", &["198.51.100.7, 10.1.1.1"]),
            "198.51.100.7"
        );
        assert_eq!(
            client("127.0.0.1", &["198.51.100.7", "10.1.1.1"]),
            "198.51.100.7"
        );
        // No header, or garbage where the proxy should have written: the proxy itself.
        assert_eq!(client("127.0.0.1", &[]), "127.0.0.1");
        assert_eq!(client("127.0.0.1", &["unknown"]), "127.0.0.1");
        // Entries with ports or brackets, as some proxies write them.
        assert_eq!(client("127.0.0.1", &["198.51.100.7:51234"]), "198.51.100.7");
        assert_eq!(client("127.0.0.1", &["[2001:db8::7]:443"]), "2001:db8::7");
        assert_eq!(client("127.0.0.1", &["[2001:db8::7]"]), "2001:db8::7");
        // Only trusted hops: the left-most of them.
        assert_eq!(client("127.0.0.1", &["10.2.2.2, 10.1.1.1"]), "10.2.2.2");
        // Nobody trusted: the peer, whatever the header says.
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(ip("127.0.0.1"), ["198.51.100.7"].into_iter())
                .to_string(),
            "127.0.0.1"
        );
    }
}
