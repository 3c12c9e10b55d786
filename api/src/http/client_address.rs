//! The client address rate limits are keyed by (issue 17, item 2).
//!
//! Behind proxies that *append* to `X-Forwarded-For`, only the entries the
//! trusted proxies added can be believed: the client writes whatever it
//! likes to the left of them. So the header is walked from the right,
//! skipping entries that are trusted proxies (`QUEUE_TRUSTED_PROXIES`, a
//! CIDR list); the first untrusted entry is the client. The header is only
//! read at all when the peer itself is a trusted proxy, and a malformed
//! entry met on the way means the peer address is used (nothing left of a
//! malformed hop can be trusted).
//!
//! IPv6 clients are keyed by their /64: one subscriber usually holds at
//! least a /64, so per-address keys would let a single client rotate
//! through 2^64 addresses.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// One CIDR block, `10.0.0.0/8` or `2001:db8::/32` (a bare address is /32
/// or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `QUEUE_TRUSTED_PROXIES`: the proxies whose `X-Forwarded-For` entries
/// are believed. Empty: the header is ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Comma-separated CIDR blocks; `None` names no valid list.
    pub fn parse(list: &str) -> Option<Self> {
        let mut nets = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            nets.push(IpNet::parse(part)?);
        }
        Some(Self(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }
}

/// IPv4-mapped IPv6 (`::ffff:192.0.2.1`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, optionally with a port
/// (`192.0.2.1:443`, `[2001:db8::1]:443`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())
}

/// The rate-limit key of a client address: the address itself for IPv4,
/// the /64 for IPv6.
pub fn key_of(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & (u128::MAX << 64);
            format!("{}/64", Ipv6Addr::from(prefix))
        }
    }
}

/// The client's address: see the module docs. `forwarded` holds the
/// `X-Forwarded-For` header values in the order they arrived.
pub fn resolve<'a>(
    peer: Option<IpAddr>,
    forwarded: impl IntoIterator<Item = &'a str>,
    trusted: &TrustedProxies,
) -> Option<IpAddr> {
    let peer = peer.map(canonical);
    let peer_ip = peer?;
    if trusted.is_empty() || !trusted.trusts(peer_ip) {
        return peer;
    }
    let entries: Vec<&str> = forwarded
        .into_iter()
        .flat_map(|value| value.split(','))
        .collect();
    let mut client = peer_ip;
    for entry in entries.iter().rev() {
        let Some(ip) = parse_entry(entry).map(canonical) else {
            return peer;
        };
        client = ip;
        if !trusted.trusts(ip) {
            return Some(ip);
        }
    }
    // Every hop was a trusted proxy: the leftmost is as far as we can see.
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    fn proxies(list: &str) -> TrustedProxies {
        TrustedProxies::parse(list).unwrap_or_default()
    }

    #[test]
    fn cidr_blocks_parse_and_match() {
        let net = IpNet::parse("10.0.0.0/8");
        assert!(net.is_some_and(|n| n.contains(ip("10.200.1.2"))));
        assert!(net.is_some_and(|n| !n.contains(ip("11.0.0.1"))));
        assert!(net.is_some_and(|n| n.contains(ip("::ffff:10.1.2.3"))));
        assert!(IpNet::parse("2001:db8::/32").is_some_and(|n| n.contains(ip("2001:db8:ffff::1"))));
        assert!(IpNet::parse("0.0.0.0/0").is_some_and(|n| n.contains(ip("203.0.113.9"))));
        assert!(IpNet::parse("192.0.2.1").is_some_and(|n| !n.contains(ip("192.0.2.2"))));
        for bad in ["10.0.0.0/33", "nope", "10.0.0/8", "::/129", ""] {
            assert_eq!(IpNet::parse(bad), None, "{bad}");
        }
        assert!(TrustedProxies::parse("10.0.0.0/8, 192.0.2.0/24").is_some());
        assert!(TrustedProxies::parse("10.0.0.0/8,bogus").is_none());
    }

    #[test]
    fn the_header_is_walked_from_the_right_skipping_trusted_hops() {
        let trusted = proxies("10.0.0.0/8");
        let peer = Some(ip("10.0.0.1"));
        // The client wrote a fake first entry; the proxy appended the real one.
        assert_eq!(
            resolve(peer, ["1.2.3.4, 203.0.113.7"], &trusted),
            Some(ip("203.0.113.7"))
        );
        // Two trusted hops, split over two header lines.
        assert_eq!(
            resolve(peer, ["6.6.6.6, 198.51.100.2", "10.1.1.1"], &trusted),
            Some(ip("198.51.100.2"))
        );
        // Ports are tolerated.
        assert_eq!(
            resolve(peer, ["[2001:db8::5]:443"], &trusted),
            Some(ip("2001:db8::5"))
        );
        // A malformed hop: the peer.
        assert_eq!(resolve(peer, ["1.2.3.4, garbage"], &trusted), peer);
        assert_eq!(resolve(peer, ["1.2.3.4,,"], &trusted), peer);
        // All hops trusted: the leftmost.
        assert_eq!(resolve(peer, ["10.9.9.9"], &trusted), Some(ip("10.9.9.9")));
        // No header: the peer.
        assert_eq!(resolve(peer, [], &trusted), peer);
    }

    #[test]
    fn an_untrusted_peer_cannot_forward() {
        let trusted = proxies("10.0.0.0/8");
        let peer = Some(ip("203.0.113.50"));
        assert_eq!(resolve(peer, ["1.2.3.4"], &trusted), peer);
        // Nothing trusted at all: the header is never read.
        assert_eq!(
            resolve(
                Some(ip("10.0.0.1")),
                ["1.2.3.4"],
                &TrustedProxies::default()
            ),
            Some(ip("10.0.0.1"))
        );
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        assert_eq!(key_of(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(
            key_of(ip("2001:db8:1:2:bbbb:cccc:dddd:eeee")),
            key_of(ip("2001:db8:1:2::9"))
        );
        assert_ne!(key_of(ip("2001:db8:1:3::1")), key_of(ip("2001:db8:1:2::1")));
        assert_eq!(key_of(ip("192.0.2.7")), "192.0.2.7");
        assert_eq!(key_of(ip("::ffff:192.0.2.7")), "192.0.2.7");
    }
}
