//! Kubernetes mode: the `Rollout` resource and how users describe rollouts on a cluster.

pub mod annotations;
pub mod commands;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod plan;
pub mod workloads;

pub use crd::{Rollout, RolloutResourceSpec, RolloutResourceStatus};
