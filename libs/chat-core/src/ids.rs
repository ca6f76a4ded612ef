//! Typed identifiers. Each is a validated newtype with a private field, so a
//! value that exists is safe to put in a NATS subject token, a KV key and a
//! header: 1–64 characters of `A–Z a–z 0–9 _ -`.

use std::fmt;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {max} characters")]
    TooLong { kind: &'static str, max: usize },
    #[error("{kind} may only contain A-Z, a-z, 0-9, '_' and '-'")]
    BadChar { kind: &'static str },
}

/// Longest identifier accepted anywhere.
pub const MAX_ID_LEN: usize = 64;

fn validate(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            max: MAX_ID_LEN,
        });
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(IdError::BadChar { kind });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        // Shared text: ids are cloned per recipient on hot paths (a room's
        // id into every session's queue), so a clone must not allocate.
        pub struct $name(std::sync::Arc<str>);

        impl $name {
            /// Validates `s` as this kind of identifier.
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate($kind, &s)?;
                Ok(Self(s.into()))
            }

            /// A fresh, time-ordered random identifier with this kind's prefix.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, uuid::Uuid::now_v7().simple()).into())
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

id_type!(
    /// A person or service account, issued by the auth service.
    UserId, "user id", "u"
);
id_type!(
    /// A room (1:1 or group).
    RoomId, "room id", "r"
);
id_type!(
    /// One gateway process; deliveries for its clients go to `gw.<id>.deliver`.
    GatewayId, "gateway id", "g"
);
id_type!(
    /// The client-chosen id of a send; re-sending with the same id never
    /// creates a second message.
    ClientMsgId, "client message id", "c"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_subject_safe_ids_and_rejects_the_rest() {
        assert!(RoomId::parse("general-1_A").is_ok());
        assert_eq!(RoomId::parse(""), Err(IdError::Empty { kind: "room id" }));
        assert!(matches!(RoomId::parse("a.b"), Err(IdError::BadChar { .. })));
        assert!(matches!(RoomId::parse("a*"), Err(IdError::BadChar { .. })));
        assert!(matches!(RoomId::parse("a b"), Err(IdError::BadChar { .. })));
        assert!(matches!(
            UserId::parse("x".repeat(65)),
            Err(IdError::TooLong { .. })
        ));
        assert!(UserId::parse("x".repeat(64)).is_ok());
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = RoomId::generate();
        let b = RoomId::generate();
        assert_ne!(a, b);
        assert!(RoomId::parse(a.as_str()).is_ok());
        assert!(a.as_str().starts_with('r'));
    }

    #[test]
    fn deserialising_validates() {
        let ok: Result<UserId, _> = serde_json::from_str("\"alice\"");
        assert!(ok.is_ok());
        let bad: Result<UserId, _> = serde_json::from_str("\"al>ice\"");
        assert!(bad.is_err());
    }
}
