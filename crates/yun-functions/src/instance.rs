//! One instance: an OS process running the bootstrap, in its own process group, talking
//! protocol v2 over a socket pair on its fd 0. Owned by exactly one pool slot at a time;
//! handles one invocation at a time.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::Child;
use tokio::sync::mpsc;
use yun_meta::{InvocationStatus, NetworkPolicy, NewLogLine};
use yun_types::{EnvId, FunctionName};

use crate::api::{ApiPort, ApiReplies, ApiRequest, InstanceApi};
use crate::isolation::{GatewaySocket, InstanceBinding, Isolation, UidLease};
use crate::lane::Turn;
use crate::protocol::{
    read_frame, write_frame, FrameError, HostMessage, InstanceMessage, JsError, PROTOCOL_VERSION,
};
use crate::runtime::InvocationEnv;
use crate::sandbox::{InstanceCgroup, Sandbox};

/// How long a new process may take to start the runtime and preload the layer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long loading the user's module may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(20);
/// Raw (non-intercepted) output kept for crash diagnosis.
const RAW_TAIL_BYTES: usize = 8 * 1024;

/// How instances are started: fixed for the life of the runtime.
#[derive(Debug, Clone)]
pub struct SpawnConfig {
    pub node: PathBuf,
    pub bootstrap: PathBuf,
    /// A folder whose `node_modules` holds the platform SDKs.
    pub layer_dir: Option<PathBuf>,
    /// Drop to this uid/gid (when Yun runs as root) so instances cannot read Yun's files.
    pub run_as: Option<(u32, u32)>,
    pub sandbox: Arc<Sandbox>,
    /// Start instances inside the namespaces sandbox (`None`: plain processes).
    pub isolation: Option<Arc<Isolation>>,
}

/// Where an invocation's output goes.
#[derive(Clone)]
pub struct LogTarget {
    pub env: EnvId,
    pub function: FunctionName,
    pub request_id: String,
    /// The event's W3C trace context, handed on with the calls its code makes.
    pub traceparent: Option<String>,
    pub sink: mpsc::Sender<NewLogLine>,
}

impl LogTarget {
    fn line(&self, stream: &str, level: Option<&str>, message: String) -> NewLogLine {
        // Only the four levels: the frame is the instance's, so anything else is a bare write.
        let level = match level {
            Some(l @ ("debug" | "info" | "warn" | "error")) => l,
            _ if stream == "stdout" => "info",
            _ => "error",
        };
        NewLogLine {
            env: self.env.clone(),
            function: self.function.clone(),
            request_id: self.request_id.clone(),
            at_ms: yun_types::unix_ms(),
            stream: stream.into(),
            level: level.into(),
            message,
        }
    }
}

#[derive(Default)]
struct RawOutput {
    tail: VecDeque<u8>,
    target: Option<LogTarget>,
}

/// Why an invocation failed, and whether its instance may serve again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The handler threw or rejected; the instance is healthy.
    Error(JsError),
    /// The result was larger than the output limit; the instance is healthy.
    OutputTooLarge {
        bytes: usize,
        limit: usize,
    },
    Timeout(Duration),
    /// The process died or hit an uncaught error outside the handler's promise.
    Crashed(String),
    /// The event could not be framed for the instance (over the frame limit); it never ran.
    Unsendable(String),
    OutOfMemory,
}

impl Failure {
    pub fn status(&self) -> InvocationStatus {
        match self {
            Failure::Error(_) | Failure::OutputTooLarge { .. } | Failure::Unsendable(_) => {
                InvocationStatus::Error
            }
            Failure::Timeout(_) => InvocationStatus::Timeout,
            Failure::Crashed(_) => InvocationStatus::Crashed,
            Failure::OutOfMemory => InvocationStatus::OutOfMemory,
        }
    }

    pub fn instance_survives(&self) -> bool {
        matches!(
            self,
            Failure::Error(_) | Failure::OutputTooLarge { .. } | Failure::Unsendable(_)
        )
    }

    pub fn message(&self) -> String {
        match self {
            Failure::Error(e) => e.summary(),
            Failure::OutputTooLarge { bytes, limit } => {
                format!("function result is {bytes} bytes, over the {limit}-byte limit")
            }
            Failure::Timeout(t) => format!("Task timed out after {} ms", t.as_millis()),
            Failure::Crashed(why) => why.clone(),
            Failure::Unsendable(why) => format!("the event cannot be sent to the function: {why}"),
            Failure::OutOfMemory => "function exceeded its memory limit and was killed".into(),
        }
    }
}

#[derive(Debug)]
pub enum LoadFailure {
    /// The user's module threw, or has no such export: a code problem.
    Code(JsError),
    /// The process could not start or died: a platform problem.
    Process(String),
}

impl std::fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadFailure::Code(e) => write!(f, "{}", e.summary()),
            LoadFailure::Process(why) => write!(f, "{why}"),
        }
    }
}

impl Jail {
    /// Reads the init's host pid, which the outer process sends first.
    async fn read_init_pid(&mut self) -> Result<(), String> {
        let mut line = String::new();
        tokio::time::timeout(READY_TIMEOUT, self.control.read_line(&mut line))
            .await
            .map_err(|_| "the sandbox did not report its init".to_string())?
            .map_err(|e| e.to_string())?;
        let pid = line
            .trim_end()
            .strip_prefix("init ")
            .and_then(|pid| pid.parse().ok())
            .ok_or_else(|| format!("unexpected first line from the sandbox: {line:?}"))?;
        self.init_pid = Some(pid);
        Ok(())
    }

    /// Sends one control request to the init and waits for its answer.
    async fn request(&mut self, request: &str) -> Result<(), String> {
        use tokio::io::AsyncWriteExt as _;
        let exchange = async {
            self.control.get_mut().write_all(request.as_bytes()).await?;
            let mut reply = String::new();
            self.control.read_line(&mut reply).await?;
            Ok::<_, std::io::Error>(reply)
        };
        match tokio::time::timeout(LOAD_TIMEOUT, exchange).await {
            Ok(Ok(reply)) if reply.trim_end() == "ok" => Ok(()),
            Ok(Ok(reply)) if reply.is_empty() => Err("the sandbox's init is gone".into()),
            Ok(Ok(reply)) => Err(format!(
                "the sandbox refused {:?}: {}",
                request.trim_end(),
                reply.trim_end().trim_start_matches("error ")
            )),
            Ok(Err(e)) => Err(format!("the sandbox's init is gone: {e}")),
            Err(_) => Err("the sandbox's init did not answer".into()),
        }
    }

    /// Applies the env's network policy before the function's code runs.
    async fn apply_network(&mut self, policy: NetworkPolicy) -> Result<(), String> {
        match policy {
            NetworkPolicy::Internet => match (&self.internet, self.isolation.slirp.clone()) {
                (None, Some(slirp)) => self.attach_internet(&slirp).await,
                _ => Ok(()), // up since spawn, or no slirp4netns here (said at start-up)
            },
            NetworkPolicy::YunOnly => {
                self.detach_internet().await;
                Ok(())
            }
            NetworkPolicy::None => {
                self.detach_internet().await;
                self.request(yun_sandbox::NO_NETWORK_REQUEST).await
            }
        }
    }

    /// Stops slirp4netns and waits for it: its tap device, and so the route out, is
    /// gone before the function's code runs.
    async fn detach_internet(&mut self) {
        if let Some((mut slirp, exit)) = self.internet.take() {
            drop(exit);
            let _ = slirp.start_kill();
            let _ = tokio::time::timeout(LOAD_TIMEOUT, slirp.wait()).await;
        }
    }

    /// Starts slirp4netns on the instance's network namespace: a default route to a
    /// user-mode stack that reaches the internet and refuses the host's loopback. It
    /// exits when the instance's end of its exit pipe closes.
    async fn attach_internet(&mut self, slirp: &std::path::Path) -> Result<(), String> {
        use std::os::fd::AsRawFd as _;
        let pid = self.init_pid.ok_or("the sandbox's init is unknown")?;
        let (mut ready_r, ready_w) = std::io::pipe().map_err(|e| e.to_string())?;
        let (exit_r, exit_w) = std::io::pipe().map_err(|e| e.to_string())?;
        let mut cmd = std::process::Command::new(slirp);
        cmd.args([
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--enable-sandbox",
            "--enable-seccomp",
            "--ready-fd=3",
            "--exit-fd=4",
        ])
        .arg(pid.to_string())
        .arg("tap0")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // Both stay open until the command has spawned (dropped below).
        pass_fds(
            &mut cmd,
            [(ready_w.as_raw_fd(), 3), (exit_r.as_raw_fd(), 4)],
        );
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let spawned = cmd.spawn();
        drop((cmd, ready_w, exit_r));
        let child = spawned.map_err(|e| format!("cannot start {}: {e}", slirp.display()))?;
        let ready = tokio::task::spawn_blocking(move || {
            let mut byte = [0u8; 1];
            std::io::Read::read(&mut ready_r, &mut byte).map(|n| n == 1)
        });
        match tokio::time::timeout(LOAD_TIMEOUT, ready).await {
            Ok(Ok(Ok(true))) => {
                self.internet = Some((child, exit_w));
                Ok(())
            }
            _ => Err("slirp4netns did not bring the instance's network up".into()),
        }
    }
}

/// The function an instance loads.
pub struct LoadSpec<'a> {
    pub env: &'a EnvId,
    pub name: &'a FunctionName,
    /// The code folder on the host.
    pub code_dir: &'a str,
    pub handler: &'a str,
    pub env_vars: &'a BTreeMap<String, String>,
    pub context: &'a Value,
    pub network: NetworkPolicy,
    /// Serves the layer SDKs' calls over the channel (`None`: they go over HTTP).
    pub api: Option<&'a Arc<dyn InstanceApi>>,
    /// See [`crate::RuntimeConfig::public_url`].
    pub public_url: Option<&'a str>,
}

/// Gives the child `cmd` starts each `(ours, theirs)` descriptor at number `theirs`.
/// The caller keeps every `ours` open until the command has spawned.
#[allow(unsafe_code)]
fn pass_fds<const N: usize>(cmd: &mut std::process::Command, fds: [(RawFd, RawFd); N]) {
    // SAFETY: the closure runs between fork and exec and only calls dup2, which is
    // async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for (ours, theirs) in fds {
                if libc::dup2(ours, theirs) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// The command that starts `node` inside the sandbox, through `yun sandbox-init`, and
/// the child's end of the control socket, to keep open until the command has spawned.
fn jailed_command(
    isolation: &Arc<Isolation>,
    id: u64,
    cgroup: Option<&InstanceCgroup>,
    mut argv: Vec<String>,
    env: Vec<(String, String)>,
) -> Result<(std::process::Command, std::os::unix::net::UnixStream, Jail), String> {
    argv[0] = isolation.node.display().to_string();
    let binding = InstanceBinding::default();
    let gateway = isolation
        .gateway
        .as_ref()
        .map(|g| g.open(id, binding.clone()).map(|socket| (socket, g.port())))
        .transpose()
        .map_err(|e| format!("cannot open the instance's gateway: {e}"))?;
    let spec = yun_sandbox::Spec {
        root: isolation.root.clone(),
        ro_binds: isolation.ro_binds.clone(),
        functions_dir: isolation.functions_dir.clone(),
        tmp_mb: isolation.tmp_mb,
        shm_mb: isolation.shm_mb,
        cgroup_procs: cgroup.map(InstanceCgroup::procs_files).unwrap_or_default(),
        gateway: gateway.as_ref().map(|(socket, port)| yun_sandbox::Gateway {
            socket: socket.path.clone(),
            port: *port,
        }),
        batch: true,
        argv,
        env,
    };
    let spec = serde_json::to_string(&spec).map_err(|e| e.to_string())?;
    let (control, control_child) =
        std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(&isolation.init_exe);
    cmd.arg("sandbox-init")
        .env_clear()
        .env(yun_sandbox::SPEC_VAR, spec)
        .current_dir("/");
    // `control_child` stays open until the command has spawned (the caller drops it).
    let control_fd = std::os::fd::AsRawFd::as_raw_fd(&control_child);
    pass_fds(&mut cmd, [(control_fd, yun_sandbox::CONTROL_FD)]);
    let control = {
        control.set_nonblocking(true).map_err(|e| e.to_string())?;
        tokio::net::UnixStream::from_std(control).map_err(|e| e.to_string())?
    };
    Ok((
        cmd,
        control_child,
        Jail {
            isolation: isolation.clone(),
            control: BufReader::new(control),
            binding,
            _gateway: gateway.map(|(socket, _)| socket),
            uid: None,
            init_pid: None,
            internet: None,
        },
    ))
}

/// Runs `node -e 0` in the sandbox: whether this host can build it, and if not, why.
pub async fn trial(isolation: &Arc<Isolation>, node: &std::path::Path) -> Result<(), String> {
    let argv = vec![node.display().to_string(), "-e".into(), "0".into()];
    let env = vec![("PATH".to_string(), "/usr/bin:/bin".to_string())];
    let (mut cmd, end, jail) = jailed_command(isolation, 0, None, argv, env)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let spawned = cmd.spawn();
    drop(cmd);
    drop(end);
    let child = spawned.map_err(|e| format!("cannot start the sandbox: {e}"))?;
    let output = tokio::time::timeout(READY_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| "the sandbox trial did not finish in time".to_string())?
        .map_err(|e| e.to_string())?;
    drop(jail);
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

/// What one invocation needs besides the instance.
pub struct InvokeInput<'a> {
    pub request_id: &'a str,
    pub event: &'a str,
    pub env: &'a InvocationEnv,
    pub timeout: Duration,
    pub output_limit: usize,
    pub log_limit: usize,
}

pub struct Instance {
    pub id: u64,
    pid: u32,
    child: Child,
    reader: BufReader<OwnedReadHalf>,
    /// Taken by the [`crate::lane::Lane`] the loaded instance becomes.
    writer: Option<OwnedWriteHalf>,
    raw: Arc<Mutex<RawOutput>>,
    cgroup: Option<InstanceCgroup>,
    /// The `--max-old-space-size` class this process was started with.
    pub memory_mb: u32,
    pub peak_rss_kb: u64,
    /// Set when the instance runs in the sandbox.
    jail: Option<Jail>,
    /// The function's end of the in-function data path, once loaded.
    api: Option<ApiPort>,
}

/// What a sandboxed instance holds besides its process.
struct Jail {
    isolation: Arc<Isolation>,
    /// The init's control socket (mount requests).
    control: BufReader<tokio::net::UnixStream>,
    binding: InstanceBinding,
    _gateway: Option<GatewaySocket>,
    uid: Option<UidLease>,
    /// The init's pid on the host (its network namespace is the instance's).
    init_pid: Option<u32>,
    /// slirp4netns for an instance given the internet; it exits when this closes.
    internet: Option<(tokio::process::Child, std::io::PipeWriter)>,
}

fn heap_limit_mb(memory_mb: u32) -> u32 {
    // Leave a quarter of the budget for code, buffers and native memory.
    (memory_mb * 3 / 4).max(16)
}

fn spawn_raw_reader(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    name: &'static str,
    raw: Arc<Mutex<RawOutput>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(mut out) = raw.lock() else { return };
            out.tail.extend(line.bytes().chain(std::iter::once(b'\n')));
            let excess = out.tail.len().saturating_sub(RAW_TAIL_BYTES);
            out.tail.drain(..excess);
            if let Some(target) = &out.target {
                // Raw output bypasses the bootstrap (native code, V8 fatal errors); rare,
                // so dropping under back-pressure is acceptable here.
                let _ = target.sink.try_send(target.line(name, None, line));
            }
        }
    });
}

/// Puts the instance's main thread (and the threads it starts from now on) under
/// `SCHED_BATCH`: an event Yun writes then wakes the instance without preempting the Yun
/// thread that wrote it, which goes on serving (and queues more events for the instance
/// to take in one read). Measured under load: about a quarter more requests per second
/// and 30% less instance CPU per event. Latency is unchanged while a core is free: a
/// woken task still goes to an idle core at once.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn run_as_batch(pid: u32) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain syscall on a pid we just started; `param` outlives the call.
    let rc = unsafe { libc::sched_setscheduler(pid as libc::pid_t, libc::SCHED_BATCH, &param) };
    if rc != 0 {
        tracing::debug!(pid, error = %std::io::Error::last_os_error(), "SCHED_BATCH not set");
    }
}

#[cfg(not(target_os = "linux"))]
fn run_as_batch(_pid: u32) {}

impl Instance {
    /// Starts a process and waits for its `ready` frame. With `preload`, the bootstrap
    /// loads the layer SDKs first (a stem cell).
    pub async fn spawn(
        cfg: &SpawnConfig,
        id: u64,
        memory_mb: u32,
        preload: bool,
    ) -> Result<Self, String> {
        let (host, child_end) =
            std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
        let cgroup = cfg.sandbox.cgroup(id, memory_mb);
        let mut env: Vec<(String, String)> = [
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("HOME", "/tmp"),
            ("TMPDIR", "/tmp"),
            ("LANG", "C.UTF-8"),
            ("YUN_PRELOAD", if preload { "1" } else { "0" }),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if let Some(layer) = &cfg.layer_dir {
            env.push(("YUN_NODE_LAYER".into(), layer.display().to_string()));
        }
        let argv = vec![
            cfg.node.display().to_string(),
            format!("--max-old-space-size={}", heap_limit_mb(memory_mb)),
            cfg.bootstrap.display().to_string(),
        ];
        let (mut cmd, control_child, jail) = match &cfg.isolation {
            Some(isolation) => {
                let (cmd, end, jail) = jailed_command(isolation, id, cgroup.as_ref(), argv, env)?;
                (cmd, Some(end), Some(jail))
            }
            None => {
                let mut cmd = std::process::Command::new(&argv[0]);
                cmd.args(&argv[1..]).env_clear().envs(env).current_dir("/");
                if let Some((uid, gid)) = cfg.run_as {
                    cmd.uid(uid).gid(gid);
                }
                (cmd, None, None)
            }
        };
        cmd.stdin(Stdio::from(OwnedFd::from(child_end)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let spawned = cmd.spawn();
        // The command holds our copies of the child's ends (channel, control); close them
        // so that a process dying at start shows up as EOF at once, not as a timeout.
        drop(cmd);
        drop(control_child);
        let mut child = spawned.map_err(|e| format!("cannot start {}: {e}", cfg.node.display()))?;
        let pid = child.id().ok_or("instance exited at once")?;
        if jail.is_none() {
            // In the sandbox the init does both itself, before it forks.
            run_as_batch(pid);
            if let Some(cgroup) = &cgroup {
                cgroup.join(pid);
            }
        }
        let raw = Arc::new(Mutex::new(RawOutput::default()));
        if let Some(out) = child.stdout.take() {
            spawn_raw_reader(out, "stdout", raw.clone());
        }
        if let Some(err) = child.stderr.take() {
            spawn_raw_reader(err, "stderr", raw.clone());
        }
        host.set_nonblocking(true).map_err(|e| e.to_string())?;
        let (reader, writer) = tokio::net::UnixStream::from_std(host)
            .map_err(|e| e.to_string())?
            .into_split();
        let mut instance = Instance {
            id,
            pid,
            child,
            reader: BufReader::new(reader),
            writer: Some(writer),
            raw,
            cgroup,
            memory_mb,
            peak_rss_kb: 0,
            jail,
            api: None,
        };
        match tokio::time::timeout(READY_TIMEOUT, read_frame(&mut instance.reader)).await {
            Ok(Ok(InstanceMessage::Ready {
                v: PROTOCOL_VERSION,
                ..
            })) => {
                if let Some(jail) = &mut instance.jail {
                    jail.read_init_pid().await?;
                    // Most envs keep the default (internet): bring it up now, off the
                    // cold-start path; a load for another policy takes it down.
                    if let Some(slirp) = jail.isolation.slirp.clone() {
                        if let Err(e) = jail.attach_internet(&slirp).await {
                            tracing::warn!(error = %e, "no internet for this instance yet");
                        }
                    }
                }
                Ok(instance)
            }
            Ok(Ok(InstanceMessage::Ready { v, .. })) => Err(format!(
                "bootstrap speaks protocol v{v}, expected v{PROTOCOL_VERSION}"
            )),
            Ok(Ok(other)) => Err(format!("unexpected first frame {other:?}")),
            Ok(Err(e)) => Err(format!(
                "instance failed to start: {e}; output: {}",
                instance.raw_tail()
            )),
            Err(_) => Err("instance did not become ready in time".into()),
        }
    }

    fn raw_tail(&self) -> String {
        self.raw
            .lock()
            .map(|o| {
                String::from_utf8_lossy(&o.tail.iter().copied().collect::<Vec<_>>()).into_owned()
            })
            .unwrap_or_default()
    }

    /// Specialises the process to one function: shows it its code, sets its env and
    /// uid, loads its code.
    pub async fn load(&mut self, function: &LoadSpec<'_>) -> Result<(), LoadFailure> {
        let mut uid = None;
        let code_dir = match &mut self.jail {
            Some(jail) => {
                let rel = std::path::Path::new(function.code_dir)
                    .strip_prefix(&jail.isolation.functions_dir)
                    .map_err(|_| LoadFailure::Process("code outside the functions folder".into()))?
                    .to_str()
                    .ok_or_else(|| LoadFailure::Process("code path is not UTF-8".into()))?
                    .to_owned();
                jail.request(&yun_sandbox::mount_request(&rel))
                    .await
                    .map_err(LoadFailure::Process)?;
                jail.apply_network(function.network)
                    .await
                    .map_err(LoadFailure::Process)?;
                let lease = jail
                    .isolation
                    .uids
                    .lease()
                    .ok_or_else(|| LoadFailure::Process("no free instance uid".into()))?;
                uid = Some(lease.uid);
                jail.uid = Some(lease);
                let _ = jail
                    .binding
                    .set((function.env.clone(), function.name.clone()));
                yun_sandbox::CODE_DIR
            }
            None => function.code_dir,
        };
        // An env without the network (`none`) cannot reach Yun over HTTP either.
        self.api = function
            .api
            .filter(|_| function.network != NetworkPolicy::None)
            .map(|api| ApiPort::new(api.clone(), function.env.clone(), function.name.clone()));
        let message = HostMessage::Load {
            code_dir,
            handler: function.handler,
            env: function.env_vars,
            context: function.context,
            uid,
            sdk_channel: self.api.is_some(),
            public_url: function.public_url,
        };
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| LoadFailure::Process("the instance is already loaded".into()))?;
        write_frame(writer, &message)
            .await
            .map_err(|e| LoadFailure::Process(e.to_string()))?;
        loop {
            let frame = tokio::time::timeout(LOAD_TIMEOUT, read_frame(&mut self.reader))
                .await
                .map_err(|_| LoadFailure::Process("loading the function timed out".into()))?;
            match frame {
                Ok(InstanceMessage::Loaded) => return Ok(()),
                Ok(InstanceMessage::LoadError { error }) => return Err(LoadFailure::Code(error)),
                // Top-level console output while the module loads has no request yet.
                Ok(InstanceMessage::Log { .. }) => continue,
                Ok(InstanceMessage::Fatal { error, .. }) => return Err(LoadFailure::Code(error)),
                Ok(other) => {
                    return Err(LoadFailure::Process(format!("unexpected frame {other:?}")))
                }
                Err(e) => {
                    return Err(LoadFailure::Process(format!(
                        "{e}; output: {}",
                        self.raw_tail()
                    )))
                }
            }
        }
    }

    /// Whether the process has ended (an idle instance can die: its own timer, a kill).
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Resolves when the process ends.
    pub(crate) async fn exited(&mut self) {
        let _ = self.child.wait().await;
    }

    /// The channel's write side, for the lane that queues events to this instance.
    pub(crate) fn take_writer(&mut self) -> Option<OwnedWriteHalf> {
        self.writer.take()
    }

    /// Reads one event's output and result; its frame is already written. The timeout
    /// runs from here: the event starts when the one before it has answered. On a
    /// failure that leaves the instance unhealthy, its process group is already killed.
    pub(crate) async fn run_turn(
        &mut self,
        turn: &Turn,
        replies: &Arc<dyn ApiReplies>,
    ) -> Result<String, Failure> {
        if let Ok(mut raw) = self.raw.lock() {
            raw.target = Some(turn.logs.clone());
        }
        let outcome = match tokio::time::timeout(turn.timeout, self.receive(turn, replies)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                self.kill();
                Err(Failure::Timeout(turn.timeout))
            }
        };
        if let Ok(mut raw) = self.raw.lock() {
            raw.target = None;
        }
        outcome
    }

    async fn receive(
        &mut self,
        turn: &Turn,
        replies: &Arc<dyn ApiReplies>,
    ) -> Result<String, Failure> {
        let logs = &turn.logs;
        let mut logged = 0usize;
        loop {
            match read_frame(&mut self.reader).await {
                Ok(InstanceMessage::Api {
                    id,
                    target,
                    method,
                    headers,
                    body,
                }) => {
                    let headers = headers.into_iter().collect();
                    let request = ApiRequest {
                        target,
                        method,
                        headers,
                        body,
                        caused_by: logs.request_id.clone(),
                        traceparent: logs.traceparent.clone(),
                    };
                    ApiPort::serve(self.api.as_ref(), id, request, replies).await;
                }
                Ok(InstanceMessage::Log {
                    stream,
                    data,
                    level,
                }) => {
                    if logged < turn.log_limit {
                        logged += data.len();
                        let mut text = data.strip_suffix('\n').unwrap_or(&data).to_owned();
                        if logged >= turn.log_limit {
                            text.push_str("\n[yun: log output of this invocation truncated]");
                        }
                        let _ = logs
                            .sink
                            .send(logs.line(&stream, level.as_deref(), text))
                            .await;
                    }
                }
                Ok(InstanceMessage::Result {
                    request_id,
                    ok,
                    value,
                    error,
                    rss_kb,
                }) if request_id == logs.request_id => {
                    self.peak_rss_kb = self.peak_rss_kb.max(rss_kb);
                    return match (ok, value, error) {
                        (true, Some(value), _) if value.len() > turn.output_limit => {
                            Err(Failure::OutputTooLarge {
                                bytes: value.len(),
                                limit: turn.output_limit,
                            })
                        }
                        (true, Some(value), _) => Ok(value),
                        (false, _, Some(error)) => {
                            if !error.stack.is_empty() {
                                let _ = logs
                                    .sink
                                    .send(logs.line("stderr", None, error.stack.clone()))
                                    .await;
                            }
                            Err(Failure::Error(error))
                        }
                        _ => {
                            self.kill();
                            Err(Failure::Crashed("malformed result frame".into()))
                        }
                    };
                }
                Ok(InstanceMessage::Fatal { kind, error, .. }) => {
                    let _ = logs
                        .sink
                        .send(logs.line(
                            "stderr",
                            None,
                            if error.stack.is_empty() {
                                error.summary()
                            } else {
                                error.stack.clone()
                            },
                        ))
                        .await;
                    self.kill();
                    return Err(Failure::Crashed(format!(
                        "{}: {}",
                        kind.replace('_', " "),
                        error.summary()
                    )));
                }
                Ok(other) => {
                    self.kill();
                    return Err(Failure::Crashed(format!(
                        "protocol violation: unexpected frame {other:?}"
                    )));
                }
                Err(e) => return Err(self.died(&e).await),
            }
        }
    }

    /// The channel broke: find out how the process ended.
    pub(crate) async fn died(&mut self, cause: &FrameError) -> Failure {
        let status = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
        self.kill();
        let tail = self.raw_tail();
        if self.cgroup.as_ref().is_some_and(InstanceCgroup::oom_killed)
            || tail.contains("heap out of memory")
            || tail.contains("Reached heap limit")
        {
            return Failure::OutOfMemory;
        }
        use std::os::unix::process::ExitStatusExt as _;
        match status {
            Ok(Ok(s)) if s.code().is_some() => Failure::Crashed(format!(
                "function process exited with code {}",
                s.code().unwrap_or_default()
            )),
            Ok(Ok(s)) => Failure::Crashed(format!(
                "function process was killed by signal {}",
                s.signal().unwrap_or_default()
            )),
            _ => Failure::Crashed(format!("function process stopped responding ({cause})")),
        }
    }

    /// Kills the whole process group (the function may have started children).
    pub fn kill(&mut self) {
        // A sandboxed instance ends with its init: the kernel then kills everything in
        // its PID namespace, and the outer process reaps the init and exits. Killing the
        // outer process instead would leave the init to the host's init to reap, and
        // its cgroup busy until then.
        if let Some(init) = self.jail.as_ref().and_then(|j| j.init_pid) {
            if let Ok(init) = i32::try_from(init) {
                let _ = nix::sys::signal::kill(Pid::from_raw(init), Signal::SIGKILL);
                return;
            }
        }
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.start_kill();
    }

    /// Kills and waits, so the cgroup can be removed.
    pub async fn shutdown(mut self) {
        self.kill();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
        // In the sandbox the killed init and node may still be exiting after the outer
        // process is gone; their cgroup can be removed only once they have.
        if let Some(cgroup) = &self.cgroup {
            for _ in 0..200 {
                if cgroup.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        drop(self.cgroup.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_that_dies_at_start_is_reported_at_once() {
        let cfg = SpawnConfig {
            node: "/bin/false".into(),
            bootstrap: "/nonexistent".into(),
            layer_dir: None,
            run_as: None,
            sandbox: Arc::new(Sandbox::HeapFlagOnly { why: "test".into() }),
            isolation: None,
        };
        let err = Instance::spawn(&cfg, 1, 128, false)
            .await
            .err()
            .expect("spawn must fail");
        assert!(err.starts_with("instance failed to start"), "{err}");
    }
}
