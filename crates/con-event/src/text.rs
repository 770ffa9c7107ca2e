//! Making recorded strings safe to print in text views.

use std::borrow::Cow;

/// `s` with every control character (newline, carriage return, escape,
/// tab, DEL, C1 controls…) and backslash written as a Rust-style escape
/// (`\n`, `\u{1b}`, `\\`), so a string an agent controls — a task file name,
/// a tool's output — can neither start a new line nor move the cursor or
/// hide text in `con logs`, `con status` or `con replay`.
pub fn escape_control(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || c == '\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::escape_control;

    #[test]
    fn control_characters_and_backslashes_are_escaped_and_the_rest_kept() {
        assert_eq!(escape_control("plain name.task"), "plain name.task");
        assert_eq!(
            escape_control("a\nseq 23999  inbox.arrived\u{1b}[8m"),
            "a\\nseq 23999  inbox.arrived\\u{1b}[8m"
        );
        assert_eq!(
            escape_control("tab\there\r\u{7f}\u{85}"),
            "tab\\there\\r\\u{7f}\\u{85}"
        );
        assert_eq!(escape_control("c:\\n"), "c:\\\\n");
        assert_eq!(escape_control("héllo ✓"), "héllo ✓");
    }
}
