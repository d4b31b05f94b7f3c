//! Kubernetes mode: the `Rollout` resource and how users describe rollouts on a cluster.

pub mod adopt;
pub mod annotations;
pub mod commands;
pub mod controller;
pub mod crd;
pub mod fleet;
pub mod leader;
pub mod plan;
pub mod process;
pub mod proxy;
pub mod routes;
pub mod workloads;

pub use crd::{Rollout, RolloutResourceSpec, RolloutResourceStatus};
