//! Text a plugin hands the host: log lines, a refusal of its config, and the names its module
//! declares, which trap messages quote. A plugin can make any of them as long as its memory
//! cap allows (megabytes), and the host copies them into logs, resolution errors and
//! Kubernetes Events on every retry: each is cut to [`MAX_BYTES`] where it enters the host.

/// The most bytes of plugin-made text the host keeps.
pub const MAX_BYTES: usize = 1024;

/// `text` cut to [`MAX_BYTES`] at a character boundary, marked where it was cut.
pub fn bounded(mut text: String) -> String {
    if text.len() <= MAX_BYTES {
        return text;
    }
    let mut end = MAX_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end;
    text.truncate(end);
    text.push_str(&format!("... ({cut} more bytes)"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_at_a_character_boundary_and_says_so() {
        assert_eq!(bounded("short".into()), "short");
        let exact = "x".repeat(MAX_BYTES);
        assert_eq!(bounded(exact.clone()), exact);
        // A two-byte character straddles the bound: it goes whole.
        let text = format!("{}é{}", "x".repeat(MAX_BYTES - 1), "y".repeat(10));
        let cut = bounded(text);
        assert!(cut.starts_with(&"x".repeat(MAX_BYTES - 1)), "{cut}");
        assert!(cut.ends_with("... (12 more bytes)"), "{cut}");
        assert_eq!(
            bounded("z".repeat(8 << 20)).len(),
            MAX_BYTES + "... (8387584 more bytes)".len()
        );
    }
}
