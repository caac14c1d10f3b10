//! systemd's service notifications and watchdog (`sd_notify`), for `zooid-sync run` under a
//! unit with `Type=notify` and `WatchdogSec=`.
//!
//! The protocol is one datagram per message on the Unix socket named by `NOTIFY_SOCKET` (a
//! path, or `@name` for Linux's abstract namespace): `READY=1` once the daemon is up (syncing
//! or standing by), `STATUS=...` for `systemctl status`, `STOPPING=1` on the way out, and
//! `WATCHDOG=1` at least once every `WATCHDOG_USEC` microseconds. Without those variables
//! (not under systemd) nothing is sent.
//!
//! The watchdog is fed only while the worker makes progress ([`Metrics::trouble`]): a daemon
//! that is frozen (`SIGSTOP`), whose dispatcher or writer has hung, or one of whose threads died
//! stops feeding it, and systemd restarts it (the kernel then frees its lease for a standby).

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender};

use crate::metrics::Metrics;

/// Where systemd listens for this service's notifications.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` names, if any (and usable).
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|n| !n.is_empty())?;
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name.as_bytes()).ok()?
            }
            None => SocketAddr::from_pathname(&name).ok()?,
        };
        let socket = UnixDatagram::unbound().ok()?;
        Some(Notifier { socket, addr })
    }

    /// Sends `state` (newline-separated `KEY=value` lines). A notification that cannot be
    /// sent is logged and otherwise ignored: the service's work does not depend on it.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            log::debug!("cannot notify systemd ({state:?}): {e}");
        }
    }
}

/// How often systemd expects `WATCHDOG=1`, when it asked this process for it.
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().filter(|p| !p.is_empty()) {
        if pid.trim() != std::process::id().to_string() {
            return None; // meant for another process
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The thread that feeds the watchdog. Stops when dropped.
pub struct Watchdog {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Sends `WATCHDOG=1` through `notifier` every half `interval` while `metrics` reports no
    /// trouble. When trouble starts it says why, once, and stops feeding until it is over.
    pub fn start(
        notifier: Arc<Notifier>,
        interval: Duration,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Watchdog> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let every = (interval / 2).max(Duration::from_millis(1));
        let thread = std::thread::Builder::new()
            .name("zooid-sync-watchdog".into())
            .spawn(move || {
                let mut starving = false;
                loop {
                    match metrics.trouble() {
                        None => {
                            if starving {
                                log::info!("the worker moves again; feeding the watchdog");
                                starving = false;
                            }
                            notifier.notify("WATCHDOG=1");
                        }
                        Some(why) if !starving => {
                            log::error!(
                                "{why}: no longer feeding systemd's watchdog, which restarts \
                                 the daemon"
                            );
                            notifier.notify(&format!("STATUS=stalled: {why}"));
                            starving = true;
                        }
                        Some(_) => {}
                    }
                    match stopped.recv_timeout(every) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
            })?;
        Ok(Watchdog {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
