//! How the client's requests reach zooid: the `ureq` connector chain, with a TCP transport
//! of zooid-sync's own, and a resolver that remembers zooid's address.
//!
//! ureq's own TCP transport is correct and general, and each request to zooid paid five
//! system calls more than its sending needs: with a request timeout, ureq sets the socket's
//! send and receive timeouts before every read and write (the time left shrinks, so the value
//! always changes), and it checks that a pooled connection is still open by switching the
//! socket to non-blocking, reading, and switching it back. On the two cores of a small VM,
//! next to SQLite and often zooid, those calls were a twentieth of a worker's time. The
//! transport here sets a socket timeout only when it moves by more than a fiftieth
//! ([`TIMEOUT_SLACK`]): the first request on a connection sets it, the next ones find it
//! close enough, and a request's deadline is still kept to within 2 % (a read that waits
//! can end up to that much early or late). It checks a pooled connection with one
//! non-blocking peek. Everything else is ureq's: an HTTP `CONNECT` proxy (`ZOOID_PROXY`)
//! is opened by ureq's connector before it, TLS wraps it after.
//!
//! This uses `ureq::unversioned`, which ureq may change in a minor release: ureq is held to
//! 3.5.x in `Cargo.toml`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ureq::unversioned::resolver::ResolvedSocketAddrs;
use ureq::unversioned::transport::{
    Buffers, ConnectProxyConnector, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout,
    RustlsConnector, ShutdownHandle, Transport,
};
use ureq::{Error, Timeout};

/// How far a socket's timeout may be from the time a request has left before it is set
/// again: a fiftieth of that time.
const TIMEOUT_SLACK: u32 = 50;

/// The connector chain of the client's agent: ureq's `CONNECT` proxy, then TCP (here, unless
/// the proxy opened the connection), then TLS for `https`.
pub(super) fn connector() -> impl Connector {
    ().chain(ConnectProxyConnector::default())
        .chain(TcpConnector)
        .chain(RustlsConnector::default())
}

/// Opens TCP connections to zooid as [`Tcp`] transports.
#[derive(Debug)]
struct TcpConnector;

impl<In: Transport> Connector<In> for TcpConnector {
    type Out = Either<In, Tcp>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, Error> {
        if let Some(chained) = chained {
            // A proxy's connection: it stands for the connection to zooid.
            return Ok(Some(Either::A(chained)));
        }
        let stream = Arc::new(connect(&details.addrs, details.timeout)?);
        if details.config.no_delay() {
            stream.set_nodelay(true)?;
        }
        let weak = Arc::downgrade(&stream);
        (details.register_shutdown)(weak as std::sync::Weak<dyn ShutdownHandle>)?;
        let config = details.config;
        Ok(Some(Either::B(Tcp {
            stream,
            buffers: LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size()),
            read_timeout: None,
            write_timeout: None,
        })))
    }
}

/// Connects to the first of `addrs` that answers, each given an equal part of what is left of
/// the time.
fn connect(addrs: &ResolvedSocketAddrs, timeout: NextTimeout) -> Result<TcpStream, Error> {
    let deadline = timeout.not_zero().map(|t| Instant::now() + *t);
    let mut last = None;
    for (k, addr) in addrs.iter().enumerate() {
        let attempt = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout(Timeout::Connect));
                }
                TcpStream::connect_timeout(addr, share_of(left, addrs.len() - k))
            }
            None => TcpStream::connect(addr),
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) if is_timeout(&e) => last = Some(Error::Timeout(Timeout::Connect)),
            Err(e) => last = Some(Error::Io(e)),
        }
    }
    Err(last.unwrap_or_else(|| {
        Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "no address to connect to",
        ))
    }))
}

/// What each of the `addresses` left to try gets of the time `left`: an equal part, at least
/// 10 ms.
fn share_of(left: Duration, addresses: usize) -> Duration {
    (left / addresses.max(1) as u32).max(Duration::from_millis(10))
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// A TCP connection to zooid; see the module's doc for how it differs from ureq's.
struct Tcp {
    /// Shared (weakly) with the agent, which shuts it down to end a request in flight.
    stream: Arc<TcpStream>,
    buffers: LazyBuffers,
    /// The socket's timeouts as last set.
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl std::fmt::Debug for Tcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tcp")
            .field("peer", &self.stream.peer_addr().ok())
            .finish()
    }
}

/// What a socket's timeout should be for an operation with `timeout` left, or `None` when the
/// one set (`set`) is close enough: within a [`TIMEOUT_SLACK`]th of what is left.
fn timeout_to_set(set: Option<Duration>, timeout: NextTimeout) -> Option<Option<Duration>> {
    let wanted = timeout.not_zero().map(|t| *t);
    let close_enough = match (set, wanted) {
        (Some(set), Some(wanted)) => set.abs_diff(wanted) <= wanted / TIMEOUT_SLACK,
        (None, None) => true,
        _ => false,
    };
    (!close_enough).then_some(wanted)
}

/// The error for an operation that ran out of `timeout`, or failed.
fn io_error(e: std::io::Error, timeout: NextTimeout) -> Error {
    match is_timeout(&e) {
        true => Error::Timeout(timeout.reason),
        false => Error::Io(e),
    }
}

/// Refuses an operation whose time is already up.
fn time_left(timeout: NextTimeout) -> Result<NextTimeout, Error> {
    match timeout.after.is_zero() {
        true => Err(Error::Timeout(timeout.reason)),
        false => Ok(timeout),
    }
}

impl Transport for Tcp {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let timeout = time_left(timeout.for_write())?;
        if let Some(set) = timeout_to_set(self.write_timeout, timeout) {
            self.stream.set_write_timeout(set)?;
            self.write_timeout = set;
        }
        let output = &self.buffers.output()[..amount];
        (&*self.stream)
            .write_all(output)
            .map_err(|e| io_error(e, timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        let timeout = time_left(timeout.for_read())?;
        if let Some(set) = timeout_to_set(self.read_timeout, timeout) {
            self.stream.set_read_timeout(set)?;
            self.read_timeout = set;
        }
        let input = self.buffers.input_append_buf();
        let read = loop {
            match (&*self.stream).read(input) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let amount = read.map_err(|e| io_error(e, timeout))?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    /// Whether a pooled connection can take a request: nothing to read and not closed, by one
    /// peek that does not wait.
    fn is_open(&mut self) -> bool {
        peek_is_open(&self.stream)
    }
}

/// Whether nothing waits to be read on `stream` and its peer has not closed it: a pooled
/// connection ready for a request. One `recv` that peeks and does not block.
fn peek_is_open(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: recv reads at most one byte into `byte`, which lives across the call; the
    // descriptor belongs to `stream`, open for the call's length.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    // Would block: open and quiet. 0: the peer closed it. A byte: zooid sent what nobody
    // asked for. Any other error: unusable.
    n < 0 && is_timeout(&std::io::Error::last_os_error())
}

/// How long a resolved address of zooid is reused.
const RESOLVE_TTL: Duration = Duration::from_secs(30);

/// Resolves zooid's host name once and reuses the answer for [`RESOLVE_TTL`].
///
/// ureq resolves the host before every request, even one that goes out on a kept-alive
/// connection, and with a timeout configured it does so on a freshly spawned thread. For a
/// worker that talks to one host thousands of times that thread was most of the cost of a
/// request; caching keeps the timeout for real lookups and drops the rest.
#[derive(Debug, Default)]
pub(super) struct CachingResolver {
    inner: ureq::unversioned::resolver::DefaultResolver,
    cache: std::sync::Mutex<Option<Resolved>>,
}

#[derive(Debug)]
struct Resolved {
    authority: String,
    at: Instant,
    addrs: ureq::unversioned::resolver::ResolvedSocketAddrs,
}

impl ureq::unversioned::resolver::Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let authority = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map_or("", |a| a.as_str())
        );
        if let Some(hit) = self.cache.lock().unwrap().as_ref() {
            if hit.authority == authority && hit.at.elapsed() < RESOLVE_TTL {
                return Ok(hit.addrs.clone());
            }
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        *self.cache.lock().unwrap() = Some(Resolved {
            authority,
            at: Instant::now(),
            addrs: addrs.clone(),
        });
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::unversioned::transport::time::Duration as Left;

    fn left(ms: u64) -> NextTimeout {
        NextTimeout {
            after: Left::from_millis(ms),
            reason: Timeout::Global,
            per_read: None,
            per_write: None,
        }
    }

    #[test]
    fn a_socket_timeout_is_set_again_only_when_it_moves_by_more_than_a_fiftieth() {
        let ms = Duration::from_millis;
        assert_eq!(
            timeout_to_set(None, left(5000)),
            Some(Some(ms(5000))),
            "first"
        );
        assert_eq!(timeout_to_set(Some(ms(5000)), left(4950)), None, "1 % less");
        assert_eq!(
            timeout_to_set(Some(ms(5000)), left(4910)),
            None,
            "under 2 % less"
        );
        assert_eq!(
            timeout_to_set(Some(ms(5000)), left(4890)),
            Some(Some(ms(4890))),
            "more than 2 % less"
        );
        assert_eq!(
            timeout_to_set(Some(ms(4000)), left(5000)),
            Some(Some(ms(5000))),
            "a new request's whole timeout"
        );
        assert_eq!(
            timeout_to_set(Some(ms(100)), left(20)),
            Some(Some(ms(20))),
            "near the deadline it follows closely"
        );
        let never = NextTimeout {
            after: Left::NotHappening,
            ..left(0)
        };
        assert_eq!(timeout_to_set(Some(ms(5000)), never), Some(None));
        assert_eq!(timeout_to_set(None, never), None);
    }

    #[test]
    fn each_address_left_gets_an_equal_part_of_the_time_left() {
        let ms = Duration::from_millis;
        assert_eq!(share_of(ms(900), 3), ms(300));
        assert_eq!(share_of(ms(900), 1), ms(900));
        assert_eq!(share_of(ms(15), 3), ms(10), "at least 10 ms");
    }

    #[test]
    fn no_time_left_is_a_timeout_with_its_reason() {
        assert!(matches!(
            time_left(left(0)),
            Err(Error::Timeout(Timeout::Global))
        ));
        assert!(time_left(left(1)).is_ok());
    }

    /// A connection to `listener`, as the connector makes it.
    fn tcp_to(listener: &std::net::TcpListener) -> Tcp {
        Tcp {
            stream: Arc::new(TcpStream::connect(listener.local_addr().unwrap()).unwrap()),
            buffers: LazyBuffers::new(1024, 1024),
            read_timeout: None,
            write_timeout: None,
        }
    }

    /// A silent zooid: a read ends at its timeout, as a timeout, and soon (the test fails at
    /// once instead of hanging when it does not).
    #[test]
    fn a_read_that_gets_no_answer_ends_at_its_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tcp = tcp_to(&listener);
        let (_silent, _) = listener.accept().unwrap();
        assert!(format!("{tcp:?}").starts_with("Tcp { peer: Some("));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let started = Instant::now();
            let read = tcp.await_input(left(100));
            let _ = tx.send((read, started.elapsed()));
        });
        let (read, took) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the read outlasted its timeout");
        assert!(
            matches!(read, Err(Error::Timeout(Timeout::Global))),
            "{read:?}"
        );
        assert!(took >= Duration::from_millis(95), "{took:?}");
    }

    #[test]
    fn a_read_says_whether_it_got_anything_and_the_connection_whether_it_is_open() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tcp = tcp_to(&listener);
        let (mut zooid, _) = listener.accept().unwrap();
        assert!(tcp.is_open(), "quiet");
        zooid.write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while tcp.is_open() && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(
            !tcp.is_open(),
            "a pooled connection with bytes nobody asked for"
        );
        assert_eq!(tcp.await_input(left(5000)).ok(), Some(true), "bytes came");
        assert!(tcp.is_open(), "read: quiet again");
        drop(zooid);
        assert_eq!(
            tcp.await_input(left(5000)).ok(),
            Some(false),
            "closed: nothing"
        );
    }

    #[test]
    fn a_refused_connection_is_an_error_not_a_timeout() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let mut addrs = ResolvedSocketAddrs::from_fn(|_| addr);
        addrs.push(addr);
        match connect(&addrs, left(1000)) {
            Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pooled_connection_is_open_while_quiet_and_not_once_closed_or_talking() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert!(peek_is_open(&client), "quiet");
        server.write_all(b"x").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while peek_is_open(&client) && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(!peek_is_open(&client), "bytes nobody asked for");
        let mut byte = [0u8];
        (&client).read_exact(&mut byte).unwrap();
        assert!(peek_is_open(&client), "read: quiet again");
        drop(server);
        while peek_is_open(&client) && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(!peek_is_open(&client), "closed by the peer");
    }
}
