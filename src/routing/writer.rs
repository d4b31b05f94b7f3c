//! The one writer of the route table and its many readers, over a single `ArcSwap`.

use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};

use super::{Route, RouteTable};
use crate::units::{FULL_WEIGHT, WeightBps, format_percent};

/// A weight change that cannot be applied; the running table stays as it was.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RouteError {
    #[error("no route named `{0}`")]
    UnknownRoute(String),
    #[error("route `{route}` has no version named `{version}`")]
    UnknownVersion { route: String, version: String },
    #[error("route `{route}`: weights add up to {total}%, they must add up to 100%")]
    WeightsDoNotAddUp { route: String, total: String },
    #[error("route `{route}`: version `{version}` has no endpoints and cannot take weight")]
    NoEndpoints { route: String, version: String },
}

/// Read side: what the proxy holds. Cheap to clone.
#[derive(Clone)]
pub struct RouteReader(Arc<ArcSwap<RouteTable>>);

impl RouteReader {
    /// The current table. Hold the guard briefly: never across an `.await`.
    #[inline]
    pub fn load(&self) -> Guard<Arc<RouteTable>> {
        self.0.load()
    }

    pub fn load_full(&self) -> Arc<RouteTable> {
        self.0.load_full()
    }
}

/// Write side: config reload now, the rollout engine later. Updates are serialized, so a
/// read-modify-write (like a weight change) never loses a concurrent one.
pub struct RouteWriter {
    table: Arc<ArcSwap<RouteTable>>,
    lock: Mutex<()>,
}

impl RouteWriter {
    pub fn new(table: RouteTable) -> (RouteWriter, RouteReader) {
        let table = Arc::new(ArcSwap::from_pointee(table));
        (
            RouteWriter {
                table: table.clone(),
                lock: Mutex::new(()),
            },
            RouteReader(table),
        )
    }

    /// Replaces the whole table. Requests in flight finish on the table they started with.
    pub fn publish(&self, table: RouteTable) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.table.store(Arc::new(table));
    }

    pub fn current(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Sets the weights of one route's versions (basis points, all versions named, adding up to
    /// 10000) and publishes the new table; on error nothing changes.
    pub fn set_weights(
        &self,
        route: &str,
        weights: &[(&str, WeightBps)],
    ) -> Result<(), RouteError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.table.load_full();
        let idx = current
            .routes
            .iter()
            .position(|r| &*r.name == route)
            .ok_or_else(|| RouteError::UnknownRoute(route.to_string()))?;
        let old = &current.routes[idx];
        let mut versions = old.versions.clone();
        for v in &mut versions {
            v.weight = 0;
        }
        for &(name, w) in weights {
            let v = versions
                .iter_mut()
                .find(|v| &*v.name == name)
                .ok_or_else(|| RouteError::UnknownVersion {
                    route: route.to_string(),
                    version: name.to_string(),
                })?;
            if w > 0 && v.endpoints.is_empty() {
                return Err(RouteError::NoEndpoints {
                    route: route.to_string(),
                    version: name.to_string(),
                });
            }
            v.weight = w;
        }
        let total: u32 = versions.iter().map(|v| u32::from(v.weight)).sum();
        if total != u32::from(FULL_WEIGHT) {
            return Err(RouteError::WeightsDoNotAddUp {
                route: route.to_string(),
                total: format_percent(total),
            });
        }
        let new_route = Route::new(
            old.name.clone(),
            old.matcher.clone(),
            versions,
            old.sticky.clone(),
            old.version_header.clone(),
            old.response_timeout,
        );
        let mut routes = current.routes.clone();
        routes[idx] = Arc::new(new_route);
        self.table.store(Arc::new(RouteTable {
            routes,
            passive: current.passive,
        }));
        Ok(())
    }
}
