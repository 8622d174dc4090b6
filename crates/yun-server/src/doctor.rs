//! `yun doctor`: which of the instance protections this host gives, and why not where
//! it does not. It runs the same checks `yun dev` runs at start (a trial of the
//! sandbox, the cgroup controllers), on throwaway folders.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use yun_functions::{sandbox_trial, Isolation, Sandbox, UidPool};

use crate::{find_program, sandbox_view, DEFAULT_INSTANCE_UIDS};

/// Each protection, in force or not; `missing` says why for each that is not.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Mount, PID, IPC, UTS, network and cgroup namespaces per instance.
    pub namespaces: bool,
    pub seccomp: bool,
    pub uid_per_instance: bool,
    pub private_tmp: bool,
    /// Instances reach only Yun (their own network namespace and gateway).
    pub network_policy: bool,
    /// Instances may be given the internet (slirp4netns is installed).
    pub internet: bool,
    pub memory_limit: bool,
    pub pids_limit: bool,
    pub missing: Vec<String>,
}

pub async fn run(node: &Path, init_exe: &Path) -> Report {
    let mut missing = Vec::new();
    let sandbox = match sandbox_status(node, init_exe).await {
        Ok(()) => true,
        Err(why) => {
            missing.push(format!(
                "sandbox (namespaces, seccomp, a uid per instance, private /tmp, Yun-only network): {why}"
            ));
            false
        }
    };
    let cgroups = Sandbox::detect(&format!("yun-doctor-{}", std::process::id()));
    let (memory_limit, pids_limit) = cgroups.limits();
    if let Sandbox::HeapFlagOnly { why } = &cgroups {
        missing.push(format!(
            "memory and pids limits: {why}; only V8's heap limit applies"
        ));
    } else if !pids_limit {
        missing.push("pids limit: no cgroup v1 pids controller".into());
    }
    cgroups.cleanup();
    let internet = sandbox && find_program(Path::new("slirp4netns")).is_some();
    if sandbox && !internet {
        missing.push(
            "internet for functions: no slirp4netns (apt-get install slirp4netns); they reach Yun only"
                .into(),
        );
    }
    Report {
        namespaces: sandbox,
        seccomp: sandbox,
        uid_per_instance: sandbox,
        private_tmp: sandbox,
        network_policy: sandbox,
        internet,
        memory_limit,
        pids_limit,
        missing,
    }
}

async fn sandbox_status(node: &Path, init_exe: &Path) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("Yun is not running as root, which building namespaces needs".into());
    }
    let node = find_program(node).ok_or_else(|| format!("cannot find {}", node.display()))?;
    let scratch = tempfile_dir()?;
    let (root, functions) = (scratch.join("root"), scratch.join("functions"));
    for dir in [&root, &functions] {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let isolation = Arc::new(Isolation {
        init_exe: init_exe.to_owned(),
        node: node.clone(),
        root,
        functions_dir: functions.clone(),
        ro_binds: sandbox_view(&node, &functions, &functions),
        tmp_mb: 8,
        shm_mb: 8,
        uids: UidPool::new(DEFAULT_INSTANCE_UIDS),
        gateway: None,
        slirp: None,
    });
    let result = sandbox_trial(&isolation, &node).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn tempfile_dir() -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("yun-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(dir)
}
