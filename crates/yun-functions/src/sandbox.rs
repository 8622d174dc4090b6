//! Per-instance resource limits. Where the kernel offers cgroup v1 memory and pids
//! controllers that we may write (as root on these machines), every specialised instance
//! gets its own cgroup with the function's memory limit and a pids cap. Elsewhere the
//! V8 heap flag set at spawn is the only memory limit; `describe` says which is in force.

use std::path::{Path, PathBuf};

const CGROUP_V1_ROOT: &str = "/sys/fs/cgroup";
/// Processes and threads one instance may hold (Node itself uses about a dozen threads).
const MAX_PIDS_PER_INSTANCE: u32 = 128;

#[derive(Debug, Clone)]
pub enum Sandbox {
    CgroupV1 {
        memory: PathBuf,
        pids: Option<PathBuf>,
    },
    HeapFlagOnly {
        why: String,
    },
}

/// The cgroup path of this process for one v1 controller, from /proc/self/cgroup.
fn own_cgroup(controller: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_owned())
    })
}

fn make_parent(controller: &str, tag: &str) -> Result<PathBuf, String> {
    let own =
        own_cgroup(controller).ok_or_else(|| format!("no cgroup v1 {controller} controller"))?;
    let dir = Path::new(CGROUP_V1_ROOT)
        .join(controller)
        .join(own.trim_start_matches('/'))
        .join(tag);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

impl Sandbox {
    /// Sets up this Yun process's parent cgroups, named by `tag` (unique per process).
    pub fn detect(tag: &str) -> Self {
        match make_parent("memory", tag) {
            Ok(memory) => Sandbox::CgroupV1 {
                memory,
                pids: make_parent("pids", tag).ok(),
            },
            Err(why) => Sandbox::HeapFlagOnly { why },
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Sandbox::CgroupV1 { pids, .. } => format!(
                "cgroup v1: memory limit per instance{}",
                if pids.is_some() { ", pids cap" } else { "" }
            ),
            Sandbox::HeapFlagOnly { why } => format!("V8 heap limit only ({why})"),
        }
    }

    /// A fresh cgroup for instance `instance_id` limited to `memory_mb`, before any
    /// process is in it. Failure is logged and the instance runs with the heap flag only.
    pub fn cgroup(&self, instance_id: u64, memory_mb: u32) -> Option<InstanceCgroup> {
        let Sandbox::CgroupV1 { memory, pids } = self else {
            return None;
        };
        let name = format!("inst-{instance_id}");
        let result = (|| -> std::io::Result<InstanceCgroup> {
            let mem_dir = memory.join(&name);
            std::fs::create_dir_all(&mem_dir)?;
            let mut group = InstanceCgroup {
                memory_dir: mem_dir.clone(),
                dirs: vec![mem_dir.clone()],
            };
            std::fs::write(
                mem_dir.join("memory.limit_in_bytes"),
                (u64::from(memory_mb) << 20).to_string(),
            )?;
            if let Some(pids) = pids {
                let pid_dir = pids.join(&name);
                std::fs::create_dir_all(&pid_dir)?;
                group.dirs.push(pid_dir.clone());
                std::fs::write(pid_dir.join("pids.max"), MAX_PIDS_PER_INSTANCE.to_string())?;
            }
            Ok(group)
        })();
        result
            .map_err(|e| tracing::warn!(error = %e, "could not confine instance; heap flag only"))
            .ok()
    }

    /// Removes this process's parent cgroups at shutdown (children must be gone).
    pub fn cleanup(&self) {
        if let Sandbox::CgroupV1 { memory, pids } = self {
            let _ = std::fs::remove_dir(memory);
            if let Some(p) = pids {
                let _ = std::fs::remove_dir(p);
            }
        }
    }
}

#[derive(Debug)]
pub struct InstanceCgroup {
    memory_dir: PathBuf,
    dirs: Vec<PathBuf>,
}

impl InstanceCgroup {
    /// The `cgroup.procs` files a process writes its pid to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Moves `pid` in (an unsandboxed instance, right after it started).
    pub fn join(&self, pid: u32) {
        for procs in self.procs_files() {
            if let Err(e) = std::fs::write(&procs, pid.to_string()) {
                tracing::warn!(file = %procs.display(), error = %e, "could not join cgroup");
            }
        }
    }

    /// Whether the kernel's OOM killer acted in this cgroup.
    pub fn oom_killed(&self) -> bool {
        let control =
            std::fs::read_to_string(self.memory_dir.join("memory.oom_control")).unwrap_or_default();
        control
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    }
}

impl Drop for InstanceCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // Fails while a process is still inside; the instance kills and reaps its
            // process group before dropping this.
            if let Err(e) = std::fs::remove_dir(dir) {
                tracing::debug!(dir = %dir.display(), error = %e, "cgroup not removed");
            }
        }
    }
}
