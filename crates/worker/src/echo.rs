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

/// What an error message shows of a tool's output (a resolver's, an installer's, a build's):
/// its first `head` lines (uv names the failure there), up to `head` lines in between that
/// mention an error (a build's own cause, deep in its log), and its last `tail` lines (uv's
/// cause and hints), each cut to [`MAX_ECHO_BYTES`], noting what was left out.
pub fn excerpt(text: &str, head: usize, tail: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut kept: Vec<usize> = Vec::new();
    if lines.len() <= head + tail {
        kept.extend(0..lines.len());
    } else {
        kept.extend(0..head);
        let middle = head..lines.len() - tail;
        kept.extend(
            middle
                .filter(|&i| lines[i].to_ascii_lowercase().contains("error"))
                .take(head),
        );
        kept.extend(lines.len() - tail..lines.len());
    }
    let mut out = String::new();
    let mut next = 0;
    for i in kept {
        if i > next {
            out.push_str(&format!("({} lines left out)\n", i - next));
        }
        out.push_str(&echo(lines[i]));
        out.push('\n');
        next = i + 1;
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
    fn excerpt_keeps_head_errors_and_tail() {
        let mut text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        text = text.replace("line 50\n", "configure: error: no acceptable C compiler\n");
        let ex = excerpt(&text, 2, 3);
        assert_eq!(
            ex,
            "line 0\nline 1\n(48 lines left out)\nconfigure: error: no acceptable C compiler\n(46 lines left out)\nline 97\nline 98\nline 99"
        );
        assert_eq!(excerpt("a\nb\n", 2, 3), "a\nb");
        let wide = format!("{}\nend\n", "y".repeat(1 << 20));
        assert!(excerpt(&wide, 10, 10).len() < 400);
    }
}
