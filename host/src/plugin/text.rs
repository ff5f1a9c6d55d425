//! Text a plugin hands the host: log lines, a refusal of its config, and the names its module
//! declares, which trap messages quote. A plugin can make any of them as long as its memory
//! cap allows (megabytes), and the host copies them into logs, resolution errors and
//! Kubernetes Events on every retry: each is cut to [`MAX_BYTES`] where it enters the host.

/// The most bytes of plugin-made text the host keeps.
pub const MAX_BYTES: usize = 1024;

/// `text` cut to [`MAX_BYTES`] at a character boundary, marked where it was cut. A cut text
/// is a new string: truncating in place would keep the plugin's megabytes allocated.
pub fn bounded(text: String) -> String {
    if text.len() <= MAX_BYTES {
        return text;
    }
    let mut end = MAX_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mark = format!("... ({} more bytes)", text.len() - end);
    let mut cut = String::with_capacity(end + mark.len());
    cut.push_str(&text[..end]);
    cut.push_str(&mark);
    cut
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
        let cut = bounded("z".repeat(8 << 20));
        assert_eq!(cut.len(), MAX_BYTES + "... (8387584 more bytes)".len());
        assert!(cut.capacity() < 2 * MAX_BYTES, "the megabytes are not kept");
    }
}
