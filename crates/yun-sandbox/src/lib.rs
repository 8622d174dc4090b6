//! The instance sandbox. Yun starts every Node instance through `yun sandbox-init`
//! (this crate's [`init::run`]), which runs as root only long enough to build the
//! instance's world and then holds it as PID 1:
//!
//! - new mount, PID, IPC, UTS, network and cgroup namespaces;
//! - `/` a read-only tmpfs with read-only binds of what Node needs (`/usr`, a few `/etc`
//!   files, the bootstrap, the SDK layer) at their host paths, a private size-capped
//!   `/tmp` and `/dev/shm`, a minimal `/dev`, the namespace's own `/proc`; nothing of
//!   Yun's data folder;
//! - the function's code, bound read-only at `/var/user` (SCF's path) when Yun asks over
//!   the control socket (fd 3): stem cells are started before anyone knows their
//!   function, so the code arrives at load;
//! - Node runs with no capability but `CAP_SETUID`/`CAP_SETGID` (the bootstrap uses them
//!   once, to become the instance's own uid before it loads the user's code), with
//!   `no_new_privs` and a seccomp filter ([`seccomp`]);
//! - the network namespace has only a loopback; Yun's SDK surface answers there, on
//!   Yun's port, relayed by the init to a Unix socket that Yun serves for this instance
//!   alone (so a request tells Yun which instance made it);
//! - when Node exits, the init exits, and the kernel kills whatever else runs in the PID
//!   namespace; the init dies with the process that started it.
//!
//! Why not bubblewrap: it cannot add a mount to a running sandbox, and stem cells need
//! exactly that. Why by hand rather than a container runtime: one process start per
//! instance and a few hundred lines, measured in bench/ against no sandbox.

pub mod init;
pub mod seccomp;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The variable that carries the [`Spec`] (JSON) to `yun sandbox-init`.
pub const SPEC_VAR: &str = "YUN_SANDBOX_SPEC";
/// The control socket's descriptor in the init.
pub const CONTROL_FD: i32 = 3;
/// Where the function's code appears inside the sandbox (SCF's code path).
pub const CODE_DIR: &str = "/var/user";
/// Where the instance's gateway socket is bound inside the sandbox (root only).
pub const GATEWAY_SOCKET: &str = "/run/yun.sock";

/// How one sandboxed instance is built; written by Yun, read by the init.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// An empty folder on the host; the new root is a tmpfs mounted over it in the
    /// instance's own mount namespace (the host never sees that mount).
    pub root: PathBuf,
    /// Host paths bound read-only at the same path (files, folders or symlinks).
    pub ro_binds: Vec<PathBuf>,
    /// Code folders are looked up beneath this folder, never outside it.
    pub functions_dir: PathBuf,
    pub tmp_mb: u32,
    pub shm_mb: u32,
    /// `cgroup.procs` files the init joins before it forks (the instance's cgroups).
    pub cgroup_procs: Vec<PathBuf>,
    /// Yun's SDK surface inside the sandbox: `127.0.0.1:port` relayed to this socket.
    pub gateway: Option<Gateway>,
    /// Run under `SCHED_BATCH` (see yun-functions' instance.rs for why).
    pub batch: bool,
    /// The program and its arguments (`node --max-old-space-size=… bootstrap.js`).
    pub argv: Vec<String>,
    /// The program's whole environment.
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gateway {
    pub socket: PathBuf,
    pub port: u16,
}

/// Control requests from Yun to the init, one line each; answered `ok` or `error …`.
/// (Before any, the outer process sends `init PID`: the init's pid on the host, for
/// tools that join its network namespace.)
pub fn mount_request(relative_code_dir: &str) -> String {
    format!("mount {relative_code_dir}\n")
}

/// Closes the instance's gateway: no network at all, not even Yun.
pub const NO_NETWORK_REQUEST: &str = "network none\n";

/// The resolver inside the sandbox: slirp4netns's DNS forwarder, where an instance is
/// given the internet; nothing answers there otherwise.
pub const RESOLV_CONF: &str = "nameserver 10.0.2.3\n";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{what}: {source}")]
    Sys {
        what: String,
        source: nix::errno::Errno,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("{0}")]
    Refused(String),
}

pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Sys { what, source }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}
