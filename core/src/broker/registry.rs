//! Who owns which name, who waits in line for it, and the numbered history
//! of changes that watchers follow.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::control::{Member, Name, Presence, TransportKind};
use crate::keys::PublicKey;
use crate::time::Instant;

use super::ConnId;

/// One connection as the registry knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// The connection.
    pub conn: ConnId,
    /// Its key.
    pub key: PublicKey,
    /// How it connected.
    pub transport: TransportKind,
    /// When it completed its hello.
    pub since: Instant,
}

struct Entry {
    owner: Holder,
    line: VecDeque<Holder>,
}

/// What [`Registry::register`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// The name is the connection's now; watchers learn `Presence::Up`.
    Owner(Presence),
    /// The connection waits in line behind the owner.
    Queued,
}

/// Why [`Registry::register`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// The name has an owner and the request did not ask to wait.
    Taken,
    /// The connection already owns or waits for a name.
    AlreadyRegistered,
}

/// What a departure changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    /// The name the connection owned, and what happened to it. `None` if it
    /// only waited in line (nobody is told).
    pub presence: Option<Presence>,
    /// The connection that took the name over, to be told so.
    pub new_owner: Option<ConnId>,
}

/// Names → owners, with lines of standbys, and a sequence number that
/// counts every change.
#[derive(Default)]
pub struct Registry {
    names: BTreeMap<Name, Entry>,
    by_conn: HashMap<ConnId, Name>,
    seq: u64,
}

impl Registry {
    /// The number of the latest change.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Takes `name` for `holder`, or queues it with `wait`.
    pub fn register(
        &mut self,
        holder: Holder,
        name: &Name,
        wait: bool,
    ) -> Result<Registered, RegisterError> {
        if self.by_conn.contains_key(&holder.conn) {
            return Err(RegisterError::AlreadyRegistered);
        }
        match self.names.get_mut(name) {
            Some(entry) if wait => {
                entry.line.push_back(holder);
                self.by_conn.insert(holder.conn, name.clone());
                Ok(Registered::Queued)
            }
            Some(_) => Err(RegisterError::Taken),
            None => {
                self.names.insert(
                    name.clone(),
                    Entry {
                        owner: holder,
                        line: VecDeque::new(),
                    },
                );
                self.by_conn.insert(holder.conn, name.clone());
                self.seq += 1;
                Ok(Registered::Owner(Presence::Up(member(name, &holder))))
            }
        }
    }

    /// What [`Registry::register`] would refuse, without changing anything.
    pub fn check(&self, conn: ConnId, name: &Name, wait: bool) -> Result<(), RegisterError> {
        if self.by_conn.contains_key(&conn) {
            return Err(RegisterError::AlreadyRegistered);
        }
        match self.names.contains_key(name) && !wait {
            true => Err(RegisterError::Taken),
            false => Ok(()),
        }
    }

    /// The connection is gone: frees or hands over its name, or leaves its line.
    pub fn remove(&mut self, conn: ConnId) -> Departure {
        let nothing = Departure {
            presence: None,
            new_owner: None,
        };
        let Some(name) = self.by_conn.remove(&conn) else {
            return nothing;
        };
        let entry = self.names.get_mut(&name).expect("by_conn and names agree");
        if entry.owner.conn != conn {
            entry.line.retain(|h| h.conn != conn);
            return nothing;
        }
        let old_key = entry.owner.key;
        self.seq += 1;
        match entry.line.pop_front() {
            Some(next) => {
                entry.owner = next;
                Departure {
                    presence: Some(Presence::OwnerChanged {
                        name: name.clone(),
                        old_key,
                        new: member(&name, &next),
                    }),
                    new_owner: Some(next.conn),
                }
            }
            None => {
                self.names.remove(&name);
                Departure {
                    presence: Some(Presence::Down { name, key: old_key }),
                    new_owner: None,
                }
            }
        }
    }

    /// Who owns `name`.
    pub fn owner(&self, name: &Name) -> Option<&Holder> {
        self.names.get(name).map(|e| &e.owner)
    }

    /// The name `conn` owns (not one it waits for).
    pub fn name_of(&self, conn: ConnId) -> Option<&Name> {
        self.by_conn
            .get(&conn)
            .filter(|name| self.names[*name].owner.conn == conn)
    }

    /// Whether `conn` owns or waits for a name.
    pub fn is_registered(&self, conn: ConnId) -> bool {
        self.by_conn.contains_key(&conn)
    }

    /// Every owned name with its owner, ordered by name.
    pub fn members(&self) -> impl Iterator<Item = (&Name, &Holder)> {
        self.names.iter().map(|(name, entry)| (name, &entry.owner))
    }

    /// Owned names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// No names at all (nor anyone waiting).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.by_conn.is_empty()
    }
}

fn member(name: &Name, holder: &Holder) -> Member {
    Member {
        name: name.clone(),
        key: holder.key,
        transport: holder.transport,
        connected_ms: 0,
    }
}
