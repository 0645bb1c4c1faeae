use core::fmt;
use core::str::FromStr;

/// A plugin's well-known name: 1 to 255 bytes of `[a-z0-9._-]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

/// Why a string is not a [`Name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    /// Names have at least one byte.
    #[error("a name cannot be empty")]
    Empty,
    /// Names have at most 255 bytes.
    #[error("a name has at most 255 bytes, not {0}")]
    TooLong(usize),
    /// Only lowercase ASCII letters, digits, '.', '_' and '-'.
    #[error("a name may only contain a-z, 0-9, '.', '_' and '-' (found {0:?} at byte {1})")]
    BadCharacter(char, usize),
}

impl Name {
    /// Longest name, in bytes.
    pub const MAX_LEN: usize = 255;

    /// Checks `text` and makes it a name.
    pub fn new(text: &str) -> Result<Self, InvalidName> {
        Self::validate(text.as_bytes())?;
        Ok(Name(text.to_owned()))
    }

    /// Checks raw bytes (from the wire) and makes them a name.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, InvalidName> {
        Self::validate(bytes)?;
        Ok(Name(
            String::from_utf8(bytes.to_vec()).expect("validated as ASCII"),
        ))
    }

    fn validate(bytes: &[u8]) -> Result<(), InvalidName> {
        if bytes.is_empty() {
            return Err(InvalidName::Empty);
        }
        if bytes.len() > Self::MAX_LEN {
            return Err(InvalidName::TooLong(bytes.len()));
        }
        match bytes.iter().position(|&b| !Self::allowed(b)) {
            Some(at) => Err(InvalidName::BadCharacter(char::from(bytes[at]), at)),
            None => Ok(()),
        }
    }

    fn allowed(b: u8) -> bool {
        b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, InvalidName> {
        Name::new(s)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({})", self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(Name::new("indexer").is_ok());
        assert!(Name::new("ssb.replicator-2_x").is_ok());
        assert!(Name::new(&"a".repeat(255)).is_ok());
        assert_eq!(Name::new(""), Err(InvalidName::Empty));
        assert_eq!(Name::new(&"a".repeat(256)), Err(InvalidName::TooLong(256)));
        assert_eq!(Name::new("Indexer"), Err(InvalidName::BadCharacter('I', 0)));
        assert_eq!(Name::new("a b"), Err(InvalidName::BadCharacter(' ', 1)));
        assert!(Name::from_bytes(&[b'a', 0xff]).is_err());
    }
}
