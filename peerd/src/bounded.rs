//! Bounds for strings a client controls (NACK messages, node ids, header values, view and
//! resource names) before peerd logs, stores or echoes them: at most
//! [`DISPLAY_LIMIT`] bytes, cut on a character boundary, followed by a marker saying how
//! long the original was.
//!
//! It owns only the cut; it never decides what is client-controlled (callers do) and never
//! changes a string that already fits.

use std::borrow::Cow;

/// Bytes of a client-controlled string kept for logs, status and error messages.
pub const DISPLAY_LIMIT: usize = 4 * 1024;

/// `text` if it fits in [`DISPLAY_LIMIT`] bytes, else its first bytes (on a character
/// boundary) and `…[truncated: N bytes]`, N being the original length.
pub fn truncate_for_display(text: &str) -> Cow<'_, str> {
    truncate_to(text, DISPLAY_LIMIT)
}

/// [`truncate_for_display`] with an explicit limit (the kept prefix; the marker comes on
/// top of it).
pub fn truncate_to(text: &str, limit: usize) -> Cow<'_, str> {
    if text.len() <= limit {
        return Cow::Borrowed(text);
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}…[truncated: {} bytes]",
        &text[..end],
        text.len()
    ))
}

/// [`truncate_for_display`] of an owned string, reusing it when it fits.
pub fn truncate_owned(text: String) -> String {
    if text.len() <= DISPLAY_LIMIT {
        text
    } else {
        truncate_for_display(&text).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_untouched() {
        assert!(matches!(truncate_for_display("ok"), Cow::Borrowed("ok")));
        let exact = "x".repeat(DISPLAY_LIMIT);
        assert_eq!(truncate_for_display(&exact), exact.as_str());
    }

    #[test]
    fn long_strings_keep_a_prefix_and_say_how_long_they_were() {
        let long = "a".repeat(10 * 1024 * 1024);
        let cut = truncate_for_display(&long);
        assert!(cut.len() < DISPLAY_LIMIT + 64, "{}", cut.len());
        assert!(cut.starts_with(&"a".repeat(DISPLAY_LIMIT)));
        assert!(
            cut.ends_with("…[truncated: 10485760 bytes]"),
            "{}",
            &cut[DISPLAY_LIMIT..]
        );
    }

    #[test]
    fn the_cut_respects_character_boundaries() {
        // 'é' is two bytes: a limit of 3 falls inside the second one.
        let cut = truncate_to("éééé", 3);
        assert_eq!(cut, "é…[truncated: 8 bytes]");
        assert_eq!(truncate_owned("ü".repeat(3000)).chars().next(), Some('ü'));
    }
}
