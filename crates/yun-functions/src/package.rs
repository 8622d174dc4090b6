//! Function packages: a gzip'd tar of the function folder, and the npm install of its
//! dependencies.
//!
//! Unpacking runs as root, so it trusts nothing in the archive: names must be relative
//! with normal components and of sane length; only folders, regular files and symlinks
//! are accepted (hard links, devices and fifos are refused); modes are chosen here
//! (0644/0755, never setuid, setgid or sticky); size and count are bounded whatever the
//! headers claim. Symlinks are the dangerous part, because a link written early can
//! redirect a write made later. So folders and files are written first, while the tree
//! holds no symlink at all and nothing can be followed; symlinks are created only after
//! every file is written, and then each one is resolved against the disk and must land
//! inside the folder. Everything happens in a fresh folder that the caller renames into
//! place once the package is complete (`staging_dir`).

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use yun_types::{ErrorCode, YunError};

#[derive(Debug, Clone, Copy)]
pub struct PackageLimits {
    pub max_unpacked_bytes: u64,
    pub max_files: usize,
}

impl Default for PackageLimits {
    fn default() -> Self {
        // SCF's limit for an uploaded package is 500 MB unpacked.
        Self {
            max_unpacked_bytes: 500 << 20,
            max_files: 50_000,
        }
    }
}

impl PackageLimits {
    /// A version's folder as Yun prepared it (the upload and what npm installed), when a
    /// node loads it from the object store.
    pub fn installed() -> Self {
        Self {
            max_unpacked_bytes: 4 << 30,
            max_files: 500_000,
        }
    }
}

/// Packs a prepared version's folder as a `.tar.gz` (links kept as links), for the
/// other nodes of a cluster to [`unpack`].
pub fn pack(dir: &Path) -> Result<Vec<u8>, YunError> {
    pack_into(dir, Vec::new())
}

/// [`pack`] into `out` (a file, for folders too big for memory); returns `out`.
pub fn pack_into<W: std::io::Write>(dir: &Path, out: W) -> Result<W, YunError> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.append_dir_all(".", dir).map_err(YunError::internal)?;
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .map_err(YunError::internal)
}

/// Longest name of one path component, and of a whole entry or link target (Linux's
/// NAME_MAX and PATH_MAX): longer ones could not be created anyway.
const MAX_COMPONENT_BYTES: usize = 255;
const MAX_PATH_BYTES: usize = 4096;

fn invalid(message: impl Into<String>) -> YunError {
    YunError::new(ErrorCode::FunctionCodeInvalid, message)
}

fn shown(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A relative path with only normal components, or an error naming the entry.
fn safe_relative(path: &Path) -> Result<PathBuf, YunError> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => {
                return Err(invalid(format!(
                    "archive entry {} leaves the function folder",
                    shown(path)
                )))
            }
        }
    }
    Ok(out)
}

/// The fresh folder next to `dest` that a package is unpacked (and installed) into
/// before it is renamed to `dest`. Hidden, so it is never taken for a version.
pub fn staging_dir(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.staging-{}", std::process::id()))
}

/// What an accepted entry is, for the checks between entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

/// Unpacks a `.tar.gz` into `dir`, which must not exist yet (its parent is created).
/// Returns the unpacked size. On error `dir` is removed.
pub fn unpack(archive: &[u8], dir: &Path, limits: PackageLimits) -> Result<u64, YunError> {
    unpack_from(archive, dir, limits)
}

/// [`unpack`] reading the archive from `archive` (a file, for archives too big for memory).
pub fn unpack_from(
    archive: impl std::io::Read,
    dir: &Path,
    limits: PackageLimits,
) -> Result<u64, YunError> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(YunError::internal)?;
    }
    std::fs::create_dir(dir).map_err(YunError::internal)?;
    let result = unpack_inner(archive, dir, limits).and_then(|total| {
        check_tree(dir)?;
        Ok(total)
    });
    if result.is_err() {
        // remove_dir_all removes links, never what they point to.
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

fn unpack_inner(
    archive: impl std::io::Read,
    dir: &Path,
    limits: PackageLimits,
) -> Result<u64, YunError> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let entries = tar
        .entries()
        .map_err(|e| invalid(format!("not a gzip'd tar archive: {e}")))?;
    let (mut total, mut count) = (0u64, 0usize);
    // Every accepted entry, and every folder some entry lies in.
    let mut kinds: HashMap<PathBuf, Kind> = HashMap::new();
    let mut parents: HashSet<PathBuf> = HashSet::new();
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("corrupt archive: {e}")))?;
        count += 1;
        if count > limits.max_files {
            return Err(invalid(format!(
                "archive has more than {} entries",
                limits.max_files
            )));
        }
        let raw_path = entry
            .path()
            .map_err(|e| invalid(format!("bad entry name: {e}")))?
            .into_owned();
        check_name(&raw_path)?;
        let rel = safe_relative(&raw_path)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let kind_of_entry = entry.header().entry_type();
        let kind = if kind_of_entry.is_dir() {
            Kind::Dir
        } else if kind_of_entry.is_file() {
            Kind::File
        } else if kind_of_entry.is_symlink() {
            Kind::Symlink
        } else if kind_of_entry.is_hard_link() {
            return Err(invalid(format!(
                "archive entry {} is a hard link; hard links are not allowed",
                shown(&rel)
            )));
        } else {
            return Err(invalid(format!(
                "archive entry {} is a {}; only files, folders and symlinks are allowed",
                shown(&rel),
                kind_name(kind_of_entry)
            )));
        };
        if kind == Kind::File && entry.header().mode().is_ok_and(|m| m & 0o6000 != 0) {
            // Modes are ours anyway; a package asking for setuid or setgid is refused so
            // the author learns it cannot work, rather than finding the bit gone.
            return Err(invalid(format!(
                "archive entry {} is setuid or setgid; function code cannot carry those bits",
                shown(&rel)
            )));
        }
        admit(&rel, kind, &mut kinds, &mut parents)?;
        let target = dir.join(&rel);
        match kind {
            Kind::Dir => std::fs::create_dir_all(&target).map_err(YunError::internal)?,
            Kind::File => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(YunError::internal)?;
                }
                let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
                let mode = if executable { 0o755 } else { 0o644 };
                // create_new: never through anything already there.
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&target)
                    .map_err(YunError::internal)?;
                // Set again past the umask: instances (another user) must read it.
                out.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(YunError::internal)?;
                let budget = limits.max_unpacked_bytes - total;
                // Read at most one byte past the budget: the header's size is not trusted.
                let copied = std::io::copy(&mut (&mut entry).take(budget + 1), &mut out)
                    .map_err(|e| invalid(format!("corrupt archive: {e}")))?;
                total += copied;
                if total > limits.max_unpacked_bytes {
                    return Err(invalid(format!(
                        "archive unpacks to more than {} bytes",
                        limits.max_unpacked_bytes
                    )));
                }
            }
            Kind::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| invalid(format!("bad link: {e}")))?
                    .ok_or_else(|| invalid("symlink without a target"))?
                    .into_owned();
                if link.as_os_str().is_empty()
                    || link.is_absolute()
                    || link.as_os_str().len() > MAX_PATH_BYTES
                {
                    return Err(invalid(format!(
                        "symlink {} must point to a relative path inside the function folder",
                        shown(&rel)
                    )));
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(YunError::internal)?;
                }
                links.push((target, link));
            }
        }
    }
    // Every folder and file is written; only now may links exist.
    for (at, link) in &links {
        std::os::unix::fs::symlink(link, at).map_err(YunError::internal)?;
    }
    Ok(total)
}

fn check_name(path: &Path) -> Result<(), YunError> {
    let too_long = path.as_os_str().len() > MAX_PATH_BYTES
        || path
            .components()
            .any(|c| c.as_os_str().len() > MAX_COMPONENT_BYTES);
    if path.as_os_str().is_empty() || too_long {
        return Err(invalid(format!(
            "archive entry name {} is empty or too long",
            shown(path)
        )));
    }
    Ok(())
}

/// Records an entry, refusing duplicates and entries under anything but a folder (a
/// file under a symlink would be written through it once the link exists).
fn admit(
    rel: &Path,
    kind: Kind,
    kinds: &mut HashMap<PathBuf, Kind>,
    parents: &mut HashSet<PathBuf>,
) -> Result<(), YunError> {
    match kinds.get(rel) {
        // A folder listed twice changes nothing.
        Some(Kind::Dir) if kind == Kind::Dir => return Ok(()),
        Some(_) => {
            return Err(invalid(format!(
                "archive entry {} appears more than once",
                shown(rel)
            )))
        }
        None => {}
    }
    if kind != Kind::Dir && parents.contains(rel) {
        return Err(invalid(format!(
            "archive entry {} is not a folder but other entries lie in it",
            shown(rel)
        )));
    }
    for ancestor in rel.ancestors().skip(1) {
        if ancestor.as_os_str().is_empty() {
            break;
        }
        if let Some(other) = kinds.get(ancestor).filter(|k| **k != Kind::Dir) {
            return Err(invalid(format!(
                "archive entry {} lies under {}, which is a {}",
                shown(rel),
                shown(ancestor),
                if *other == Kind::Symlink {
                    "symlink"
                } else {
                    "file"
                }
            )));
        }
        parents.insert(ancestor.to_path_buf());
    }
    kinds.insert(rel.to_path_buf(), kind);
    Ok(())
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "fifo",
        _ => "special entry",
    }
}

/// Checks a function folder as it is on disk: only folders, regular files and symlinks,
/// each symlink resolving (through any others) to something inside the folder. Run
/// after unpacking and again after npm has written into the folder.
pub fn check_tree(dir: &Path) -> Result<(), YunError> {
    let root = dir.canonicalize().map_err(YunError::internal)?;
    let mut pending = vec![root.clone()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).map_err(YunError::internal)? {
            let entry = entry.map_err(YunError::internal)?;
            let path = entry.path();
            // file_type does not follow links.
            let kind = entry.file_type().map_err(YunError::internal)?;
            let rel = path.strip_prefix(&root).unwrap_or(&path);
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_symlink() {
                let inside = path
                    .canonicalize()
                    .map_err(|e| invalid(format!("symlink {} does not resolve: {e}", shown(rel))))?
                    .starts_with(&root);
                if !inside {
                    return Err(invalid(format!(
                        "symlink {} points outside the function folder",
                        shown(rel)
                    )));
                }
            } else if kind.is_fifo()
                || kind.is_char_device()
                || kind.is_block_device()
                || kind.is_socket()
            {
                return Err(invalid(format!(
                    "{} is not a file, folder or symlink",
                    shown(rel)
                )));
            }
        }
    }
    Ok(())
}

/// Checks that the handler's file is present: `index.main` needs `index.js`.
pub fn check_handler_file(dir: &Path, handler: &str) -> Result<(), YunError> {
    let (file, export) = handler
        .rsplit_once('.')
        .filter(|(f, e)| !f.is_empty() && !e.is_empty())
        .ok_or_else(|| {
            YunError::invalid_param(format!("handler {handler:?} must look like file.export"))
        })?;
    safe_relative(Path::new(file))?;
    let candidates = [
        format!("{file}.js"),
        format!("{file}.cjs"),
        format!("{file}/index.js"),
    ];
    if !candidates.iter().any(|c| dir.join(c).is_file()) {
        return Err(invalid(format!(
            "the package has no {file}.js for handler {file}.{export}"
        )));
    }
    Ok(())
}

/// Dependencies `package.json` declares that neither the package (`node_modules`) nor
/// the platform layer provides. Empty means there is nothing to install.
pub fn missing_dependencies(dir: &Path, layer_packages: &[&str]) -> Result<Vec<String>, YunError> {
    let Some(json) = read_manifest(dir)? else {
        return Ok(Vec::new());
    };
    let deps = json
        .get("dependencies")
        .and_then(|d| d.as_object())
        .cloned()
        .unwrap_or_default();
    Ok(deps
        .keys()
        .filter(|name| !layer_packages.contains(&name.as_str()))
        .filter(|name| {
            !dir.join("node_modules")
                .join(name.as_str())
                .join("package.json")
                .is_file()
        })
        .cloned()
        .collect())
}

/// `npm install --omit=dev` in `dir` with a shared cache; bounded in time. npm runs as
/// root, so the manifest may name only registry packages (`check_manifest`), lock files
/// are ignored (their `resolved` fields may name host paths or any URL), no package
/// script runs, and the folder is checked again afterwards (a registry package's own
/// `file:` dependency would become a symlink out of the folder).
pub async fn npm_install(
    dir: &Path,
    npm: &Path,
    cache: &Path,
    timeout: Duration,
) -> Result<(), YunError> {
    check_manifest(dir)?;
    let mut cmd = tokio::process::Command::new(npm);
    cmd.args([
        "install",
        "--omit=dev",
        "--no-audit",
        "--no-fund",
        "--ignore-scripts",
        "--package-lock=false",
        "--install-links=false",
        "--loglevel=error",
    ])
    .arg("--cache")
    .arg(cache)
    .env("npm_config_update_notifier", "false")
    .current_dir(dir)
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let output = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| {
            invalid(format!(
                "npm install took longer than {} s",
                timeout.as_secs()
            ))
        })?
        .map_err(|e| YunError::internal(format!("cannot run npm: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(invalid(format!("npm install failed:\n{tail}")));
    }
    let checked = dir.to_owned();
    tokio::task::spawn_blocking(move || check_tree(&checked))
        .await
        .map_err(YunError::internal)?
}

/// The fields of package.json whose values npm resolves into packages.
const DEPENDENCY_FIELDS: [&str; 4] = [
    "dependencies",
    "devDependencies",
    "optionalDependencies",
    "peerDependencies",
];

/// Whether `spec` names a version range or a dist-tag on the registry (`^1.2`, `~4`,
/// `>=1 <2`, `latest`, `npm:name@^1`). npm also takes folders and tarballs on this
/// machine (`file:`, `link:`, `/abs`, `./rel`, `~/x`), git repositories (`git+…`,
/// `github:`, `user/repo`) and URLs; run as root those would copy or link host files
/// (or fetch arbitrary URLs) into the function, so none of them is a registry spec.
fn is_registry_spec(spec: &str) -> bool {
    if let Some(alias) = spec.strip_prefix("npm:") {
        // `npm:name@range` or `npm:@scope/name@range`: a name, then a registry spec.
        let (name, range) = match alias.rsplit_once('@') {
            Some((name, range)) if !name.is_empty() => (name, range),
            _ => (alias, ""),
        };
        let name = name.strip_prefix('@').unwrap_or(name);
        let name_ok = name.split('/').count() <= 2
            && name
                .split('/')
                .all(|part| is_plain(part) && !part.is_empty());
        return name_ok && is_registry_spec(range);
    }
    // Ranges, versions and tags use only these; every other form needs `:`, `/`, `\`,
    // `#` or a leading `.` or `~/`.
    !spec.starts_with('.')
        && spec
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " .-+^~<>=|*_".contains(c))
}

fn is_plain(part: &str) -> bool {
    !part.starts_with('.')
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
}

/// Refuses a package.json npm would resolve to anything but registry packages.
fn check_manifest(dir: &Path) -> Result<(), YunError> {
    // npm reads a project's .npmrc, which can move the registry, the cache or the
    // prefix, or name host files (cafile, userconfig).
    if dir.join(".npmrc").symlink_metadata().is_ok() {
        return Err(invalid(
            "the package ships an .npmrc; remove it (npm settings are the platform's)",
        ));
    }
    let Some(json) = read_manifest(dir)? else {
        return Ok(());
    };
    if json.get("workspaces").is_some() {
        return Err(invalid("package.json workspaces are not supported"));
    }
    let mut bad = Vec::new();
    for field in DEPENDENCY_FIELDS {
        for (name, spec) in json
            .get(field)
            .and_then(|d| d.as_object())
            .into_iter()
            .flatten()
        {
            if !spec.as_str().is_some_and(is_registry_spec) {
                bad.push(format!("{field}.{name}: {spec}"));
            }
        }
    }
    // overrides: nested objects of specs, or `$name` to reuse a dependency's spec.
    let mut pending: Vec<(String, &serde_json::Value)> = json
        .get("overrides")
        .map(|o| vec![("overrides".to_owned(), o)])
        .unwrap_or_default();
    while let Some((at, value)) = pending.pop() {
        match value {
            serde_json::Value::Object(map) => {
                pending.extend(map.iter().map(|(k, v)| (format!("{at}.{k}"), v)));
            }
            serde_json::Value::String(s) if s.starts_with('$') || is_registry_spec(s) => {}
            other => bad.push(format!("{at}: {other}")),
        }
    }
    if !bad.is_empty() {
        return Err(invalid(format!(
            "package.json may name only registry versions, ranges or tags (not files, \
             folders, links, git or URLs): {}",
            bad.join(", ")
        )));
    }
    Ok(())
}

fn read_manifest(dir: &Path) -> Result<Option<serde_json::Value>, YunError> {
    let manifest = dir.join("package.json");
    if !manifest.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&manifest).map_err(YunError::internal)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| invalid(format!("package.json is not valid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Builder = tar::Builder<flate2::write::GzEncoder<Vec<u8>>>;

    fn archive(build: impl FnOnce(&mut Builder)) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        build(&mut builder);
        builder.into_inner().unwrap().finish().unwrap()
    }

    /// Any entry, its name and link written raw: the builder's setters refuse `..`.
    fn entry(
        b: &mut Builder,
        kind: tar::EntryType,
        path: &str,
        link: &str,
        mode: u32,
        body: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(kind);
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        b.append(&h, body).unwrap();
    }

    fn file(b: &mut Builder, path: &str, body: &[u8]) {
        entry(b, tar::EntryType::Regular, path, "", 0o644, body);
    }

    fn dir(b: &mut Builder, path: &str) {
        entry(b, tar::EntryType::Directory, path, "", 0o755, b"");
    }

    fn symlink(b: &mut Builder, path: &str, target: &str) {
        entry(b, tar::EntryType::Symlink, path, target, 0o777, b"");
    }

    fn hard_link(b: &mut Builder, path: &str, target: &str) {
        entry(b, tar::EntryType::Link, path, target, 0o644, b"");
    }

    /// Everything under `root`, relative, links not followed.
    fn listing(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(folder) = pending.pop() {
            for e in std::fs::read_dir(&folder).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    pending.push(e.path());
                }
                out.push(e.path().strip_prefix(root).unwrap().display().to_string());
            }
        }
        out.sort();
        out
    }

    #[test]
    fn unpacks_a_normal_package() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("code");
        let bytes = archive(|b| {
            file(b, "./index.js", b"exports.main = async () => 1");
            dir(b, "lib");
            dir(b, "lib");
            file(b, "lib/util.js", b"");
            symlink(b, "lib/alias.js", "../index.js");
            symlink(b, "self", ".");
            symlink(b, "lib/up", "..");
            entry(
                b,
                tar::EntryType::Regular,
                "run.sh",
                "",
                0o1755,
                b"#!/bin/sh",
            );
        });
        assert_eq!(unpack(&bytes, &dest, PackageLimits::default()).unwrap(), 37);
        check_handler_file(&dest, "index.main").unwrap();
        assert!(dest.join("lib/alias.js").is_file());
        assert!(dest.join("self/lib/up/index.js").is_file());
        // Modes are ours: never sticky (setuid and setgid are refused, below).
        let mode = |p: &str| dest.join(p).metadata().unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("run.sh"), 0o755);
        assert_eq!(mode("index.js"), 0o644);
    }

    #[test]
    fn staging_is_a_hidden_sibling() {
        let staging = staging_dir(Path::new("/f/env/fn/v123"));
        assert_eq!(staging.parent(), Some(Path::new("/f/env/fn")));
        let name = staging.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(".v123.staging-"), "{name}");
    }

    /// Every hostile archive is refused, leaves no folder and writes nothing outside.
    #[test]
    fn refuses_hostile_archives_leaving_nothing() {
        let chain = |b: &mut Builder| {
            // a -> ., a/b -> .., a/b/c -> .., …: followed as written, the file would
            // land six levels above the folder; counted lexically, it stays inside.
            let mut at = String::from("a");
            symlink(b, &at, ".");
            for part in ["b", "c", "d", "e", "f", "g"] {
                at = format!("{at}/{part}");
                symlink(b, &at, "..");
            }
            file(b, &format!("{at}/PWNED.txt"), b"x");
        };
        let default = PackageLimits::default();
        let small = PackageLimits {
            max_unpacked_bytes: 1000,
            max_files: 10,
        };
        let long = "x".repeat(300);
        let cases: Vec<(&str, Vec<u8>, PackageLimits)> = vec![
            ("symlink chain", archive(chain), default),
            (
                "file through a symlink",
                archive(|b| {
                    symlink(b, "passwd", "../../../../../../../../etc/passwd");
                    file(b, "passwd", b"root::0:0::/:/bin/sh");
                }),
                default,
            ),
            (
                "file through a symlink inside",
                archive(|b| {
                    file(b, "index.js", b"");
                    symlink(b, "alias", "index.js");
                    file(b, "alias", b"x");
                }),
                default,
            ),
            (
                "file under a symlinked folder",
                archive(|b| {
                    symlink(b, "out", "../../..");
                    file(b, "out/PWNED.txt", b"x");
                }),
                default,
            ),
            (
                "file under a symlink listed after it",
                archive(|b| {
                    file(b, "out/PWNED.txt", b"x");
                    symlink(b, "out", "../../..");
                }),
                default,
            ),
            (
                "file under a file",
                archive(|b| {
                    file(b, "index.js", b"");
                    file(b, "index.js/x", b"");
                }),
                default,
            ),
            (
                "duplicate file",
                archive(|b| {
                    file(b, "index.js", b"");
                    file(b, "index.js", b"");
                }),
                default,
            ),
            (
                "hard link out",
                archive(|b| hard_link(b, "passwd", "/etc/passwd")),
                default,
            ),
            (
                "hard link inside",
                archive(|b| {
                    file(b, "index.js", b"");
                    hard_link(b, "copy.js", "index.js");
                }),
                default,
            ),
            (
                "char device",
                archive(|b| entry(b, tar::EntryType::Char, "null", "", 0o666, b"")),
                default,
            ),
            (
                "block device",
                archive(|b| entry(b, tar::EntryType::Block, "sda", "", 0o666, b"")),
                default,
            ),
            (
                "fifo",
                archive(|b| entry(b, tar::EntryType::Fifo, "pipe", "", 0o666, b"")),
                default,
            ),
            (
                "parent entry",
                archive(|b| file(b, "../evil.js", b"x")),
                default,
            ),
            (
                "nested parent entry",
                archive(|b| file(b, "lib/../../evil.js", b"x")),
                default,
            ),
            (
                "absolute entry",
                archive(|b| file(b, "/etc/evil.js", b"x")),
                default,
            ),
            (
                "symlink up",
                archive(|b| symlink(b, "up", "../../etc/passwd")),
                default,
            ),
            (
                // Inside when counted lexically; `self/..` is the folder's parent on disk.
                "symlink through a symlink",
                archive(|b| {
                    symlink(b, "self", ".");
                    symlink(b, "up", "self/..");
                }),
                default,
            ),
            (
                "absolute symlink",
                archive(|b| symlink(b, "abs", "/etc/passwd")),
                default,
            ),
            (
                "dangling symlink",
                archive(|b| symlink(b, "gone", "nothing")),
                default,
            ),
            (
                "symlink loop",
                archive(|b| {
                    symlink(b, "x", "y");
                    symlink(b, "y", "x");
                }),
                default,
            ),
            (
                "name too long",
                archive(|b| {
                    let mut h = tar::Header::new_gnu();
                    h.set_size(0);
                    h.set_entry_type(tar::EntryType::Regular);
                    b.append_data(&mut h, &long, &[][..]).unwrap();
                }),
                default,
            ),
            (
                "too big",
                archive(|b| file(b, "big.bin", &[0u8; 4096])),
                small,
            ),
            (
                "too many",
                archive(|b| (0..20).for_each(|i| file(b, &format!("f{i}"), b""))),
                small,
            ),
            ("not gzip", b"this is not gzip".to_vec(), default),
        ];
        for (what, bytes, limits) in cases {
            let root = tempfile::tempdir().unwrap();
            let dest = root.path().join("fn").join("code");
            let err = unpack(&bytes, &dest, limits).unwrap_err();
            assert_eq!(err.code, ErrorCode::FunctionCodeInvalid, "{what}: {err}");
            assert_eq!(listing(root.path()), vec!["fn".to_string()], "{what}");
            for ancestor in dest.ancestors() {
                for name in ["PWNED.txt", "evil.js"] {
                    assert!(!ancestor.join(name).exists(), "{what}: {ancestor:?}");
                }
            }
        }
    }

    #[test]
    fn refused_archives_say_why() {
        let root = tempfile::tempdir().unwrap();
        let message = |i: usize, bytes: Vec<u8>| {
            let dest = root.path().join(format!("c{i}"));
            unpack(&bytes, &dest, PackageLimits::default())
                .unwrap_err()
                .message
        };
        assert!(message(0, archive(|b| hard_link(b, "p", "/etc/passwd"))).contains("hard link"));
        let fifo = archive(|b| entry(b, tar::EntryType::Fifo, "p", "", 0o666, b""));
        assert!(message(1, fifo).contains("fifo"));
        let under = archive(|b| {
            symlink(b, "a", ".");
            symlink(b, "a/b", "..");
        });
        assert!(message(2, under).contains("which is a symlink"));
        assert!(message(3, archive(|b| symlink(b, "gone", "x"))).contains("does not resolve"));
        let setuid = archive(|b| entry(b, tar::EntryType::Regular, "su", "", 0o4755, b"x"));
        assert!(message(4, setuid).contains("setuid or setgid"));
        let setgid = archive(|b| entry(b, tar::EntryType::Regular, "sg", "", 0o2755, b"x"));
        assert!(message(5, setgid).contains("setuid or setgid"));
    }

    #[test]
    fn check_tree_refuses_links_out_and_special_files() {
        let root = tempfile::tempdir().unwrap();
        let code = root.path().join("code");
        std::fs::create_dir_all(code.join("node_modules")).unwrap();
        std::os::unix::fs::symlink("../..", code.join("node_modules/x")).unwrap();
        assert!(check_tree(&code).is_err());
        std::fs::remove_file(code.join("node_modules/x")).unwrap();
        std::os::unix::fs::symlink("..", code.join("node_modules/x")).unwrap();
        check_tree(&code).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(code.join("sock")).unwrap();
        assert!(check_tree(&code).is_err());
    }

    #[test]
    fn only_registry_specs_reach_npm() {
        for spec in [
            "",
            "*",
            "latest",
            "4",
            "^1.2.3",
            "~4.17",
            ">=1 <2",
            "1.x || 2",
            "1.0.0-beta.1+b",
            "npm:lodash@^4",
            "npm:@scope/pkg@1",
            "npm:left-pad",
        ] {
            assert!(is_registry_spec(spec), "{spec:?}");
        }
        for spec in [
            "file:/etc",
            "file:../x",
            "link:..",
            "/etc",
            "./x",
            "../x",
            "..",
            ".",
            "~/x",
            "C:\\x",
            "git+ssh://git@h/r.git",
            "git://h/r",
            "github:u/r",
            "u/r",
            "u/r#v1",
            "https://h/x.tgz",
            "http://169.254.169.254/",
            "npm:x@file:/etc",
            "npm:../x@1",
            "x#y",
        ] {
            assert!(!is_registry_spec(spec), "{spec:?}");
        }
    }

    #[test]
    fn manifests_naming_host_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = |text: &str| {
            std::fs::write(dir.path().join("package.json"), text).unwrap();
            check_manifest(dir.path())
        };
        manifest(r#"{"dependencies":{"lodash":"^4"},"overrides":{"x":"1","y":{"z":"$lodash"}}}"#)
            .unwrap();
        for bad in [
            r#"{"dependencies":{"etc":"file:/etc"}}"#,
            r#"{"optionalDependencies":{"up":"link:.."}}"#,
            r#"{"devDependencies":{"g":"git+https://h/r.git"}}"#,
            r#"{"peerDependencies":{"u":"https://h/x.tgz"}}"#,
            r#"{"dependencies":{"n":1}}"#,
            r#"{"overrides":{"x":{"y":"file:/root"}}}"#,
            r#"{"workspaces":["../.."]}"#,
        ] {
            let err = manifest(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::FunctionCodeInvalid, "{bad}");
        }
        std::fs::write(dir.path().join("package.json"), "{}").unwrap();
        std::fs::write(dir.path().join(".npmrc"), "cafile=/etc/shadow").unwrap();
        assert!(check_manifest(dir.path())
            .unwrap_err()
            .message
            .contains(".npmrc"));
    }

    #[test]
    fn missing_handler_file_and_bad_handler_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            check_handler_file(dir.path(), "index.main")
                .unwrap_err()
                .code,
            ErrorCode::FunctionCodeInvalid
        );
        assert_eq!(
            check_handler_file(dir.path(), "main").unwrap_err().code,
            ErrorCode::InvalidParam
        );
        assert!(check_handler_file(dir.path(), "../x.main").is_err());
    }

    #[test]
    fn layer_and_shipped_dependencies_need_no_install() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("package.json"),
            r#"{"dependencies":{"wx-server-sdk":"~4","lodash":"4","dayjs":"1"}}"#,
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("node_modules/dayjs")).unwrap();
        std::fs::write(dir.path().join("node_modules/dayjs/package.json"), "{}").unwrap();
        assert_eq!(
            missing_dependencies(dir.path(), &["wx-server-sdk"]).unwrap(),
            vec!["lodash".to_string()]
        );
    }
}
