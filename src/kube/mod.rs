//! Kubernetes mode: the `Rollout` resource and how users describe rollouts on a cluster.

pub mod annotations;
pub mod crd;
pub mod leader;
pub mod plan;

pub use crd::{Rollout, RolloutResourceSpec, RolloutResourceStatus};
