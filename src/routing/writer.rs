//! The route table's writer (the publisher's) and its many readers, over a single `ArcSwap`.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use super::RouteTable;

/// Weights that cannot be applied; the running table stays as it was.
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

/// Write side, held by the publisher alone.
pub struct RouteWriter {
    table: Arc<ArcSwap<RouteTable>>,
}

impl RouteWriter {
    pub fn new(table: RouteTable) -> (RouteWriter, RouteReader) {
        let table = Arc::new(ArcSwap::from_pointee(table));
        (
            RouteWriter {
                table: table.clone(),
            },
            RouteReader(table),
        )
    }

    /// Replaces the whole table. Requests in flight finish on the table they started with.
    pub fn publish(&self, table: RouteTable) {
        self.table.store(Arc::new(table));
    }

    pub fn current(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }
}
