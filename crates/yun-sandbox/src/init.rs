//! `yun sandbox-init`: builds one instance's namespaces and root, starts Node in them,
//! and stays as the namespace's PID 1 (reaping, serving the control socket and the
//! gateway) until Node exits.
//!
//! Two processes: the outer one (started by Yun, in Yun's namespaces) joins the
//! instance's cgroups, unshares, forks the init and reports the init's end as its own;
//! the init (PID 1 inside) does the rest. Both die with their parent.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::prctl;
use nix::sys::signal::{kill, signal, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, execve, fork, getpid, getppid, pivot_root, sethostname, ForkResult, Pid};

use crate::{io, seccomp, sys, SandboxError, Spec, CODE_DIR, CONTROL_FD, GATEWAY_SOCKET, SPEC_VAR};

/// Where the init sees the functions folder until the code is mounted: a bind (a mount
/// must come from this namespace to be bound again) in a folder only root may enter,
/// detached as soon as the function's own folder is mounted, before any of its code runs.
const FUNCTIONS_VIEW: &str = "/run/yun-init/functions";

/// Exit code when the sandbox could not be built (Yun shows the init's stderr).
const SETUP_FAILED: i32 = 125;

/// Entry point of `yun sandbox-init`; never returns.
pub fn run() -> ! {
    let spec = match std::env::var(SPEC_VAR)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str::<Spec>(&text).map_err(|e| e.to_string()))
    {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("yun sandbox-init: no valid {SPEC_VAR}: {e}");
            std::process::exit(SETUP_FAILED)
        }
    };
    std::process::exit(match outer(&spec) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("yun sandbox-init: {e}");
            SETUP_FAILED
        }
    })
}

fn outer(spec: &Spec) -> Result<i32, SandboxError> {
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys("PR_SET_PDEATHSIG"))?;
    if getppid() == Pid::from_raw(1) {
        return Err(SandboxError::Refused(
            "the process that started us is gone".into(),
        ));
    }
    if spec.batch {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: a plain syscall on ourselves; `param` outlives it.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    }
    let me = getpid().to_string();
    for procs in &spec.cgroup_procs {
        std::fs::write(procs, &me).map_err(io(format!("joining {}", procs.display())))?;
    }
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .map_err(sys("unshare"))?;
    // SAFETY: this process is single-threaded (a fresh exec that started no threads).
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => std::process::exit(match init(spec) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("yun sandbox-init: {e}");
                SETUP_FAILED
            }
        }),
        ForkResult::Parent { child } => {
            // SAFETY: fd 3 is the control socket; borrowed for one write, not closed.
            let control = unsafe { std::os::fd::BorrowedFd::borrow_raw(CONTROL_FD) };
            let _ = nix::unistd::write(control, format!("init {child}\n").as_bytes());
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(die_like(code)),
                    Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(die_like(128 + sig as i32)),
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(sys("waiting for the init")(e)),
                }
            }
        }
    }
}

/// The init reports Node's death by signal S as 128+S; the outer process dies of S in
/// turn, so Yun sees what happened to the function's process.
fn die_like(code: i32) -> i32 {
    if let Ok(sig) = Signal::try_from(code - 128) {
        // SAFETY: restoring the default action of a signal in a single-threaded process.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
        let _ = kill(getpid(), sig);
    }
    code
}

fn init(spec: &Spec) -> Result<i32, SandboxError> {
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys("PR_SET_PDEATHSIG"))?;
    sethostname("yun").map_err(sys("sethostname"))?;
    build_root(spec)?;
    let functions = nix::fcntl::open(
        FUNCTIONS_VIEW,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys("opening the functions folder"))?;
    loopback_up()?;
    let gateway = match &spec.gateway {
        Some(g) => {
            Some(TcpListener::bind(("127.0.0.1", g.port)).map_err(io("binding the gateway"))?)
        }
        None => None,
    };
    // Nothing in here reads the init's memory or its descriptors (the functions folder).
    prctl::set_dumpable(false).map_err(sys("PR_SET_DUMPABLE"))?;
    let filters = seccomp::filters()?;
    let argv = cstrings(spec.argv.iter().map(String::as_str))?;
    let env = cstrings(
        spec.env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str),
    )?;
    // SAFETY: still single-threaded; the threads below start after the fork.
    let node = match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            let e = exec_instance(&argv, &env, &filters);
            eprintln!("yun sandbox-init: cannot start the instance: {e}");
            std::process::exit(SETUP_FAILED)
        }
        ForkResult::Parent { child } => child,
    };
    // SAFETY: fd 3 is the control socket Yun passed us; nothing else owns it.
    let control = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    let gateway_fd = gateway.as_ref().map(AsRawFd::as_raw_fd);
    std::thread::spawn(move || serve_control(UnixStream::from(control), functions, gateway_fd));
    if let Some(listener) = gateway {
        std::thread::spawn(move || serve_gateway(listener));
    }
    Ok(reap_until(node))
}

fn cstrings<'a>(items: impl Iterator<Item = &'a str>) -> Result<Vec<CString>, SandboxError> {
    items
        .map(|s| CString::new(s).map_err(|_| SandboxError::Refused(format!("NUL in {s:?}"))))
        .collect()
}

/// Reaps every child (orphans reparent to PID 1) until the instance itself ends.
fn reap_until(node: Pid) -> i32 {
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == node => return code,
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == node => return 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 0,
        }
    }
}

/// In the forked child: drop every capability but the two the bootstrap uses to become
/// the instance's uid, forbid gaining any (setuid binaries), filter system calls, exec.
fn exec_instance(
    argv: &[CString],
    env: &[CString],
    filters: &[seccompiler::BpfProgram],
) -> SandboxError {
    let _ = prctl::set_pdeathsig(Signal::SIGKILL);
    // SAFETY: marks descriptors close-on-exec; no memory is involved.
    unsafe { libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) };
    if let Err(e) = chdir("/") {
        return sys("chdir")(e);
    }
    // linux/capability.h: CAP_SETGID 6, CAP_SETUID 7 (libc does not name them).
    const CAP_SETGID: i32 = 6;
    const CAP_SETUID: i32 = 7;
    for cap in 0..=63 {
        if cap == CAP_SETUID || cap == CAP_SETGID {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            break; // past the last capability this kernel knows
        }
    }
    if let Err(e) = prctl::set_no_new_privs() {
        return sys("PR_SET_NO_NEW_PRIVS")(e);
    }
    for filter in filters {
        if let Err(e) = seccompiler::apply_filter(filter) {
            return SandboxError::Seccomp(e.to_string());
        }
    }
    match execve(&argv[0], argv, env) {
        Err(e) => sys(format!("exec {:?}", argv[0]))(e),
        Ok(never) => match never {},
    }
}

fn bind_flags() -> MsFlags {
    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
}

/// Binds `source` at `target` read-only (and without setuid).
fn bind_ro(source: &Path, target: &Path, nodev: bool) -> Result<(), SandboxError> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys(format!("binding {}", source.display())))?;
    let flags = if nodev {
        bind_flags() | MsFlags::MS_NODEV
    } else {
        bind_flags()
    };
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .map_err(sys(format!("making {} read-only", target.display())))
}

fn inside(root: &Path, host: &Path) -> PathBuf {
    root.join(host.strip_prefix("/").unwrap_or(host))
}

fn tmpfs(target: &Path, options: &str, flags: MsFlags) -> Result<(), SandboxError> {
    std::fs::create_dir_all(target).map_err(io(format!("creating {}", target.display())))?;
    mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(options))
        .map_err(sys(format!("mounting a tmpfs on {}", target.display())))
}

/// Mirrors one host path into the new root: a symlink as the same symlink, a folder or
/// file as a read-only bind.
fn mirror(root: &Path, host: &Path) -> Result<(), SandboxError> {
    let Ok(meta) = std::fs::symlink_metadata(host) else {
        return Ok(()); // absent on this host (say, /lib64): nothing to show
    };
    let target = inside(root, host);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    if meta.file_type().is_symlink() {
        let link = std::fs::read_link(host).map_err(io(format!("reading {}", host.display())))?;
        return std::os::unix::fs::symlink(&link, &target)
            .map_err(io(format!("linking {}", target.display())));
    }
    if meta.is_dir() {
        std::fs::create_dir_all(&target).map_err(io(format!("creating {}", target.display())))?;
    } else {
        std::fs::File::create(&target).map_err(io(format!("creating {}", target.display())))?;
    }
    bind_ro(host, &target, true)
}

/// Drops paths that an earlier folder in the list already shows.
fn outermost(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut sorted: Vec<PathBuf> = paths.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for path in sorted {
        if !kept
            .iter()
            .any(|k| path.starts_with(k) && k.is_dir() && !k.is_symlink())
        {
            kept.push(path);
        }
    }
    kept
}

/// The kernel-wide corners of `/proc` that a PID namespace does not scope, as container
/// runtimes treat them: tunables read-only, kernel memory and key listings hidden.
fn harden_proc(proc_dir: &Path) -> Result<(), SandboxError> {
    for name in ["sys", "sysrq-trigger", "irq", "bus", "fs"] {
        let path = proc_dir.join(name);
        if path.exists() {
            bind_ro(&path, &path, true)?;
        }
    }
    for name in ["kcore", "keys", "timer_list", "sched_debug", "kallsyms"] {
        let path = proc_dir.join(name);
        if path.exists() {
            mount(
                Some("/dev/null"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(sys(format!("hiding /proc/{name}")))?;
        }
    }
    Ok(())
}

fn build_root(spec: &Spec) -> Result<(), SandboxError> {
    // Nothing we mount from here on propagates back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("making mounts private"))?;
    let root = spec.root.as_path();
    tmpfs(
        root,
        "size=1m,mode=0755",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    // The private /tmp first: binds of host paths under /tmp (a data folder there) go on
    // top of it, not under it.
    let private = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    tmpfs(
        &root.join("tmp"),
        &format!("size={}m,mode=1777", spec.tmp_mb),
        private,
    )?;
    for host in outermost(&spec.ro_binds) {
        mirror(root, &host)?;
    }
    let proc_dir = root.join("proc");
    std::fs::create_dir_all(&proc_dir).map_err(io("creating /proc"))?;
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(sys("mounting /proc"))?;
    harden_proc(&proc_dir)?;

    let dev = root.join("dev");
    tmpfs(
        &dev,
        "size=64k,mode=0755",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
    )?;
    for name in ["null", "zero", "full", "random", "urandom"] {
        let node = dev.join(name);
        std::fs::File::create(&node).map_err(io(format!("creating /dev/{name}")))?;
        mount(
            Some(&Path::new("/dev").join(name)),
            &node,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys(format!("binding /dev/{name}")))?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(name)).map_err(io("linking /dev"))?;
    }
    tmpfs(
        &dev.join("shm"),
        &format!("size={}m,mode=1777", spec.shm_mb),
        private,
    )?;
    mount(
        None::<&str>,
        &dev,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("size=64k,mode=0755"),
    )
    .map_err(sys("making /dev read-only"))?;
    std::fs::create_dir_all(inside(root, Path::new(CODE_DIR)))
        .map_err(io("creating the code folder"))?;
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).map_err(io("creating /etc"))?;
    std::fs::write(etc.join("resolv.conf"), crate::RESOLV_CONF)
        .map_err(io("writing /etc/resolv.conf"))?;
    let view = inside(root, Path::new(FUNCTIONS_VIEW));
    std::fs::create_dir_all(&view).map_err(io("creating the functions view"))?;
    let private_dir = view.parent().unwrap_or(root);
    std::fs::set_permissions(
        private_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .map_err(io("protecting the functions view"))?;
    bind_ro(&spec.functions_dir, &view, true)?;
    if let Some(gateway) = &spec.gateway {
        let target = inside(root, Path::new(GATEWAY_SOCKET));
        std::fs::create_dir_all(target.parent().unwrap_or(root)).map_err(io("creating /run"))?;
        std::fs::File::create(&target).map_err(io("creating the gateway socket"))?;
        mount(
            Some(&gateway.socket),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys("binding the gateway socket"))?;
    }
    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | private,
        Some("size=1m,mode=0755"),
    )
    .map_err(sys("making / read-only"))?;
    chdir(root).map_err(sys("entering the new root"))?;
    pivot_root(".", ".").map_err(sys("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detaching the host's root"))?;
    chdir("/").map_err(sys("chdir /"))
}

fn loopback_up() -> Result<(), SandboxError> {
    // A new network namespace's loopback is down; an ioctl on any AF_INET socket
    // raises it.
    // SAFETY: a datagram socket for the ioctl; closed below.
    let fd: RawFd =
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io("socket for the loopback")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` was just opened and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads `req`, which lives across the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } != 0 {
        return Err(io("raising the loopback")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// One request per line from Yun: `mount ENV/NAME/CODE` binds that code folder (beneath
/// the functions folder, no symlinks on the way) read-only at [`CODE_DIR`], once.
/// Yun closing the socket ends the instance.
fn serve_control(stream: UnixStream, functions: OwnedFd, gateway: Option<RawFd>) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => std::process::exit(SETUP_FAILED),
    };
    let mut loaded = false;
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let reply = match line.split_once(' ') {
            Some(("mount", _)) if loaded => Err("the code is already mounted".to_string()),
            Some(("mount", rel)) => mount_code(&functions, rel).map_err(|e| e.to_string()),
            Some(("network", "none")) => {
                // The gateway's accept fails from now on and its thread closes it.
                if let Some(fd) = gateway {
                    // SAFETY: shutdown on the gateway's socket, which its thread closes
                    // only after this makes its accept fail.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                }
                Ok(())
            }
            _ => Err(format!("unknown request {line:?}")),
        };
        loaded |= line.starts_with("mount ") && reply.is_ok();
        let text = match reply {
            Ok(()) => "ok\n".to_string(),
            Err(e) => format!("error {}\n", e.replace('\n', " ")),
        };
        if writer.write_all(text.as_bytes()).is_err() {
            break;
        }
    }
    std::process::exit(0)
}

fn mount_code(functions: &OwnedFd, rel: &str) -> Result<(), SandboxError> {
    let path = Path::new(rel);
    if rel.is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(SandboxError::Refused(format!("bad code folder {rel:?}")));
    }
    let name = CString::new(rel).map_err(|_| SandboxError::Refused("NUL in path".into()))?;
    // SAFETY: open_how is plain data; zeroed is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 with a valid dirfd, a NUL-terminated path and a live `how`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            functions.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io(format!("opening code folder {rel}"))(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the kernel just returned this descriptor to us.
    let code = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    bind_ro(
        Path::new(&format!("/proc/self/fd/{}", code.as_raw_fd())),
        Path::new(CODE_DIR),
        true,
    )?;
    umount2(FUNCTIONS_VIEW, MntFlags::MNT_DETACH).map_err(sys("detaching the functions view"))
}

/// Relays each connection to Yun's SDK surface, `127.0.0.1:PORT` here, to this
/// instance's socket (which only the init, as root, may open).
fn serve_gateway(listener: TcpListener) {
    for conn in listener.incoming() {
        let tcp = match conn {
            Ok(tcp) => tcp,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break, // shut down: the instance has no network
        };
        std::thread::spawn(move || {
            let Ok(unix) = UnixStream::connect(GATEWAY_SOCKET) else {
                return;
            };
            let (Ok(mut tcp_in), Ok(mut unix_out)) = (tcp.try_clone(), unix.try_clone()) else {
                return;
            };
            let upstream = std::thread::spawn(move || {
                let _ = std::io::copy(&mut tcp_in, &mut unix_out);
                let _ = unix_out.shutdown(std::net::Shutdown::Write);
            });
            let (mut unix_in, mut tcp_out) = (unix, tcp);
            let _ = std::io::copy(&mut unix_in, &mut tcp_out);
            let _ = tcp_out.shutdown(std::net::Shutdown::Write);
            let _ = upstream.join();
        });
    }
}
