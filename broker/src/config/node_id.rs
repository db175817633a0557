//! `--id-from-hostname`: a StatefulSet pod `name-N` is node N+1.

use super::*;

/// This machine's host name: `$HOSTNAME` (set by Kubernetes to the pod name), else the
/// kernel's.
pub(super) fn hostname() -> anyhow::Result<String> {
    if let Some(h) = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
    {
        return Ok(h.trim().to_string());
    }
    for path in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(h) = std::fs::read_to_string(path) {
            if !h.trim().is_empty() {
                return Ok(h.trim().to_string());
            }
        }
    }
    bail!("--id-from-hostname: no host name ($HOSTNAME is unset and the kernel's is unreadable)")
}

/// The node id of a StatefulSet pod: its ordinal (after the last `-` of the first label)
/// plus one, since node ids start at 1. `taskraft-0` → 1, `tr-db-4.tr.ns.svc` → 5.
pub fn id_from_hostname(host: &str) -> anyhow::Result<u64> {
    let short = host.split('.').next().unwrap_or(host);
    let ordinal = short
        .rsplit_once('-')
        .map(|(_, n)| n)
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .with_context(|| {
            format!("--id-from-hostname: host name {host:?} does not end in -<ordinal> (like taskraft-0)")
        })?;
    let n: u64 = ordinal
        .parse()
        .with_context(|| format!("--id-from-hostname: ordinal {ordinal:?} is too large"))?;
    n.checked_add(1)
        .with_context(|| format!("--id-from-hostname: ordinal {ordinal:?} is too large"))
}
