//! Deterministic simulation: a broker and many plugins over in-memory links,
//! driven by one seed.

mod net;

pub use net::{Chaos, Net, Node, NodeId};
