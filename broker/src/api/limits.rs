//! Per-connection request rate limit for the public gRPC port (a tower layer).
//!
//! Each client connection (keyed by its remote address) gets a token bucket of
//! `--rate-per-connection` calls per second, with a burst of one second's worth. A call
//! without a token is answered `RESOURCE_EXHAUSTED` at once, before it is decoded; the
//! caller should back off. (Concurrent calls per connection are capped by tonic's own
//! per-connection limit with load shedding, also `RESOURCE_EXHAUSTED`: see `server.rs`.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::server::TcpConnectInfo;

use super::gate::{Check, Gate};
use crate::error::BrokerError;

/// Buckets idle this long are forgotten (their connection is most likely closed).
const IDLE: Duration = Duration::from_secs(60);
/// Above this many tracked connections, idle buckets are swept.
const SWEEP_ABOVE: usize = 4096;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by remote address.
#[derive(Default)]
struct Buckets {
    map: HashMap<SocketAddr, Bucket>,
}

/// Limits each connection to `per_sec` calls per second.
#[derive(Clone)]
pub struct RateLimitLayer {
    /// None: no limit (every call passes without taking a lock).
    per_sec: Option<f64>,
    buckets: Arc<Mutex<Buckets>>,
}

impl RateLimitLayer {
    /// `per_sec` calls per second per connection (burst: the same number); `None`
    /// lets everything through.
    pub fn new(per_sec: Option<u32>) -> Self {
        Self {
            per_sec: per_sec.map(|r| f64::from(r.max(1))),
            buckets: Arc::default(),
        }
    }

    /// Takes a token for `peer`; false when its bucket is empty.
    fn admit(&self, peer: SocketAddr, now: Instant) -> bool {
        let Some(per_sec) = self.per_sec else {
            return true;
        };
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.map.len() > SWEEP_ABOVE {
            b.map.retain(|_, k| now.duration_since(k.at) < IDLE);
        }
        let bucket = b.map.entry(peer).or_insert(Bucket {
            tokens: per_sec,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * per_sec;
        bucket.tokens = (bucket.tokens + refill).min(per_sec);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = Gate<S, RateLimitLayer>;

    fn layer(&self, inner: S) -> Self::Service {
        Gate::new(inner, self.clone())
    }
}

impl Check for RateLimitLayer {
    /// Takes a token from the bucket of the call's connection.
    fn check<B>(&self, req: &mut http::Request<B>) -> Result<(), BrokerError> {
        let Some(per_sec) = self.per_sec else {
            return Ok(());
        };
        let peer = req
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(|i| i.remote_addr());
        match peer {
            Some(peer) if !self.admit(peer, Instant::now()) => {
                Err(BrokerError::ResourceExhausted(format!(
                    "over {per_sec} calls per second on this connection (--rate-per-connection): back off and retry"
                )))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_gets_its_rate_and_others_are_unaffected() {
        let l = RateLimitLayer::new(Some(10));
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let t0 = Instant::now();
        assert_eq!((0..20).filter(|_| l.admit(a, t0)).count(), 10);
        assert!(l.admit(b, t0));
        // A tenth of a second later, one more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.admit(a, t1));
        assert!(!l.admit(a, t1));
    }
}
