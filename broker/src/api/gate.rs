//! A tower layer that checks each public gRPC call before it is decoded: the call goes
//! on, or is answered at once with the status of a [`BrokerError`]. The credential check
//! (`auth.rs`) and the per-connection rate limit (`limits.rs`) are such checks; the
//! service plumbing lives here once.

use std::task::{Context, Poll};

use futures::future::{Either, Ready};

use crate::error::BrokerError;

/// A check of one call. It may leave something for the handler in the request's
/// extensions (the caller's credential).
pub trait Check: Clone {
    /// `Ok` lets the call through; `Err` answers it with that error's status.
    fn check<B>(&self, req: &mut http::Request<B>) -> Result<(), BrokerError>;
}

/// Runs `check` before every call of the wrapped service.
#[derive(Clone)]
pub struct Gate<S, C> {
    inner: S,
    check: C,
}

impl<S, C> Gate<S, C> {
    /// Wraps `inner` (what a `tower::Layer` of a check returns).
    pub fn new(inner: S, check: C) -> Self {
        Self { inner, check }
    }
}

impl<S, C, B, RB> tower::Service<http::Request<B>> for Gate<S, C>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    C: Check,
    RB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.check.check(&mut req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(e) => {
                let status = tonic::Status::from(e);
                Either::Left(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}
