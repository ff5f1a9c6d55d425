//! Session affinity: sessionAffinity ClientIP keeps a client on one endpoint for
//! sessionAffinityConfig.clientIP.timeoutSeconds (default 10800, allowed 1-86400, as the API
//! server validates it); any other value means no affinity.

use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceSpec;

use super::DEFAULT_AFFINITY_SECONDS;
use crate::model::service::ServiceKey;

/// The largest timeoutSeconds the API server accepts (one day).
const MAX_AFFINITY_SECONDS: i32 = 86400;

/// The ClientIP affinity timeout, None without affinity; Err names the Service when the
/// timeout is out of bounds (the whole Service is then rejected).
pub(super) fn client_ip(key: &ServiceKey, spec: &ServiceSpec) -> Result<Option<Duration>, String> {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return Ok(None);
    }
    let secs = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .unwrap_or(DEFAULT_AFFINITY_SECONDS);
    if !(1..=MAX_AFFINITY_SECONDS).contains(&secs) {
        return Err(format!(
            "Service {key}: sessionAffinityConfig.clientIP.timeoutSeconds {secs} must be within 1-{MAX_AFFINITY_SECONDS}"
        ));
    }
    Ok(Some(Duration::from_secs(u64::from(secs.unsigned_abs()))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{invalid, served, service, spec_mut, tcp};
    use k8s_openapi::api::core::v1::{ClientIPConfig, Service, SessionAffinityConfig};

    fn with(affinity: Option<&str>, timeout: Option<i32>) -> Service {
        let mut svc = service("x", vec![tcp("http", 30080)]);
        let spec = spec_mut(&mut svc);
        spec.session_affinity = affinity.map(String::from);
        spec.session_affinity_config = timeout.map(|t| SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(t),
            }),
        });
        svc
    }

    #[test]
    fn no_affinity_unless_client_ip() {
        assert_eq!(served(&with(None, None)).affinity, None);
        assert_eq!(served(&with(Some("None"), Some(60))).affinity, None);
    }

    #[test]
    fn client_ip_defaults_to_three_hours() {
        let s = served(&with(Some("ClientIP"), None));
        assert_eq!(s.affinity, Some(Duration::from_secs(10800)));
    }

    #[test]
    fn an_explicit_timeout_is_kept_within_bounds() {
        for secs in [1, 60, 86400] {
            let s = served(&with(Some("ClientIP"), Some(secs)));
            assert_eq!(s.affinity, Some(Duration::from_secs(secs as u64)));
        }
    }

    #[test]
    fn a_timeout_out_of_bounds_rejects_the_service() {
        for secs in [0, -5, 86401] {
            assert_eq!(
                invalid(&with(Some("ClientIP"), Some(secs))),
                format!(
                    "Service ns/x: sessionAffinityConfig.clientIP.timeoutSeconds {secs} must be within 1-86400"
                )
            );
        }
    }
}
