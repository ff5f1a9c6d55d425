//! Helpers for the `key=value,key=value` configuration syntax the shipped plugins share.
//!
//! Configuration arrives as one annotation string; a common syntax keeps annotations
//! predictable for operators, and errors that name the offending entry make a rejected
//! configuration quick to fix.

/// Splits `config` into `(key, value)` pairs: entries are separated by commas, keys and
/// values by `=`, whitespace around either is ignored, empty entries are skipped. An entry
/// without `=` or with an empty key is an error naming it; keys are not checked (match on
/// them and reject the unknown ones, so typos do not pass silently).
pub fn pairs(config: &str) -> Result<Vec<(&str, &str)>, String> {
    let mut out = Vec::new();
    for entry in config.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => out.push((k.trim(), v.trim())),
            _ => return Err(format!("`{entry}`: expected key=value")),
        }
    }
    Ok(out)
}

/// Parses a number for key `key`, with an error that names the key and the value.
pub fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("`{key}={value}`: expected a non-negative integer"))
}

/// The error for an unknown key, listing the known ones so the operator sees the fix.
pub fn unknown(key: &str, known: &[&str]) -> String {
    format!("unknown key `{key}` (known: {})", known.join(", "))
}

#[cfg(test)]
mod tests {
    use crate::config;

    #[test]
    fn config_pairs_trim_and_reject_malformed_entries() {
        assert_eq!(
            config::pairs(" a = 1 ,, b=x ").unwrap(),
            vec![("a", "1"), ("b", "x")]
        );
        assert_eq!(config::pairs("").unwrap(), vec![]);
        assert!(config::pairs("a=1,oops").unwrap_err().contains("`oops`"));
        assert!(config::pairs("=3").is_err());
        assert_eq!(config::number::<u32>("v4", "24"), Ok(24));
        assert!(config::number::<u32>("v4", "-1")
            .unwrap_err()
            .contains("v4=-1"));
    }
}
