//! Static bearer-token checks shared by the servers that take credentials (the OTLP receivers'
//! `auth.bearer_token`, the admin server's `service.telemetry.metrics.auth.bearer_token`).

/// A configured bearer token; compares in time independent of where a guess differs.
#[derive(Clone)]
pub struct BearerToken {
    token: Vec<u8>,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// The token, surrounding whitespace trimmed.
    pub fn new(token: &str) -> Self {
        Self {
            token: token.trim().as_bytes().to_vec(),
        }
    }

    /// Whether an `authorization` header value is `Bearer <token>` (scheme case-insensitive).
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(v) = authorization else {
            return false;
        };
        let Some((scheme, rest)) = v.split_first_chunk::<7>() else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        constant_time_eq(rest.trim_ascii(), &self.token)
    }
}

/// Compares without leaking where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token() {
        let a = BearerToken::new(" s3cret ");
        assert!(!a.accepts(None));
        assert!(a.accepts(Some(b"Bearer s3cret")));
        assert!(a.accepts(Some(b"bearer s3cret")));
        assert!(!a.accepts(Some(b"Bearer s3creT")));
        assert!(!a.accepts(Some(b"Bearer s3cre")));
        assert!(!a.accepts(Some(b"Basic s3cret")));
        assert!(!a.accepts(Some(b"Bearer")));
        assert_eq!(format!("{a:?}"), "BearerToken(<redacted>)");
    }
}
