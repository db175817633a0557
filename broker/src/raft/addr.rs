//! A member's two addresses: the public gRPC address clients use, and the peer address
//! where only cluster nodes reach its Raft service (`taskraft.raft.v1.RaftPeer`).
//!
//! openraft's membership stores one string per node (`BasicNode::addr`); it holds
//! `CLIENT/PEER`, the same syntax as a `--peers` entry. A bare `CLIENT` (written by
//! older versions, or given by an operator) means the peer port is the client port + 2
//! (7070 client, 7071 HTTP, 7072 peers).

use std::fmt;

/// Where a member serves clients and peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberAddr {
    /// Public gRPC address (host:port).
    pub client: String,
    /// Peer (Raft) address (host:port).
    pub peer: String,
}

/// Port offset of the default peer address from the client address.
pub const DEFAULT_PEER_PORT_OFFSET: u16 = 2;

impl MemberAddr {
    /// Parses `CLIENT` or `CLIENT/PEER` (each `host:port`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (client, peer) = match s.split_once('/') {
            Some((c, p)) => (c.trim().to_string(), p.trim().to_string()),
            None => {
                let peer = default_peer(s)?;
                (s.to_string(), peer)
            }
        };
        for a in [&client, &peer] {
            split_port(a)?;
        }
        Ok(Self { client, peer })
    }

    /// The membership string (`CLIENT/PEER`).
    pub fn encode(&self) -> String {
        format!("{}/{}", self.client, self.peer)
    }

    /// The peer address of a membership string (what Raft and forwarding connect to).
    pub fn peer_of(stored: &str) -> String {
        Self::parse(stored).map_or_else(|_| stored.to_string(), |a| a.peer)
    }

    /// The client address of a membership string (what clients are told).
    pub fn client_of(stored: &str) -> String {
        Self::parse(stored).map_or_else(|_| stored.to_string(), |a| a.client)
    }
}

impl fmt::Display for MemberAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

fn split_port(addr: &str) -> Result<(&str, u16), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} is not host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{addr:?} is not host:port"))?;
    if host.is_empty() {
        return Err(format!("{addr:?} has no host"));
    }
    Ok((host, port))
}

/// The default peer address of a client address: same host, port + 2.
pub fn default_peer(client: &str) -> Result<String, String> {
    let (host, port) = split_port(client)?;
    if port == 0 {
        return Ok(format!("{host}:0"));
    }
    let peer = port.checked_add(DEFAULT_PEER_PORT_OFFSET).ok_or_else(|| {
        format!("{client:?}: port + {DEFAULT_PEER_PORT_OFFSET} (the default peer port) is over 65535; give CLIENT/PEER")
    })?;
    Ok(format!("{host}:{peer}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_client_address_gets_the_default_peer_port() {
        let a = MemberAddr::parse("10.0.0.1:7070").unwrap();
        assert_eq!(a.peer, "10.0.0.1:7072");
        assert_eq!(a.encode(), "10.0.0.1:7070/10.0.0.1:7072");
        assert_eq!(MemberAddr::parse(&a.encode()).unwrap(), a);
    }

    #[test]
    fn explicit_peer_address_is_kept() {
        let a = MemberAddr::parse("n1:7070/n1:9000").unwrap();
        assert_eq!((a.client.as_str(), a.peer.as_str()), ("n1:7070", "n1:9000"));
        assert_eq!(MemberAddr::peer_of("n1:7070/n1:9000"), "n1:9000");
        assert_eq!(MemberAddr::client_of("n1:7070/n1:9000"), "n1:7070");
        assert!(MemberAddr::parse("n1/n1:9000").is_err());
        assert!(MemberAddr::parse("n1:65535").is_err());
    }
}
