//! The PROXY protocol (v1 and v2, as HAProxy sends them): who may send a
//! header ([`Cidr`], [`AllowList`]), and reading one header at the start of
//! a connection ([`HeaderReader`], [`read_header`]).
//!
//! Behind a load balancer every connection comes from the balancer; the
//! true client's address travels in a header the balancer writes first.
//! Parsing is left to the `proxy-header` crate; this module owns the rules
//! around it, which are what keep a forged header from being believed:
//!
//! * only peers in the allow-list (`--proxy-from`, loopback by default) may
//!   connect at all; any other is refused before a byte is read;
//! * the header must arrive whole within `--proxy-timeout` and within
//!   [`MAX_HEADER`] bytes — a v2 header is refused as soon as its length
//!   field says it is too long, a v1 line as soon as 107 bytes hold no CRLF,
//!   and anything that is not the start of a header as soon as one byte
//!   says so (the receiver must not guess whether a header is present);
//! * a refused connection is closed unanswered: nothing of it is echoed;
//! * bytes that came after the header in the same read are returned, so the
//!   service sees them first and nothing is lost;
//! * a v2 LOCAL header (a balancer's health check) and v1 `UNKNOWN` carry
//!   no client: the connection is served as a direct one from the balancer.
//!
//! [`HeaderReader`] only ever reads; it works on a blocking socket with a
//! deadline ([`read_header`], connection dispatch) and on a non-blocking
//! one fed whenever it is readable (event dispatch).

use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::str::FromStr;
use std::time::{Duration, Instant};

use log::warn;
use parking_lot::Mutex;
use proxy_header::{ParseConfig, Protocol, ProxyHeader};

use crate::access::Ending;
use crate::closer::Closer;
use crate::ratelimit::RateLimit;
use crate::shutdown::POLL_SLICE;
use crate::stats::{Counters, LiveGuard};

/// The longest header accepted, in bytes (nginx's cap; HAProxy's headers
/// fit in a few hundred).
pub const MAX_HEADER: usize = 4096;
/// Default `--proxy-timeout`: the PROXY specification asks receivers to
/// wait "at least 3 seconds".
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(3);

/// The 12-byte signature that opens every v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\x00\r\nQUIT\n";
/// A v2 header: signature, version/command, family, 2-byte length.
const V2_FIXED: usize = 16;
/// How a v1 header starts.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The longest v1 line, CRLF included (PROXY specification).
const V1_MAX: usize = 107;

/// An IP network, `ADDR/PREFIX` (a bare address means just that address).
///
/// An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`, as a dual-stack
/// listener reports IPv4 peers) matches the IPv4 network it maps to.
///
/// # Examples
///
/// ```
/// use poolserver::Cidr;
/// let net: Cidr = "10.1.0.0/16".parse().unwrap();
/// assert!(net.contains("10.1.200.3".parse().unwrap()));
/// assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
/// assert!(!net.contains("10.2.0.1".parse().unwrap()));
/// assert!("10.1.0.0/33".parse::<Cidr>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address, with the host bits cleared.
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network `addr/prefix`; `None` when the prefix is longer than the
    /// address (32 for IPv4, 128 for IPv6). Host bits are cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let addr = addr.to_canonical();
        match addr {
            IpAddr::V4(a) if prefix <= 32 => Some(Cidr {
                network: IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix))),
                prefix,
            }),
            IpAddr::V6(a) if prefix <= 128 => Some(Cidr {
                network: IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix))),
                prefix,
            }),
            _ => None,
        }
    }

    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| {
                format!("`{s}` is not a network: write e.g. 10.0.0.0/8, ::1/128 or 192.0.2.7")
            })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
        };
        // An IPv4-mapped address with a /128-style prefix: map the prefix too.
        let prefix = if addr.is_ipv6() && addr.to_canonical().is_ipv4() {
            match prefix.checked_sub(96) {
                Some(p) => p,
                None => {
                    return Err(format!(
                        "`{s}`: an IPv4-mapped network needs a prefix of 96 or more"
                    ))
                }
            }
        } else {
            prefix
        };
        Cidr::new(addr, prefix).ok_or_else(|| format!("`{s}` is not a network"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The peers allowed to connect and send a PROXY header (`--proxy-from`).
///
/// Parsed from a comma-separated list of [`Cidr`]s. The default is
/// loopback only: `127.0.0.0/8,::1/128`.
///
/// # Examples
///
/// ```
/// use poolserver::AllowList;
/// let allow: AllowList = "10.0.0.0/8, 192.0.2.7".parse().unwrap();
/// assert!(allow.contains("192.0.2.7".parse().unwrap()));
/// assert!(!allow.contains("127.0.0.1".parse().unwrap()));
/// assert!(AllowList::default().contains("::1".parse().unwrap()));
/// assert!("".parse::<AllowList>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList(Vec<Cidr>);

impl AllowList {
    /// Whether a peer at `ip` may connect.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// The networks, in the order given.
    pub fn networks(&self) -> &[Cidr] {
        &self.0
    }
}

impl From<Vec<Cidr>> for AllowList {
    fn from(nets: Vec<Cidr>) -> Self {
        AllowList(nets)
    }
}

impl Default for AllowList {
    fn default() -> Self {
        let v4 = Cidr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8);
        let v6 = Cidr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128);
        AllowList(v4.into_iter().chain(v6).collect())
    }
}

impl FromStr for AllowList {
    type Err = String;

    fn from_str(s: &str) -> Result<AllowList, String> {
        let nets = s
            .split(',')
            .filter(|part| !part.trim().is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Cidr>, String>>()?;
        if nets.is_empty() {
            return Err("the list of allowed proxies is empty: name at least one network".into());
        }
        Ok(AllowList(nets))
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

/// The PROXY protocol settings of a server (`--proxy-protocol` and the two
/// flags that go with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProxySettings {
    pub(crate) allow: AllowList,
    pub(crate) timeout: Duration,
}

/// At most one refusal line per this interval; the next says how many
/// were left out (a flood of bad headers must not flood the log).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The gate every connection passes with `--proxy-protocol`: the settings,
/// and the refusal counting and logging shared by the acceptor and every
/// worker.
#[derive(Debug)]
pub(crate) struct Gate {
    settings: ProxySettings,
    log: Mutex<RateLimit>,
}

impl Gate {
    pub(crate) fn new(settings: ProxySettings) -> Self {
        Gate {
            settings,
            log: Mutex::new(RateLimit::new(REFUSAL_LOG_INTERVAL)),
        }
    }

    /// Whether `peer` may connect at all.
    pub(crate) fn trusts(&self, peer: SocketAddr) -> bool {
        check_peer(&self.settings.allow, peer).is_ok()
    }

    /// Reads the header of a connection a worker just took, waiting
    /// `--proxy-timeout` at most from now.
    pub(crate) fn admit(&self, stream: &TcpStream, peer: SocketAddr) -> Result<Admitted, Refusal> {
        let deadline = Instant::now() + self.settings.timeout;
        read_header(stream, peer, deadline, &self.settings.allow)
    }

    /// The header of a connection event dispatch just took, to be read
    /// without blocking as its bytes come: the allow-list is checked now,
    /// and `--proxy-timeout` runs from now.
    pub(crate) fn expect(&self, peer: SocketAddr) -> Result<HeaderWait, Refusal> {
        check_peer(&self.settings.allow, peer)?;
        Ok(HeaderWait {
            reader: HeaderReader::new(peer),
            deadline: Instant::now() + self.settings.timeout,
        })
    }

    /// Closes a refused connection unanswered (a lingering close writes
    /// nothing), counts it as closed and in `proxy_refused`, and logs it at
    /// a bounded rate. Only the peer's own address is named: whatever a
    /// refused header claimed is never believed.
    pub(crate) fn refuse(
        &self,
        why: Refusal,
        stream: TcpStream,
        peer: SocketAddr,
        live: LiveGuard,
        counters: &Counters,
        closer: &Closer,
    ) {
        counters.proxy_refused();
        let mut live = live;
        if let Some(access) = live.access() {
            access.ended(Ending::ProxyRefused);
        }
        if let Some(skipped) = self.log.lock().allow() {
            let earlier = if skipped == 0 {
                String::new()
            } else {
                format!(" ({skipped} more refusals since the last line were not logged)")
            };
            let hint = match why {
                Refusal::Untrusted => " (allow it with --proxy-from)",
                _ => "",
            };
            warn!("PROXY protocol: refused {peer}: {why}{hint}; closed unanswered{earlier}");
        }
        closer.close(stream, live);
    }
}

/// A connection whose header was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Admitted {
    /// The true client: from the header, or the peer itself for a LOCAL
    /// (health-check) or UNKNOWN header.
    pub(crate) client: SocketAddr,
    /// The balancer's address, when the client came through it.
    pub(crate) proxy: Option<SocketAddr>,
    /// Bytes that arrived after the header; the service must see them
    /// before anything it reads itself.
    pub(crate) leftover: Vec<u8>,
}

impl Admitted {
    /// A connection without a PROXY header (`--proxy-protocol` off).
    pub(crate) fn direct(peer: SocketAddr) -> Self {
        Admitted {
            client: peer,
            proxy: None,
            leftover: Vec::new(),
        }
    }
}

/// Why a connection was refused. Every refusal is closed unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The peer is not in the allow-list.
    Untrusted,
    /// The first bytes are not a valid v1 or v2 header.
    Malformed,
    /// The header says (or shows) it is longer than [`MAX_HEADER`].
    TooLong,
    /// No whole header within the timeout.
    Timeout,
    /// The peer closed (or reset) before a whole header arrived.
    Incomplete,
}

impl Refusal {
    /// A short word for logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::Untrusted => "untrusted peer",
            Refusal::Malformed => "malformed header",
            Refusal::TooLong => "header too long",
            Refusal::Timeout => "no header in time",
            Refusal::Incomplete => "closed before a whole header",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What feeding a [`HeaderReader`] came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Not a whole header yet, and the socket has nothing more right now
    /// (`WouldBlock` or a read timeout): wait until it is readable.
    NeedMore,
    /// A whole, valid header.
    Done(Admitted),
    /// Refused; close the connection unanswered.
    Refused(Refusal),
}

/// A header still coming on a connection that waits for it without a
/// worker (event dispatch): what has arrived, and when it must be whole.
#[derive(Debug)]
pub(crate) struct HeaderWait {
    pub(crate) reader: HeaderReader,
    pub(crate) deadline: Instant,
}

/// Reads one PROXY header, in as many reads as it takes, never more than
/// [`MAX_HEADER`] bytes.
#[derive(Debug)]
pub(crate) struct HeaderReader {
    peer: SocketAddr,
    /// [`MAX_HEADER`] bytes once the first read comes; `len` of them used.
    buf: Vec<u8>,
    len: usize,
}

impl HeaderReader {
    /// A reader for a connection from `peer`; the allow-list is checked by
    /// the caller ([`check_peer`]) before any read.
    pub(crate) fn new(peer: SocketAddr) -> Self {
        HeaderReader {
            peer,
            buf: Vec::new(),
            len: 0,
        }
    }

    /// Reads until a decision or until `source` has nothing more right now
    /// (`WouldBlock`, or a read timeout: [`Step::NeedMore`]). Past
    /// `deadline` no further read is made ([`Refusal::Timeout`]), so a
    /// client trickling bytes cannot stretch it; a blocking source should
    /// have a read timeout no longer than the slack allowed past it.
    pub(crate) fn feed(&mut self, source: &mut impl Read, deadline: Option<Instant>) -> Step {
        if self.buf.is_empty() {
            self.buf = vec![0; MAX_HEADER];
        }
        loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Step::Refused(Refusal::Timeout);
            }
            match source.read(&mut self.buf[self.len..]) {
                Ok(0) => return Step::Refused(Refusal::Incomplete),
                Ok(n) => {
                    self.len += n;
                    match self.decide() {
                        Step::NeedMore if self.len < MAX_HEADER => {}
                        Step::NeedMore => return Step::Refused(Refusal::TooLong),
                        decided => return decided,
                    }
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => return Step::NeedMore,
                    _ => return Step::Refused(Refusal::Incomplete),
                },
            }
        }
    }

    /// Judges the bytes so far: a whole header, not yet, or never.
    fn decide(&mut self) -> Step {
        let buf = &self.buf[..self.len];
        if let Some(early) = refuse_early(buf) {
            return Step::Refused(early);
        }
        let config = ParseConfig {
            include_tlvs: false,
            allow_v1: true,
            allow_v2: true,
        };
        match ProxyHeader::parse(buf, config) {
            Ok((header, used)) => {
                let client = match header.proxied_address() {
                    None => None,
                    Some(a) if a.protocol == Protocol::Stream => Some(a.source),
                    // A datagram address on a TCP connection is a lie.
                    Some(_) => return Step::Refused(Refusal::Malformed),
                };
                let leftover = buf[used..].to_vec();
                let admitted = match client {
                    Some(client) => Admitted {
                        client: canonical(client),
                        proxy: Some(self.peer),
                        leftover,
                    },
                    None => Admitted {
                        client: self.peer,
                        proxy: None,
                        leftover,
                    },
                };
                Step::Done(admitted)
            }
            Err(proxy_header::Error::BufferTooShort) => Step::NeedMore,
            Err(_) if buf.first() == Some(&b'P') && buf.len() >= V1_MAX => {
                Step::Refused(Refusal::TooLong)
            }
            Err(_) => Step::Refused(Refusal::Malformed),
        }
    }
}

/// Refusals that need no parser: bytes that cannot start a header, a v1
/// line past 107 bytes, a v2 length field over the cap.
fn refuse_early(buf: &[u8]) -> Option<Refusal> {
    let n = buf.len();
    let v1 = buf[..n.min(V1_PREFIX.len())] == V1_PREFIX[..n.min(V1_PREFIX.len())];
    let v2 = buf[..n.min(V2_SIGNATURE.len())] == V2_SIGNATURE[..n.min(V2_SIGNATURE.len())];
    if !v1 && !v2 {
        return Some(Refusal::Malformed);
    }
    if v1 && n >= V1_MAX && !buf[..V1_MAX].windows(2).any(|w| w == b"\r\n") {
        return Some(Refusal::TooLong);
    }
    if v2 && n >= V2_FIXED {
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if V2_FIXED + len > MAX_HEADER {
            return Some(Refusal::TooLong);
        }
    }
    None
}

/// An IPv4-mapped IPv6 client shown as the IPv4 address it is.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The allow-list check, made before anything is read from `peer`.
pub(crate) fn check_peer(allow: &AllowList, peer: SocketAddr) -> Result<(), Refusal> {
    if allow.contains(peer.ip()) {
        Ok(())
    } else {
        Err(Refusal::Untrusted)
    }
}

/// Reads the header of a blocking connection from `peer`, waiting until
/// `deadline` at most (and one [`POLL_SLICE`] more if bytes trickle in): the
/// step every dispatch mode takes first when `--proxy-protocol` is on. The
/// socket's read timeout is changed (the caller sets its own afterwards).
pub(crate) fn read_header(
    stream: &TcpStream,
    peer: SocketAddr,
    deadline: Instant,
    allow: &AllowList,
) -> Result<Admitted, Refusal> {
    check_peer(allow, peer)?;
    let mut reader = HeaderReader::new(peer);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Refusal::Timeout);
        }
        // Slices, so a trickle of bytes overruns the deadline by one slice
        // at most.
        if stream.set_read_timeout(Some(left.min(POLL_SLICE))).is_err() {
            return Err(Refusal::Incomplete);
        }
        match reader.feed(&mut &*stream, Some(deadline)) {
            Step::NeedMore => {}
            Step::Done(admitted) => return Ok(admitted),
            Step::Refused(why) => return Err(why),
        }
    }
}

#[cfg(test)]
mod tests;
