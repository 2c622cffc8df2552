//! Identifiers: content ids, author keys, and the names of documents, stores and keys.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// Why a string could not be parsed as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct ParseIdError {
    kind: &'static str,
    reason: String,
}

macro_rules! hex32 {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = 32;

            /// Wrap 32 raw bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Read from a slice that must be exactly 32 bytes long.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, ParseIdError> {
                <[u8; 32]>::try_from(bytes).map(Self).map_err(|_| ParseIdError {
                    kind: $kind,
                    reason: format!("expected 32 bytes, got {}", bytes.len()),
                })
            }

            /// Lowercase hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 12 hex characters, for logs and tables.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..6])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut buf = [0u8; 64];
                // Encoding 32 bytes into 64 always succeeds.
                if hex::encode_to_slice(self.0, &mut buf).is_err() {
                    return Err(fmt::Error);
                }
                f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.short())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if s.len() != 64 {
                    return Err(ParseIdError {
                        kind: $kind,
                        reason: format!("expected 64 hex characters, got {}", s.len()),
                    });
                }
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|e| ParseIdError {
                    kind: $kind,
                    reason: e.to_string(),
                })?;
                Ok(Self(out))
            }
        }

        impl From<[u8; 32]> for $name {
            fn from(b: [u8; 32]) -> Self {
                Self(b)
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.collect_str(self)
                } else {
                    s.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    struct V;
                    impl<'de> serde::de::Visitor<'de> for V {
                        type Value = [u8; 32];
                        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                            f.write_str("32 bytes")
                        }
                        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                            <[u8; 32]>::try_from(v).map_err(|_| E::invalid_length(v.len(), &self))
                        }
                        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                            let mut out = [0u8; 32];
                            for (i, b) in out.iter_mut().enumerate() {
                                *b = seq.next_element()?.ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                            }
                            Ok(out)
                        }
                    }
                    d.deserialize_bytes(V).map($name)
                }
            }
        }
    };
}

hex32!(
    /// The content address of a change: the blake3 hash of its canonical
    /// header (see [`crate::encoding`]). Shown as 64 lowercase hex characters.
    ///
    /// ```
    /// use cairn::ChangeId;
    /// let id = ChangeId::from_bytes([7; 32]);
    /// let text = id.to_string();
    /// assert_eq!(text.parse::<ChangeId>().unwrap(), id);
    /// ```
    ChangeId,
    "change id"
);

hex32!(
    /// A blake3 digest, such as a change's payload hash.
    Digest,
    "digest"
);

hex32!(
    /// An author's Ed25519 public key (32 bytes): who made a change.
    AuthorId,
    "author key"
);

impl ChangeId {
    /// The lowest possible id (all zero bytes).
    pub const MIN: ChangeId = ChangeId([0; 32]);
    /// The highest possible id (all 0xff bytes).
    pub const MAX: ChangeId = ChangeId([0xff; 32]);
}

impl Digest {
    /// The blake3 hash of `data`.
    pub fn of(data: &[u8]) -> Self {
        Digest(*blake3::hash(data).as_bytes())
    }
}

impl AuthorId {
    /// The Ed25519 verifying key, if these bytes are a valid curve point.
    pub fn verifying_key(&self) -> Option<ed25519_dalek::VerifyingKey> {
        ed25519_dalek::VerifyingKey::from_bytes(&self.0).ok()
    }
}

impl From<&ed25519_dalek::VerifyingKey> for AuthorId {
    fn from(k: &ed25519_dalek::VerifyingKey) -> Self {
        AuthorId(k.to_bytes())
    }
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Longest allowed value in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validate and wrap a name: non-empty, at most
            #[doc = concat!("`", stringify!($max), "`")]
            /// bytes of UTF-8, no control characters.
            pub fn new(name: impl Into<String>) -> Result<Self, Error> {
                let name = name.into();
                if name.is_empty() {
                    return Err(Error::invalid(concat!($kind, " must not be empty")));
                }
                if name.len() > $max {
                    return Err(Error::invalid(format!(
                        concat!($kind, " is {} bytes, more than the limit of {}"),
                        name.len(),
                        $max
                    )));
                }
                if name.chars().any(char::is_control) {
                    return Err(Error::invalid(concat!($kind, " must not contain control characters")));
                }
                Ok(Self(name))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_id!(
    /// The document a change belongs to (for example a UUID string).
    DocId,
    "document id",
    1024
);

name_id!(
    /// Names a store, usually `tenant/database`. Only stores with the same
    /// store id sync with each other.
    StoreId,
    "store id",
    1024
);

name_id!(
    /// Which key encrypts a change's payload. [`KeyId::default`] is the
    /// tenant key, named `default`.
    KeyId,
    "key id",
    255
);

impl DocId {
    /// A fresh random document id (32 lowercase hex characters).
    pub fn random() -> Self {
        DocId(hex::encode(crate::random_bytes::<16>()))
    }
}

impl Default for KeyId {
    fn default() -> Self {
        KeyId("default".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_id_hex_round_trip_and_errors() {
        let id = ChangeId::from_bytes([0xab; 32]);
        assert_eq!(id.to_string(), "ab".repeat(32));
        assert_eq!(id.to_string().parse::<ChangeId>().ok(), Some(id));
        assert!("abc".parse::<ChangeId>().is_err());
        assert!("zz".repeat(32).parse::<ChangeId>().is_err());
        assert!(ChangeId::from_slice(&[1, 2, 3]).is_err());
    }

    #[test]
    fn change_id_serde_json_is_hex() {
        let id = ChangeId::from_bytes([1; 32]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", "01".repeat(32)));
        let back: ChangeId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
    }

    #[test]
    fn names_validate() {
        assert!(DocId::new("").is_err());
        assert!(DocId::new("a\u{0}b").is_err());
        assert!(DocId::new("x".repeat(DocId::MAX_LEN + 1)).is_err());
        assert_eq!(DocId::new("contact-1").unwrap().as_str(), "contact-1");
        assert_eq!(KeyId::default().as_str(), "default");
        assert!(serde_json::from_str::<StoreId>("\"\"").is_err());
    }
}
