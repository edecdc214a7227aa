//! Bounded echoes of outside input in error messages: a hostile upload must not turn into a
//! huge response body or log line (an archive entry name, a requirement line, a tool's output).

use std::borrow::Cow;

/// Most bytes of one piece of outside input an error message repeats.
pub const MAX_ECHO_BYTES: usize = 256;

/// `text` cut to at most [`MAX_ECHO_BYTES`] bytes (on a character boundary), with a note of how
/// much was left out.
pub fn echo(text: &str) -> Cow<'_, str> {
    truncate(text, MAX_ECHO_BYTES)
}

/// Lossy UTF-8 of `bytes`, cut like [`echo`]; only the bytes kept are decoded.
pub fn echo_bytes(bytes: &[u8]) -> String {
    if bytes.len() <= MAX_ECHO_BYTES {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let kept = String::from_utf8_lossy(&bytes[..MAX_ECHO_BYTES]);
    // A character split at the cut decodes as U+FFFD: drop it rather than show garbage.
    let kept = kept.trim_end_matches('\u{fffd}');
    format!("{kept}… ({} bytes in all)", bytes.len())
}

/// `text` cut to at most `max` bytes on a character boundary, noting the full length.
pub fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} bytes in all)", &text[..end], text.len()))
}

/// The last `max_lines` lines of a tool's output, each cut to [`MAX_ECHO_BYTES`], noting how
/// many lines were left out: what an error message shows of a resolver's or installer's output.
pub fn tail_lines(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(max_lines);
    let mut out = String::new();
    if skip > 0 {
        out.push_str(&format!("({skip} earlier lines left out)\n"));
    }
    for line in &lines[skip..] {
        out.push_str(&echo(line));
        out.push('\n');
    }
    out.truncate(out.trim_end().len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept() {
        assert_eq!(echo("numpy==1.26"), "numpy==1.26");
        assert_eq!(echo_bytes(b"a/b"), "a/b");
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary() {
        let long = "é".repeat(1000);
        let cut = echo(&long);
        assert!(cut.len() <= MAX_ECHO_BYTES + 32, "{}", cut.len());
        assert!(cut.ends_with("… (2000 bytes in all)"), "{cut}");
        let bytes = echo_bytes(long.as_bytes());
        assert!(bytes.len() <= MAX_ECHO_BYTES + 32);
        assert!(!bytes.contains('\u{fffd}'), "{bytes}");
        let ten_mb = "x".repeat(10 << 20);
        assert!(echo(&ten_mb).len() < 300);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let tail = tail_lines(&text, 3);
        assert_eq!(
            tail,
            "(97 earlier lines left out)\nline 97\nline 98\nline 99"
        );
        let wide = format!("{}\nend\n", "y".repeat(1 << 20));
        assert!(tail_lines(&wide, 10).len() < 400);
    }
}
