//! Open file and directory handles, numbered for the kernel.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use super::error::{Error, Result};

#[derive(Debug)]
pub struct HandleTable<T> {
    next: AtomicU64,
    map: DashMap<u64, Arc<T>>,
}

impl<T> Default for HandleTable<T> {
    fn default() -> Self {
        HandleTable {
            next: AtomicU64::new(1),
            map: DashMap::new(),
        }
    }
}

impl<T> HandleTable<T> {
    pub fn insert(&self, value: T) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.map.insert(fh, Arc::new(value));
        fh
    }

    pub fn get(&self, fh: u64) -> Result<Arc<T>> {
        self.map
            .get(&fh)
            .map(|v| v.clone())
            .ok_or(Error::BadHandle(fh))
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn remove(&self, fh: u64) {
        self.map.remove(&fh);
    }
}
