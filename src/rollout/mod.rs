//! Rollouts: the spec, the status record, and the pure engine that moves one from the other.

pub mod engine;
pub mod spec;
pub mod status;

pub use engine::{
    Command, CommandError, Decision, Effect, MeasurementResult, Observations, command, decide,
};
pub use spec::{RolloutSpec, Step};
pub use status::{Event, EventKind, Phase, RolloutStatus};

/// The stable version before any rollout: `stable` if given, else the first version that is
/// not the canary, else the canary itself (a route with one version has nothing to roll out).
pub fn initial_stable<'a>(
    spec: &'a RolloutSpec,
    versions: impl IntoIterator<Item = &'a str>,
) -> &'a str {
    if let Some(s) = spec.stable.as_deref() {
        return s;
    }
    versions
        .into_iter()
        .find(|v| *v != spec.canary)
        .unwrap_or(spec.canary.as_str())
}
