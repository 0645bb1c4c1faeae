//! Where a broker listens and a plugin connects: the core's [`Addr`], the
//! same for every runtime adapter.

pub use plugboard_core::addr::{Addr, BadAddr};
