//! The write side: applied entries go into one open write transaction, committed
//! every few milliseconds (durably every second).

use super::*;

/// The write transaction that applied entries go into.
///
/// Committing a redb transaction costs a fixed amount (every touched B-tree path is
/// copied and written out) however little it holds, and under load openraft hands
/// `apply` a few entries at a time. So batches accumulate in one open transaction that
/// is committed at most [`COMMIT_EVERY`] after it was opened: by the next `apply` that
/// finds it old enough, or by a timer when no more entries come. Callers lose nothing
/// by the wait: a write's reply comes from `apply` itself, and readers go through
/// [`ReadSide::applied_index`], which moves only when a commit makes the entries visible
/// to read transactions (the read barrier waits for it). Every other writer of the
/// store (a durable commit for a snapshot, an install) commits the open transaction
/// first: redb allows one write transaction at a time.
pub(super) struct Writer {
    pub(super) txn: Option<WriteTransaction>,
    /// Jobs made ready by the entries in `txn`, by queue: woken at its commit.
    pub(super) readied: HashMap<String, u32>,
    pub(super) opened: Instant,
    /// Index of the last entry applied into `txn`.
    pub(super) index: Option<u64>,
    /// A [`commit_timer`] is pending.
    pub(super) timer_armed: bool,
    pub(super) last_durable: Instant,
    /// A commit by the timer failed: the entries in it are lost to this process, so
    /// every later call fails (openraft then stops the node, and a restart applies
    /// them again from the log).
    pub(super) failed: Option<String>,
}

impl Writer {
    pub(super) fn new() -> Self {
        Self {
            txn: None,
            readied: HashMap::new(),
            opened: Instant::now(),
            index: None,
            timer_armed: false,
            last_durable: Instant::now(),
            failed: None,
        }
    }

    /// Commits the open transaction, if any (durably when `durable`, or when the last
    /// durable commit is [`DURABLE_EVERY`] old), and publishes its entries to readers.
    pub(super) fn commit(&mut self, read_side: &ReadSide, durable: bool) -> anyhow::Result<()> {
        if let Some(e) = &self.failed {
            anyhow::bail!("an earlier commit of applied entries failed: {e}");
        }
        let Some(mut txn) = self.txn.take() else {
            return Ok(());
        };
        let durable = durable || self.last_durable.elapsed() >= DURABLE_EVERY;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        // Durable commits save redb's allocator state, so that opening the store after a
        // crash does not walk the whole database (seconds at 10M jobs).
        txn.set_quick_repair(durable);
        txn.commit()?;
        if durable {
            self.last_durable = Instant::now();
        }
        if let Some(i) = self.index.take() {
            read_side.applied_index.send_replace(i);
        }
        read_side.wake(std::mem::take(&mut self.readied));
        Ok(())
    }
}

/// Commits the open transaction once it is [`COMMIT_EVERY`] old, when no apply came to
/// do it; waits again if a newer transaction was opened meanwhile.
pub(super) async fn commit_timer(
    writer: std::sync::Weak<Mutex<Writer>>,
    read_side: std::sync::Weak<ReadSide>,
    mut due: Instant,
) {
    loop {
        tokio::time::sleep_until(due.into()).await;
        let (writer, read_side) = (writer.clone(), read_side.clone());
        let again = tokio::task::spawn_blocking(move || {
            let (Some(writer), Some(read_side)) = (writer.upgrade(), read_side.upgrade()) else {
                return None;
            };
            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
            if w.txn.is_none() || w.failed.is_some() {
                w.timer_armed = false;
                return None;
            }
            if w.opened.elapsed() < COMMIT_EVERY {
                return Some(w.opened + COMMIT_EVERY);
            }
            w.timer_armed = false;
            if let Err(e) = w.commit(&read_side, false) {
                tracing::error!(error = %e, "committing applied entries failed");
                w.failed = Some(e.to_string());
            }
            None
        })
        .await
        .ok()
        .flatten();
        match again {
            Some(next) => due = next,
            None => return,
        }
    }
}

/// What [`apply_batch`] applied: a reply per entry, the last index, and the latest
/// leader time among the entries.
pub(super) type Applied = (Vec<Reply>, Option<u64>, Option<u64>);

/// Applies `entries` in one write transaction, appending the job transitions they
/// caused to `transitions` when it is given.
/// `me` is the applying node: entries proposed by another leader get no payloads in
/// their replies (nobody here reads them).
pub(super) fn apply_batch(
    txn: &WriteTransaction,
    entries: Vec<Entry>,
    readied: &mut HashMap<String, u32>,
    mut transitions: Option<&mut Vec<Transition>>,
    me: Option<NodeId>,
) -> Result<Applied, String> {
    let h = Handles::open(|def| txn.open_table(def)).map_err(|e| e.to_string())?;
    let mut tables = DiskTables::new(h);
    let mut membership: Option<Membership> = None;
    let mut last: Option<LogId> = None;
    let mut latest_ms: Option<u64> = None;
    let mut replies = Vec::with_capacity(entries.len());
    for entry in entries {
        last = Some(entry.log_id);
        let reply = match entry.payload {
            EntryPayload::Blank => Ok(Outcome::Done),
            EntryPayload::Normal(env) => {
                latest_ms = latest_ms.max(Some(env.now_ms));
                let mut state = State::over(tables);
                let proposed_elsewhere = me.is_some_and(|me| entry.log_id.leader_id.node_id != me);
                state.set_reply_payloads(!proposed_elsewhere);
                let reply = match transitions.as_deref_mut() {
                    Some(out) => state.apply_reporting(&env, out),
                    None => state.apply(&env),
                };
                tables = state.into_tables();
                if reply.is_ok() {
                    resumed_queues(&env.cmd, readied);
                }
                reply
            }
            EntryPayload::Membership(m) => {
                membership = Some(StoredMembership::new(Some(entry.log_id), m));
                Ok(Outcome::Done)
            }
        };
        replies.push(reply);
    }
    for (queue, jobs) in tables.take_readied() {
        let n = readied.entry(queue).or_default();
        *n = n.saturating_add(jobs);
    }
    tables.flush();
    tables.meta_put(APPLIED_KEY, &last);
    if let Some(m) = &membership {
        tables.meta_put(MEMBERSHIP_KEY, m);
    }
    match tables.error() {
        Some(e) => Err(e),
        None => Ok((replies, last.map(|l| l.index), latest_ms)),
    }
}

/// Queues a command resumed: their ready jobs become leasable without being filed
/// again, so all their waiters are woken ([`WAKE_ALL`]).
pub(super) fn resumed_queues(cmd: &crate::queue::Command, readied: &mut HashMap<String, u32>) {
    use crate::queue::Command;
    match cmd {
        Command::Resume { queue } => {
            readied.insert(queue.clone(), WAKE_ALL);
        }
        Command::Batch(cmds) => cmds.iter().for_each(|c| resumed_queues(c, readied)),
        _ => {}
    }
}

impl StateMachineStore {
    /// Applies committed entries into the open write transaction (see [`Writer`]) and
    /// returns their replies.
    pub(super) async fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
    ) -> Result<Vec<Reply>, StorageError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let db = self.read_side.db();
        let this = self.clone();
        let observer = self.read_side.observer.get().cloned();
        let mut transitions = Vec::new();
        let report = observer.is_some();
        let left_open = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut w = this.lock_writer();
            if let Some(e) = &w.failed {
                anyhow::bail!("an earlier commit of applied entries failed: {e}");
            }
            if w.txn.is_none() {
                w.txn = Some(db.begin_write()?);
                w.opened = Instant::now();
            }
            let w = &mut *w;
            let txn = w.txn.as_ref().expect("opened above");
            let out = report.then_some(&mut transitions);
            let (replies, last_index, latest_ms) =
                match apply_batch(txn, entries, &mut w.readied, out, this.me) {
                    Ok(out) => out,
                    Err(e) => {
                        // Entries applied into this transaction before are lost with it; the
                        // error stops the node, and a restart applies them again from the log.
                        if let Some(txn) = w.txn.take() {
                            let _ = txn.abort();
                        }
                        anyhow::bail!(e);
                    }
                };
            if let Some(i) = last_index {
                w.index = Some(i);
                this.read_side.applied_latest.store(i, Ordering::Release);
            }
            let arm = if w.opened.elapsed() >= COMMIT_EVERY {
                w.commit(&this.read_side, false)?;
                None
            } else if w.timer_armed {
                None
            } else {
                w.timer_armed = true;
                Some(w.opened + COMMIT_EVERY)
            };
            Ok((replies, arm, last_index.zip(latest_ms), transitions))
        })
        .await
        .map_err(write_err)?
        .map_err(write_err)?;
        let (replies, arm, applied_time, transitions) = left_open;
        if let (Some(observe), false) = (observer, transitions.is_empty()) {
            observe(&transitions);
        }
        if let (Some(time), Some((index, now_ms))) = (&self.time, applied_time) {
            time.observe(index, now_ms);
        }
        if let Some(due) = arm {
            // No later apply may come to commit the open transaction: a timer does (one
            // at a time). It holds the store weakly, so that a store dropped (a node
            // stopping) closes its file at once.
            let writer = Arc::downgrade(&self.writer);
            let read_side = Arc::downgrade(&self.read_side);
            tokio::spawn(commit_timer(writer, read_side, due));
        }
        Ok(replies)
    }
}
