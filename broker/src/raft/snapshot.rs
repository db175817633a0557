//! Snapshot data: a point-in-time view of the state store, written out as a record
//! stream only when a follower needs it, and loaded into a fresh store on install.
//!
//! ```text
//!  leader                                                follower
//!  build_snapshot: durable commit + read txn (no copy)
//!  get_current_snapshot ─► SnapshotData::View
//!     first seek/read: blocking thread writes the view ─► snapshot-tmp/<id>.stream
//!     (once per snapshot, shared by retried sends; removed when no longer used)
//!     openraft reads 8 MiB chunks ───────── InstallSnapshot ─────► SnapshotData::File (temp)
//!                                                       install: load records into
//!                                                       state.redb.installing, fsync,
//!                                                       rename over state.redb
//! ```
//!
//! Stream format: `TRSNAP01`, then records `table u8 . key_len u32le . key . value_len
//! u32le . value` (tables as in [`tables::ALL`]), then `0xFF`. A stream without the end
//! mark is refused, so a transfer cut short never installs half a state.

use std::future::Future;
use std::io::{self, BufReader, BufWriter, Read, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use redb::{Database, ReadTransaction, ReadableTable};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use crate::storage::tables;

const MAGIC: &[u8; 8] = b"TRSNAP01";
const END: u8 = 0xFF;
/// No key or value the store writes comes near this; a larger length is corruption.
const MAX_BLOB: usize = 256 << 20;
/// Records are loaded into the new store in transactions of about this many bytes,
/// so that installing a large state never holds it all in one transaction's memory.
const LOAD_TXN_BYTES: usize = 64 << 20;

/// openraft's snapshot data: a view not yet written out, or a file.
pub struct SnapshotData {
    inner: Inner,
}

type FileFuture = Pin<Box<dyn Future<Output = io::Result<std::fs::File>> + Send>>;

enum Inner {
    /// A snapshot's stream, written out (once per snapshot) on first use.
    View {
        dump: Arc<Dump>,
        pending: Option<SeekFrom>,
    },
    /// Waiting for the stream to be written.
    Dumping {
        file: FileFuture,
        pending: Option<SeekFrom>,
    },
    /// A snapshot as a file: dumped from a view, or being received from the leader.
    File(tokio::fs::File),
}

impl SnapshotData {
    /// The stream of `dump`, written out when first read.
    pub fn view(dump: Arc<Dump>) -> Self {
        Self {
            inner: Inner::View {
                dump,
                pending: None,
            },
        }
    }

    /// An empty temp file under `dir` to receive a snapshot into.
    pub fn receive(dir: &Path) -> io::Result<Self> {
        Ok(Self {
            inner: Inner::File(tokio::fs::File::from_std(temp_file(dir)?)),
        })
    }

    /// A stream already in a file (a backup being restored).
    pub fn from_file(file: std::fs::File) -> Self {
        Self {
            inner: Inner::File(tokio::fs::File::from_std(file)),
        }
    }

    /// The data as a file, written out if it was still a view.
    pub async fn into_file(mut self) -> io::Result<std::fs::File> {
        std::future::poll_fn(|cx| self.poll_file(cx)).await?;
        match self.inner {
            Inner::File(f) => Ok(f.into_std().await),
            _ => unreachable!("poll_file leaves a file"),
        }
    }

    /// Drives a view to a file; ready once `inner` is `File` (with any pending seek
    /// started on it).
    fn poll_file(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.inner {
                Inner::File(_) => return Poll::Ready(Ok(())),
                Inner::View { dump, pending } => {
                    let (dump, pending) = (dump.clone(), pending.take());
                    let file = Box::pin(dump.file());
                    self.inner = Inner::Dumping { file, pending };
                }
                Inner::Dumping { file, pending } => {
                    let file = ready!(file.as_mut().poll(cx))?;
                    let pending = pending.take();
                    let mut file = tokio::fs::File::from_std(file);
                    if let Some(pos) = pending {
                        Pin::new(&mut file).start_seek(pos)?;
                    }
                    self.inner = Inner::File(file);
                }
            }
        }
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_file(cx))?;
        match &mut self.inner {
            Inner::File(f) => Pin::new(f).poll_read(cx, buf),
            _ => unreachable!(),
        }
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        match &mut self.inner {
            Inner::File(f) => Pin::new(f).start_seek(position),
            Inner::View { pending, .. } | Inner::Dumping { pending, .. } => {
                *pending = Some(position);
                Ok(())
            }
        }
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        ready!(self.poll_file(cx))?;
        match &mut self.inner {
            Inner::File(f) => Pin::new(f).poll_complete(cx),
            _ => unreachable!(),
        }
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_file(cx))?;
        match &mut self.inner {
            Inner::File(f) => Pin::new(f).poll_write(cx, buf),
            _ => unreachable!(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::File(f) => Pin::new(f).poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::File(f) => Pin::new(f).poll_shutdown(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// A new temp file under `dir`, already unlinked: it disappears when closed, or when
/// the process dies.
fn temp_file(dir: &Path) -> io::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    tempfile::tempfile_in(dir)
}

/// One snapshot's record stream: written from its read view the first time a follower
/// needs it, into a file that every later send of the same snapshot reuses (writing
/// 10M jobs takes a minute; a send that is retried must not start over), and removed
/// when the snapshot is no longer current and no send uses it.
pub struct Dump {
    view: Arc<ReadTransaction>,
    path: PathBuf,
    written: tokio::sync::OnceCell<Result<(), String>>,
}

impl Dump {
    /// The stream of `view`, to be written to `dir/<name>.stream`.
    pub fn new(view: Arc<ReadTransaction>, dir: &Path, name: &str) -> Arc<Self> {
        Arc::new(Self {
            view,
            // Snapshot ids come from the leader: keep them to a safe file name.
            path: dir.join(format!(
                "{}.stream",
                name.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
            )),
            written: tokio::sync::OnceCell::new(),
        })
    }

    /// The written stream, opened at its start.
    async fn file(self: Arc<Self>) -> io::Result<std::fs::File> {
        let me = self.clone();
        self.written
            .get_or_init(|| async move {
                tokio::task::spawn_blocking(move || write_file(&me.view, &me.path))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            })
            .await
            .clone()
            .map_err(io::Error::other)?;
        std::fs::File::open(&self.path)
    }
}

impl Drop for Dump {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes the stream of `view` to `path` (through a temp name, so a crash never leaves
/// a partial file under the final name).
fn write_file(view: &ReadTransaction, path: &Path) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    dump_into(view, tmp.as_file().try_clone()?)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Writes every state table of `view` as a record stream into a temp file under `dir`.
#[cfg(test)]
fn dump(view: &ReadTransaction, dir: &Path) -> io::Result<std::fs::File> {
    dump_into(view, temp_file(dir)?)
}

/// Writes every state table of `view` as a record stream into `file`, and returns it
/// rewound.
fn dump_into(view: &ReadTransaction, file: std::fs::File) -> io::Result<std::fs::File> {
    let started = std::time::Instant::now();
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let records = dump_to(view, &mut out)?;
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    file.flush()?;
    let bytes = std::io::Seek::seek(&mut file, SeekFrom::End(0))?;
    std::io::Seek::seek(&mut file, SeekFrom::Start(0))?;
    tracing::info!(
        records,
        bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "wrote snapshot stream"
    );
    Ok(file)
}

/// Writes every state table of `view` as a record stream (magic, records, end mark) to
/// `out`; returns the number of records. Backups use it too: a backup file is a
/// snapshot stream.
pub fn dump_to(view: &ReadTransaction, out: &mut impl Write) -> io::Result<u64> {
    out.write_all(MAGIC)?;
    let mut records = 0u64;
    for (i, def) in tables::ALL.iter().enumerate() {
        let table = match view.open_table(*def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => continue,
            Err(e) => return Err(io::Error::other(e)),
        };
        for item in table.iter().map_err(io::Error::other)? {
            let (k, v) = item.map_err(io::Error::other)?;
            let (k, v) = (k.value(), v.value());
            out.write_all(&[i as u8])?;
            out.write_all(&(k.len() as u32).to_le_bytes())?;
            out.write_all(k)?;
            out.write_all(&(v.len() as u32).to_le_bytes())?;
            out.write_all(v)?;
            records += 1;
        }
    }
    out.write_all(&[END])?;
    out.flush()?;
    Ok(records)
}

/// Reads a value of the `sm_meta` table (streamed first) from the start of a record
/// stream, without loading it: `restore` learns the log id a backup was taken at.
/// Leaves the file rewound.
pub fn peek_meta(file: &mut std::fs::File, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
    std::io::Seek::seek(file, SeekFrom::Start(0))?;
    let mut input = BufReader::new(&mut *file);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a taskraft snapshot stream (bad magic)",
        ));
    }
    let (mut k, mut v) = (Vec::new(), Vec::new());
    let found = loop {
        let mut tag = [0u8; 1];
        input.read_exact(&mut tag)?;
        if tag[0] != 0 {
            break None; // past sm_meta (table 0), or the end mark
        }
        read_blob(&mut input, &mut k)?;
        read_blob(&mut input, &mut v)?;
        if k == key {
            break Some(v);
        }
    };
    drop(input);
    std::io::Seek::seek(file, SeekFrom::Start(0))?;
    Ok(found)
}

/// Loads a record stream into `db` (a new, empty store), committing every
/// [`LOAD_TXN_BYTES`] without fsync and once durably at the end. Fails on a stream that
/// is malformed or has no end mark.
pub fn load(mut file: std::fs::File, db: &Database) -> io::Result<u64> {
    std::io::Seek::seek(&mut file, SeekFrom::Start(0))?;
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot stream: {what}"),
        )
    };
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(|_| bad("too short"))?;
    if &magic != MAGIC {
        return Err(bad("not a taskraft snapshot (bad magic)"));
    }
    let mut records = 0u64;
    let mut key = Vec::new();
    let mut value = Vec::new();
    let mut done = false;
    while !done {
        let txn = db.begin_write().map_err(io::Error::other)?;
        let mut bytes = 0usize;
        {
            let mut open: Vec<Option<redb::Table<&[u8], &[u8]>>> =
                tables::ALL.iter().map(|_| None).collect();
            while bytes < LOAD_TXN_BYTES {
                let mut tag = [0u8; 1];
                input
                    .read_exact(&mut tag)
                    .map_err(|_| bad("no end mark (cut short)"))?;
                if tag[0] == END {
                    done = true;
                    break;
                }
                let i = tag[0] as usize;
                let def = *tables::ALL.get(i).ok_or_else(|| bad("unknown table"))?;
                read_blob(&mut input, &mut key).map_err(|_| bad("cut short in a key"))?;
                read_blob(&mut input, &mut value).map_err(|_| bad("cut short in a value"))?;
                if open[i].is_none() {
                    open[i] = Some(txn.open_table(def).map_err(io::Error::other)?);
                }
                open[i]
                    .as_mut()
                    .expect("opened above")
                    .insert(key.as_slice(), value.as_slice())
                    .map_err(io::Error::other)?;
                bytes += key.len() + value.len() + 9;
                records += 1;
            }
        }
        let mut txn = txn;
        txn.set_durability(if done {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        })
        .map_err(io::Error::other)?;
        txn.commit().map_err(io::Error::other)?;
    }
    let mut rest = [0u8; 1];
    if input.read(&mut rest)? != 0 {
        return Err(bad("data after the end mark"));
    }
    Ok(records)
}

fn read_blob(input: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_BLOB {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a {len}-byte record"),
        ));
    }
    buf.resize(len, 0);
    input.read_exact(buf)
}

#[cfg(test)]
mod tests;
