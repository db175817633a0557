//! The open connections of a listener, so that a stopping node can cut the ones its
//! graceful drain gave up on.
//!
//! HTTP/2's graceful close waits for each client to acknowledge the GOAWAY. A client
//! that never does (hung, or its process stopped) keeps its connection, and the task
//! serving it keeps the services it was handed: the Raft node and its open store
//! files. Aborting the server task does not end those connection tasks. So every
//! accepted connection is registered here, and [`Conns::cut`] makes its reads and
//! writes fail: the task serving it wakes, closes it, ends, and lets go of what it
//! holds.
//!
//! A cut is a flag and a waker per connection, checked on every read and write (two
//! atomic operations). Duplicating each socket to `shutdown(2)` it from outside would
//! be simpler, but would double the descriptors a node with ten thousand workers needs.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::tls::Conn;

/// A listener's open connections, by a registration number.
#[derive(Clone, Default)]
pub struct Conns {
    inner: Arc<Registry>,
}

#[derive(Default)]
struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<CutFlag>>>,
}

/// Set when the connection is cut; the waker is its serving task's.
#[derive(Default)]
struct CutFlag {
    cut: AtomicBool,
    waker: AtomicWaker,
}

impl Conns {
    /// Registers a connection just accepted. The registration ends when the returned
    /// guard is dropped (with the connection).
    pub fn register(&self) -> Registration {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let flag = Arc::new(CutFlag::default());
        self.lock().insert(id, flag.clone());
        Registration {
            conns: self.clone(),
            id,
            flag,
        }
    }

    /// Cuts every open connection; returns how many there were.
    pub fn cut(&self) -> usize {
        let open = self.lock();
        for flag in open.values() {
            flag.cut.store(true, Ordering::Release);
            flag.waker.wake();
        }
        open.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<CutFlag>>> {
        self.inner.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection's place in [`Conns`], given up when it is dropped.
pub struct Registration {
    conns: Conns,
    id: u64,
    flag: Arc<CutFlag>,
}

impl Registration {
    /// An error once the connection is cut; until then, arranges for the caller's task
    /// to be woken by a cut. (The waker is registered before the flag is read, so a
    /// cut between the two is not missed.)
    fn check(&self, cx: &Context<'_>) -> io::Result<()> {
        self.flag.waker.register(cx.waker());
        if self.flag.cut.load(Ordering::Acquire) {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection cut: the node is stopping",
            ))
        } else {
            Ok(())
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.conns.lock().remove(&self.id);
    }
}

/// An accepted connection and its registration.
pub struct Accepted {
    /// The connection.
    pub conn: Conn,
    registration: Registration,
}

impl Accepted {
    /// Pairs a connection with its registration.
    pub fn new(conn: Conn, registration: Registration) -> Self {
        Self { conn, registration }
    }
}

impl Connected for Accepted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.conn.connect_info()
    }
}

impl AsyncRead for Accepted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.registration.check(cx)?;
        Pin::new(&mut me.conn).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        me.registration.check(cx)?;
        Pin::new(&mut me.conn).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        me.registration.check(cx)?;
        Pin::new(&mut me.conn).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.conn.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.registration.check(cx)?;
        Pin::new(&mut me.conn).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_shutdown(cx)
    }
}
