//! Unit and property tests of the pure uppercase transform.

use super::*;
use proptest::prelude::*;

/// Feeds `parts` one by one, then (unless the stream exited) finishes it.
fn run(parts: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut up = Uppercaser::new();
    let mut out = Vec::new();
    for part in parts {
        if up.feed(part, &mut out) == Feed::Exit {
            return (out, true);
        }
    }
    up.finish(&mut out);
    (out, false)
}

/// Feeds `input` one byte at a time.
fn bytewise(input: &[u8]) -> (Vec<u8>, bool) {
    let parts: Vec<&[u8]> = input.chunks(1).collect();
    run(&parts)
}

#[test]
fn ascii_is_uppercased() {
    assert_eq!(
        run(&[b"hello, world\n"]),
        (b"HELLO, WORLD\n".to_vec(), false)
    );
}

#[test]
fn unicode_rules_apply() {
    let (out, _) = run(&["straße ǆ ﬃ ΐ\n".as_bytes()]);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "STRASSE Ǆ FFI \u{399}\u{308}\u{301}\n"
    );
}

#[test]
fn invalid_bytes_pass_through() {
    let input = b"ab\xFFcd\xC3(\xE2\x82\n";
    assert_eq!(run(&[input]).0, b"AB\xFFCD\xC3(\xE2\x82\n".to_vec());
    assert_eq!(bytewise(input).0, b"AB\xFFCD\xC3(\xE2\x82\n".to_vec());
}

#[test]
fn multibyte_split_across_reads_is_held_then_answered() {
    let mut up = Uppercaser::new();
    let mut out = Vec::new();
    up.feed(b"x\xC3", &mut out);
    assert_eq!(out, b"X");
    assert_eq!(up.held(), 1);
    up.feed(b"\xA9", &mut out); // é
    assert_eq!(out, "XÉ".as_bytes());
    assert_eq!(up.held(), 0);
}

#[test]
fn four_byte_character_in_single_bytes() {
    let input = "a𝔞b😀\n".as_bytes();
    assert_eq!(bytewise(input).0, "A𝔞B😀\n".as_bytes());
}

#[test]
fn no_waiting_for_newline() {
    let mut up = Uppercaser::new();
    let mut out = Vec::new();
    up.feed(b"partial line", &mut out);
    assert_eq!(out, b"PARTIAL LINE");
}

#[test]
fn exit_and_quit_lines_close_without_answer() {
    for line in [&b"exit\n"[..], b"exit\r\n", b"quit\n", b"quit\r\n"] {
        let mut input = b"one\n".to_vec();
        input.extend_from_slice(line);
        input.extend_from_slice(b"after\n");
        assert_eq!(run(&[&input]), (b"ONE\n".to_vec(), true), "{line:?}");
        assert_eq!(bytewise(&input), (b"ONE\n".to_vec(), true), "{line:?}");
    }
}

#[test]
fn first_line_can_be_quit() {
    assert_eq!(run(&[b"quit\r\n"]), (Vec::new(), true));
}

#[test]
fn exit_split_across_reads() {
    assert_eq!(
        run(&[b"a\ne", b"x", b"it", b"\r", b"\nrest"]),
        (b"A\n".to_vec(), true)
    );
}

#[test]
fn lines_that_only_look_like_exit_are_data() {
    for input in [
        &b"exits\n"[..],
        b"exit now\n",
        b" exit\n",
        b"EXIT\n",
        b"exit\rx\n",
        b"qui\n",
        b"xexit\n",
    ] {
        let expected = input.to_ascii_uppercase();
        assert_eq!(run(&[input]), (expected.clone(), false), "{input:?}");
        assert_eq!(bytewise(input), (expected, false), "{input:?}");
    }
}

#[test]
fn candidate_line_is_held_until_decided() {
    let mut up = Uppercaser::new();
    let mut out = Vec::new();
    up.feed(b"ab\nexi", &mut out);
    assert_eq!(out, b"AB\n");
    assert_eq!(up.held(), 3);
    up.feed(b"stential\n", &mut out);
    assert_eq!(out, b"AB\nEXISTENTIAL\n");
    assert_eq!(up.held(), 0);
}

#[test]
fn unterminated_exit_at_eof_is_data() {
    assert_eq!(run(&[b"exit"]), (b"EXIT".to_vec(), false));
    assert_eq!(run(&[b"a\nquit\r"]), (b"A\nQUIT\r".to_vec(), false));
}

#[test]
fn incomplete_utf8_at_eof_passes_through() {
    assert_eq!(
        run(&[b"ok\xF0\x9F\x98"]),
        (b"OK\xF0\x9F\x98".to_vec(), false)
    );
}

#[test]
fn empty_lines_and_empty_reads() {
    assert_eq!(run(&[b"", b"\n\n", b"", b"a"]), (b"\n\nA".to_vec(), false));
}

#[test]
fn output_reservation_is_enough() {
    // Worst-case expansion: every character triples in bytes.
    let input = "ΐ".repeat(1000);
    let mut up = Uppercaser::new();
    let mut out = Vec::with_capacity(MAX_EXPANSION * (input.len() + 8));
    let cap = out.capacity();
    up.feed(input.as_bytes(), &mut out);
    assert_eq!(out.len(), 3 * input.len());
    assert_eq!(
        out.capacity(),
        cap,
        "feed must not reallocate a reserved buffer"
    );
}

#[test]
fn reference_reply_stops_at_exit() {
    assert_eq!(reference_reply(b"ab\nquit\ncd"), (b"AB\n".to_vec(), true));
    assert_eq!(reference_reply(b"ab\nquit"), (b"AB\nQUIT".to_vec(), false));
}

/// Input made of pieces that exercise every rule: exit/quit fragments,
/// line ends, multibyte characters and invalid bytes.
fn tricky_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"exit".to_vec()),
        Just(b"quit".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        Just("ß".as_bytes().to_vec()),
        Just("ǆ".as_bytes().to_vec()),
        Just("ΐ".as_bytes().to_vec()),
        Just("😀".as_bytes().to_vec()),
        Just(b"\xF0\x9F".to_vec()),
        Just(b"\xFF".to_vec()),
        Just(b"\xC3".to_vec()),
        "[a-zA-Z0-9 ]{0,6}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..4),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// For any input split at any points, the streamed reply equals the
    /// reference reply of the whole.
    #[test]
    fn any_split_matches_reference(
        input in tricky_bytes(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        points.sort_unstable();
        let mut parts = Vec::new();
        let mut from = 0;
        for p in points {
            parts.push(&input[from..p]);
            from = p;
        }
        parts.push(&input[from..]);
        prop_assert_eq!(run(&parts), reference_reply(&input));
    }

    #[test]
    fn bytewise_matches_reference(input in tricky_bytes()) {
        prop_assert_eq!(bytewise(&input), reference_reply(&input));
    }

    #[test]
    fn arbitrary_bytes_match_reference(input in proptest::collection::vec(any::<u8>(), 0..256)) {
        let half = input.len() / 2;
        prop_assert_eq!(run(&[&input[..half], &input[half..]]), reference_reply(&input));
    }

    /// Nothing is ever held back beyond the contract's "few bytes".
    #[test]
    fn holdback_is_small(input in tricky_bytes()) {
        let mut up = Uppercaser::new();
        let mut out = Vec::new();
        for b in input.chunks(1) {
            if up.feed(b, &mut out) == Feed::Exit {
                break;
            }
            prop_assert!(up.held() <= 5);
        }
    }
}

#[test]
fn non_ascii_at_line_start() {
    assert_eq!(
        run(&["ßß\n".as_bytes()]),
        ("SSSS\n".as_bytes().to_vec(), false)
    );
}

/// The lookup tables must agree with `char::to_uppercase` everywhere:
/// checked for every Unicode scalar value, alone and between ASCII.
#[test]
fn every_character_uppercases_like_std() {
    let mut out = Vec::new();
    for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
        let s = format!("a{c}b");
        out.clear();
        assert_eq!(upper_mixed(s.as_bytes(), &mut out), 0);
        assert_eq!(out, s.to_uppercase().as_bytes(), "U+{:04X}", c as u32);
    }
}

/// Bytes around every boundary of the UTF-8 well-formedness table.
fn boundary_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        Just(b'a'),
        Just(b'\n'),
        Just(0x7Fu8),
        Just(0x80),
        Just(0x8F),
        Just(0x90),
        Just(0x9F),
        Just(0xA0),
        Just(0xBF),
        Just(0xC0),
        Just(0xC1),
        Just(0xC2),
        Just(0xDF),
        Just(0xE0),
        Just(0xE1),
        Just(0xEC),
        Just(0xED),
        Just(0xEE),
        Just(0xEF),
        Just(0xF0),
        Just(0xF1),
        Just(0xF3),
        Just(0xF4),
        Just(0xF5),
        Just(0xFF),
    ];
    proptest::collection::vec(byte, 0..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// The one-pass decoder cuts invalid input exactly where std does.
    #[test]
    fn decoder_agrees_with_std_on_malformed_input(
        input in boundary_bytes(),
        cut in any::<prop::sample::Index>(),
    ) {
        let cut = cut.index(input.len() + 1);
        prop_assert_eq!(run(&[&input[..cut], &input[cut..]]), reference_reply(&input));
        prop_assert_eq!(bytewise(&input), reference_reply(&input));
    }
}
