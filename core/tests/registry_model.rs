//! The registry against a plain model: names → owner and line, as a HashMap
//! and VecDeques, driven by random registers, departures and queueing.

use std::collections::{HashMap, VecDeque};

use plugboard_core::broker::registry::{Holder, RegisterError, Registered, Registry};
use plugboard_core::control::{Name, Presence, TransportKind};
use plugboard_core::{Instant, Keypair, PublicKey};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Register { conn: u64, name: u8, wait: bool },
    Leave { conn: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..12u64, 0..4u8, any::<bool>()).prop_map(|(conn, name, wait)| Op::Register { conn, name, wait }),
        2 => (0..12u64).prop_map(|conn| Op::Leave { conn }),
    ]
}

fn key(conn: u64) -> PublicKey {
    Keypair::from_seed([conn as u8 + 1; 32]).public()
}

fn name(n: u8) -> Name {
    Name::new(&format!("name-{n}")).unwrap()
}

#[derive(Default)]
struct Model {
    /// name → owner, then the line in order.
    names: HashMap<Name, VecDeque<u64>>,
    seq: u64,
}

impl Model {
    fn holds(&self, conn: u64) -> bool {
        self.names.values().any(|line| line.contains(&conn))
    }
}

proptest! {
    #[test]
    fn registry_matches_the_model(ops in proptest::collection::vec(op(), 1..200)) {
        let mut registry = Registry::default();
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Register { conn, name: n, wait } => {
                    let holder = Holder { conn, key: key(conn), transport: TransportKind::Unix, since: Instant::ZERO };
                    let result = registry.register(holder, &name(n), wait);
                    let expected = if model.holds(conn) {
                        Err(RegisterError::AlreadyRegistered)
                    } else {
                        match model.names.get_mut(&name(n)) {
                            Some(line) if wait => { line.push_back(conn); Ok(None) }
                            Some(_) => Err(RegisterError::Taken),
                            None => {
                                model.names.insert(name(n), VecDeque::from([conn]));
                                model.seq += 1;
                                Ok(Some(conn))
                            }
                        }
                    };
                    match (result, expected) {
                        (Ok(Registered::Owner(Presence::Up(member))), Ok(Some(owner))) => {
                            prop_assert_eq!(member.key, key(owner));
                            prop_assert_eq!(member.name, name(n));
                        }
                        (Ok(Registered::Queued), Ok(None)) => {}
                        (Err(got), Err(want)) => prop_assert_eq!(got, want),
                        (got, want) => prop_assert!(false, "registry {got:?}, model {want:?}"),
                    }
                }
                Op::Leave { conn } => {
                    let departure = registry.remove(conn);
                    let owned = model.names.iter().find(|(_, line)| line.front() == Some(&conn)).map(|(n, _)| n.clone());
                    match owned {
                        Some(n) => {
                            model.seq += 1;
                            let line = model.names.get_mut(&n).unwrap();
                            line.pop_front();
                            match line.front().copied() {
                                Some(next) => {
                                    prop_assert_eq!(departure.new_owner, Some(next));
                                    let is_change = matches!(&departure.presence,
                                        Some(Presence::OwnerChanged { name: changed, old_key, new })
                                            if *changed == n && *old_key == key(conn) && new.key == key(next));
                                    prop_assert!(is_change, "{:?}", departure.presence);
                                }
                                None => {
                                    model.names.remove(&n);
                                    prop_assert_eq!(departure.new_owner, None);
                                    prop_assert_eq!(departure.presence, Some(Presence::Down { name: n, key: key(conn) }));
                                }
                            }
                        }
                        None => {
                            for line in model.names.values_mut() {
                                line.retain(|c| *c != conn);
                            }
                            prop_assert_eq!(departure.presence, None);
                            prop_assert_eq!(departure.new_owner, None);
                        }
                    }
                }
            }
            // After every step: the same owners, the same names per connection, the same count.
            prop_assert_eq!(registry.seq(), model.seq);
            prop_assert_eq!(registry.len(), model.names.len());
            for (n, line) in &model.names {
                prop_assert_eq!(registry.owner(n).map(|h| h.conn), line.front().copied());
            }
            for conn in 0..12 {
                let owns = model.names.iter().find(|(_, l)| l.front() == Some(&conn)).map(|(n, _)| n);
                prop_assert_eq!(registry.name_of(conn), owns);
                prop_assert_eq!(registry.is_registered(conn), model.holds(conn));
            }
        }
    }
}
