//! Who may call the peer service: nodes that know the cluster secret.
//!
//! Every peer call carries `taskraft-cluster-secret: <secret>`; the receiving node
//! compares it in constant time. Client tokens are a different credential and never
//! open this service (it is not even served on the client port). Without a secret the
//! service is open, which `config.rs` only allows on a loopback `--peer-listen`.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

/// Metadata key of the cluster secret.
pub const SECRET_KEY: &str = "taskraft-cluster-secret";

/// Server side: refuses peer calls without the cluster secret.
#[derive(Clone)]
pub struct PeerAuth {
    expected: Option<Arc<Vec<u8>>>,
}

impl PeerAuth {
    /// Requires `secret`, or nothing when `None`.
    pub fn new(secret: Option<&str>) -> Self {
        Self {
            expected: secret.map(|s| Arc::new(s.as_bytes().to_vec())),
        }
    }
}

impl tonic::service::Interceptor for PeerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(want) = &self.expected else {
            return Ok(req);
        };
        match req.metadata().get(SECRET_KEY) {
            Some(got) if bool::from(want.as_slice().ct_eq(got.as_bytes())) => Ok(req),
            _ => Err(Status::unauthenticated(
                "peer calls need the cluster secret (this port is for cluster nodes only)",
            )),
        }
    }
}

/// Client side: adds the cluster secret to every peer call.
#[derive(Clone)]
pub struct SecretInjector(Option<MetadataValue<Ascii>>);

impl SecretInjector {
    /// Sends `secret` (if any).
    pub fn new(secret: Option<&str>) -> anyhow::Result<Self> {
        let value = match secret {
            Some(s) => Some(
                s.parse()
                    .map_err(|_| anyhow::anyhow!("the cluster secret must be printable ASCII"))?,
            ),
            None => None,
        };
        Ok(Self(value))
    }
}

impl tonic::service::Interceptor for SecretInjector {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(SECRET_KEY, v.clone());
        }
        Ok(req)
    }
}
