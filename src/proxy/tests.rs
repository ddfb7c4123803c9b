//! Unit tests of the allow-list types and of header reading, fed from
//! scripted readers (the socket paths are in `tests/it/proxy.rs`).

use std::collections::VecDeque;

use proxy_header::ProxiedAddress;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn cidr_parses_and_clears_host_bits() {
    let net: Cidr = "192.168.7.9/24".parse().unwrap();
    assert_eq!(net.to_string(), "192.168.7.0/24");
    assert_eq!(
        "10.0.0.1".parse::<Cidr>().unwrap().to_string(),
        "10.0.0.1/32"
    );
    assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
    assert_eq!(
        "2001:db8::17/32".parse::<Cidr>().unwrap().to_string(),
        "2001:db8::/32"
    );
    assert_eq!(
        "0.0.0.0/0".parse::<Cidr>().unwrap().to_string(),
        "0.0.0.0/0"
    );
    assert_eq!(
        " [::1]/128 ".parse::<Cidr>().unwrap().to_string(),
        "::1/128"
    );
}

#[test]
fn cidr_rejects_nonsense() {
    for bad in [
        "",
        "10.0.0.0/",
        "10.0.0.0/33",
        "::/129",
        "10.0.0/8",
        "localhost",
        "10.0.0.0/-1",
        "10.0.0.0/8/8",
        "::ffff:10.0.0.0/95",
    ] {
        assert!(bad.parse::<Cidr>().is_err(), "{bad:?} parsed");
    }
}

#[test]
fn cidr_contains() {
    let net: Cidr = "10.1.0.0/16".parse().unwrap();
    assert!(net.contains(ip("10.1.0.0")));
    assert!(net.contains(ip("10.1.255.255")));
    assert!(!net.contains(ip("10.2.0.0")));
    assert!(!net.contains(ip("::1")), "families never mix");
    let all: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains(ip("203.0.113.9")));
    let v6: Cidr = "2001:db8::/32".parse().unwrap();
    assert!(v6.contains(ip("2001:db8:ffff::1")));
    assert!(!v6.contains(ip("2001:db9::1")));
    let one: Cidr = "::1/128".parse().unwrap();
    assert!(one.contains(ip("::1")));
    assert!(!one.contains(ip("::2")));
}

#[test]
fn ipv4_mapped_ipv6_is_handled_both_ways() {
    let net: Cidr = "127.0.0.0/8".parse().unwrap();
    assert!(net.contains(ip("::ffff:127.0.0.1")));
    assert!(!net.contains(ip("::ffff:128.0.0.1")));
    let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
    assert_eq!(mapped.to_string(), "10.0.0.0/8");
    assert!(mapped.contains(ip("10.9.9.9")));
}

#[test]
fn allow_list_parses_lists_and_defaults_to_loopback() {
    let allow: AllowList = "10.0.0.0/8, 192.0.2.7,,::1".parse().unwrap();
    assert_eq!(allow.to_string(), "10.0.0.0/8,192.0.2.7/32,::1/128");
    assert!(allow.contains(ip("10.200.0.1")));
    assert!(!allow.contains(ip("192.0.2.8")));
    let default = AllowList::default();
    assert_eq!(default.to_string(), "127.0.0.0/8,::1/128");
    assert!(default.contains(ip("127.0.0.2")));
    assert!(default.contains(ip("::ffff:127.0.0.1")));
    assert!(!default.contains(ip("192.0.2.1")));
    assert!(" , ".parse::<AllowList>().is_err());
    assert!("10.0.0.0/8,nope".parse::<AllowList>().is_err());
}

/// A reader that returns one scripted chunk per read: `None` ends the
/// stream, an empty chunk is `WouldBlock`.
struct Script(VecDeque<Option<Vec<u8>>>);

impl Script {
    fn new(parts: &[&[u8]]) -> Self {
        Script(parts.iter().map(|p| Some(p.to_vec())).collect())
    }
    fn then_eof(mut self) -> Self {
        self.0.push_back(None);
        self
    }
}

impl Read for Script {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.pop_front() {
            None => Err(io::ErrorKind::WouldBlock.into()),
            Some(None) => Ok(0),
            Some(Some(part)) if part.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            Some(Some(mut part)) => {
                let n = part.len().min(buf.len());
                buf[..n].copy_from_slice(&part[..n]);
                if n < part.len() {
                    self.0.push_front(Some(part.split_off(n)));
                }
                Ok(n)
            }
        }
    }
}

const PEER: &str = "127.0.0.1:40000";

fn v2(source: &str, dest: &str) -> Vec<u8> {
    let mut out = Vec::new();
    ProxyHeader::with_address(ProxiedAddress::stream(sa(source), sa(dest)))
        .encode_v2(&mut out)
        .unwrap();
    out
}

fn v2_local() -> Vec<u8> {
    let mut out = Vec::new();
    ProxyHeader::with_local().encode_v2(&mut out).unwrap();
    out
}

fn feed_all(script: &mut Script) -> Step {
    let mut reader = HeaderReader::new(sa(PEER));
    loop {
        match reader.feed(script, None) {
            Step::NeedMore if !script.0.is_empty() => {}
            other => return other,
        }
    }
}

fn admitted(client: &str, proxy: Option<&str>, leftover: &[u8]) -> Step {
    Step::Done(Admitted {
        client: sa(client),
        proxy: proxy.map(sa),
        leftover: leftover.to_vec(),
    })
}

#[test]
fn v1_header_gives_the_client_and_keeps_what_follows() {
    let mut s = Script::new(&[b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 80\r\nhello\n"]);
    assert_eq!(
        feed_all(&mut s),
        admitted("192.0.2.1:5555", Some(PEER), b"hello\n")
    );
    let mut s = Script::new(&[b"PROXY TCP6 2001:db8::1 ::1 6000 80\r\n"]);
    assert_eq!(
        feed_all(&mut s),
        admitted("[2001:db8::1]:6000", Some(PEER), b"")
    );
}

#[test]
fn v2_header_gives_the_client_and_keeps_what_follows() {
    let mut bytes = v2("127.0.0.2:61000", "127.0.0.1:8080");
    assert_eq!(bytes.len(), 28);
    bytes.extend_from_slice(b"abc");
    let mut s = Script::new(&[&bytes]);
    assert_eq!(
        feed_all(&mut s),
        admitted("127.0.0.2:61000", Some(PEER), b"abc")
    );
}

#[test]
fn a_header_split_over_reads_is_put_together() {
    let bytes = v2("[2001:db8::9]:1234", "[::1]:80");
    for cut in [1, 5, 12, 15, 16, 17, bytes.len() - 1] {
        let mut s = Script::new(&[&bytes[..cut], b"", &bytes[cut..], b"x"]);
        assert_eq!(
            feed_all(&mut s),
            admitted("[2001:db8::9]:1234", Some(PEER), b""),
            "cut at {cut}"
        );
    }
    let line = b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n";
    for cut in 1..line.len() {
        let mut s = Script::new(&[&line[..cut], b"", &line[cut..]]);
        assert_eq!(feed_all(&mut s), admitted("10.0.0.1:1", Some(PEER), b""));
    }
}

#[test]
fn local_and_unknown_headers_are_direct_connections() {
    let mut bytes = v2_local();
    assert_eq!(bytes.len(), 16);
    bytes.extend_from_slice(b"ping\r\n");
    let mut s = Script::new(&[&bytes]);
    assert_eq!(feed_all(&mut s), admitted(PEER, None, b"ping\r\n"));
    let mut s = Script::new(&[b"PROXY UNKNOWN\r\nhi"]);
    assert_eq!(feed_all(&mut s), admitted(PEER, None, b"hi"));
}

#[test]
fn a_mapped_client_address_is_shown_as_ipv4() {
    let mut s = Script::new(&[b"PROXY TCP6 ::ffff:192.0.2.5 ::1 7 80\r\n"]);
    assert_eq!(feed_all(&mut s), admitted("192.0.2.5:7", Some(PEER), b""));
}

#[test]
fn anything_else_is_refused_as_soon_as_one_byte_says_so() {
    for first in [&b"G"[..], b"ping\n", b"PROXX", b"\r\n\r\n\x01", b"p"] {
        // One chunk, then nothing: the decision needs no more bytes.
        let mut s = Script::new(&[first]);
        assert_eq!(
            feed_all(&mut s),
            Step::Refused(Refusal::Malformed),
            "{first:?}"
        );
    }
    let mut bad_v1 = Script::new(&[b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n"]);
    assert_eq!(feed_all(&mut bad_v1), Step::Refused(Refusal::Malformed));
    let mut bad_cmd = v2_local();
    bad_cmd[12] = 0x22;
    assert_eq!(
        feed_all(&mut Script::new(&[&bad_cmd])),
        Step::Refused(Refusal::Malformed)
    );
    let mut datagram = v2("10.0.0.1:1", "10.0.0.2:2");
    datagram[13] = 0x12;
    assert_eq!(
        feed_all(&mut Script::new(&[&datagram])),
        Step::Refused(Refusal::Malformed)
    );
}

#[test]
fn too_long_is_refused_as_soon_as_the_length_says_so() {
    // A v2 length of 4081 (16 + 4081 > 4096): refused on the 16th byte.
    let mut fixed = v2_local();
    fixed[14..16].copy_from_slice(&4081u16.to_be_bytes());
    let mut s = Script::new(&[&fixed]);
    assert_eq!(feed_all(&mut s), Step::Refused(Refusal::TooLong));
    // 4080 is the most allowed: a whole 4,096-byte header is accepted.
    let mut max = v2_local();
    max[14..16].copy_from_slice(&4080u16.to_be_bytes());
    max.resize(MAX_HEADER, 0);
    let mut s = Script::new(&[&max, b"after"]);
    assert_eq!(feed_all(&mut s), admitted(PEER, None, b""));
    // v1: 107 bytes without CRLF.
    let mut line = b"PROXY TCP4 ".to_vec();
    line.resize(V1_MAX, b'1');
    let mut s = Script::new(&[&line[..V1_MAX - 1], b""]);
    assert_eq!(feed_all(&mut s), Step::NeedMore);
    let mut s = Script::new(&[&line]);
    assert_eq!(feed_all(&mut s), Step::Refused(Refusal::TooLong));
}

#[test]
fn eof_before_a_whole_header_is_incomplete() {
    let mut s = Script::new(&[b"PROXY TCP4 1.2.3.4"]).then_eof();
    assert_eq!(feed_all(&mut s), Step::Refused(Refusal::Incomplete));
    let mut s = Script::new(&[]).then_eof();
    assert_eq!(feed_all(&mut s), Step::Refused(Refusal::Incomplete));
}

#[test]
fn no_read_is_made_past_the_deadline() {
    let mut reader = HeaderReader::new(sa(PEER));
    let mut s = Script::new(&[b"PROXY ", b"", b"TCP4 1.2.3.4 5.6.7.8 1 2\r\n"]);
    assert_eq!(reader.feed(&mut s, None), Step::NeedMore);
    let past = Instant::now() - Duration::from_millis(1);
    assert_eq!(
        reader.feed(&mut s, Some(past)),
        Step::Refused(Refusal::Timeout)
    );
}

#[test]
fn untrusted_peers_are_refused_before_reading() {
    let allow: AllowList = "10.0.0.0/8".parse().unwrap();
    assert_eq!(check_peer(&allow, sa("10.1.1.1:5")), Ok(()));
    assert_eq!(
        check_peer(&allow, sa("127.0.0.1:5")),
        Err(Refusal::Untrusted)
    );
    assert_eq!(check_peer(&allow, sa("[::ffff:10.0.0.1]:5")), Ok(()));
}

proptest::proptest! {
    /// Whatever follows a plausible start, in whatever chunks, the reader
    /// decides without panicking and never reads past its cap.
    #[test]
    fn any_bytes_get_a_decision_without_panic(
        start in 0usize..3,
        tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        cuts in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let mut bytes = match start {
            0 => b"PROXY ".to_vec(),
            1 => V2_SIGNATURE.to_vec(),
            _ => Vec::new(),
        };
        bytes.extend_from_slice(&tail);
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut rest = &bytes[..];
        for cut in cuts {
            let (a, b) = rest.split_at(cut.min(rest.len()));
            parts.push(a);
            parts.push(b"");
            rest = b;
        }
        parts.push(rest);
        let mut s = Script::new(&parts).then_eof();
        let mut reader = HeaderReader::new(sa(PEER));
        let mut steps = 0;
        loop {
            steps += 1;
            proptest::prop_assert!(steps < 100);
            match reader.feed(&mut s, None) {
                Step::NeedMore => {}
                Step::Done(a) => {
                    proptest::prop_assert!(a.leftover.len() < bytes.len());
                    break;
                }
                Step::Refused(_) => break,
            }
        }
        proptest::prop_assert!(reader.len <= MAX_HEADER);
    }
}
