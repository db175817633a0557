//! Bearer-token authentication for the public and peer services.
//!
//! When `--token` is set every call must carry `authorization: Bearer <token>`; the
//! comparison runs in constant time so response timing does not leak the token.
//! Health and reflection stay open so probes and `grpcurl list` work without it.

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// A tonic interceptor that checks the bearer token (or lets everything through when
/// no token is configured).
#[derive(Clone)]
pub struct Auth {
    expected: Option<std::sync::Arc<Vec<u8>>>,
}

impl Auth {
    /// Checks for `token`, or nothing when `None`.
    pub fn new(token: Option<&str>) -> Self {
        Self {
            expected: token.map(|t| std::sync::Arc::new(format!("Bearer {t}").into_bytes())),
        }
    }

    /// True when `header` (the whole `authorization` value) matches.
    pub fn check_header(&self, header: Option<&[u8]>) -> bool {
        match (&self.expected, header) {
            (None, _) => true,
            (Some(want), Some(got)) => bool::from(want.as_slice().ct_eq(got)),
            (Some(_), None) => false,
        }
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let header = req.metadata().get("authorization").map(|v| v.as_bytes());
        if self.check_header(header) {
            Ok(req)
        } else if header.is_none() {
            Err(Status::unauthenticated(
                "missing authorization metadata: send `authorization: Bearer <token>`",
            ))
        } else {
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}
