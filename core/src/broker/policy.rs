//! Who may do what: a TOML-friendly policy.
//!
//! ```toml
//! # What any key may do that completed the handshake on a unix socket
//! # (the socket is mode 0600, so that is the user's own processes).
//! [unix]
//! register = ["*"]
//! open = ["*"]
//! direct = ["*"]
//! list = true
//! watch = true
//! stats = false
//!
//! # Keys named here get exactly these rights, on any transport. Over TCP,
//! # only keys named here are admitted at all.
//! [[key]]
//! id = "@hxGx…=.ed25519"
//! register = ["indexer", "index-*"]
//! open = ["replicator"]
//! direct = ["tcp:10.0.0.*:*"]
//! list = true
//! watch = true
//! stats = true
//! ```
//!
//! Patterns are names (or, for `direct`, `tcp:HOST:PORT` addresses) with
//! `*` standing for any run of characters. The broker's own key may do
//! everything.

use serde::{Deserialize, Serialize};

use crate::control::{Name, TransportKind};
use crate::keys::PublicKey;

/// Rights of one key (or of every unix peer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// Names it may register.
    #[serde(default)]
    pub register: Vec<Pattern>,
    /// Names it may open channels to.
    #[serde(default)]
    pub open: Vec<Pattern>,
    /// Direct TCP addresses (`tcp:HOST:PORT`) it may tell openers to dial
    /// when it registers a name: without a match, openers would dial
    /// wherever a name holder says.
    #[serde(default)]
    pub direct: Vec<Pattern>,
    /// May list who is connected.
    #[serde(default)]
    pub list: bool,
    /// May watch who comes and goes.
    #[serde(default)]
    pub watch: bool,
    /// May ask who holds what.
    #[serde(default)]
    pub stats: bool,
}

impl Permissions {
    /// Everything.
    pub fn all() -> Self {
        Permissions {
            register: vec![Pattern::any()],
            open: vec![Pattern::any()],
            direct: vec![Pattern::any()],
            list: true,
            watch: true,
            stats: true,
        }
    }

    /// Nothing.
    pub fn none() -> Self {
        Permissions {
            register: Vec::new(),
            open: Vec::new(),
            direct: Vec::new(),
            list: false,
            watch: false,
            stats: false,
        }
    }
}

/// One key's rights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyGrant {
    /// The key, `@<base64>.ed25519`.
    #[serde(with = "ssb_id")]
    pub id: PublicKey,
    /// Names it may register.
    #[serde(default)]
    pub register: Vec<Pattern>,
    /// Names it may open channels to.
    #[serde(default)]
    pub open: Vec<Pattern>,
    /// Direct TCP addresses (`tcp:HOST:PORT`) it may tell openers to dial
    /// when it registers a name: without a match, openers would dial
    /// wherever a name holder says.
    #[serde(default)]
    pub direct: Vec<Pattern>,
    /// May list who is connected.
    #[serde(default)]
    pub list: bool,
    /// May watch who comes and goes.
    #[serde(default)]
    pub watch: bool,
    /// May ask who holds what.
    #[serde(default)]
    pub stats: bool,
}

impl KeyGrant {
    /// Its rights.
    pub fn permissions(&self) -> Permissions {
        Permissions {
            register: self.register.clone(),
            open: self.open.clone(),
            direct: self.direct.clone(),
            list: self.list,
            watch: self.watch,
            stats: self.stats,
        }
    }
}

/// The broker's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Rights of unix-socket peers not named in `key`.
    #[serde(default = "unix_default")]
    pub unix: Permissions,
    /// Named keys.
    #[serde(default, rename = "key")]
    pub keys: Vec<KeyGrant>,
}

fn unix_default() -> Permissions {
    Permissions {
        stats: false,
        ..Permissions::all()
    }
}

impl Default for Policy {
    /// Unix peers may do everything but `stats`; no TCP peer is admitted.
    fn default() -> Self {
        Policy {
            unix: unix_default(),
            keys: Vec::new(),
        }
    }
}

/// A policy file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid policy: {0}")]
pub struct PolicyError(String);

impl Policy {
    /// Parses a policy from TOML.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        toml::from_str(text).map_err(|e| PolicyError(e.to_string()))
    }

    /// Refuses a policy that would not mean what it says for a broker
    /// whose key is `owner`: an entry for the broker's own key (which may
    /// do everything whatever the entry says), or two entries for one key
    /// (only the first would count).
    pub fn check(&self, owner: &PublicKey) -> Result<(), PolicyError> {
        for (i, grant) in self.keys.iter().enumerate() {
            if &grant.id == owner {
                return Err(PolicyError(format!(
                    "[[key]] {} is the broker's own key, which may do everything; remove the entry",
                    grant.id
                )));
            }
            if self.keys[..i].iter().any(|g| g.id == grant.id) {
                return Err(PolicyError(format!(
                    "[[key]] {} is named twice; give it one entry",
                    grant.id
                )));
            }
        }
        Ok(())
    }

    /// The rights of `key` on `transport`; `None` means it is not admitted.
    /// `owner` is the broker's own key.
    pub fn rights(
        &self,
        key: &PublicKey,
        transport: TransportKind,
        owner: &PublicKey,
    ) -> Option<Permissions> {
        if key == owner {
            return Some(Permissions::all());
        }
        if let Some(grant) = self.keys.iter().find(|g| &g.id == key) {
            return Some(grant.permissions());
        }
        match transport {
            TransportKind::Unix => Some(self.unix.clone()),
            TransportKind::Tcp => None,
        }
    }
}

/// A name pattern: `*` matches any run of characters, everything else itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pattern(String);

impl Pattern {
    /// `*`.
    pub fn any() -> Self {
        Pattern("*".into())
    }

    /// A pattern from text.
    pub fn new(text: &str) -> Self {
        Pattern(text.to_owned())
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &Name) -> bool {
        self.matches_text(name.as_str())
    }

    /// Whether `text` (a direct address) matches.
    pub fn matches_text(&self, text: &str) -> bool {
        glob(self.0.as_bytes(), text.as_bytes())
    }
}

/// Whether any pattern in `patterns` matches `name`.
pub fn any_matches(patterns: &[Pattern], name: &Name) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

/// Glob with `*` only; iterative, with one backtrack point (linear-ish, no recursion).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

mod ssb_id {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::keys::PublicKey;

    pub fn serialize<S: Serializer>(key: &PublicKey, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(key)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keypair;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn globs() {
        let m = |p: &str, n: &str| Pattern::new(p).matches(&name(n));
        assert!(m("*", "anything"));
        assert!(m("index-*", "index-2"));
        assert!(m("index-*", "index-"));
        assert!(!m("index-*", "indexer"));
        assert!(m("*.ssb", "x.ssb") && !m("*.ssb", "x.ssb2"));
        assert!(m("a*b*c", "axxbyyc") && !m("a*b*c", "axxbyy"));
        assert!(m("exact", "exact") && !m("exact", "exact2"));
    }

    #[test]
    fn defaults_admit_unix_only_and_the_owner_everywhere() {
        let policy = Policy::default();
        let owner = Keypair::from_seed([1; 32]).public();
        let other = Keypair::from_seed([2; 32]).public();
        let unix = policy.rights(&other, TransportKind::Unix, &owner).unwrap();
        assert!(unix.list && unix.watch && !unix.stats);
        assert!(any_matches(&unix.register, &name("x")));
        assert_eq!(policy.rights(&other, TransportKind::Tcp, &owner), None);
        assert_eq!(
            policy.rights(&owner, TransportKind::Tcp, &owner),
            Some(Permissions::all())
        );
    }

    #[test]
    fn the_brokers_own_key_or_a_key_named_twice_is_refused() {
        let owner = Keypair::from_seed([1; 32]).public();
        let other = Keypair::from_seed([2; 32]).public();
        let policy = |keys: &[PublicKey]| {
            let text: String = keys
                .iter()
                .map(|k| format!("[[key]]\nid = \"{k}\"\nlist = true\n"))
                .collect();
            Policy::from_toml(&text).unwrap()
        };
        assert!(policy(&[other]).check(&owner).is_ok());
        let own = policy(&[other, owner]).check(&owner).unwrap_err();
        assert!(own.to_string().contains("the broker's own key"), "{own}");
        let twice = policy(&[other, other]).check(&owner).unwrap_err();
        assert!(twice.to_string().contains("named twice"), "{twice}");
    }

    #[test]
    fn parses_toml_and_names_keys() {
        let key = Keypair::from_seed([2; 32]).public();
        let text = format!(
            r#"
            [unix]
            list = true

            [[key]]
            id = "{key}"
            register = ["indexer"]
            open = ["*"]
            stats = true
            "#
        );
        let policy = Policy::from_toml(&text).unwrap();
        assert_eq!(
            policy.unix,
            Permissions {
                list: true,
                ..Permissions::none()
            }
        );
        let owner = Keypair::from_seed([1; 32]).public();
        let rights = policy.rights(&key, TransportKind::Tcp, &owner).unwrap();
        assert!(rights.stats && !rights.list);
        assert!(any_matches(&rights.register, &name("indexer")));
        assert!(!any_matches(&rights.register, &name("indexer2")));

        assert!(Policy::from_toml("[[key]]\nid = \"@nope\"").is_err());
        assert!(Policy::from_toml("[unix]\nfly = true").is_err());
    }
}
