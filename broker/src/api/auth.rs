//! Client credentials: bearer tokens with roles and optional queue patterns.
//!
//! ```text
//!  role      may call
//!  produce   Broker.Enqueue, EnqueueBatch, CancelJob
//!  work      Broker.Lease, Ack, Nack, ExtendLease
//!  read      Broker.GetJob; Admin.GetClusterStatus, GetQueueStats, ListQueues,
//!            ListJobs, ListWorkers; the dashboard's GET /api/...
//!  admin     everything, including Admin.PauseQueue, ResumeQueue, RetryJob,
//!            RedriveDeadJobs, AddNode, RemoveNode and the dashboard's POSTs
//! ```
//!
//! `--token` is one token with every role; `--tokens-file` holds more, one per line
//! (`TOKEN ROLES [QUEUES]`, e.g. `s3cr3t produce,read emails,sms.*`), reloaded on
//! SIGHUP. A token with queue patterns may only name matching queues (and touch jobs
//! of those queues). With neither flag the API is open (every caller has every role).
//!
//! [`AuthLayer`] runs before decoding: it finds the role a method needs from the
//! request path, answers UNAUTHENTICATED (no or unknown token) or PERMISSION_DENIED
//! (role missing), and hands the caller's [`Credential`] to the handler in the request
//! extensions for the queue checks. Tokens are compared in constant time, against every
//! configured token, so timing tells nothing about which (or whether one) matched.
//! Health, reflection and unknown services stay open (the latter answer UNIMPLEMENTED).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context as _};
use subtle::ConstantTimeEq;

use super::gate::{Check, Gate};
use crate::error::BrokerError;

/// What a credential may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Enqueue and cancel.
    Produce,
    /// Lease, ack, nack, extend.
    Work,
    /// Read jobs, queues, workers, cluster.
    Read,
    /// Everything.
    Admin,
}

impl Role {
    fn bit(self) -> u8 {
        match self {
            Role::Produce => 1,
            Role::Work => 2,
            Role::Read => 4,
            Role::Admin => 8,
        }
    }

    /// The role's name in the tokens file.
    pub fn name(self) -> &'static str {
        match self {
            Role::Produce => "produce",
            Role::Work => "work",
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

/// One caller's rights.
#[derive(Clone, Debug)]
pub struct Credential {
    roles: u8,
    /// Queue patterns (`*` matches any run of characters); `None`: every queue.
    queues: Option<Vec<String>>,
}

impl Credential {
    /// Every role on every queue (`--token`, or no authentication configured).
    pub fn all() -> Self {
        Self {
            roles: 0xf,
            queues: None,
        }
    }

    /// True when the credential has `role` (admin has every role).
    pub fn has(&self, role: Role) -> bool {
        self.roles & (role.bit() | Role::Admin.bit()) != 0
    }

    /// True when the credential is limited to some queues.
    pub fn is_scoped(&self) -> bool {
        self.queues.is_some()
    }

    /// True when the credential may use `queue`.
    pub fn may_use(&self, queue: &str) -> bool {
        self.queues
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| glob(p, queue)))
    }

    /// PERMISSION_DENIED unless the credential may use `queue`.
    pub fn check_queue(&self, field: &str, queue: &str) -> Result<(), BrokerError> {
        if self.may_use(queue) {
            Ok(())
        } else {
            Err(BrokerError::PermissionDenied(format!(
                "this token may not use queue {queue:?} ({field})"
            )))
        }
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// The configured tokens (`Bearer <token>` bytes, and what each may do).
#[derive(Default)]
struct TokenSet {
    tokens: Vec<(Vec<u8>, Arc<Credential>)>,
}

impl TokenSet {
    fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The credential of an `authorization` header value. Every token is compared, in
    /// constant time, whatever matched.
    fn find(&self, header: &[u8]) -> Option<Arc<Credential>> {
        let mut found = None;
        for (want, cred) in &self.tokens {
            if bool::from(want.as_slice().ct_eq(header)) {
                found = Some(cred.clone());
            }
        }
        found
    }
}

/// Parses a tokens file: `TOKEN ROLES [QUEUES]` per line, `#` comments.
fn parse_tokens(text: &str) -> anyhow::Result<Vec<(String, Credential)>> {
    let mut out: Vec<(String, Credential)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("line {}", n + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (token, roles, queues) = match fields.as_slice() {
            [t, r] => (*t, *r, None),
            [t, r, q] => (*t, *r, Some(*q)),
            _ => bail!("{}: expected `TOKEN ROLES [QUEUES]`", at()),
        };
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("{}: a token is printable ASCII without spaces", at());
        }
        if out.iter().any(|(t, _)| t == token) {
            bail!("{}: this token is already listed", at());
        }
        let mut bits = 0;
        for r in roles.split(',') {
            bits |= match r.trim() {
                "produce" => Role::Produce.bit(),
                "work" => Role::Work.bit(),
                "read" => Role::Read.bit(),
                "admin" | "all" => Role::Admin.bit(),
                other => bail!(
                    "{}: unknown role {other:?} (produce, work, read, admin)",
                    at()
                ),
            };
        }
        let queues = queues.map(|q| {
            q.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        });
        out.push((
            token.to_string(),
            Credential {
                roles: bits,
                queues,
            },
        ));
    }
    Ok(out)
}

/// The node's credentials, shared by the gRPC layer and the HTTP port.
#[derive(Clone)]
pub struct Auth {
    token: Option<String>,
    file: Option<PathBuf>,
    set: Arc<RwLock<Arc<TokenSet>>>,
}

impl Auth {
    /// `--token` only (or nothing: open).
    pub fn new(token: Option<&str>) -> Self {
        Self::with_file(token, None).expect("no file to read")
    }

    /// `--token` and `--tokens-file`.
    pub fn with_file(token: Option<&str>, file: Option<&Path>) -> anyhow::Result<Self> {
        let auth = Self {
            token: token.map(str::to_string),
            file: file.map(Path::to_path_buf),
            set: Arc::default(),
        };
        auth.reload()?;
        Ok(auth)
    }

    /// Reads the tokens file again (on SIGHUP). On error the old tokens stay.
    /// Returns how many tokens are configured.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let mut tokens = Vec::new();
        if let Some(t) = &self.token {
            tokens.push((t.clone(), Credential::all()));
        }
        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --tokens-file {}", path.display()))?;
            let parsed =
                parse_tokens(&text).with_context(|| format!("--tokens-file {}", path.display()))?;
            if parsed.is_empty() && tokens.is_empty() {
                bail!(
                    "--tokens-file {} lists no token: that would open the API to anyone",
                    path.display()
                );
            }
            tokens.extend(parsed);
        }
        let set = TokenSet {
            tokens: tokens
                .into_iter()
                .map(|(t, c)| (format!("Bearer {t}").into_bytes(), Arc::new(c)))
                .collect(),
        };
        let n = set.tokens.len();
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(n)
    }

    /// True when no credential is configured (everyone may do everything).
    pub fn is_open(&self) -> bool {
        self.current().is_empty()
    }

    fn current(&self) -> Arc<TokenSet> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The caller's credential from its whole `authorization` value.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Arc<Credential>, BrokerError> {
        let set = self.current();
        if set.is_empty() {
            return Ok(Arc::new(Credential::all()));
        }
        let Some(header) = header else {
            return Err(BrokerError::Unauthenticated(
                "missing authorization metadata: send `authorization: Bearer <token>`".into(),
            ));
        };
        set.find(header)
            .ok_or_else(|| BrokerError::Unauthenticated("invalid bearer token".into()))
    }

    /// The caller's credential if it has `role`.
    pub fn authorize(
        &self,
        header: Option<&[u8]>,
        role: Role,
    ) -> Result<Arc<Credential>, BrokerError> {
        let cred = self.authenticate(header)?;
        if cred.has(role) {
            Ok(cred)
        } else {
            Err(BrokerError::PermissionDenied(format!(
                "this token lacks the {} role",
                role.name()
            )))
        }
    }

    /// True when `header` (the whole `authorization` value) is a configured token.
    pub fn check_header(&self, header: Option<&[u8]>) -> bool {
        self.authenticate(header).is_ok()
    }
}

/// The role a gRPC method needs; `None` for open services (health, reflection, and
/// anything not served here, which answers UNIMPLEMENTED).
pub fn required_role(path: &str) -> Option<Role> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    match service {
        "taskraft.v1.Broker" => Some(match method {
            "Enqueue" | "EnqueueBatch" | "EnqueueStream" | "CancelJob" => Role::Produce,
            "Lease" | "Ack" | "Nack" | "ExtendLease" | "Work" => Role::Work,
            "GetJob" => Role::Read,
            _ => Role::Admin,
        }),
        "taskraft.v1.Admin" => Some(match method {
            "GetClusterStatus" | "GetQueueStats" | "ListQueues" | "ListJobs" | "ListWorkers" => {
                Role::Read
            }
            _ => Role::Admin,
        }),
        _ => None,
    }
}

/// The caller's credential, as [`AuthLayer`] left it for the handler.
pub fn credential<T>(req: &tonic::Request<T>) -> Arc<Credential> {
    req.extensions()
        .get::<Arc<Credential>>()
        .cloned()
        .unwrap_or_else(|| Arc::new(Credential::all()))
}

/// PERMISSION_DENIED when a queue-limited credential names a job of another queue (as
/// far as this node's applied state knows the job; an unknown job is left to the
/// command, which answers NOT_FOUND).
pub fn check_job_queue(
    node: &crate::raft::RaftNode,
    cred: &Credential,
    job_id: &str,
) -> Result<(), BrokerError> {
    if !cred.is_scoped() {
        return Ok(());
    }
    let queue = node.view().state.job_record(job_id).map(|j| j.queue);
    match queue {
        Some(q) if !cred.may_use(&q) => Err(BrokerError::PermissionDenied(format!(
            "this token may not use queue {q:?} (of job {job_id})"
        ))),
        _ => Ok(()),
    }
}

/// Checks every public call's credential and role before it is decoded.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Auth,
}

impl AuthLayer {
    /// Checks against `auth`.
    pub fn new(auth: Auth) -> Self {
        Self { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Gate<S, AuthLayer>;

    fn layer(&self, inner: S) -> Self::Service {
        Gate::new(inner, self.clone())
    }
}

impl Check for AuthLayer {
    /// Authorizes the call's credential for the method's role and hands it to the
    /// handler in the request's extensions.
    fn check<B>(&self, req: &mut http::Request<B>) -> Result<(), BrokerError> {
        if let Some(role) = required_role(req.uri().path()) {
            let header = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            let cred = self.auth.authorize(header, role)?;
            req.extensions_mut().insert(cred);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
