//! IP families: the listeners a Service gets per family, from spec.ipFamilies; without it, the
//! family of spec.clusterIP, as the API server would infer it, else IPv4.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::ServiceSpec;

use crate::model::service::{Family, ServiceKey};

/// The Service's families, in spec order; an unknown family adds a message naming the Service.
pub(super) fn families(
    key: &ServiceKey,
    spec: &ServiceSpec,
    errors: &mut Vec<String>,
) -> Vec<Family> {
    let mut families = Vec::new();
    for f in spec.ip_families.as_deref().unwrap_or_default() {
        match f.as_str() {
            "IPv4" => families.push(Family::V4),
            "IPv6" => families.push(Family::V6),
            other => errors.push(format!("Service {key}: unknown ipFamily {other:?}")),
        }
    }
    if families.is_empty() {
        let inferred = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .map(|ip| Family::of(&ip));
        families.push(inferred.unwrap_or(Family::V4));
    }
    families
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{errors, served, service, spec_mut, tcp};

    fn with(
        families: Option<&[&str]>,
        cluster_ip: Option<&str>,
    ) -> k8s_openapi::api::core::v1::Service {
        let mut svc = service("x", vec![tcp("http", 30080)]);
        let spec = spec_mut(&mut svc);
        spec.ip_families = families.map(|f| f.iter().map(|s| s.to_string()).collect());
        spec.cluster_ip = cluster_ip.map(String::from);
        svc
    }

    #[test]
    fn ip_families_are_read_in_order() {
        let s = served(&with(Some(&["IPv6", "IPv4"]), None));
        assert_eq!(s.families, vec![Family::V6, Family::V4]);
        let s = served(&with(Some(&["IPv4"]), Some("fd00::1")));
        assert_eq!(s.families, vec![Family::V4]);
    }

    #[test]
    fn without_ip_families_the_cluster_ip_decides_else_ipv4() {
        assert_eq!(
            served(&with(None, Some("fd00::1"))).families,
            vec![Family::V6]
        );
        assert_eq!(
            served(&with(Some(&[]), Some("10.0.0.1"))).families,
            vec![Family::V4]
        );
        assert_eq!(served(&with(None, None)).families, vec![Family::V4]);
        assert_eq!(
            served(&with(None, Some("bogus"))).families,
            vec![Family::V4]
        );
    }

    #[test]
    fn an_unknown_family_is_an_error_naming_the_service() {
        assert_eq!(
            errors(&with(Some(&["IPv4", "IPv5"]), None)),
            vec!["Service ns/x: unknown ipFamily \"IPv5\""]
        );
    }
}
