//! Kubernetes object-name rules, checked wherever a name arrives from outside (a key or a value
//! another cluster wrote) so that a malformed one is rejected before it reaches a map or a path.

/// RFC 1123 label: what Kubernetes requires of namespaces and service names.
pub fn is_dns_label(s: &str) -> bool {
    is_label(s, 63)
}

/// RFC 1123 subdomain: what Kubernetes requires of node and pod names.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(|part| is_label(part, 63))
}

fn is_label(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= max
        && alnum(&b[0])
        && alnum(&b[b.len() - 1])
        && b.iter().all(|c| alnum(c) || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        assert!(is_dns_label("default"));
        assert!(is_dns_label("kube-system"));
        assert!(!is_dns_label("Default"));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("node-1.eu-west.internal"));
        assert!(!is_dns_subdomain("node..1"));
        assert!(!is_dns_subdomain(""));
        assert!(!is_dns_subdomain("../etc"));
    }
}
