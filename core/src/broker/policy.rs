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
//! # Other users' processes, on a unix socket wider than 0600: by uid, or
//! # by (primary) group. Without an entry, only the broker's own user is
//! # admitted on a unix socket, with the [unix] rights above.
//! [[user]]
//! uid = 1001
//! open = ["indexer"]
//!
//! [[user]]
//! gid = 100
//! list = true
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
//! monitor = true
//! ```
//!
//! Patterns are names (or, for `direct`, `tcp:HOST:PORT` addresses) with
//! `*` standing for any run of characters. The broker's own key may do
//! everything.

use serde::{Deserialize, Serialize};

use crate::control::Name;
use crate::keys::PublicKey;

use super::door::{Cred, Peer};

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
    /// May watch what the broker does (`plugboard monitor`): every open,
    /// accept, close, refusal and disconnect, with the keys and names.
    #[serde(default)]
    pub monitor: bool,
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
            monitor: true,
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
            monitor: false,
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
    /// May watch what the broker does (`plugboard monitor`): every open,
    /// accept, close, refusal and disconnect, with the keys and names.
    #[serde(default)]
    pub monitor: bool,
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
            monitor: self.monitor,
        }
    }
}

/// The broker's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Rights of the broker's own user's processes on a unix socket (keys
    /// named in `key` aside).
    #[serde(default = "unix_default")]
    pub unix: Permissions,
    /// Other users on a unix socket, by uid or group.
    #[serde(default, rename = "user")]
    pub users: Vec<UserGrant>,
    /// Named keys.
    #[serde(default, rename = "key")]
    pub keys: Vec<KeyGrant>,
}

/// Rights of another user's processes on a unix socket: those of the
/// processes whose uid is `uid`, or whose primary group is `gid` (one of
/// the two), with the rest of the entry a [`Permissions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserGrant {
    /// Whom it names.
    pub who: User,
    /// What they may do.
    pub rights: Permissions,
}

/// A user, or a group of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum User {
    /// `uid = N`.
    Uid(u32),
    /// `gid = N`.
    Gid(u32),
}

impl User {
    fn matches(&self, cred: &Cred) -> bool {
        match *self {
            User::Uid(uid) => cred.uid == uid,
            User::Gid(gid) => cred.gid == gid,
        }
    }
}

impl<'de> Deserialize<'de> for UserGrant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut table = toml::Table::deserialize(d)?;
        let mut id = |field: &str| -> Result<Option<u32>, D::Error> {
            table
                .remove(field)
                .map(|v| v.try_into::<u32>().map_err(D::Error::custom))
                .transpose()
        };
        let who = match (id("uid")?, id("gid")?) {
            (Some(uid), None) => User::Uid(uid),
            (None, Some(gid)) => User::Gid(gid),
            _ => return Err(D::Error::custom("a [[user]] names one `uid` or one `gid`")),
        };
        let rights =
            Permissions::deserialize(toml::Value::Table(table)).map_err(D::Error::custom)?;
        Ok(UserGrant { who, rights })
    }
}

impl Serialize for UserGrant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let mut table = toml::Table::try_from(&self.rights).map_err(S::Error::custom)?;
        let (field, id) = match self.who {
            User::Uid(uid) => ("uid", uid),
            User::Gid(gid) => ("gid", gid),
        };
        table.insert(field.into(), toml::Value::Integer(i64::from(id)));
        table.serialize(s)
    }
}

fn unix_default() -> Permissions {
    Permissions {
        stats: false,
        monitor: false,
        ..Permissions::all()
    }
}

impl Default for Policy {
    /// Unix peers may do everything but `stats`; no TCP peer is admitted.
    fn default() -> Self {
        Policy {
            unix: unix_default(),
            users: Vec::new(),
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
        for (i, grant) in self.users.iter().enumerate() {
            if self.users[..i].iter().any(|g| g.who == grant.who) {
                return Err(PolicyError(format!(
                    "[[user]] {:?} is named twice; give it one entry",
                    grant.who
                )));
            }
        }
        Ok(())
    }

    /// The rights of `key` from `peer`; `None` means it is not admitted.
    /// `owner` is the broker's own key, `owner_uid` its user (`None` when
    /// the broker cannot tell users apart: every unix peer is its user).
    pub fn rights(
        &self,
        key: &PublicKey,
        peer: &Peer,
        owner: &PublicKey,
        owner_uid: Option<u32>,
    ) -> Option<Permissions> {
        if key == owner {
            return Some(Permissions::all());
        }
        if let Some(grant) = self.keys.iter().find(|g| &g.id == key) {
            return Some(grant.permissions());
        }
        match (peer, owner_uid) {
            (Peer::Tcp(_), _) => None,
            (Peer::Unix(_), None) => Some(self.unix.clone()),
            (Peer::Unix(Some(cred)), Some(uid)) if cred.uid == uid => Some(self.unix.clone()),
            (Peer::Unix(Some(cred)), Some(_)) => self
                .users
                .iter()
                .find(|g| g.who.matches(cred))
                .map(|g| g.rights.clone()),
            // The OS did not say who it is: not the broker's user for sure.
            (Peer::Unix(None), Some(_)) => None,
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
        let unix = policy
            .rights(&other, &local(1000), &owner, Some(1000))
            .unwrap();
        assert!(unix.list && unix.watch && !unix.stats);
        assert!(any_matches(&unix.register, &name("x")));
        assert_eq!(policy.rights(&other, &tcp(), &owner, Some(1000)), None);
        assert_eq!(
            policy.rights(&owner, &tcp(), &owner, Some(1000)),
            Some(Permissions::all())
        );
        // Another user, or one the OS did not name, is not the broker's.
        assert_eq!(
            policy.rights(&other, &local(1001), &owner, Some(1000)),
            None
        );
        assert_eq!(
            policy.rights(&other, &Peer::Unix(None), &owner, Some(1000)),
            None
        );
        // A broker that cannot tell users apart takes every local peer for its own.
        assert!(policy.rights(&other, &local(1001), &owner, None).is_some());
    }

    fn local(uid: u32) -> Peer {
        Peer::Unix(Some(Cred {
            uid,
            gid: 100 + uid,
        }))
    }

    fn tcp() -> Peer {
        Peer::Tcp("192.0.2.1".parse().unwrap())
    }

    #[test]
    fn other_users_get_what_their_uid_or_group_is_granted() {
        let owner = Keypair::from_seed([1; 32]).public();
        let other = Keypair::from_seed([2; 32]).public();
        let policy = Policy::from_toml(
            "[[user]]\nuid = 1001\nopen = [\"indexer\"]\n\n[[user]]\ngid = 1102\nlist = true\n",
        )
        .unwrap();
        policy.check(&owner).unwrap();
        let by_uid = policy
            .rights(&other, &local(1001), &owner, Some(1000))
            .unwrap();
        assert!(any_matches(&by_uid.open, &name("indexer")) && !by_uid.list);
        let by_group = policy
            .rights(&other, &local(1002), &owner, Some(1000))
            .unwrap();
        assert!(by_group.list && by_group.open.is_empty());
        assert_eq!(
            policy.rights(&other, &local(1003), &owner, Some(1000)),
            None
        );
        // Written back, it reads the same.
        let again = Policy::from_toml(&toml::to_string(&policy).unwrap()).unwrap();
        assert_eq!(again, policy);
        // Entries that name nobody, both, or one twice, or say too much.
        for bad in [
            "[[user]]\nlist = true\n",
            "[[user]]\nuid = 1\ngid = 1\n",
            "[[user]]\nuid = -1\n",
            "[[user]]\nuid = 1\nfly = true\n",
        ] {
            assert!(Policy::from_toml(bad).is_err(), "{bad}");
        }
        let twice = Policy::from_toml("[[user]]\nuid = 7\n[[user]]\nuid = 7\n").unwrap();
        assert!(twice.check(&owner).is_err());
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
        let rights = policy.rights(&key, &tcp(), &owner, Some(1000)).unwrap();
        assert!(rights.stats && !rights.list);
        assert!(any_matches(&rights.register, &name("indexer")));
        assert!(!any_matches(&rights.register, &name("indexer2")));

        assert!(Policy::from_toml("[[key]]\nid = \"@nope\"").is_err());
        assert!(Policy::from_toml("[unix]\nfly = true").is_err());
    }
}
