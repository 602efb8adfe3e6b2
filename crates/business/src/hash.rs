//! Keyed hashing (HMAC-SHA256) for pseudonymising identifiers.
//!
//! The same value under the same key always gives the same hash, so joins and
//! distinct counts still work on hashed ids; without the key the original value
//! cannot be recovered by hashing guesses (unlike a plain SHA-256 of an email).
//! Values are hashed as their UTF-8 text; the result is 64 lowercase hex digits.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Why a hashing key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashKeyError {
    #[error("environment variable {0} is not set")]
    Unset(String),
    #[error("environment variable {0} is empty")]
    EmptyVar(String),
    #[error("the hashing key is empty")]
    Empty,
    #[error("environment variable {0} is not valid UTF-8")]
    NotUnicode(String),
}

/// An HMAC-SHA256 keyed hasher. The key is never printed.
#[derive(Clone)]
pub struct KeyedHasher {
    /// The MAC already keyed: cloning it skips re-deriving the key pads per value.
    mac: HmacSha256,
}

impl fmt::Debug for KeyedHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyedHasher(HMAC-SHA256, key hidden)")
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl KeyedHasher {
    /// A hasher with `key`; an empty key is refused.
    pub fn new(key: &[u8]) -> Result<Self, HashKeyError> {
        if key.is_empty() {
            return Err(HashKeyError::Empty);
        }
        let mac = HmacSha256::new_from_slice(key).map_err(|_| HashKeyError::Empty)?;
        Ok(KeyedHasher { mac })
    }

    /// A hasher keyed by the environment variable `var`, which must be set and non-empty.
    pub fn from_env(var: &str) -> Result<Self, HashKeyError> {
        match std::env::var(var) {
            Ok(v) if v.is_empty() => Err(HashKeyError::EmptyVar(var.to_string())),
            Ok(v) => Self::new(v.as_bytes()),
            Err(std::env::VarError::NotPresent) => Err(HashKeyError::Unset(var.to_string())),
            Err(std::env::VarError::NotUnicode(_)) => Err(HashKeyError::NotUnicode(var.to_string())),
        }
    }

    /// The raw 32-byte MAC of `data`.
    pub fn hash(&self, data: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// The MAC of `data` as 64 lowercase hex digits.
    pub fn hash_hex(&self, data: &[u8]) -> String {
        let mut out = String::with_capacity(64);
        self.hash_hex_into(data, &mut out);
        out
    }

    /// Writes the hex MAC of `data` into `out` (cleared first).
    pub fn hash_hex_into(&self, data: &[u8], out: &mut String) {
        out.clear();
        for b in self.hash(data) {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_test_case_2() {
        let h = KeyedHasher::new(b"Jefe").unwrap();
        assert_eq!(
            h.hash_hex(b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn stable_and_keyed() {
        let a = KeyedHasher::new(b"k1").unwrap();
        let b = KeyedHasher::new(b"k2").unwrap();
        assert_eq!(a.hash_hex(b"c-1"), a.hash_hex(b"c-1"));
        assert_ne!(a.hash_hex(b"c-1"), a.hash_hex(b"c-2"));
        assert_ne!(a.hash_hex(b"c-1"), b.hash_hex(b"c-1"));
        assert!(KeyedHasher::new(b"").is_err());
        assert!(!format!("{a:?}").contains("k1"));
        assert_eq!(
            KeyedHasher::from_env("BIZPILOT_TEST_SURELY_UNSET_VAR").unwrap_err(),
            HashKeyError::Unset("BIZPILOT_TEST_SURELY_UNSET_VAR".into())
        );
    }
}
