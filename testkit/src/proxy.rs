//! A loopback TCP proxy the test controls: forwarding, refusing (a service that is down or a
//! network cut), or accepting and never answering (one that hangs). Dropping it closes everything.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Forward to the upstream.
    Open,
    /// Accept and close at once: a service that is down.
    Refuse,
    /// Accept and never answer: a service that hangs.
    Stall,
}

struct State {
    mode: Mode,
    links: Vec<AbortHandle>,
    stalled: Vec<TcpStream>,
}

pub struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accepted: Arc<AtomicUsize>,
    forwarded: Arc<AtomicUsize>,
    task: AbortHandle,
}

impl Proxy {
    /// A proxy to the shared broker.
    pub async fn to_broker() -> Proxy {
        Proxy::start(&crate::broker_addr()).await
    }

    /// A proxy to `upstream` (`host:port`), forwarding.
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State { mode: Mode::Open, links: vec![], stalled: vec![] }));
        let (accepted, forwarded) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let upstream = upstream.to_string();
        let (st, count, opened) = (state.clone(), accepted.clone(), forwarded.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                count.fetch_add(1, SeqCst);
                let mut state = st.lock().unwrap_or_else(|p| p.into_inner());
                match state.mode {
                    Mode::Refuse => drop(client),
                    Mode::Stall => state.stalled.push(client),
                    Mode::Open => {
                        opened.fetch_add(1, SeqCst);
                        let upstream = upstream.clone();
                        let link = tokio::spawn(async move {
                            if let Ok(mut up) = TcpStream::connect(&upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                            }
                        });
                        state.links.retain(|l| !l.is_finished());
                        state.links.push(link.abort_handle());
                    }
                }
            }
        });
        Proxy { addr, state, accepted, forwarded, task: task.abort_handle() }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The broker's URL (same credentials and vhost) through this proxy.
    pub fn url(&self) -> String {
        let url = crate::amqp_url();
        let (start, end) = crate::authority(&url);
        format!("{}{}{}", &url[..start], self.addr, &url[end..])
    }

    pub fn set_mode(&self, mode: Mode) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.mode = mode;
        state.stalled.clear();
        if mode != Mode::Open {
            // closes both ends of every live connection
            state.links.drain(..).for_each(|l| l.abort());
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.set_mode(Mode::Refuse);
    }

    /// Drops every connection and leaves new ones hanging without an answer.
    pub fn stall(&self) {
        self.set_mode(Mode::Stall);
    }

    pub fn restore(&self) {
        self.set_mode(Mode::Open);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(SeqCst)
    }

    /// Connections forwarded upstream so far.
    pub fn forwarded(&self) -> usize {
        self.forwarded.load(SeqCst)
    }

    /// Connections hanging in `Stall` mode.
    pub fn stalled(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).stalled.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.set_mode(Mode::Refuse);
    }
}
