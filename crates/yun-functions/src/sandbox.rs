//! Per-instance resource limits. Where the kernel offers memory and pids controllers
//! that we may write (as root), every instance gets its own cgroup with the function's
//! memory limit (no swap) and a pids cap: cgroup v1 (separate hierarchies per
//! controller) or v2 (one unified tree, most current distributions). Elsewhere the V8
//! heap flag set at spawn is the only memory limit; `describe` says which is in force.

use std::path::{Path, PathBuf};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Processes and threads one instance may hold (Node itself uses about a dozen threads).
const MAX_PIDS_PER_INSTANCE: u32 = 128;

#[derive(Debug, Clone)]
pub enum Sandbox {
    CgroupV1 {
        memory: PathBuf,
        pids: Option<PathBuf>,
    },
    /// `base` holds Yun itself (in `base/yun`: a cgroup with controllers enabled for its
    /// children may hold no process) and one child per instance.
    CgroupV2 {
        base: PathBuf,
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

/// Removes a cgroup and the instance cgroups in it (they must hold no process).
fn remove_tree(dir: &Path) {
    if let Ok(children) = std::fs::read_dir(dir) {
        for child in children.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::remove_dir(child.path());
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        tracing::debug!(dir = %dir.display(), error = %e, "cgroup not removed");
    }
}

/// The cgroups of Yun processes that are gone (killed with -9, say): their instances
/// died with them, so the folders are empty and can go.
fn sweep_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("yun-")
            .and_then(|rest| rest.rsplit('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                remove_tree(&entry.path());
            }
        }
    }
}

fn make_parent(controller: &str, tag: &str) -> Result<PathBuf, String> {
    let own =
        own_cgroup(controller).ok_or_else(|| format!("no cgroup v1 {controller} controller"))?;
    let own_dir = Path::new(CGROUP_ROOT)
        .join(controller)
        .join(own.trim_start_matches('/'));
    sweep_stale(&own_dir);
    let dir = own_dir.join(tag);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// The unified hierarchy, when `/sys/fs/cgroup` is one: Yun moves itself into
/// `{own}/{tag}/yun` and enables the memory and pids controllers for `{own}/{tag}`.
fn make_v2(root: &Path, tag: &str) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let own = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("no cgroup v2 entry in /proc/self/cgroup")?;
    let own_dir = root.join(own.trim_start_matches('/'));
    let available = std::fs::read_to_string(own_dir.join("cgroup.controllers"))
        .map_err(|e| format!("cannot read the cgroup controllers: {e}"))?;
    for needed in ["memory", "pids"] {
        if !available.split_whitespace().any(|c| c == needed) {
            return Err(format!(
                "the {needed} controller is not delegated to this cgroup"
            ));
        }
    }
    sweep_stale(&own_dir);
    let base = own_dir.join(tag);
    let main = base.join("yun");
    let write = |file: PathBuf, value: &str| {
        std::fs::write(&file, value).map_err(|e| format!("cannot write {}: {e}", file.display()))
    };
    std::fs::create_dir_all(&main).map_err(|e| format!("cannot create {}: {e}", main.display()))?;
    write(main.join("cgroup.procs"), &std::process::id().to_string())?;
    let enabled = write(own_dir.join("cgroup.subtree_control"), "+memory +pids")
        .and_then(|()| write(base.join("cgroup.subtree_control"), "+memory +pids"));
    if let Err(e) = enabled {
        // Another process shares our cgroup, so it cannot hand controllers down.
        let _ = std::fs::write(own_dir.join("cgroup.procs"), std::process::id().to_string());
        remove_tree(&base);
        return Err(e);
    }
    Ok(base)
}

impl Sandbox {
    /// Sets up this Yun process's parent cgroups, named by `tag` (unique per process).
    pub fn detect(tag: &str) -> Self {
        let root = Path::new(CGROUP_ROOT);
        if root.join("cgroup.controllers").exists() {
            return match make_v2(root, tag) {
                Ok(base) => Sandbox::CgroupV2 { base },
                Err(why) => Sandbox::HeapFlagOnly { why },
            };
        }
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
            Sandbox::CgroupV2 { .. } => "cgroup v2: memory limit per instance, pids cap".into(),
            Sandbox::HeapFlagOnly { why } => format!("V8 heap limit only ({why})"),
        }
    }

    /// Whether instances get a memory limit and a pids cap.
    pub fn limits(&self) -> (bool, bool) {
        match self {
            Sandbox::CgroupV1 { pids, .. } => (true, pids.is_some()),
            Sandbox::CgroupV2 { .. } => (true, true),
            Sandbox::HeapFlagOnly { .. } => (false, false),
        }
    }

    /// A fresh cgroup for instance `instance_id` limited to `memory_mb`, before any
    /// process is in it. Failure is logged and the instance runs with the heap flag only.
    pub fn cgroup(&self, instance_id: u64, memory_mb: u32) -> Option<InstanceCgroup> {
        let name = format!("inst-{instance_id}");
        let bytes = (u64::from(memory_mb) << 20).to_string();
        let result = (|| -> std::io::Result<InstanceCgroup> {
            match self {
                Sandbox::CgroupV1 { memory, pids } => {
                    let mem_dir = memory.join(&name);
                    std::fs::create_dir_all(&mem_dir)?;
                    let mut group = InstanceCgroup {
                        oom_file: mem_dir.join("memory.oom_control"),
                        dirs: vec![mem_dir.clone()],
                    };
                    std::fs::write(mem_dir.join("memory.limit_in_bytes"), &bytes)?;
                    if let Some(pids) = pids {
                        let pid_dir = pids.join(&name);
                        std::fs::create_dir_all(&pid_dir)?;
                        group.dirs.push(pid_dir.clone());
                        std::fs::write(
                            pid_dir.join("pids.max"),
                            MAX_PIDS_PER_INSTANCE.to_string(),
                        )?;
                    }
                    Ok(group)
                }
                Sandbox::CgroupV2 { base } => {
                    let dir = base.join(&name);
                    std::fs::create_dir_all(&dir)?;
                    let group = InstanceCgroup {
                        oom_file: dir.join("memory.events"),
                        dirs: vec![dir.clone()],
                    };
                    std::fs::write(dir.join("memory.max"), &bytes)?;
                    // Without swap accounting the file is absent: nothing to limit.
                    let swap = dir.join("memory.swap.max");
                    if swap.exists() {
                        std::fs::write(swap, "0")?;
                    }
                    std::fs::write(dir.join("pids.max"), MAX_PIDS_PER_INSTANCE.to_string())?;
                    Ok(group)
                }
                Sandbox::HeapFlagOnly { .. } => Err(std::io::ErrorKind::Unsupported.into()),
            }
        })();
        match result {
            Ok(group) => Some(group),
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => None,
            Err(e) => {
                tracing::warn!(error = %e, "could not confine instance; heap flag only");
                None
            }
        }
    }

    /// Removes the cgroups of Yun processes that are gone; their instances' processes
    /// may take a while to be reaped, so this runs now and then, not only at start.
    pub fn sweep(&self) {
        let parents: Vec<&Path> = match self {
            Sandbox::CgroupV1 { memory, pids } => [Some(memory), pids.as_ref()]
                .into_iter()
                .flatten()
                .filter_map(|d| d.parent())
                .collect(),
            Sandbox::CgroupV2 { base } => base.parent().into_iter().collect(),
            Sandbox::HeapFlagOnly { .. } => Vec::new(),
        };
        for parent in parents {
            sweep_stale(parent);
        }
    }

    /// Removes this process's cgroups at shutdown, with any instance cgroup left (their
    /// processes must be gone). Under v2 Yun's own leaf stays until it exits; the next
    /// start sweeps it.
    pub fn cleanup(&self) {
        match self {
            Sandbox::CgroupV1 { memory, pids } => {
                remove_tree(memory);
                if let Some(p) = pids {
                    remove_tree(p);
                }
            }
            Sandbox::CgroupV2 { base } => remove_tree(base),
            Sandbox::HeapFlagOnly { .. } => {}
        }
    }
}

#[derive(Debug)]
pub struct InstanceCgroup {
    /// v1's `memory.oom_control` or v2's `memory.events`: both count `oom_kill`.
    oom_file: PathBuf,
    dirs: Vec<PathBuf>,
}

impl InstanceCgroup {
    /// The `cgroup.procs` files a process writes its pid to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Whether no process is left in it.
    pub fn is_empty(&self) -> bool {
        self.procs_files()
            .iter()
            .all(|f| std::fs::read_to_string(f).map_or(true, |procs| procs.trim().is_empty()))
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
        let control = std::fs::read_to_string(&self.oom_file).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_instance_cgroups_get_memory_swap_and_pids_limits_and_report_oom_kills() {
        let base = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::CgroupV2 {
            base: base.path().to_owned(),
        };
        // The kernel creates the interface files; here the test plays the kernel.
        let dir = base.path().join("inst-7");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.swap.max"), "max").unwrap();
        let group = sandbox.cgroup(7, 128).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), (128u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), MAX_PIDS_PER_INSTANCE.to_string());
        assert_eq!(group.procs_files(), vec![dir.join("cgroup.procs")]);
        assert!(!group.oom_killed());
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert!(group.oom_killed());
        assert_eq!(sandbox.limits(), (true, true));
    }

    #[test]
    fn folders_of_dead_yun_processes_are_swept_and_live_ones_kept() {
        let parent = tempfile::tempdir().unwrap();
        let dead = parent.path().join("yun-4000000000");
        let dead_doctor = parent.path().join("yun-doctor-4000000001");
        let live = parent.path().join(format!("yun-{}", std::process::id()));
        let other = parent.path().join("not-ours-4000000000");
        for dir in [&dead, &dead_doctor, &live, &other] {
            std::fs::create_dir_all(dir.join("inst-1")).unwrap();
        }
        sweep_stale(parent.path());
        assert!(!dead.exists() && !dead_doctor.exists());
        assert!(live.join("inst-1").exists() && other.exists());
    }
}
