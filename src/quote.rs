//! Text from outside, made safe to store, print and log.
//!
//! Two kinds of text reach zooid-sync's errors from outside: what zooid (or a proxy in front
//! of it) answers, and the values the host wrote into its rows. Neither is trusted. zooid's
//! words are cut to 1 KiB, stripped of control characters (an ANSI escape must not repaint an
//! operator's terminal) and of every secret this process knows (a zooid that echoes the request
//! would otherwise put relay, S3 and LiveKit secrets into the database and the log). Host
//! values are quoted short: a 5 MB `schema` is named by its first bytes and its length, not
//! repeated into every failure it causes.

use crate::secret;

/// The most of zooid's text quoted in an error.
pub const REMOTE_MAX: usize = 1024;

/// The most of a host value quoted in an error.
pub const HOST_VALUE_MAX: usize = 40;

/// Text that came from zooid: control characters dropped (line breaks and tabs become
/// spaces), known secrets replaced by `<redacted>`, cut to `max` bytes.
pub fn remote(text: &str, max: usize) -> String {
    // Redact before cutting, so that a secret cut in half by the limit cannot survive.
    cut(&secret::redact(&strip_controls(text)), max)
}

/// A value the host wrote, quoted for an error message: `"abc"`, or `"abc…" (5000000 bytes)`
/// when long; control characters escaped, as `{:?}` does.
pub fn host_value(value: &str) -> String {
    if value.len() <= HOST_VALUE_MAX {
        return format!("{value:?}");
    }
    let mut end = HOST_VALUE_MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &value[..end], value.len())
}

/// `text` without control characters; line breaks and tabs become spaces.
pub fn strip_controls(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\n' | '\r' | '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// `text` cut to at most `max` bytes at a character boundary, marked when cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_respects_char_boundaries() {
        assert_eq!(cut("short", 10), "short");
        let long = "é".repeat(1000); // 2000 bytes
        let c = cut(&long, 1023);
        assert!(c.starts_with(&"é".repeat(511)));
        assert!(c.ends_with("(2000 bytes in all)"));
    }

    #[test]
    fn remote_text_loses_escapes_and_known_secrets() {
        let secret = crate::secret::Secret::new("quote-test-secret-0123");
        let text = format!("\u{1b}[31mred\u{1b}[0m\nnext {} end", secret.expose());
        assert_eq!(remote(&text, 100), "[31mred[0m next <redacted> end");
        let long = "x".repeat(5000);
        assert!(remote(&long, 1024).len() < 1100);
    }

    #[test]
    fn host_values_are_quoted_short() {
        assert_eq!(host_value("alpha"), "\"alpha\"");
        let big = "a".repeat(5_000_000);
        let q = host_value(&big);
        assert!(q.len() < 80, "{q}");
        assert!(q.ends_with("(5000000 bytes)"), "{q}");
        assert_eq!(host_value("a\u{1b}b"), "\"a\\u{1b}b\"");
    }
}
