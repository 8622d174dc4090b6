//! Running instances inside the sandbox of `yun-sandbox`: what an instance may see, the
//! uid it runs as, and the gateway through which it reaches Yun. When Yun cannot build
//! the sandbox (not root, no namespaces) instances run without it and `yun doctor` says
//! what is missing.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use yun_types::{EnvId, FunctionName};

/// The function an instance has loaded, once it has: set at load, read by Yun's gateway
/// to tell which function a request from the instance comes from.
pub type InstanceBinding = Arc<OnceLock<(EnvId, FunctionName)>>;

/// Serves Yun's SDK surface to one instance on a Unix socket of its own.
pub trait Gateway: Send + Sync {
    /// Opens the socket for instance `id`; it closes when the returned value drops.
    fn open(&self, id: u64, binding: InstanceBinding) -> std::io::Result<GatewaySocket>;
    /// The port the instance dials on its own loopback (Yun's port, so URLs agree).
    fn port(&self) -> u16;
}

pub struct GatewaySocket {
    pub path: PathBuf,
    /// Stops serving and removes the socket when dropped.
    pub guard: Box<dyn Send + Sync>,
}

/// How sandboxed instances are built; fixed for the life of the runtime.
pub struct Isolation {
    /// The `yun` binary, started as `yun sandbox-init`.
    pub init_exe: PathBuf,
    /// The node binary, resolved (the init execs it by path, with no `PATH` search).
    pub node: PathBuf,
    /// An empty folder the init mounts each instance's root over (in its own namespace).
    pub root: PathBuf,
    pub functions_dir: PathBuf,
    /// Host paths every instance sees read-only: system folders, node, the bootstrap,
    /// the SDK layer.
    pub ro_binds: Vec<PathBuf>,
    pub tmp_mb: u32,
    pub shm_mb: u32,
    pub uids: Arc<UidPool>,
    pub gateway: Option<Arc<dyn Gateway>>,
    /// `slirp4netns`, which gives an instance's network namespace the internet (and
    /// not the host's loopback); without it, `internet` means Yun only.
    pub slirp: Option<PathBuf>,
}

impl std::fmt::Debug for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Isolation")
            .field("root", &self.root)
            .field("ro_binds", &self.ro_binds)
            .field("tmp_mb", &self.tmp_mb)
            .field("uids", &self.uids.range)
            .field("gateway", &self.gateway.is_some())
            .field("slirp", &self.slirp)
            .finish()
    }
}

/// Uids for instances: each loaded instance runs as one no other live instance has, so
/// that a mistake in one layer of the sandbox still leaves instances apart.
#[derive(Debug)]
pub struct UidPool {
    range: RangeInclusive<u32>,
    state: Mutex<(u32, BTreeSet<u32>)>,
}

impl UidPool {
    pub fn new(range: RangeInclusive<u32>) -> Arc<Self> {
        let start = *range.start();
        Arc::new(Self {
            range,
            state: Mutex::new((start, BTreeSet::new())),
        })
    }

    /// The next free uid, round robin (a uid is reused as late as possible); `None`
    /// when every uid of the range is in use.
    pub fn lease(self: &Arc<Self>) -> Option<UidLease> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (first, last) = (*self.range.start(), *self.range.end());
        let size = u64::from(last - first) + 1;
        for _ in 0..size.min(1 << 20) {
            let uid = state.0;
            state.0 = if uid >= last { first } else { uid + 1 };
            if state.1.insert(uid) {
                return Some(UidLease {
                    pool: self.clone(),
                    uid,
                });
            }
        }
        None
    }
}

/// A uid held by one instance until it is gone.
#[derive(Debug)]
pub struct UidLease {
    pool: Arc<UidPool>,
    pub uid: u32,
}

impl Drop for UidLease {
    fn drop(&mut self) {
        if let Ok(mut state) = self.pool.state.lock() {
            state.1.remove(&self.uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_unique_while_held_and_reused_after() {
        let pool = UidPool::new(10..=12);
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        let c = pool.lease().unwrap();
        assert_eq!((a.uid, b.uid, c.uid), (10, 11, 12));
        assert!(pool.lease().is_none());
        drop(b);
        assert_eq!(pool.lease().unwrap().uid, 11);
    }
}
