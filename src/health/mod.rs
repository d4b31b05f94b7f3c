//! Endpoint health: per-endpoint atomics, passive outlier ejection, active probes, least-loaded pick.

mod active;
mod endpoint;
mod pick;

pub use active::{ActiveChecks, ProbeSettings, ProbeTarget};
pub use endpoint::{Endpoint, EndpointRegistry, InFlight, PassivePolicy};
pub use pick::pick_endpoint;
