//! Which addresses a webhook may reach.
//!
//! A job's `webhook_url` is chosen by whoever may enqueue, and the leader POSTs to it
//! from inside the cluster's network: left open, that is a server-side request forgery
//! into loopback services, cloud metadata (169.254.169.254) and private networks. So
//! loopback, link-local, private, shared (CGNAT), multicast, unspecified and reserved
//! addresses are refused unless an operator allows a range with `--webhook-allow CIDR`.
//!
//! The check runs on the addresses a name resolves to, at connection time (so a name
//! that resolves to a refused address, or is re-pointed after enqueue, is refused), and
//! on IP literals at enqueue time as well. Redirects are never followed: a 3xx answer
//! counts as a failed delivery.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address range, `ADDR/PREFIX` (a bare address is a single host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// True when `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
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

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not ADDR/PREFIX (e.g. 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix must be 0 to {max}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The webhook target policy: refused ranges, and the operator's exceptions.
#[derive(Clone, Debug, Default)]
pub struct TargetPolicy {
    /// Ranges allowed even though they are refused by default (`--webhook-allow`).
    pub allow: Vec<Cidr>,
}

impl TargetPolicy {
    /// A policy allowing `allow` on top of the public internet.
    pub fn new(allow: Vec<Cidr>) -> Self {
        Self { allow }
    }

    /// Why `ip` is refused, or `None` when a webhook may connect to it.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        if self.allow.iter().any(|c| c.contains(ip)) {
            return None;
        }
        refused_kind(canonical(ip))
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as IPv4, so it cannot dodge the IPv4 rules.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn refused_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (CGNAT)")
    } else if a == 0 || ip.is_broadcast() || a >= 240 {
        Some("unspecified or reserved")
    } else {
        None
    }
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified or reserved")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if first & 0xffc0 == 0xfe80 || first & 0xffc0 == 0xfec0 {
        Some("link-local")
    } else if first & 0xfe00 == 0xfc00 {
        Some("private")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_ranges_are_refused_by_default() {
        let p = TargetPolicy::default();
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(p.refusal(ip(bad)).is_some(), "{bad} should be refused");
        }
        for good in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert_eq!(p.refusal(ip(good)), None, "{good}");
        }
    }

    #[test]
    fn allowed_ranges_are_exceptions() {
        let p = TargetPolicy::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]);
        assert_eq!(p.refusal(ip("127.9.9.9")), None);
        assert_eq!(p.refusal(ip("::ffff:127.0.0.1")), None);
        assert_eq!(p.refusal(ip("fd12::1")), None);
        assert!(p.refusal(ip("10.0.0.1")).is_some());
        assert!(p.refusal(ip("::1")).is_some());
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("1.2.3.4")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
    }
}
