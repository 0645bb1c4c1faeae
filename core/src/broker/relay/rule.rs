//! The credit rule: how much of the credit a receiver granted passes to
//! the sender, and how much growth that direction keeps reserved. One pure
//! function, [`settle`], decides it; the port applies it on its own when
//! the decision needs none of the receiver's budget ([`local`]), and asks
//! the hub otherwise, which applies the same function with the budget it
//! has.

/// One direction's books at its receiving end, as the rule reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::broker) struct Books {
    /// Credit the receiver granted that is not passed on yet.
    pub held: u32,
    /// What the sender may still send plus what is queued for the receiver.
    pub in_flight: u64,
    /// Growth reserved beyond the initial window.
    pub grown: u64,
    /// The sender's FIN arrived: nothing more passes.
    pub finished: bool,
}

/// The broker's bounds on one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::broker) struct Bounds {
    pub initial_window: u64,
    pub max_window: u64,
}

/// What the rule decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::broker) struct Settled {
    /// Credit passed to the sender now.
    pub pass: u64,
    /// Credit still held: none once the sender finished.
    pub held: u32,
    /// The growth the direction keeps reserved from now on.
    pub grown: u64,
    /// Credit was held back for want of budget, not by `max_window`.
    pub starved: bool,
    /// The end is to be looked at again as its queue drains: it still
    /// holds credit, or has growth to give back after the sender's FIN.
    pub waiting: bool,
}

/// Settles `books` with `free` bytes of the receiver's growth budget
/// (within its share for the sender) still unreserved.
///
/// What the sender may send plus what is queued stays within `max_window`,
/// and beyond the initial window within what is reserved. The reservation
/// follows the most the direction had out, not each pass, so a steady
/// transfer keeps it; it is given back when the direction drains to the
/// initial window. After the sender's FIN it shrinks to what is queued
/// beyond the initial window.
pub(in crate::broker) fn settle(books: Books, bounds: Bounds, free: u64) -> Settled {
    let Books {
        held,
        in_flight,
        grown,
        finished,
    } = books;
    let ceiling = bounds
        .max_window
        .min(bounds.initial_window + grown.saturating_add(free));
    let pass = match finished {
        true => 0,
        false => u64::from(held).min(ceiling.saturating_sub(in_flight)),
    };
    let needed = (in_flight + pass).saturating_sub(bounds.initial_window);
    let grown = match finished || needed == 0 {
        true => needed,
        false => needed.max(grown),
    };
    let left = match finished {
        true => 0,
        false => u64::from(held) - pass,
    };
    Settled {
        pass,
        held: left as u32,
        grown,
        starved: left > 0 && ceiling < bounds.max_window,
        waiting: left > 0 || (finished && grown > 0),
    }
}

/// What the port may decide without the hub (its `starved` is not for the
/// port: only the hub, which knows the budget, marks a direction starved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::broker) enum Local {
    /// Settled within the reservation: nothing reserved or given back.
    Settled(Settled),
    /// The decision reserves or gives back growth: the hub's.
    Hub,
}

/// Settles `books` with no budget beyond what is reserved, as the port
/// does on its own; `starved` says the hub found no budget for this
/// direction since growth was last given back, so it is not asked again
/// for credit held back.
///
/// After the sender's FIN, growth goes back to the hub only once the queue
/// is within the initial window (not at every chunk written); meanwhile
/// the port keeps the reservation the hub left it.
pub(in crate::broker) fn local(books: Books, bounds: Bounds, starved: bool) -> Local {
    let settled = settle(books, bounds, 0);
    // With no budget the reservation can only shrink (`needed` is within
    // the ceiling, which is within what is reserved).
    debug_assert!(settled.grown <= books.grown);
    let gives_back = match books.finished {
        true => settled.grown == 0 && books.grown > 0,
        false => settled.grown < books.grown,
    };
    match gives_back || (settled.starved && !starved) {
        true => Local::Hub,
        false => Local::Settled(Settled {
            grown: books.grown,
            ..settled
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BOUNDS: Bounds = Bounds {
        initial_window: 1000,
        max_window: 8000,
    };

    fn books() -> impl Strategy<Value = Books> {
        (0u32..10_000, 0u64..9000, 0u64..7000, any::<bool>()).prop_map(
            |(held, in_flight, grown, finished)| Books {
                held,
                in_flight,
                grown,
                finished,
            },
        )
    }

    /// Books the rule can reach: what is out is within what is reserved,
    /// and that within `max_window`.
    fn reachable(books: Books) -> bool {
        books.in_flight <= BOUNDS.initial_window + books.grown
            && BOUNDS.initial_window + books.grown <= BOUNDS.max_window
    }

    /// The books once `settled` is applied.
    fn after(books: Books, settled: Settled) -> Books {
        Books {
            held: settled.held,
            in_flight: books.in_flight + settled.pass,
            grown: settled.grown,
            finished: books.finished,
        }
    }

    proptest! {
        /// What the port settles on its own, the hub would settle the same
        /// way with any budget (unless the hub found none this epoch).
        #[test]
        fn the_port_decides_as_the_hub_would(books in books(), free in 0u64..10_000) {
            prop_assume!(reachable(books));
            if let Local::Settled(local) = local(books, BOUNDS, false) {
                let hub = settle(books, BOUNDS, free);
                prop_assert_eq!((local.pass, local.held), (hub.pass, hub.held));
                prop_assert_eq!(
                    local.waiting,
                    local.held > 0 || (books.finished && books.grown > 0)
                );
                // The hub would shrink a finished direction's reservation
                // as its queue drains; the port keeps it until drained.
                if !books.finished {
                    prop_assert_eq!(local.grown, hub.grown);
                }
            }
        }

        /// Right after the hub decided, the port does not ask it again.
        #[test]
        fn the_port_never_escalates_right_after_the_hub(
            books in books(),
            free in 0u64..10_000,
        ) {
            prop_assume!(reachable(books));
            let hub = settle(books, BOUNDS, free);
            let after = after(books, hub);
            prop_assert!(reachable(after), "{after:?}");
            match local(after, BOUNDS, hub.starved) {
                Local::Settled(again) => prop_assert_eq!(again.pass, 0),
                Local::Hub => prop_assert!(false, "escalated after {hub:?}: {after:?}"),
            }
        }

        /// The bound: what is out stays within `max_window` and within
        /// the initial window plus what is reserved, and growth is taken
        /// only from the budget.
        #[test]
        fn nothing_passes_beyond_the_reservation(books in books(), free in 0u64..10_000) {
            prop_assume!(reachable(books));
            let hub = settle(books, BOUNDS, free);
            let out = books.in_flight + hub.pass;
            prop_assert!(out <= BOUNDS.max_window);
            prop_assert!(out <= BOUNDS.initial_window + hub.grown);
            prop_assert!(hub.grown <= books.grown + free);
            prop_assert_eq!(hub.pass + u64::from(hub.held), u64::from(books.held) * u64::from(!books.finished));
        }
    }

    #[test]
    fn a_steady_transfer_keeps_its_reservation() {
        // 3000 reserved, 2500 out: 500 granted passes on the port alone.
        let books = Books {
            held: 500,
            in_flight: 2500,
            grown: 2000,
            finished: false,
        };
        let Local::Settled(settled) = local(books, BOUNDS, false) else {
            panic!("within the reservation");
        };
        assert_eq!((settled.pass, settled.grown), (500, 2000));
    }

    #[test]
    fn a_drained_direction_gives_its_growth_back() {
        let books = Books {
            held: 0,
            in_flight: 900,
            grown: 2000,
            finished: false,
        };
        assert_eq!(local(books, BOUNDS, false), Local::Hub);
        assert_eq!(settle(books, BOUNDS, 0).grown, 0);
    }

    #[test]
    fn a_starved_direction_waits_for_the_epoch() {
        let books = Books {
            held: 700,
            in_flight: 1000,
            grown: 0,
            finished: false,
        };
        assert_eq!(local(books, BOUNDS, false), Local::Hub);
        let hub = settle(books, BOUNDS, 0);
        assert!(hub.starved && hub.waiting && hub.pass == 0);
        assert!(matches!(local(books, BOUNDS, true), Local::Settled(s) if s.pass == 0));
    }

    #[test]
    fn a_finished_direction_keeps_growth_until_its_queue_is_within_the_window() {
        let mut books = Books {
            held: 0,
            in_flight: 3000,
            grown: 2500,
            finished: true,
        };
        // At the FIN the hub shrinks it to what is queued beyond the window.
        assert_eq!(settle(books, BOUNDS, 0).grown, 2000);
        assert!(matches!(local(books, BOUNDS, false), Local::Settled(s) if s.grown == 2500));
        books.in_flight = 1000;
        assert_eq!(local(books, BOUNDS, false), Local::Hub);
    }
}
