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
        }
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

        for chunk in input.utf8_chunks() {
            upper_str(chunk.valid(), out);
            let invalid = chunk.invalid();
            if invalid.is_empty() {
                continue;
            }
            let at_end = invalid.as_ptr_range().end == input.as_ptr_range().end;
            let incomplete =
                at_end && std::str::from_utf8(invalid).is_err_and(|e| e.error_len().is_none());
            if incomplete {
                self.utf8[..invalid.len()].copy_from_slice(invalid);
                self.utf8_len = invalid.len();
            } else {
                out.extend_from_slice(invalid);
            }
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

/// Appends the Unicode uppercase of `s`, with a fast path for ASCII runs.
fn upper_str(s: &str, out: &mut Vec<u8>) {
    let mut bytes = s.as_bytes();
    while !bytes.is_empty() {
        let ascii = bytes.iter().position(|&b| b >= 0x80).unwrap_or(bytes.len());
        out.extend(bytes[..ascii].iter().map(u8::to_ascii_uppercase));
        bytes = &bytes[ascii..];
        if bytes.is_empty() {
            break;
        }
        // A non-ASCII character; `s` is valid UTF-8 so this is whole.
        let rest = &s[s.len() - bytes.len()..];
        let c = rest.chars().next().expect("non-empty valid UTF-8");
        push_upper(c, out);
        bytes = &bytes[c.len_utf8()..];
    }
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

#[cfg(test)]
mod tests;
