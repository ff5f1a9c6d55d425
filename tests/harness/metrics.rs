//! Reading what the admin server answers: samples of the Prometheus `/metrics` text and rows
//! of the `/conntrack` dump.

/// Sum of the samples of `text` whose series contains `series`; None when none matches.
pub fn parse_metric(text: &str, series: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if name.contains(series) {
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

/// Rows of a /conntrack dump with this protocol ("tcp" or "udp").
pub fn rows(ct: &serde_json::Value, protocol: &str) -> Vec<serde_json::Value> {
    ct.as_array()
        .expect("/conntrack is an array")
        .iter()
        .filter(|r| r["protocol"] == protocol)
        .cloned()
        .collect()
}
