//! What the benchmarks measure, in pairs: plugboard next to the bare
//! primitives it is built from, on the same inputs. Both `benches/` (criterion)
//! and the `ratios` program use these, so they measure the same thing.

pub mod boxstream;
pub mod broker;
pub mod floor;
pub mod handshake;
pub mod measure;
pub mod net;
pub mod procs;
pub mod relay;
