//! The uppercase protocol as pure byte logic: no sockets, no clocks, no
//! allocation after warm-up.
//!
//! [`Uppercaser`] is fed whatever a `read(2)` returned and appends the reply
//! to a caller-owned buffer. It holds back only what cannot be decided yet:
//!
//! * an incomplete UTF-8 sequence at the end of a read (at most 3 bytes), and
//! * the start of a line that may still become `exit` / `quit` (at most 5
//!   bytes, `exit\r`).
//!
//! The two never overlap: a line can only become `exit`/`quit` while
//! everything held is ASCII, and a UTF-8 sequence can only be cut in two
//! after the line has already been ruled out.
//!
//! Keeping this file free of I/O is what lets the unit tests and property
//! tests below cover the contract's byte rules exhaustively, whatever the
//! read boundaries are; `connection.rs` and the integration tests cover the
//! socket side.

/// What the caller should do after [`Uppercaser::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Send what was appended and keep reading.
    Continue,
    /// A line that is exactly `exit` or `quit` was seen: send what was
    /// appended (everything before that line), discard the rest, and close.
    Exit,
}

/// The longest line prefix that may still turn into `exit`/`quit`:
/// `exit\r` waiting for its `\n`.
const MAX_LINE_HOLD: usize = 5;

/// Streaming uppercase transformer for one connection.
///
/// # Examples
///
/// ```
/// use poolserver::protocol::{Feed, Uppercaser};
///
/// let mut up = Uppercaser::new();
/// let mut out = Vec::new();
/// // A multibyte character split across two reads comes out whole.
/// assert_eq!(up.feed(b"stra\xC3", &mut out), Feed::Continue);
/// assert_eq!(up.feed(b"\x9Fe\n", &mut out), Feed::Continue);
/// assert_eq!(out, "STRASSE\n".as_bytes());
/// // `exit` on a line of its own ends the conversation, unanswered.
/// out.clear();
/// assert_eq!(up.feed(b"exit\r\nignored", &mut out), Feed::Exit);
/// assert_eq!(up.closed_by(), Some("exit"));
/// assert!(out.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct Uppercaser {
    /// Bytes of the current line that may still become `exit`/`quit`.
    /// Only meaningful while `at_line_start` is true.
    line: [u8; MAX_LINE_HOLD],
    line_len: usize,
    /// True from the start of the stream and after every `\n` until the line
    /// has been ruled out as `exit`/`quit`.
    at_line_start: bool,
    /// The start of a UTF-8 sequence cut off by the end of a read.
    utf8: [u8; 3],
    utf8_len: usize,
    /// The line that ended the stream, once [`Feed::Exit`] was returned.
    closed_by: Option<&'static str>,
}

impl Default for Uppercaser {
    fn default() -> Self {
        Self::new()
    }
}

/// The most bytes one input byte can turn into (`ΐ`, two bytes, uppercases
/// to three two-byte characters). Callers size output buffers with it.
pub const MAX_EXPANSION: usize = 3;

impl Uppercaser {
    /// A transformer at the start of a stream (which is also the start of a
    /// line, so a first line of `quit` ends the connection).
    pub fn new() -> Self {
        Uppercaser {
            line: [0; MAX_LINE_HOLD],
            line_len: 0,
            at_line_start: true,
            utf8: [0; 3],
            utf8_len: 0,
            closed_by: None,
        }
    }

    /// After [`Feed::Exit`]: which line ended the stream, `"exit"` or
    /// `"quit"` (the access log names it).
    pub fn closed_by(&self) -> Option<&'static str> {
        self.closed_by
    }

    /// How many bytes are held back, waiting for more input.
    pub fn held(&self) -> usize {
        self.line_len + self.utf8_len
    }

    /// Transforms `input`, appending the reply to `out`.
    ///
    /// `out` grows by at most `MAX_EXPANSION * (input.len() + held) `
    /// bytes; a caller that reserves that much up front never makes this
    /// function allocate.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Feed {
        out.reserve(MAX_EXPANSION * (input.len() + MAX_LINE_HOLD + 3));
        let rest = input;

        // First settle a line start left over from the previous read.
        if self.at_line_start {
            let mut probe = [0u8; MAX_LINE_HOLD + 1];
            let held = self.line_len;
            probe[..held].copy_from_slice(&self.line[..held]);
            let take = rest.len().min(probe.len() - held);
            probe[held..held + take].copy_from_slice(&rest[..take]);
            match classify_line(&probe[..held + take]) {
                Line::Exit(len) => {
                    debug_assert!(len > held);
                    self.line_len = 0;
                    self.closed_by = Some(quit_word(&probe));
                    return Feed::Exit;
                }
                Line::Undecided => {
                    // Everything so far is a prefix of a quit line (`take`
                    // consumed the whole read, which is short).
                    self.line[held..held + take].copy_from_slice(&rest[..take]);
                    self.line_len = held + take;
                    return Feed::Continue;
                }
                Line::Ordinary => {
                    // Held bytes are plain ASCII: answer them now.
                    out.extend(self.line[..held].iter().map(u8::to_ascii_uppercase));
                    self.line_len = 0;
                    self.at_line_start = false;
                }
            }
        }

        // Then find where this read stops being answerable: the first line
        // that is (or may become) exit/quit.
        let mut stop = None;
        for nl in memchr::memchr_iter(b'\n', rest) {
            let next = &rest[nl + 1..];
            match classify_line(next) {
                Line::Ordinary => continue,
                Line::Exit(_) => {
                    self.closed_by = Some(quit_word(next));
                    stop = Some((nl + 1, Feed::Exit));
                    break;
                }
                Line::Undecided => {
                    stop = Some((nl + 1, Feed::Continue));
                    break;
                }
            }
        }

        match stop {
            None => {
                self.transform(rest, out);
                Feed::Continue
            }
            Some((cut, verdict)) => {
                // `rest[..cut]` ends in `\n`, so no UTF-8 sequence is open.
                self.transform(&rest[..cut], out);
                debug_assert_eq!(self.utf8_len, 0);
                self.at_line_start = true;
                if verdict == Feed::Continue {
                    let tail = &rest[cut..];
                    self.line[..tail.len()].copy_from_slice(tail);
                    self.line_len = tail.len();
                }
                verdict
            }
        }
    }

    /// End of stream: appends everything still held back. An unterminated
    /// `exit` is ordinary data (`EXIT`); an unfinished UTF-8 sequence is
    /// invalid and passes through unchanged.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.extend(
            self.line[..self.line_len]
                .iter()
                .map(u8::to_ascii_uppercase),
        );
        out.extend_from_slice(&self.utf8[..self.utf8_len]);
        *self = Uppercaser::new();
    }

    /// Uppercases `input`, which contains no line start that matters,
    /// carrying an incomplete trailing UTF-8 sequence to the next call.
    fn transform(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        if self.utf8_len > 0 {
            // Complete (or refute) the sequence cut off last time. Four
            // bytes are enough to decide one character.
            let mut probe = [0u8; 4];
            let held = self.utf8_len;
            probe[..held].copy_from_slice(&self.utf8[..held]);
            let take = input.len().min(4 - held);
            probe[held..held + take].copy_from_slice(&input[..take]);
            let probe = &probe[..held + take];
            match std::str::from_utf8(probe) {
                Err(e) if e.valid_up_to() == 0 => match e.error_len() {
                    None => {
                        // Still incomplete: the read was tiny.
                        self.utf8[held..held + take].copy_from_slice(&input[..take]);
                        self.utf8_len = held + take;
                        return;
                    }
                    Some(bad) => {
                        // Not a character after all: pass the bytes through.
                        out.extend_from_slice(&probe[..bad]);
                        input = &input[bad - held..];
                    }
                },
                // A whole character starts the probe.
                Ok(s) => input = self.emit_first_char(s, held, input, out),
                Err(e) => {
                    let s = std::str::from_utf8(&probe[..e.valid_up_to()])
                        .expect("valid_up_to marks a valid prefix");
                    input = self.emit_first_char(s, held, input, out);
                }
            }
            self.utf8_len = 0;
        }

        if input.is_ascii() {
            upper_ascii(input, out);
            return;
        }
        let carry = upper_mixed(input, out);
        if carry > 0 {
            self.utf8[..carry].copy_from_slice(&input[input.len() - carry..]);
            self.utf8_len = carry;
        }
    }

    /// Emits the first character of `s` (whose first `held` bytes came from
    /// the carry) and returns what is left of `input` after it.
    fn emit_first_char<'a>(
        &self,
        s: &str,
        held: usize,
        input: &'a [u8],
        out: &mut Vec<u8>,
    ) -> &'a [u8] {
        let c = s.chars().next().expect("a complete character");
        push_upper(c, out);
        &input[c.len_utf8() - held..]
    }
}

/// Where a line stands with respect to being exactly `exit` or `quit`.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// The line is `exit`/`quit` with its terminator; the number is its
    /// length in bytes (including the terminator).
    Exit(usize),
    /// What we have is a strict prefix of such a line: wait for more.
    Undecided,
    /// The line is something else.
    Ordinary,
}

/// Classifies the bytes at the start of a line.
fn classify_line(bytes: &[u8]) -> Line {
    // Almost every line starts with something else: decide on one byte.
    match bytes.first() {
        None => return Line::Undecided,
        Some(b'e' | b'q') => {}
        Some(_) => return Line::Ordinary,
    }
    const QUIT_LINES: [&[u8]; 4] = [b"exit\n", b"exit\r\n", b"quit\n", b"quit\r\n"];
    let mut undecided = false;
    for line in QUIT_LINES {
        if bytes.starts_with(line) {
            return Line::Exit(line.len());
        }
        if line.starts_with(bytes) {
            undecided = true;
        }
    }
    if undecided {
        Line::Undecided
    } else {
        Line::Ordinary
    }
}

/// The word of a line [`classify_line`] found to be `exit` or `quit` (they
/// differ in their first byte).
fn quit_word(line: &[u8]) -> &'static str {
    if line.first() == Some(&b'q') {
        "quit"
    } else {
        "exit"
    }
}

/// Appends the ASCII uppercase of `bytes` (all ASCII). Written as one
/// map over the slice so the compiler vectorises it.
fn upper_ascii(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend(bytes.iter().map(u8::to_ascii_uppercase));
}

/// Appends the uppercase of `input`, which is not all ASCII, in one pass
/// that validates, decodes and converts. Returns how many trailing bytes
/// form an incomplete UTF-8 sequence; those are not written (the caller
/// carries them to the next read).
///
/// Invalid sequences are copied unchanged, cut exactly where
/// `std::str::from_utf8` would report them (its `error_len`), so the output
/// equals the reference made with `utf8_chunks` for any input.
///
/// ASCII runs are copied and uppercased in place. Other characters use two
/// tables built once from `char::to_uppercase` (so they cannot disagree
/// with it): the full answer for every two-byte character (Latin, Greek,
/// Cyrillic, …), and a bitmap of the wider characters that have no
/// uppercase (CJK, kana, Hangul, symbols, emoji), which are copied as they
/// are. Only cased wide characters (rare) ask `char::to_uppercase`.
///
/// The output is written by index into a zero-filled stretch of `out`
/// (sized for the worst case and truncated after), which lets short
/// copies be fixed-size moves instead of `memcpy` calls.
fn upper_mixed(input: &[u8], out: &mut Vec<u8>) -> usize {
    let tables = case_tables();
    let start = out.len();
    // Worst case 3 bytes out per byte in; the 2-byte path below copies a
    // fixed 6 bytes, which the bound covers (see `two_byte`).
    out.resize(start + MAX_EXPANSION * input.len() + 8, 0);
    let buf = &mut out[start..];
    let (mut r, mut w) = (0, 0);
    let mut carry = 0;
    while r < input.len() {
        if input[r] < 0x80 {
            let run = input[r..]
                .iter()
                .position(|&b| b >= 0x80)
                .unwrap_or(input.len() - r);
            // A fused copy-and-convert: runs are short here (words), and a
            // `memcpy` call per run costs more than the loop.
            for (d, s) in buf[w..w + run].iter_mut().zip(&input[r..r + run]) {
                *d = s.to_ascii_uppercase();
            }
            r += run;
            w += run;
            continue;
        }
        match decode(&input[r..]) {
            Utf8::Char(2, cp) => {
                let (upper, len) = &tables.two_byte[cp as usize];
                buf[w..w + 6].copy_from_slice(upper);
                w += usize::from(*len);
                r += 2;
            }
            Utf8::Char(len, cp) => {
                if tables.is_caseless(cp) {
                    buf[w..w + len].copy_from_slice(&input[r..r + len]);
                    w += len;
                } else {
                    let c = char::from_u32(cp).expect("a validated scalar value");
                    for u in c.to_uppercase() {
                        w += u.encode_utf8(&mut buf[w..]).len();
                    }
                }
                r += len;
            }
            Utf8::Invalid(len) => {
                buf[w..w + len].copy_from_slice(&input[r..r + len]);
                r += len;
                w += len;
            }
            Utf8::Incomplete => {
                carry = input.len() - r;
                break;
            }
        }
    }
    out.truncate(start + w);
    carry
}

/// One step of UTF-8 decoding at a non-ASCII byte.
#[derive(Debug, PartialEq, Eq)]
enum Utf8 {
    /// A character of this many bytes, and its scalar value.
    Char(usize, u32),
    /// This many bytes form no character: the maximal prefix of a valid
    /// sequence (`from_utf8`'s `error_len`).
    Invalid(usize),
    /// The bytes are a valid start cut off by the end of the input.
    Incomplete,
}

/// Decodes the sequence starting at `b[0]` (which is `>= 0x80`) by the
/// table of well-formed byte sequences in the Unicode standard (chapter 3,
/// "UTF-8", Table 3-7).
fn decode(b: &[u8]) -> Utf8 {
    let (len, second) = match b[0] {
        0xC2..=0xDF => (2, 0x80..=0xBF),
        0xE0 => (3, 0xA0..=0xBF),
        0xE1..=0xEC | 0xEE..=0xEF => (3, 0x80..=0xBF),
        0xED => (3, 0x80..=0x9F),
        0xF0 => (4, 0x90..=0xBF),
        0xF1..=0xF3 => (4, 0x80..=0xBF),
        0xF4 => (4, 0x80..=0x8F),
        _ => return Utf8::Invalid(1),
    };
    let mut cp = u32::from(b[0]) & (0x7F >> len);
    for k in 1..len {
        let Some(&byte) = b.get(k) else {
            return Utf8::Incomplete;
        };
        let ok = if k == 1 {
            second.contains(&byte)
        } else {
            (0x80..=0xBF).contains(&byte)
        };
        if !ok {
            return Utf8::Invalid(k);
        }
        cp = (cp << 6) | u32::from(byte & 0x3F);
    }
    Utf8::Char(len, cp)
}

/// Characters from here on have no case (Unicode puts every cased
/// supplementary character in plane 1); the exhaustive unit test checks
/// this against `char::to_uppercase` for every scalar value.
const CASELESS_FROM: u32 = 0x20000;

/// Uppercase lookups, built once.
struct CaseTables {
    /// For U+0000..U+07FF: the UTF-8 of its uppercase (at most 6 bytes:
    /// `ΐ` becomes three two-byte characters) and its length. Always
    /// copied whole: 6 bytes out for 2 in stays within the 3-to-1 bound.
    two_byte: Vec<([u8; 6], u8)>,
    /// For U+0000..U+1FFFF: a bit set when the character's uppercase is
    /// itself.
    caseless: Vec<u64>,
}

impl CaseTables {
    /// True when `cp` is its own uppercase.
    fn is_caseless(&self, cp: u32) -> bool {
        cp >= CASELESS_FROM || self.caseless[cp as usize / 64] & (1 << (cp % 64)) != 0
    }
}

fn case_tables() -> &'static CaseTables {
    static TABLES: std::sync::OnceLock<CaseTables> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let mut two_byte = vec![([0u8; 6], 0u8); 0x800];
        let mut caseless = vec![0u64; CASELESS_FROM as usize / 64];
        for cp in 0..CASELESS_FROM {
            let Some(c) = char::from_u32(cp) else {
                continue; // surrogates never occur in valid UTF-8
            };
            let mut upper = c.to_uppercase();
            if upper.len() == 1 && upper.next() == Some(c) {
                caseless[cp as usize / 64] |= 1 << (cp % 64);
            }
            if cp < 0x800 {
                let mut encoded = Vec::with_capacity(6);
                push_upper(c, &mut encoded);
                let entry = &mut two_byte[cp as usize];
                entry.0[..encoded.len()].copy_from_slice(&encoded);
                entry.1 = encoded.len() as u8;
            }
        }
        CaseTables { two_byte, caseless }
    })
}

fn push_upper(c: char, out: &mut Vec<u8>) {
    let mut buf = [0u8; 4];
    for u in c.to_uppercase() {
        out.extend_from_slice(u.encode_utf8(&mut buf).as_bytes());
    }
}

/// The contract's answer to a whole byte stream, computed the obvious way:
/// everything before the first `exit`/`quit` line, with valid UTF-8
/// uppercased and invalid bytes unchanged. Returns the reply and whether the
/// stream asked to close.
///
/// This is the reference the streaming [`Uppercaser`] is tested against; it
/// is public so the fuzz targets and the load generator can use it too.
pub fn reference_reply(input: &[u8]) -> (Vec<u8>, bool) {
    let mut line_start = 0;
    let mut end = input.len();
    let mut exited = false;
    loop {
        if matches!(classify_line(&input[line_start..]), Line::Exit(_)) {
            end = line_start;
            exited = true;
            break;
        }
        match memchr::memchr(b'\n', &input[line_start..]) {
            Some(i) => line_start += i + 1,
            None => break,
        }
    }
    let mut out = Vec::new();
    for chunk in input[..end].utf8_chunks() {
        out.extend_from_slice(chunk.valid().to_uppercase().as_bytes());
        out.extend_from_slice(chunk.invalid());
    }
    (out, exited)
}

// The lines a connection that cannot be served is answered with before it
// is closed; each such connection counts as `rejected` (README, The
// monitor).

/// `--overflow reject` with a full accept queue.
pub(crate) const BUSY_FULL: &[u8] =
    b"BUSY server at capacity (accept queue full); try again later\n";
/// Waited in the queue longer than `--queue-timeout`.
pub(crate) const BUSY_WAITED: &[u8] = b"BUSY waited too long for a worker; try again later\n";
/// Still queued when the shutdown deadline passed, or arrived after
/// shutdown began with no room left in the queue.
pub(crate) const BUSY_SHUTDOWN: &[u8] = b"BUSY server shutting down\n";
/// Accepted with the spare descriptor while the fd table was full.
pub(crate) const BUSY_NO_FDS: &[u8] = b"BUSY server out of file descriptors; try again later\n";

#[cfg(test)]
mod tests;
