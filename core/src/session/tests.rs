//! The session's own bookkeeping, against a real broker in memory.

use crate::control::{Name, TransportKind};
use crate::keys::Keypair;
use crate::session::SessionEvent;
use crate::sim::{Chaos, Net};

#[test]
fn answers_in_many_pages_arrive_whole() {
    let mut net = Net::new(
        20,
        Chaos {
            split_and_delay: true,
        },
        |c| {
            c.limits.max_connections_per_key = 1000;
            c.limits.max_handshaking = 1000;
        },
    );
    let key = Keypair::from_seed([4; 32]);
    let plugins: Vec<usize> = (0..300)
        .map(|_| net.connect(key.clone(), TransportKind::Unix).unwrap())
        .collect();
    net.run();
    let now = net.now;
    for (i, id) in plugins.iter().enumerate() {
        let name = Name::new(&format!("{i:0>250}")).unwrap();
        net.node(*id)
            .session
            .register(now, name, false, None)
            .unwrap();
    }
    net.run();
    let asker = plugins[0];
    net.events(asker);
    net.node(asker).session.list(now).unwrap();
    net.node(asker).session.watch(now).unwrap();
    net.run();
    let events = net.events(asker);
    let sizes: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Members { members, .. } | SessionEvent::Watching { members, .. } => {
                Some(members.len())
            }
            _ => None,
        })
        .collect();
    // 300 members of ~300 bytes do not fit one 64 KiB message.
    assert_eq!(sizes, vec![300, 300], "{events:?}");
}
